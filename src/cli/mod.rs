//! The binary's layer: the command-line grammar ([`args`]) and one module per command (or
//! per group of small commands) that turns parsed arguments into calls on the library and
//! prints the outcome. `main.rs` only parses, dispatches and maps a [`Failure`] to an exit
//! code.
//!
//! Owns: what each command prints and which failures are usage mistakes (exit 2) rather
//! than runtime failures (exit 1); the helpers every command shares (loading the config,
//! logging, a small async runtime).
//!
//! Must not: hold domain rules (name normalisation, config formats, store policy): those
//! live in the library, which this layer only calls through its public interface.

pub mod args;
pub mod audit;
pub mod doctor;
pub mod failure;
pub mod generate;
pub mod images;
pub mod policy;
pub mod serve;
pub mod setup;
pub mod store;

pub use failure::Failure;

use args::ConfigArg;
use sparkcr_edge::config::{self, Config};
use sparkcr_edge::logging;

/// The config named by `--config` (or the default one), for the commands that serve or
/// check it: every file it names must be readable; a config mistake exits 2.
fn load_config(a: &ConfigArg) -> Result<config::LoadedConfig, Failure> {
    config::load(a.config.as_deref()).map_err(|e| Failure::Config(e.to_string()))
}

/// The config, for the commands that never use the server's TLS pair (`client-config`,
/// `prefetch`, `export`, `import`, `cache …`): on a packaged box `key.pem` is readable by
/// root and the service user only, and an admin running these must not need it.
fn load_config_without_tls_pair(a: &ConfigArg) -> Result<config::LoadedConfig, Failure> {
    config::load_checked(a.config.as_deref(), config::FileChecks::AllButTlsPair)
        .map_err(|e| Failure::Config(e.to_string()))
}

/// The config's `[[policy]]`, compiled as the daemon compiles it (a glob that does not
/// compile is a config mistake, exit 2).
fn load_policy(loaded: &config::LoadedConfig) -> Result<sparkcr_edge::policy::Policy, Failure> {
    sparkcr_edge::policy::Policy::from_config(&loaded.config.policy)
        .map_err(|e| Failure::Config(format!("{}: {e}", loaded.origin)))
}

/// The command's logging, as the config sets it up; logs until the guard is dropped.
fn init_logging(c: &Config) -> logging::LogGuard {
    logging::init(&c.log)
}

/// A single-threaded runtime for the commands that talk to a running edge.
fn small_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::runtime(format!("cannot start the async runtime: {e}")))
}
