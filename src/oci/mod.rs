//! OCI value types shared by every layer: content digests, repository names, tags and
//! references, Docker Hub's naming rules (its synonyms and `library/`), the manifest media
//! types we recognise, routing targets (upstream + repository) with their store key, and
//! byte ranges.
//!
//! Raw strings from the network, the disk or the user become these types at the edge
//! ("parse, don't validate"); once you hold a [`Digest`] or a [`RepositoryName`] it is
//! known to follow the OCI distribution spec grammar. This module imports nothing from the
//! rest of the crate and does no I/O. (`hops` also holds the task-local `Via` chain of the
//! request being served, which the registry, the cache and the upstream client share.)

mod digest;
mod docker_hub;
pub mod hops;
mod media;
mod name;
mod range;
pub mod signature;
mod target;

pub use digest::{Digest, DigestError, Sha256Verifier};
pub use docker_hub::{canonical_registry, repository_on, split_registry, DOCKER_HUB};
pub use media::{
    default_platform_manifest, index_manifests, is_manifest_media_type, manifest_media_type,
    tag_accept, IndexEntry, INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES,
};
pub use name::{NameError, Reference, RepositoryName, Tag};
pub use range::{BlobSpan, ByteRangeSpec, Unsatisfiable};
pub use target::{RepoKey, RepoTarget};
