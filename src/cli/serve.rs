//! `serve` (the daemon, until a signal) and `check-config` (the config and its
//! certificate pair, printed with secrets redacted).
//!
//! Must not: build the daemon (`sparkcr_edge::daemon` does) or validate the config
//! itself (`sparkcr_edge::config` does).

use super::args::ConfigArg;
use super::{init_logging, load_config, Failure};
use anyhow::Context as _;
use sparkcr_edge::daemon::{self, DaemonError};
use sparkcr_edge::server;

pub fn serve(a: &ConfigArg) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = loaded.config;
    let _log = init_logging(&c);
    tracing::info!(config = %loaded.origin, version = env!("CARGO_PKG_VERSION"), "starting sparkcr-edge");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sparkcr-edge")
        .build()
        .context("cannot start the async runtime")?;
    let origin = loaded.origin.to_string();
    runtime.block_on(async move {
        let daemon = daemon::start(&c, &origin).await.map_err(|e| match e {
            DaemonError::Config(m) => Failure::Config(m),
            // A sandbox that keeps the store read-only is a setup mistake, like a config
            // error: exit 2, which the unit does not restart.
            other => match other.hint(under_systemd()) {
                Some(hint) => Failure::Config(format!("{hint} ({other})")),
                None => Failure::Runtime(other.into()),
            },
        })?;
        for (kind, addr) in daemon.local_addrs() {
            let scheme = match kind {
                server::ListenerKind::Http => "http",
                server::ListenerKind::Https => "https",
            };
            tracing::info!("listening on {scheme}://{addr}");
        }
        let clean = daemon
            .run_until_signalled()
            .await
            .context("cannot install signal handlers")?;
        tracing::info!(clean, "stopped");
        Ok(())
    })
}

pub fn check_config(a: &ConfigArg, quiet: bool) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = &loaded.config;
    if !c.server.tls_listen.is_empty() {
        server::tls::load_certified_key(&c.server.tls_cert, &c.server.tls_key).map_err(|e| {
            Failure::Config(format!(
                "{}: server.tls_cert/server.tls_key: {e}",
                loaded.origin
            ))
        })?;
    }
    if !quiet {
        print!("{}", c.to_redacted_toml());
        eprintln!("config OK ({})", loaded.origin);
    }
    Ok(())
}

/// Whether systemd started this process (it sets `INVOCATION_ID` for every unit).
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}
