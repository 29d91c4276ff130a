//! The values the store hands out and takes in: what a caller sees of a blob, a manifest,
//! a tag. Plain data with public fields, no behaviour.
//!
//! Must not: carry index encodings (that is `codec.rs`) or any handle on the store.

use crate::oci::{Digest, RepositoryName, Tag};
use bytes::Bytes;
use std::time::SystemTime;

/// A visible blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// `upstream/repo` names it was fetched or requested through.
    pub repos: Vec<String>,
}

/// A stored manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
    pub repos: Vec<String>,
}

/// Which tag of which repository of which upstream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: String,
    pub repo: RepositoryName,
    pub tag: Tag,
}

/// What a tag pointed at, and when the upstream said so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: Digest,
    pub media_type: String,
    pub fetched_at: SystemTime,
    /// The last time the upstream confirmed the tag (equals `fetched_at` at first).
    pub validated_at: SystemTime,
    /// The digests the tag has pointed at as the edge saw it, oldest first, the last being
    /// `digest` (at most [`TAG_HISTORY`]). Empty means `digest` alone, first seen at
    /// `fetched_at`. Cooldowns read it.
    pub seen: Vec<SeenDigest>,
}

/// Digests a tag record remembers at most (older ones are forgotten first).
pub const TAG_HISTORY: usize = 16;

/// A digest a tag pointed at, and when the edge first saw the tag point there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenDigest {
    pub digest: Digest,
    pub first_seen: SystemTime,
    /// An admin released it from a cooldown before its time (`policy release`).
    pub released: bool,
}
