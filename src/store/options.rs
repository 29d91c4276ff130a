//! How a store is opened: [`StoreOptions`] (path, byte budget, chunk size, expiry) and the
//! accepted chunk sizes.
//!
//! Owns: the options, their defaults, their reading from the daemon's [`Config`] and their
//! validation. Must not: open or touch anything on disk.

use super::error::StoreError;
use crate::config::{Config, TtlFrom};
use std::path::PathBuf;
use std::time::Duration;

/// Smallest accepted chunk size.
pub const MIN_CHUNK_SIZE: usize = 64 << 10;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: usize = 64 << 20;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub path: PathBuf,
    /// Byte budget for chunk bytes + manifest bytes + reservations of fills in progress.
    pub max_size: u64,
    /// Fixed chunk size of new blobs (64 KiB ..= 64 MiB).
    pub chunk_size: usize,
    /// Expiry of blobs, manifests and tags; `None` = never expire.
    pub ttl: Option<Duration>,
    pub ttl_from: TtlFrom,
}

impl StoreOptions {
    /// A store at `path` with budget `max_size`, 4 MiB chunks and no expiry.
    pub fn new(path: impl Into<PathBuf>, max_size: u64) -> StoreOptions {
        StoreOptions {
            path: path.into(),
            max_size,
            chunk_size: DEFAULT_CHUNK_SIZE,
            ttl: None,
            ttl_from: TtlFrom::Access,
        }
    }

    /// The options the daemon's configuration asks for (`cache.ttl = 0` = no expiry).
    pub fn from_config(config: &Config) -> StoreOptions {
        let ttl = config.cache.ttl;
        StoreOptions {
            path: config.storage.path.clone(),
            max_size: config.storage.max_size.get(),
            chunk_size: usize::try_from(config.storage.chunk_size.get()).unwrap_or(usize::MAX),
            ttl: (!ttl.is_zero()).then(|| ttl.get()),
            ttl_from: config.cache.ttl_from,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(StoreError::InvalidOptions(format!(
                "chunk_size {} is outside 64KiB..=64MiB",
                self.chunk_size
            )));
        }
        if self.max_size == 0 {
            return Err(StoreError::InvalidOptions(
                "max_size is 0; give the store a byte budget".into(),
            ));
        }
        Ok(())
    }
}
