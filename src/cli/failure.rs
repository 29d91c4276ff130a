//! How a command fails: a usage or config mistake (exit 2) or a runtime failure (exit 1),
//! and how that is reported on stderr.
//!
//! Owns: [`Failure`], its exit codes and the one line it prints.
//!
//! Must not: decide which errors are usage mistakes (the error types say so themselves,
//! e.g. `SelfSignedError::is_usage_error`), or print anything but that line.

use sparkcr_edge::logging;
use std::process::ExitCode;

/// A failure and the exit code it maps to.
#[derive(Debug)]
pub enum Failure {
    /// A mistake in the command line, the config or the machine's setup that running
    /// again cannot fix (exit 2; systemd does not restart the daemon on it).
    Config(String),
    /// Anything else (exit 1).
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

impl Failure {
    /// A runtime failure with this message.
    pub fn runtime(message: impl std::fmt::Display) -> Failure {
        Failure::Runtime(anyhow::anyhow!("{message}"))
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Config(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }

    /// Prints the failure on stderr (at error priority under the journal) and returns
    /// its exit code.
    pub fn report(&self) -> ExitCode {
        match self {
            Failure::Config(msg) => eprintln!("{}sparkcr-edge: {msg}", error_prefix()),
            Failure::Runtime(e) => eprintln!("{}sparkcr-edge: {e:#}", error_prefix()),
        }
        self.exit_code()
    }
}

/// `<3>` (error priority) when stderr is the journal, so `journalctl -p err` shows why the
/// command failed.
fn error_prefix() -> &'static str {
    if logging::stderr_is_journal() {
        "<3>"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_mistakes_exit_2_and_runtime_failures_exit_1() {
        assert_eq!(Failure::Config("x".into()).exit_code(), ExitCode::from(2));
        assert_eq!(Failure::runtime("x").exit_code(), ExitCode::from(1));
    }
}
