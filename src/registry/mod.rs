//! The OCI distribution API: the read API (spec 1.1: manifests, blobs, tag lists,
//! referrers, the catalog) for every upstream, and the push API for upstreams with
//! `push = true`; routing, access as the protocol wants it, references, Range, Accept,
//! and OCI errors.
//!
//! Owns: every request under `/v2` and `/token`, through four phases (`api.rs`):
//! authenticate, route, authorize (`door.rs`: the [`crate::access`] answers as the
//! protocol wants them: `401` with a Bearer challenge only, `403 DENIED`,
//! `429 TOOMANYREQUESTS` with `Retry-After`, the edge's own `GET /token`), then dispatch to
//! the pull side (`pull.rs`: asks the cache, a catalog filtered to what the client may
//! pull) or the push side (`push.rs`: asks the cache's push sessions). Routing of every
//! client URL form to an [`ApiRoute`] is `route.rs`; writing the answers (byte-exact
//! manifests with `Content-Type`, `Docker-Content-Digest` and `Content-Length`, streamed
//! blobs with `Range` support) is `response.rs`; every error is OCI error JSON, and the
//! cache's failures (pull and push, classified there) become OCI errors once, in
//! `error.rs`.
//!
//! Must not: open sockets or listen (that is `server`), decide or count access (that is
//! `access`), know how content is cached, fetched or pushed (that is `cache`), or reach
//! the upstream client, the store or the shared tier (only through `cache`).

pub mod accept;
mod admin;
mod api;
mod audit;
pub mod body;
mod door;
pub mod error;
mod pull;
mod push;
mod response;
pub mod route;

/// A request body as the push API reads it (the server hands every request's body over).
pub use crate::cache::push::UploadBody;
/// Re-exported for callers that know it from here; it lives in [`crate::oci`].
pub use crate::oci::RepoTarget;
pub use admin::RELEASE_PATH;
pub use api::{ApiResponse, ClientInfo, RegistryApi, TOKEN_PATH};
pub use audit::PolicyDenial;
pub use error::{ErrorCode, OciError};
pub use response::error_response;
pub use route::{ApiRoute, UpstreamTable};
