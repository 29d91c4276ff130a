//! The API handler: one request in, one response out.

use super::accept::accepted_media_types;
use super::body::{self, ResponseBody};
use super::error::{OciError, Subject};
use super::route::{decoded_query_param, route, ApiRoute, RequestParts, UpstreamTable};
use crate::access::{Access, Action, Decision, DenyReason, Identity, BASIC_REALM, SERVICE};
use crate::cache::push::{Pushes, UploadBody};
use crate::cache::{
    BlobAnswer, Cache, CacheError, ManifestAnswer, ReferrersAnswer, Requester, PEER_HEADER,
    REFERRERS_MEDIA_TYPE,
};
use crate::oci::{ByteRangeSpec, RepoKey, RepoTarget};
use http::{header, HeaderName, HeaderValue, Method, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

const API_VERSION: &str = "registry/2.0";
/// Whether an answer came from the store (`HIT`) or the upstream (`MISS`).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// The digest of a manifest or blob answered or pushed.
pub(super) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
const DOCKER_API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
/// Room reserved once for a registry answer's headers (a blob answer sets 8), instead of
/// growing the map header by header.
const ANSWER_HEADERS: usize = 12;

/// The 401 message when credentials are needed and none were sent.
const LOGIN_REQUIRED: &str =
    "authentication required: this edge does not allow anonymous pulls; log in (docker login / podman login) with a token secret as the password";

fn cache_status(from_cache: bool) -> &'static str {
    if from_cache {
        "HIT"
    } else {
        "MISS"
    }
}

/// A response plus the route label metrics and logs use.
pub struct ApiResponse {
    pub response: Response<ResponseBody>,
    pub route: &'static str,
}

pub struct RegistryApi {
    table: UpstreamTable,
    cache: Arc<Cache>,
    access: Arc<Access>,
    /// The push side, when any upstream has `push = true`.
    pushes: Option<Arc<Pushes>>,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// It arrived over TLS (the bearer realm is then `https://`).
    pub tls: bool,
}

/// The path of the edge's own token endpoint (the bearer realm).
pub const TOKEN_PATH: &str = "/token";

fn refused(e: OciError, head: bool, route: &'static str) -> ApiResponse {
    ApiResponse {
        response: error_response(&e, head),
        route,
    }
}

/// A `Host` value safe to put in a challenge, else `None`.
fn safe_host(h: &str) -> Option<&str> {
    (!h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
    .then_some(h)
}

/// In a manifest or blob response's extensions: the `upstream/repo` it is of (for the
/// status page's bytes served per repository).
#[derive(Clone, Debug)]
pub struct ServedRepo(pub String);

/// The `Host` header, or the `:authority` of an h2 request.
pub(super) fn request_host(req: &http::request::Parts) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

impl RegistryApi {
    pub fn new(table: UpstreamTable, cache: Arc<Cache>, access: Arc<Access>) -> Self {
        RegistryApi {
            table,
            cache,
            access,
            pushes: None,
        }
    }

    /// Takes pushes to upstreams with `push = true` through `pushes`.
    pub fn with_pushes(mut self, pushes: Arc<Pushes>) -> Self {
        self.pushes = Some(pushes);
        self
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Upstream endpoints skipped now after failures, as (upstream, endpoint URL).
    pub fn endpoints_down(&self) -> Vec<(String, String)> {
        self.cache.endpoints_down()
    }

    /// Why the shared tier is not used now, if it is configured and down.
    pub fn shared_tier_warning(&self) -> Option<String> {
        self.cache.shared_tier_warning()
    }

    /// The cache behind the API (read by the status page).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Routes a request's parts (as `handle` does): the push API routes a mount's `from`.
    pub(super) fn route(&self, parts: &RequestParts<'_>) -> Result<ApiRoute, OciError> {
        route(parts, &self.table)
    }

    /// The `WWW-Authenticate` challenge: the bearer flow against this edge's `/token`, and
    /// only that (as Docker Hub does). Docker's client tries every challenged scheme; a Basic
    /// challenge next to it makes an anonymous `docker pull` fail with "no basic auth
    /// credentials" although it already holds an anonymous bearer token. Basic credentials
    /// are still accepted on every request, so `docker login` (token endpoint) and clients
    /// that send Basic to `/v2/` both work.
    fn challenges(
        &self,
        host: Option<&str>,
        client: ClientInfo,
        scope: Option<&str>,
    ) -> Vec<String> {
        let scheme = if client.tls { "https" } else { "http" };
        let host = host.and_then(safe_host).unwrap_or(self.table.hostname());
        let mut bearer =
            format!("Bearer realm=\"{scheme}://{host}{TOKEN_PATH}\",service=\"{SERVICE}\"");
        if let Some(scope) = scope {
            bearer.push_str(&format!(",scope=\"{scope}\""));
        }
        vec![bearer]
    }

    /// One request; `body` is read only by the push API.
    pub async fn handle(
        &self,
        req: &http::request::Parts,
        body: UploadBody,
        client: ClientInfo,
    ) -> ApiResponse {
        let host = request_host(req);
        let head = req.method == Method::HEAD;
        let is_token_endpoint = req.uri.path() == TOKEN_PATH;
        let who = match self
            .access
            .authenticate(req.headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        {
            Ok(who) => who,
            Err(reason) => {
                self.access.count_denial(reason);
                let challenges = if is_token_endpoint {
                    vec![format!("Basic realm=\"{BASIC_REALM}\"")]
                } else {
                    self.challenges(host, client, None)
                };
                let e = OciError::unauthorized(
                    "invalid credentials: log in again with a valid token secret as the password",
                    challenges,
                );
                return refused(e, head, "auth");
            }
        };
        if who == Identity::Anonymous {
            if let Err(wait) = self.access.check_anonymous_rate(client.peer.ip()) {
                self.access.count_denial(DenyReason::RateLimited);
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return refused(OciError::too_many_requests(secs), head, "auth");
            }
        }
        if is_token_endpoint {
            return self.token_endpoint(&req.method, &who, head);
        }
        let parts = RequestParts {
            method: &req.method,
            host,
            path: req.uri.path(),
            query: req.uri.query(),
        };
        let routed = match route(&parts, &self.table) {
            Ok(r) => r,
            // Without anonymous access, nothing but a challenge for those without credentials.
            Err(_) if who == Identity::Anonymous && !self.access.anonymous_allowed() => {
                self.access.count_denial(DenyReason::NoCredentials);
                let e = OciError::unauthorized(LOGIN_REQUIRED, self.challenges(host, client, None));
                return refused(e, head, "auth");
            }
            Err(e) => {
                return ApiResponse {
                    response: error_response(&e, head),
                    route: "error",
                }
            }
        };
        // The push API, and a pusher's `HEAD`s (clients check what the repository has).
        let wants_push = routed.is_push(&req.method);
        let pusher = |who: &Identity| {
            routed
                .target()
                .is_some_and(|t| self.access.may_push(who, &t.upstream))
        };
        let pusher_blob_head = head && matches!(routed, ApiRoute::Blob { .. }) && pusher(&who);
        let pusher_manifest_head = head
            && matches!(routed, ApiRoute::Manifest { .. })
            && pusher(&who)
            && routed
                .target()
                .is_some_and(|t| !self.access.may_pull(&who, &t.upstream));
        let push_upstream = routed
            .target()
            .map(|t| t.upstream.as_str())
            .filter(|_| wants_push || pusher_blob_head || pusher_manifest_head);
        if let (true, Some(upstream)) = (wants_push, push_upstream) {
            if !self.access.push_enabled(upstream) || self.pushes.is_none() {
                let e = OciError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    super::ErrorCode::Unsupported,
                    format!("{} is not supported for upstream {upstream}: the edge is a read-only pull-through cache for it (pushes go only to upstreams configured with push = true)", req.method),
                );
                return refused(e, head, "push");
            }
        }
        let action = match (&routed, push_upstream) {
            (_, Some(upstream)) => Action::Push { upstream },
            (ApiRoute::Ping, _) => Action::Ping,
            (ApiRoute::Catalog, _) => Action::Catalog,
            (other, None) => match other.target() {
                Some(target) => Action::Pull {
                    upstream: &target.upstream,
                },
                None => Action::Ping,
            },
        };
        match self.access.decide(&who, action) {
            Decision::Allow => {}
            Decision::Challenge(reason) => {
                self.access.count_denial(reason);
                let actions = if push_upstream.is_some() {
                    "pull,push"
                } else {
                    "pull"
                };
                let scope = routed
                    .target()
                    .map(|target| format!("repository:{}:{actions}", target.key()));
                let e = OciError::unauthorized(
                    LOGIN_REQUIRED,
                    self.challenges(host, client, scope.as_deref()),
                );
                return refused(e, head, "auth");
            }
            Decision::Forbid(reason) => {
                self.access.count_denial(reason);
                let what = match action {
                    Action::Pull { upstream } if self.access.is_private(upstream) => {
                        format!("pulling through the private upstream {upstream} needs a token with pull:private")
                    }
                    Action::Pull { upstream } => {
                        format!("pulling through {upstream} needs a token with pull:public")
                    }
                    Action::Push { upstream } => {
                        format!("pushing through {upstream} needs a token with the push scope")
                    }
                    _ => "this needs another scope".to_string(),
                };
                tracing::info!(token = who.name(), client = %client.peer, "{what}");
                return refused(OciError::denied(what), head, "auth");
            }
        }
        if let (Some(pushes), true) = (&self.pushes, wants_push || pusher_blob_head) {
            return self.push(pushes, req, body, routed, who.name()).await;
        }
        let served_repo = match &routed {
            ApiRoute::Manifest { target, .. } | ApiRoute::Blob { target, .. } => {
                Some(ServedRepo(target.key().to_string()))
            }
            _ => None,
        };
        let (label, result) = match routed {
            ApiRoute::Ping => ("ping", Ok(json_response(StatusCode::OK, "{}".into(), head))),
            ApiRoute::Catalog => ("catalog", self.catalog(&who, head).await),
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
                    .map_err(|e| map_cache_error(e, Subject::Repository)),
            ),
            ApiRoute::Manifest { target, reference } => {
                let accept = accepted_media_types(&req.headers);
                let answer = self
                    .cache
                    .manifest(&target, &reference, &accept, head)
                    .await;
                (
                    "manifest",
                    answer
                        .map(|a| manifest_response(a, head))
                        .map_err(|e| map_cache_error(e, Subject::Manifest)),
                )
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
                        .map_err(|e| map_cache_error(e, Subject::Blob)),
                )
            }
        };
        let mut response = result.unwrap_or_else(|e| error_response(&e, head));
        if let Some(repo) = served_repo {
            response.extensions_mut().insert(repo);
        }
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
                    super::ErrorCode::Unsupported,
                    "the n parameter of tags/list must be a non-negative integer",
                )
            })?),
        };
        let last = decoded_query_param(query, "last").filter(|v| !v.is_empty());
        let list = self
            .cache
            .tags_list(target)
            .await
            .map_err(|e| map_cache_error(e, Subject::Repository))?;
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
            mark_stale(headers);
        }
        Ok(response)
    }

    /// `GET /token`: a short-lived bearer token for the credentials presented (Basic with
    /// a token secret; none for an anonymous token when anonymous access is on).
    fn token_endpoint(&self, method: &Method, who: &Identity, head: bool) -> ApiResponse {
        if !matches!(*method, Method::GET | Method::HEAD) {
            return refused(OciError::unsupported_method(method), head, "token");
        }
        let Some(issued) = self.access.issue(who) else {
            self.access.count_denial(DenyReason::NoCredentials);
            let e = OciError::unauthorized(
                "log in with a token secret as the password",
                vec![format!("Basic realm=\"{BASIC_REALM}\"")],
            );
            return refused(e, head, "token");
        };
        let body = serde_json::json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": humantime::format_rfc3339_seconds(issued.issued_at).to_string(),
        })
        .to_string();
        let mut response = json_response(StatusCode::OK, body.into(), head);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        ApiResponse {
            response,
            route: "token",
        }
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
            .map_err(|e| map_cache_error(e, Subject::Repository))?;
        // Only what this client could pull: private repository names stay private.
        repos.retain(|r| {
            let key = RepoKey::from_stored(r.as_str());
            !key.repo().is_empty() && self.access.may_pull(who, key.upstream())
        });
        let body = serde_json::json!({ "repositories": repos }).to_string();
        Ok(json_response(StatusCode::OK, body.into(), head))
    }
}

pub(super) fn base_response(status: StatusCode) -> http::response::Builder {
    let mut b = Response::builder();
    if let Some(h) = b.headers_mut() {
        h.reserve(ANSWER_HEADERS);
    }
    b.status(status)
        .header(DOCKER_API_VERSION, HeaderValue::from_static(API_VERSION))
}

fn json_response(status: StatusCode, body: bytes::Bytes, head: bool) -> Response<ResponseBody> {
    let len = body.len();
    let b = base_response(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len);
    finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(body)
        },
    )
}

/// The OCI error JSON response for `e`.
pub fn error_response(e: &OciError, head: bool) -> Response<ResponseBody> {
    let text = e.body();
    let mut b = base_response(e.status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, text.len());
    if let Some(retry) = e.retry_after {
        b = b.header(header::RETRY_AFTER, retry);
    }
    if let Some(size) = e.content_range_size {
        b = b.header(header::CONTENT_RANGE, format!("bytes */{size}"));
    }
    for challenge in &e.challenges {
        b = b.header(header::WWW_AUTHENTICATE, challenge.as_str());
    }
    finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(text)
        },
    )
}

pub(super) fn finish(b: http::response::Builder, body: ResponseBody) -> Response<ResponseBody> {
    b.body(body).unwrap_or_else(|e| {
        // Only reachable with an invalid header value, which we never build from input.
        let mut r = Response::new(body::full(
            OciError::internal(Subject::Repository, e.to_string()).body(),
        ));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Marks an answer served from the cache because the upstream could not be asked.
fn mark_stale(headers: &mut http::HeaderMap) {
    headers.insert(X_CACHE, HeaderValue::from_static("STALE"));
    headers.insert(
        header::WARNING,
        HeaderValue::from_static("110 sparkcr-edge \"Response is Stale\""),
    );
}

/// An image index of referrers (spec, "Listing Referrers").
fn referrers_response(a: ReferrersAnswer, head: bool) -> Response<ResponseBody> {
    let len = a.body.len();
    let mut b = base_response(StatusCode::OK)
        .header(header::CONTENT_TYPE, REFERRERS_MEDIA_TYPE)
        .header(header::CONTENT_LENGTH, len);
    if a.filtered {
        b = b.header("OCI-Filters-Applied", "artifactType");
    }
    let mut response = finish(
        b,
        if head {
            body::empty()
        } else {
            body::full(a.body)
        },
    );
    if a.stale {
        mark_stale(response.headers_mut());
    }
    response
}

fn manifest_response(a: ManifestAnswer, head: bool) -> Response<ResponseBody> {
    let len = a.size;
    let b = base_response(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&a.media_type)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        )
        .header(DOCKER_CONTENT_DIGEST, a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest))
        .header(X_CACHE, cache_status(a.from_cache))
        .header(header::CONTENT_LENGTH, len);
    let stale = a.stale;
    let body = match (head, a.bytes) {
        (false, Some(bytes)) => body::full(bytes),
        _ => body::empty(),
    };
    let mut response = finish(b, body);
    if stale {
        mark_stale(response.headers_mut());
    }
    response
}

fn blob_response(a: BlobAnswer) -> Response<ResponseBody> {
    let (start, end) = a.range;
    let partial = a.partial;
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut b = base_response(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, a.digest.to_string())
        .header(header::ETAG, format!("\"{}\"", a.digest))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(X_CACHE, cache_status(a.from_cache));
    // Without a known size (the upstream gave none) the body goes out chunked.
    if let Some(size) = a.size {
        b = b.header(header::CONTENT_LENGTH, end - start);
        if partial {
            let range = format!("bytes {}-{}/{}", start, end.saturating_sub(1), size);
            b = b.header(header::CONTENT_RANGE, range);
        }
    }
    let body = match a.body {
        Some(stream) => body::stream(stream),
        None => body::empty(),
    };
    finish(b, body)
}

/// The one place cache-layer errors become what clients see: the code and status from the
/// spec's table, a plain-sentence message, and the error's source chain as `detail`.
fn map_cache_error(e: CacheError, subject: Subject) -> OciError {
    match e {
        CacheError::ManifestUnknown(r) => OciError::manifest_unknown(r),
        CacheError::BlobUnknown(d) => OciError::blob_unknown(d),
        CacheError::NameUnknown(m) => OciError::name_unknown(m),
        CacheError::RangeNotSatisfiable { size } => OciError::range_not_satisfiable(size),
        CacheError::Unavailable { upstream, source } => {
            OciError::upstream_unavailable(subject, &upstream, source_chain(&source))
        }
        CacheError::RateLimited {
            upstream,
            retry_after,
            source,
        } => OciError::upstream_rate_limited(
            subject,
            &upstream,
            retry_after.map(crate::upstream::retry_after_seconds),
            source_chain(&source),
        ),
        CacheError::Denied(m) => OciError::denied(m),
        CacheError::BadUpstreamContent { upstream, source } => {
            OciError::bad_upstream_content(subject, &upstream, source_chain(&source))
        }
        other => {
            let detail = source_chain(&other);
            tracing::error!(?subject, error = %detail, "request failed");
            OciError::internal(subject, detail)
        }
    }
}

/// `error: cause: cause`, each level's `Display` (plain sentences, never `Debug`).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let s = cause.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}
