//! The `sparkcr-edge` command: parses the command line and dispatches to the command's
//! module under `cli/`, then maps its failure to an exit code: 0 ok, 2 usage or config
//! error, 1 runtime failure.
//!
//! Must not: hold a command's body, a flag or a rule; the grammar is `cli/args.rs`, each
//! command lives in `cli/`, and domain rules live in the library.

mod cli;

use clap::Parser;
use cli::args::{Cli, Command};
use std::process::ExitCode;

fn main() -> ExitCode {
    // First thing: the process-wide TLS crypto provider (ring), for rustls and reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => cli::serve::serve(&config),
        Command::CheckConfig { config, quiet } => cli::serve::check_config(&config, quiet),
        Command::Cache { command } => cli::store::cache(command),
        Command::Import {
            config,
            bundle,
            replace_tags,
            dry_run,
        } => cli::store::import(
            &config,
            &bundle,
            sparkcr_edge::bundle::ImportOptions {
                replace_tags,
                dry_run,
            },
        ),
        Command::Prefetch {
            images,
            concurrency,
        } => cli::images::prefetch(&images, concurrency),
        Command::Export { images, out } => cli::images::export(&images, &out),
        Command::Tls { command } => cli::setup::tls(command),
        Command::Token { command } => cli::setup::token(command),
        Command::ClientConfig(args) => cli::setup::client_config(&args),
        Command::Audit(args) => cli::audit::run(&args),
        Command::Policy { command } => cli::policy::run(command),
        Command::Generate { what, out } => cli::generate::run(what, &out),
        Command::Doctor {
            edge,
            image,
            ca,
            offline,
            root,
        } => cli::doctor::run(&edge, image.as_deref(), ca, offline, root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
