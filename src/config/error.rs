//! What a config mistake is: [`ConfigError`], one line naming the file ([`ConfigOrigin`]),
//! the key and what was expected. Read by loading (`load.rs`) and by the checks of each
//! section (`tiers.rs`, ...), so that neither imports the other for it.
//!
//! Must not: load, parse or check anything.

use std::fmt;
use std::path::PathBuf;

/// Where the file layer of a config came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// No file: the embedded default (plus environment overrides).
    Embedded,
    File(PathBuf),
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigOrigin::Embedded => f.write_str("<embedded default config>"),
            ConfigOrigin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A config mistake, rendered as one line: `<file>: <key>: <what was expected>`.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {key}{sep}{message}", sep = if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(super) fn at(
        origin: &ConfigOrigin,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            origin: origin.to_string(),
            key: key.into(),
            message: one_line(&message.into()),
        }
    }
}

pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
