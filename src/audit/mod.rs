//! The audit trail: one record per client request for a manifest or a blob — who asked,
//! from where, for which upstream, repository, tag and the digest it resolved to, what the
//! cache did, what was sent and how it ended, and any access decision — written to an
//! optional JSON-lines file with size-based rotation ([`AuditFile`]) and read back by
//! `sparkcr-edge audit` ([`query`]), which works on the files while the daemon runs.
//!
//! `registry` fills a request's [`AuditSubject`] (it knows the route, the identity and the
//! answer); `server` completes it into an [`AuditRecord`] once the body ends (it knows the
//! client, the bytes sent and the duration) and hands it to the file.
//!
//! Owns: the record's fields and their JSON form, the file's writing, rotation and reading.
//! Must not: decide what is audited or what a request may do (the registry does), or hold
//! a secret: a record names a token by its name only.
//!
//! Beside the leaves: imports nothing of the crate but `oci` (Docker Hub's name).

mod file;
pub mod query;

pub use file::{AuditFile, AuditFileError, AuditFileSettings};

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// What a request asked for: a manifest or a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Manifest,
    Blob,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Manifest => "manifest",
            SubjectKind::Blob => "blob",
        }
    }
}

/// What the registry knows of an audited request: set in the response's extensions and
/// completed by the server into an [`AuditRecord`].
#[derive(Clone, Debug, PartialEq)]
pub struct AuditSubject {
    pub kind: SubjectKind,
    /// The token's name, or `-` for an anonymous client.
    pub who: String,
    pub upstream: String,
    pub repository: String,
    /// The tag asked for (a manifest by tag).
    pub tag: Option<String>,
    /// The digest asked for, or the one the tag resolved to.
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// The request's `Range`, as sent.
    pub range: Option<String>,
    /// What the cache did: `hit`, `miss`, `collapsed`, `stale`, `quota-reserve`,
    /// `denied`, `unreachable`.
    pub cache: Option<&'static str>,
    /// An access decision that refused the request, in words.
    pub decision: Option<String>,
}

/// What the server knows of a request when its response body ended.
pub struct RequestFacts<'a> {
    pub at: SystemTime,
    pub client: std::net::IpAddr,
    pub user_agent: Option<&'a str>,
    pub method: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub seconds: f64,
    /// `complete`, `aborted` (the body failed) or `incomplete` (the client left).
    pub result: &'static str,
}

/// Longest user agent kept in a record.
const MAX_USER_AGENT: usize = 256;

/// One audited request, as a line of the audit file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, with milliseconds.
    pub time: String,
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub who: String,
    pub method: String,
    pub kind: SubjectKind,
    pub upstream: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    pub status: u16,
    pub bytes: u64,
    pub ms: f64,
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
}

impl AuditSubject {
    /// The record of this request.
    pub fn into_record(self, facts: &RequestFacts<'_>) -> AuditRecord {
        AuditRecord {
            time: humantime::format_rfc3339_millis(facts.at).to_string(),
            client: facts.client.to_string(),
            user_agent: facts.user_agent.map(printable),
            who: self.who,
            method: facts.method.chars().take(16).collect(),
            kind: self.kind,
            upstream: self.upstream,
            repository: self.repository,
            tag: self.tag,
            digest: self.digest,
            media_type: self.media_type,
            range: self.range,
            cache: self.cache.map(str::to_string),
            status: facts.status,
            bytes: facts.bytes,
            ms: (facts.seconds * 10_000.0).round() / 10.0,
            result: facts.result.to_string(),
            decision: self.decision,
        }
    }
}

impl AuditRecord {
    /// When the request ended, if the record's time parses.
    pub fn at(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }

    /// `tag@digest`, the tag or the digest: what the request named and got.
    pub fn reference(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => format!("{t}@{d}"),
            (Some(t), None) => t.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => "-".into(),
        }
    }
}

/// A header value as a record keeps it: at most [`MAX_USER_AGENT`] characters, control
/// characters replaced.
fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_USER_AGENT)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
