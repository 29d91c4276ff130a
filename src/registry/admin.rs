//! The admin API's actions on a running daemon (its store is locked while it runs, so the
//! CLI asks the daemon): `POST /admin/v1/policy/release` releases a digest (or a tag's
//! newest digest) from `[[policy]]` cooldowns early.
//!
//! Owns: reading an action's JSON, naming its upstream through the routing table, and the
//! JSON answer. Must not: check who asks (the server lets only `auth.admin_cidrs` and
//! `admin` tokens reach it) or touch the store (the cache does).

use super::api::RegistryApi;
use super::body::ResponseBody;
use super::error::{ErrorCode, OciError, Subject};
use super::response::{error_response, json_response};
use crate::oci::{Reference, RepoTarget, RepositoryName};
use http::{Response, StatusCode};

/// Where the CLI's `policy release` posts.
pub const RELEASE_PATH: &str = "/admin/v1/policy/release";

/// The body of a release.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseRequest {
    /// A configured upstream's name or its registry host (`docker.io`, `ghcr.io`).
    upstream: String,
    repository: String,
    /// A digest, or a tag (its newest digest is released).
    reference: String,
    /// Why (logged with the release).
    reason: String,
}

impl RegistryApi {
    /// `POST /admin/v1/policy/release` with a JSON [`ReleaseRequest`]: `200` with the
    /// digest and the tags it was released in, or an OCI error.
    pub fn release_from_cooldown(&self, body: &[u8]) -> Response<ResponseBody> {
        match self.release(body) {
            Ok(json) => json_response(StatusCode::OK, json.to_string().into(), false),
            Err(e) => error_response(&e, false),
        }
    }

    fn release(&self, body: &[u8]) -> Result<serde_json::Value, OciError> {
        let bad = |m: String| OciError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, m);
        let req: ReleaseRequest = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "expected a JSON object with upstream, repository, reference and reason: {e}"
            ))
        })?;
        if req.reason.trim().is_empty() {
            return Err(bad(
                "a release needs a reason (it is logged with the release)".into(),
            ));
        }
        let upstream = self.table.find(&req.upstream).ok_or_else(|| {
            OciError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NameUnknown,
                format!(
                    "no upstream of this edge is named {:?}: use one of {}",
                    req.upstream,
                    self.table.names().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        let repo: RepositoryName = req.repository.parse().map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::NameInvalid,
                format!("{:?} is not a repository name: {e}", req.repository),
            )
        })?;
        let reference: Reference = req.reference.parse().map_err(|e| {
            bad(format!(
                "{:?} is neither a tag nor a digest: {e}",
                req.reference
            ))
        })?;
        let target = RepoTarget {
            upstream: upstream.to_string(),
            repo,
        };
        let (digest, tags) = self
            .cache
            .release_from_cooldown(&target, &reference, req.reason.trim())
            .map_err(|e| OciError::from_cache(e, Subject::Manifest))?;
        Ok(serde_json::json!({
            "upstream": target.upstream,
            "repository": target.repo.as_str(),
            "digest": digest.to_string(),
            "tags": tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        }))
    }
}
