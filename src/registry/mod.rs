//! The OCI distribution read API: routing, references, Range, Accept, and OCI errors.
//!
//! Owns: turning an HTTP request under `/v2` into an [`ApiRoute`] (which upstream, which
//! repository, which endpoint), asking the cache layer for the content, and writing the
//! registry's answer: byte-exact manifests with `Content-Type`, `Docker-Content-Digest` and
//! `Content-Length`, streamed blobs with `Range` support, and every error as OCI error
//! JSON with its status. Cache errors are mapped to OCI errors here, once. It also applies
//! the [`crate::access`] decisions as the registry protocol wants them: `401` with a
//! Bearer challenge only (Docker fails anonymous pulls when Basic is offered beside it),
//! `403 DENIED`, `429 TOOMANYREQUESTS` with `Retry-After`, the edge's own `GET /token`
//! endpoint, and a catalog filtered to what the client may pull.
//!
//! Must not: open sockets or listen (that is `server`), or know how content is cached or
//! fetched (that is `cache`).

pub mod accept;
mod api;
pub mod body;
pub mod error;
pub mod route;
mod upload;

/// Re-exported for callers that know it from here; it lives in [`crate::oci`].
pub use crate::oci::RepoTarget;
pub use api::{error_response, ApiResponse, ClientInfo, RegistryApi, ServedRepo, TOKEN_PATH};
pub use error::{ErrorCode, OciError};
pub use route::{ApiRoute, UpstreamTable};
