//! OCI value types shared by every layer: content digests, repository names, tags and
//! references, Docker Hub's naming rules (its synonyms and `library/`), the manifest media
//! types we recognise, routing targets (upstream + repository) with their store key, and
//! byte ranges.
//!
//! Raw strings from the network, the disk or the user become these types at the edge
//! ("parse, don't validate"); once you hold a [`Digest`] or a [`RepositoryName`] it is
//! known to follow the OCI distribution spec grammar. This module imports nothing from the
//! rest of the crate and does no I/O.

mod digest;
mod docker_hub;
mod media;
mod name;
mod range;
mod target;

pub use digest::{Digest, DigestError, Sha256Verifier};
pub use docker_hub::{canonical_registry, repository_on, split_registry, DOCKER_HUB};
pub use media::{is_manifest_media_type, manifest_media_type, MANIFEST_MEDIA_TYPES};
pub use name::{NameError, Reference, RepositoryName, Tag};
pub use range::{ByteRangeSpec, Unsatisfiable};
pub use target::{RepoKey, RepoTarget};
