//! `[[policy]]`: which repositories may be pulled through the edge at all. Blocks are
//! read in order and the first whose `upstream` and `match` fit a request decides it
//! (`action = "allow"` or `"deny"`); a request no block fits is allowed.
//!
//! Owns: the blocks' schema and their rules (a configured upstream or `"*"`, globs that
//! compile, names that are unique). Must not: match requests (that is `crate::policy`).

use super::error::{ConfigError, ConfigOrigin};
use super::units::HumanDuration;
use super::Config;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One `[[policy]]` block.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// How messages and the audit trail name the block (default `policy[N]`, N from 0).
    #[serde(default)]
    pub name: Option<String>,
    /// The upstream it applies to (its configured name), or `"*"` for every upstream.
    pub upstream: String,
    /// Globs over repository names as the upstream knows them (Docker Hub's official
    /// images are `library/<name>`): `*` stays within one path segment, `**` crosses
    /// them, `?` is one character, `{a,b}` either. Default: every repository.
    #[serde(rename = "match", default = "every_repository")]
    pub matches: Vec<String>,
    /// What a request this block fits gets.
    pub action: PolicyAction,
    /// Allowed blocks only: a tag whose newest digest the edge first saw less than this
    /// long ago keeps resolving to the digest before it (see [`CooldownMode`] for a tag
    /// with none).
    #[serde(default)]
    pub cooldown: Option<HumanDuration>,
    /// With `cooldown`: what a tag with no earlier digest gets while its newest cools down
    /// (default `"open"`: served).
    #[serde(default)]
    pub mode: Option<CooldownMode>,
    /// Allowed blocks only: public key files (PEM; ECDSA P-256 or Ed25519). A tag then
    /// resolves only to a manifest signed by one of them (cosign's simple signing), and a
    /// by-digest pull only to a manifest such a signature covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_signature: Vec<PathBuf>,
}

/// What a tag with no digest past its cooldown gets.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum CooldownMode {
    /// The newest digest is served (a fresh edge serves what it is asked for).
    #[default]
    Open,
    /// Refused (`DENIED`, saying when it will be allowed) until the digest has cooled down.
    Closed,
}

impl TryFrom<String> for CooldownMode {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "open" => Ok(CooldownMode::Open),
            "closed" => Ok(CooldownMode::Closed),
            other => Err(format!("expected \"open\" or \"closed\", got {other:?}")),
        }
    }
}

/// What an allowing block with a `cooldown` asks of a tag's new digests, as the cache
/// applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CooldownRule {
    /// The block's name (refusals name it).
    pub block: Arc<str>,
    /// How long a digest first seen through a tag is held back.
    pub period: Duration,
    pub mode: CooldownMode,
}

fn every_repository() -> Vec<String> {
    vec!["**".into()]
}

/// A block's decision.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum PolicyAction {
    Allow,
    Deny,
}

impl TryFrom<String> for PolicyAction {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "allow" => Ok(PolicyAction::Allow),
            "deny" => Ok(PolicyAction::Deny),
            other => Err(format!("expected \"allow\" or \"deny\", got {other:?}")),
        }
    }
}

impl PolicyConfig {
    /// The block's name in messages: its `name`, else `policy[index]`.
    pub fn display_name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("policy[{index}]"))
    }

    /// The block's cooldown as the cache applies it (`None` without one).
    pub fn cooldown_rule(&self, index: usize) -> Option<CooldownRule> {
        let period = self.cooldown.filter(|c| !c.is_zero())?.get();
        Some(CooldownRule {
            block: self.display_name(index).into(),
            period,
            mode: self.mode.unwrap_or_default(),
        })
    }
}

/// A glob as policy matching compiles it (the one place both agree on the syntax).
pub fn compile_glob(glob: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
}

pub(super) fn validate_policy(c: &Config, origin: &ConfigOrigin) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, p) in c.policy.iter().enumerate() {
        let key = |k: &str| format!("policy[{i}].{k}");
        if p.upstream != "*" && !c.upstream.iter().any(|u| u.name == p.upstream) {
            let known: Vec<&str> = c.upstream.iter().map(|u| u.name.as_str()).collect();
            return Err(ConfigError::at(
                origin,
                key("upstream"),
                format!(
                    "no upstream is named {:?}: use one of {} or \"*\" for every upstream",
                    p.upstream,
                    known.join(", ")
                ),
            ));
        }
        if p.matches.is_empty() {
            return Err(ConfigError::at(
                origin,
                key("match"),
                "expected at least one glob, such as [\"library/*\"] (leave the key out to match every repository)",
            ));
        }
        for g in &p.matches {
            if let Err(e) = compile_glob(g) {
                return Err(ConfigError::at(
                    origin,
                    key("match"),
                    format!("{g:?} is not a glob: {}", e.kind()),
                ));
            }
        }
        if let Some(n) = &p.name {
            if n.trim().is_empty() || n.len() > 64 || n.chars().any(char::is_control) {
                return Err(ConfigError::at(
                    origin,
                    key("name"),
                    "expected a short name of printable characters (at most 64)",
                ));
            }
        }
        if !p.require_signature.is_empty() && p.action == PolicyAction::Deny {
            return Err(ConfigError::at(
                origin,
                key("require_signature"),
                "require_signature belongs on a block with action = \"allow\" (a deny block refuses every pull it fits)",
            ));
        }
        for path in &p.require_signature {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::at(
                    origin,
                    key("require_signature"),
                    format!(
                        "cannot read the public key {}: {e} (a PEM \"PUBLIC KEY\", ECDSA P-256 or Ed25519, such as cosign.pub)",
                        path.display()
                    ),
                ));
            }
        }
        match (p.action, p.cooldown, p.mode) {
            (PolicyAction::Deny, Some(_), _) | (PolicyAction::Deny, _, Some(_)) => {
                return Err(ConfigError::at(
                    origin,
                    key(if p.cooldown.is_some() { "cooldown" } else { "mode" }),
                    "a cooldown belongs on a block with action = \"allow\" (a deny block refuses every pull it fits)",
                ))
            }
            (_, Some(c), _) if c.is_zero() => {
                return Err(ConfigError::at(
                    origin,
                    key("cooldown"),
                    "expected a duration longer than zero, such as \"24h\" (leave the key out for no cooldown)",
                ))
            }
            (_, None, Some(_)) => {
                return Err(ConfigError::at(
                    origin,
                    key("mode"),
                    "mode says what a cooldown does with a tag that has no earlier digest: set cooldown too, such as cooldown = \"24h\"",
                ))
            }
            _ => {}
        }
        if !names.insert(p.display_name(i)) {
            return Err(ConfigError::at(
                origin,
                key("name"),
                format!(
                    "another policy block is already named {:?}",
                    p.display_name(i)
                ),
            ));
        }
    }
    Ok(())
}
