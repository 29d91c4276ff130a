//! Cache policy between the API and the bytes (being built: this first version answers
//! only from nothing and reports every upstream as unreachable).

use crate::oci::{Digest, Reference};
use crate::registry::range::ByteRangeSpec;
use crate::registry::RepoTarget;
use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;

pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

pub struct ManifestAnswer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// `None` for HEAD.
    pub bytes: Option<Bytes>,
}

pub struct BlobAnswer {
    pub digest: Digest,
    pub size: u64,
    /// Half-open byte range served.
    pub range: (u64, u64),
    pub partial: bool,
    /// `None` for HEAD.
    pub body: Option<BlobStream>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("manifest {0} is unknown")]
    ManifestUnknown(String),
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    #[error("{0}")]
    NameUnknown(String),
    #[error("range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("upstream {upstream} is unreachable: {detail}")]
    Unavailable { upstream: String, detail: String },
    #[error("{0}")]
    Denied(String),
    #[error("internal: {0}")]
    Internal(String),
}

#[derive(Default)]
pub struct Cache {}

impl Cache {
    pub async fn manifest(
        &self,
        target: &RepoTarget,
        _reference: &Reference,
        _accept: &[String],
        _head: bool,
    ) -> Result<ManifestAnswer, CacheError> {
        Err(CacheError::Unavailable {
            upstream: target.upstream.clone(),
            detail: "pull-through not built yet".into(),
        })
    }

    pub async fn blob(
        &self,
        target: &RepoTarget,
        _digest: &Digest,
        _range: Option<ByteRangeSpec>,
        _head: bool,
    ) -> Result<BlobAnswer, CacheError> {
        Err(CacheError::Unavailable {
            upstream: target.upstream.clone(),
            detail: "pull-through not built yet".into(),
        })
    }

    pub async fn tags_list(
        &self,
        target: &RepoTarget,
        _query: Option<&str>,
    ) -> Result<Bytes, CacheError> {
        Err(CacheError::Unavailable {
            upstream: target.upstream.clone(),
            detail: "pull-through not built yet".into(),
        })
    }

    pub async fn catalog(&self) -> Result<Vec<String>, CacheError> {
        Ok(Vec::new())
    }
}
