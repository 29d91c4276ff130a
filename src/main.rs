//! The `sparkcr-edge` command: parses the command line, loads the config, and runs the
//! daemon or one of the maintenance commands. Exit codes: 0 ok, 2 usage or config error,
//! 1 runtime failure.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sparkcr_edge::config::{self, Config, LogFormat};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::registry::{RegistryApi, UpstreamTable};
use sparkcr_edge::server::{self, App, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "sparkcr-edge",
    version,
    about = "Pull-through cache for container registries on a LAN"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file [default: /etc/sparkcr-edge/config.toml if it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ConfigArg),
    /// Check the config and print the effective config (secrets redacted).
    CheckConfig(ConfigArg),
}

/// A failure and the exit code it maps to.
enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    // First thing: the process-wide TLS crypto provider (ring), for rustls and reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(&a),
        Command::CheckConfig(a) => check_config(&a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("sparkcr-edge: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("sparkcr-edge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(a: &ConfigArg) -> Result<config::LoadedConfig, Failure> {
    config::load(a.config.as_deref()).map_err(|e| Failure::Config(e.to_string()))
}

fn check_config(a: &ConfigArg) -> Result<(), Failure> {
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
    print!("{}", c.to_redacted_toml());
    eprintln!("config OK ({})", loaded.origin);
    Ok(())
}

fn init_logging(c: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&c.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match c.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

fn serve(a: &ConfigArg) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = loaded.config;
    init_logging(&c);
    tracing::info!(config = %loaded.origin, version = env!("CARGO_PKG_VERSION"), "starting sparkcr-edge");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sparkcr-edge")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let cache = Arc::new(sparkcr_edge::cache::Cache::default());
        let api = RegistryApi::new(UpstreamTable::from_config(&c), cache);
        let app = Arc::new(App::new(api, metrics));
        let server = Server::bind(&c.server, app.clone())
            .await
            .map_err(|e| match e {
                server::ServerError::Tls(t) => Failure::Config(format!(
                    "{}: server.tls_cert/server.tls_key: {t}",
                    loaded.origin
                )),
                other => Failure::Runtime(other.into()),
            })?;
        for (kind, addr) in server.local_addrs() {
            let scheme = match kind {
                server::ListenerKind::Http => "http",
                server::ListenerKind::Https => "https",
            };
            tracing::info!("listening on {scheme}://{addr}");
        }
        app.set_ready(true);
        tracing::info!("ready to serve");
        let clean = server::serve_until_signalled(server, c.server.shutdown_grace.get())
            .await
            .context("cannot install signal handlers")?;
        tracing::info!(clean, "stopped");
        Ok(())
    })
}
