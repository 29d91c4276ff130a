//! The pull side of the API: `/v2/`, manifests, blobs (with `Range`), tag lists (with
//! `n`, `last` and `Link`), referrers, and the catalog filtered to what the client may
//! pull; each answered through the cache and built by `response.rs`.
//!
//! Owns: reading what a pull asks for (`Accept`, `Range`, the peer header, the tag list's
//! query) and asking the cache once. Must not: check access (an [`Authorized`] request
//! reached it), or know how content is cached or fetched (that is `cache`).
//!
//! [`Authorized`]: super::door::Authorized

use super::accept::accepted_media_types;
use super::api::{ApiResponse, RegistryApi};
use super::audit::{GateDecision, PolicyDenial};
use super::body::ResponseBody;
use super::door::Incoming;
use super::error::{ErrorCode, OciError, Subject};
use super::response::{
    blob_response, error_response, json_response, manifest_response, mark_stale, referrers_response,
};
use super::route::{decoded_query_param, ApiRoute};
use crate::access::Identity;
use crate::cache::{CacheError, PullRules, Requester, PEER_HEADER};
use crate::oci::{ByteRangeSpec, RepoKey, RepoTarget};
use http::{header, HeaderValue, Response, StatusCode};

impl RegistryApi {
    /// An authorized request of the pull side.
    pub(super) async fn pull(
        &self,
        at: &Incoming<'_>,
        who: &Identity,
        routed: ApiRoute,
        rules: &PullRules,
    ) -> ApiResponse {
        let (req, head) = (at.req, at.head);
        let (label, result) = match routed {
            ApiRoute::Ping => ("ping", Ok(json_response(StatusCode::OK, "{}".into(), head))),
            ApiRoute::Catalog => ("catalog", self.catalog(who, head).await),
            ApiRoute::TagsList {
                target,
                client_name,
            } => (
                "tags",
                self.tags_list(&target, &client_name, &req.uri, head).await,
            ),
            ApiRoute::Referrers {
                target,
                subject,
                artifact_type,
            } => (
                "referrers",
                self.cache
                    .referrers(&target, &subject, artifact_type.as_deref())
                    .await
                    .map(|a| referrers_response(a, head))
                    .map_err(|e| OciError::from_cache(e, Subject::Repository)),
            ),
            ApiRoute::Manifest { target, reference } => {
                let accept = accepted_media_types(&req.headers);
                let answer = self
                    .cache
                    .manifest_under(&target, &reference, &accept, head, rules)
                    .await;
                // The trust gate's decision goes to the audit trail, served or refused.
                let (decision, denial) = match &answer {
                    Ok(a) => (a.decision.clone(), None),
                    Err(CacheError::PolicyRefused {
                        block,
                        check,
                        message,
                    }) => {
                        let routed = ApiRoute::Manifest {
                            target: target.clone(),
                            reference: reference.clone(),
                        };
                        (
                            Some(format!("DENIED: {message}").into()),
                            PolicyDenial::of(&routed, block, check, message),
                        )
                    }
                    Err(_) => (None, None),
                };
                let mut response = match answer {
                    Ok(a) => manifest_response(a, head),
                    Err(e) => error_response(&OciError::from_cache(e, Subject::Manifest), head),
                };
                if let Some(d) = decision {
                    response.extensions_mut().insert(GateDecision(d));
                }
                if let Some(d) = denial {
                    response.extensions_mut().insert(d);
                }
                ("manifest", Ok(response))
            }
            ApiRoute::Upload { .. } => ("push", Err(OciError::unsupported_method(&req.method))),
            ApiRoute::Blob { target, digest } => {
                let range = req
                    .headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(ByteRangeSpec::parse);
                // Another edge of the cluster filling from this one (never forwarded again).
                let requester = if req.headers.contains_key(PEER_HEADER) {
                    Requester::Peer
                } else {
                    Requester::Client
                };
                let answer = self
                    .cache
                    .blob_for(&target, &digest, range, head, requester)
                    .await;
                (
                    "blob",
                    answer
                        .map(blob_response)
                        .map_err(|e| OciError::from_cache(e, Subject::Blob)),
                )
            }
        };
        let response = result.unwrap_or_else(|e| error_response(&e, head));
        ApiResponse {
            response,
            route: label,
        }
    }

    /// `tags/list` as the spec's "Listing Tags" asks: `name` as the client wrote it, sorted
    /// tags, `n` and `last` applied here on the complete list, and a `Link` to the next
    /// page in the client's own URL form (its path, and its `ns` parameter if it sent one).
    async fn tags_list(
        &self,
        target: &RepoTarget,
        client_name: &str,
        uri: &http::Uri,
        head: bool,
    ) -> Result<Response<ResponseBody>, OciError> {
        let query = uri.query();
        let n = match decoded_query_param(query, "n").filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Unsupported,
                    "the n parameter of tags/list must be a non-negative integer",
                )
            })?),
        };
        let last = decoded_query_param(query, "last").filter(|v| !v.is_empty());
        let list = self
            .cache
            .tags_list(target)
            .await
            .map_err(|e| OciError::from_cache(e, Subject::Repository))?;
        let after: Vec<&String> = list
            .tags
            .iter()
            .filter(|t| last.as_ref().is_none_or(|l| t.as_str() > l.as_str()))
            .collect();
        let page: Vec<&String> = after
            .iter()
            .copied()
            .take(n.unwrap_or(usize::MAX))
            .collect();
        let more = n.is_some_and(|n| n > 0 && after.len() > n);
        let body = serde_json::json!({ "name": client_name, "tags": page }).to_string();
        let mut response = json_response(StatusCode::OK, body.into(), head);
        let headers = response.headers_mut();
        if let (true, Some(n), Some(last_tag)) = (more, n, page.last()) {
            let mut next = format!("{}?n={n}&last={last_tag}", uri.path());
            if let Some(ns) = decoded_query_param(query, "ns").filter(|v| !v.is_empty()) {
                next.push_str(&format!("&ns={ns}"));
            }
            if let Ok(v) = HeaderValue::from_str(&format!("<{next}>; rel=\"next\"")) {
                headers.insert(header::LINK, v);
            }
        }
        if list.stale {
            mark_stale(&mut response);
        }
        Ok(response)
    }

    async fn catalog(
        &self,
        who: &Identity,
        head: bool,
    ) -> Result<Response<ResponseBody>, OciError> {
        let mut repos = self
            .cache
            .catalog()
            .await
            .map_err(|e| OciError::from_cache(e, Subject::Repository))?;
        // Only what this client could pull: private repository names stay private.
        repos.retain(|r| {
            let key = RepoKey::from_stored(r.as_str());
            !key.repo().is_empty() && self.access.may_pull(who, key.upstream())
        });
        let body = serde_json::json!({ "repositories": repos }).to_string();
        Ok(json_response(StatusCode::OK, body.into(), head))
    }
}
