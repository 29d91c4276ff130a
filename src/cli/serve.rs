//! `serve` (the daemon, until a signal) and `check-config` (the config and its
//! certificate pair, printed with secrets redacted). Both warn when the served
//! certificate's CA (`ca.pem` beside it) has no name constraints; `check-config` also
//! warns when a config file every user can read holds secrets inline.
//!
//! Must not: build the daemon (`sparkcr_edge::daemon` does) or validate the config
//! itself (`sparkcr_edge::config` does).

use super::args::ConfigArg;
use super::{init_logging, load_config, Failure};
use anyhow::Context as _;
use sparkcr_edge::daemon::{self, DaemonError};
use sparkcr_edge::server;
use sparkcr_edge::setup::self_signed::unconstrained_ca_warning;

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
    let reload_from = a.clone();
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
        if !c.server.tls_listen.is_empty() {
            if let Some(w) = unconstrained_ca_warning(&c.server.tls_cert) {
                tracing::warn!("{w}");
            }
        }
        for (kind, addr) in daemon.local_addrs() {
            let scheme = match kind {
                server::ListenerKind::Http => "http",
                server::ListenerKind::Https => "https",
            };
            tracing::info!("listening on {scheme}://{addr}");
        }
        // SIGHUP reloads `[[policy]]` from the same file (and environment) as at start.
        let daemon = daemon.reload_policy_with(move || {
            sparkcr_edge::config::load(reload_from.config.as_deref())
                .map(|l| l.config)
                .map_err(|e| e.to_string())
        });
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
    // The policy as the daemon compiles it: its globs, and the keys require_signature names.
    super::load_policy(&loaded)?;
    let c = &loaded.config;
    if !c.server.tls_listen.is_empty() {
        server::tls::load_certified_key(&c.server.tls_cert, &c.server.tls_key).map_err(|e| {
            Failure::Config(format!(
                "{}: server.tls_cert/server.tls_key: {e}",
                loaded.origin
            ))
        })?;
    }
    if !c.server.tls_listen.is_empty() {
        if let Some(w) = unconstrained_ca_warning(&c.server.tls_cert) {
            eprintln!("warning: {w}");
        }
    }
    if let Some(w) = world_readable_secrets(&loaded.origin, c) {
        eprintln!("warning: {w}");
    }
    if !quiet {
        print!("{}", c.to_redacted_toml());
        eprintln!("config OK ({})", loaded.origin);
    }
    Ok(())
}

/// A warning when the config file is readable by every user and holds secrets inline.
fn world_readable_secrets(
    origin: &sparkcr_edge::config::ConfigOrigin,
    c: &sparkcr_edge::config::Config,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let sparkcr_edge::config::ConfigOrigin::File(path) = origin else {
        return None;
    };
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    let keys = c.inline_secret_keys();
    if mode & 0o004 == 0 || keys.is_empty() {
        return None;
    }
    Some(format!(
        "{} is readable by every user and holds secrets inline ({}): move them to files only root and the service can read (password_file, secret_access_key_file, token_file; chmod 0640, chown root:sparkcr-edge), or make the config itself 0640 root:sparkcr-edge",
        path.display(),
        keys.join(", ")
    ))
}

/// Whether systemd started this process (it sets `INVOCATION_ID` for every unit).
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}
