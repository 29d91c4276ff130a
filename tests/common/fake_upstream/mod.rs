//! The one fake container registry of the integration tests: a hyper 1 server on
//! 127.0.0.1 (a random port; plain HTTP or TLS, h1 and h2) serving blobs, manifests, tags
//! and referrers from memory, recording every request (method, path, query, headers,
//! HTTP version, connection id) and counting the blob bodies it is sending at once, with
//! fault modes a real registry will not produce on demand: per blob or for all blobs (see
//! [`Faults`]: ignore `Range`, cut the connection at a byte, corrupt a byte range, stall,
//! cap the rate, refuse with 429/503) and for the whole
//! registry (manifest statuses, rate limits for the next N requests, Docker-style or IETF
//! pull-limit headers, redirects of blob GETs to a second fake acting as a CDN, Basic or
//! Bearer authentication with a token realm of its own and per-user scopes, stalling
//! before any header, canned answers for chosen paths).
//!
//! What it must not do: listen anywhere but 127.0.0.1; be used by product code (it lives
//! under `tests/`); decide anything about the edge (it answers, it records, and tests
//! assert); grow a second copy of itself elsewhere (add a mode here instead).

pub mod auth;
mod body;

pub use auth::Auth;
pub use body::Faults;

use super::images::{OCI_INDEX, OCI_MANIFEST};
use super::registry2::sha256_digest as sha256;
use body::{blob_response, BlobEntry, FakeBody, InFlight};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub version: Version,
    /// Which connection it came on (0, 1, 2... in accept order).
    pub conn: u64,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn range(&self) -> Option<&str> {
        self.header("range")
    }

    /// The decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params(name).into_iter().next()
    }

    /// Every decoded value of query parameter `name`, in order.
    pub fn query_params(&self, name: &str) -> Vec<String> {
        let query = self.query.as_deref().unwrap_or("");
        reqwest::Url::parse(&format!("http://fake/?{query}"))
            .map(|url| {
                url.query_pairs()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Which requests a registry-wide rate limit answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    Manifests,
    Blobs,
    Any,
}

/// How pull-limit headers are written on manifest answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitHeaders {
    /// Docker Hub's: `ratelimit-limit: 100;w=21600`, `ratelimit-remaining: 99;w=21600`.
    Docker,
    /// The IETF draft's: `RateLimit-Limit: 100`, `RateLimit-Remaining: 99`,
    /// `RateLimit-Reset: 60`.
    Ietf,
}

#[derive(Clone, Debug)]
struct RateLimit {
    target: Target,
    status: u16,
    retry_after: String,
    times: usize,
}

#[derive(Clone, Debug)]
struct PullLimit {
    style: LimitHeaders,
    limit: u64,
    remaining: u64,
}

struct Redirect {
    cdn: Arc<Mutex<State>>,
    base: String,
    ttl: Duration,
}

struct Canned {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
}

pub(crate) struct State {
    base_url: String,
    blobs: HashMap<String, BlobEntry>,
    /// What [`FakeUpstream::add_blob`] gives a blob.
    default_faults: Faults,
    /// Reference (tag or digest) -> (bytes, media type).
    manifests: HashMap<String, (Bytes, String)>,
    referrers: HashMap<String, Vec<u8>>,
    tags: Option<Vec<String>>,
    tags_page: usize,
    manifest_status: Option<u16>,
    rate_limit: Option<RateLimit>,
    pull_limit: Option<PullLimit>,
    auth: Auth,
    tokens: auth::Tokens,
    redirect: Option<Redirect>,
    redirects: HashMap<String, usize>,
    canned: HashMap<String, Canned>,
    hang: bool,
    requests: Vec<Recorded>,
    /// Blob GET bodies being sent (registry and CDN paths alike).
    in_flight: Arc<InFlight>,
}

/// A running fake; its accept loop stops when it is dropped.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// A plain HTTP fake (h1, and h2 with prior knowledge).
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// An HTTPS fake (h2 and http/1.1 by ALPN) presenting `tls`'s certificate; its
    /// [`url`](Self::url) names it `localhost`.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let base_url = match tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let state = Arc::new(Mutex::new(State {
            base_url,
            blobs: HashMap::new(),
            default_faults: Faults::none(),
            manifests: HashMap::new(),
            referrers: HashMap::new(),
            tags: None,
            tags_page: 2,
            manifest_status: None,
            rate_limit: None,
            pull_limit: None,
            auth: Auth::None,
            tokens: auth::Tokens::default(),
            redirect: None,
            redirects: HashMap::new(),
            canned: HashMap::new(),
            hang: false,
            requests: Vec::new(),
            in_flight: Arc::default(),
        }));
        let connections = Arc::new(AtomicU64::new(0));
        let (st, count) = (state.clone(), connections.clone());
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                let (st, tls) = (st.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, conn, req).await) }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            tls: is_tls,
            state,
            connections,
            task,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake upstream state")
    }

    /// `http://127.0.0.1:port`, or `https://localhost:port` for a TLS fake.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Adds a blob served with the default faults (none, unless
    /// [`set_default_faults`](Self::set_default_faults) said otherwise); returns its digest.
    pub fn add_blob(&self, bytes: impl Into<Vec<u8>>) -> String {
        let faults = self.lock().default_faults.clone();
        self.add_blob_with(bytes, faults)
    }

    /// Adds a blob served with `faults`; returns its digest.
    pub fn add_blob_with(&self, bytes: impl Into<Vec<u8>>, faults: Faults) -> String {
        let bytes = Bytes::from(bytes.into());
        let digest = sha256(&bytes);
        self.lock()
            .blobs
            .insert(digest.clone(), BlobEntry::new(bytes, faults));
        digest
    }

    /// Changes how an added blob is served from now on (and restarts its fault counts).
    pub fn set_faults(&self, digest: &str, faults: Faults) {
        let mut s = self.lock();
        let blob = s.blobs.get_mut(digest).expect("blob was added");
        *blob = BlobEntry::new(blob.bytes.clone(), faults);
    }

    /// Faults for every blob: those added so far and those [`add_blob`](Self::add_blob)
    /// adds later (restarting their fault counts).
    pub fn set_default_faults(&self, faults: Faults) {
        let mut s = self.lock();
        for blob in s.blobs.values_mut() {
            *blob = BlobEntry::new(blob.bytes.clone(), faults.clone());
        }
        s.default_faults = faults;
    }

    /// Serves `bytes` for `reference` (a tag) and for its digest, in any repository, with
    /// the document's `mediaType` (an OCI manifest when it has none); returns the digest.
    pub fn add_manifest(&self, reference: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let media_type = serde_json::from_slice::<serde_json::Value>(bytes)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        let entry = (Bytes::copy_from_slice(bytes), media_type);
        let mut s = self.lock();
        s.manifests.insert(digest.clone(), entry.clone());
        s.manifests.insert(reference.to_string(), entry);
        digest
    }

    /// The tags `tags/list` answers (sorted, `tags_page` per page with `Link` headers; the
    /// client's `n` is ignored). Without tags, `tags/list` is 404.
    pub fn set_tags(&self, tags: &[&str]) {
        self.lock().tags = Some(tags.iter().map(|t| t.to_string()).collect());
    }

    pub fn set_tags_page(&self, per_page: usize) {
        self.lock().tags_page = per_page.max(1);
    }

    /// The referrers API's image index for `subject` (unknown subjects get an empty one).
    pub fn set_referrers(&self, subject: &str, index: Vec<u8>) {
        self.lock().referrers.insert(subject.to_string(), index);
    }

    /// Manifests, tags and referrers answer `status` (with `Retry-After: 30`) until set
    /// back to `None`.
    pub fn set_manifest_status(&self, status: Option<u16>) {
        self.lock().manifest_status = status;
    }

    /// The next `times` requests of `target` answer `status` with this `Retry-After`;
    /// replaces an earlier rate limit.
    pub fn rate_limit(&self, target: Target, status: u16, retry_after: &str, times: usize) {
        self.lock().rate_limit = Some(RateLimit {
            target,
            status,
            retry_after: retry_after.to_string(),
            times,
        });
    }

    pub fn clear_rate_limit(&self) {
        self.lock().rate_limit = None;
    }

    /// Pull-limit headers on manifest answers: each manifest GET uses one of `remaining`
    /// (HEAD is free, as on Docker Hub); at 0, manifest GETs answer 429.
    pub fn pull_limit(&self, style: LimitHeaders, limit: u64, remaining: u64) {
        self.lock().pull_limit = Some(PullLimit {
            style,
            limit,
            remaining,
        });
    }

    pub fn set_auth(&self, auth: Auth) {
        self.lock().auth = auth;
    }

    /// Blob GETs answer 307 to `cdn` (another fake than this one) (`/cdn/blobs/<digest>?expires=<unix ms>` on
    /// `localhost`, another host name than 127.0.0.1), valid for `ttl`; the CDN refuses an
    /// expired URL with 403. The blob is copied to the CDN unless it has it already.
    pub fn redirect_blobs_to(&self, cdn: &FakeUpstream, ttl: Duration) {
        let scheme = if cdn.tls { "https" } else { "http" };
        self.lock().redirect = Some(Redirect {
            cdn: cdn.state.clone(),
            base: format!("{scheme}://localhost:{}", cdn.addr.port()),
            ttl,
        });
    }

    /// How many times GETs of `digest` were redirected.
    pub fn redirects(&self, digest: &str) -> usize {
        self.lock().redirects.get(digest).copied().unwrap_or(0)
    }

    /// `path` (exactly, whatever the method) answers this, before anything else.
    pub fn canned(
        &self,
        path: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) {
        let canned = Canned {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        };
        self.lock().canned.insert(path.to_string(), canned);
    }

    /// Every request is read and recorded, then never answered (not even headers).
    pub fn hang(&self, on: bool) {
        self.lock().hang = on;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests whose path is exactly `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.filtered(|r| r.path == path)
    }

    /// Requests whose path contains `needle`.
    pub fn requests_containing(&self, needle: &str) -> Vec<Recorded> {
        self.filtered(|r| r.path.contains(needle))
    }

    fn filtered(&self, keep: impl Fn(&Recorded) -> bool) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    /// Blob GET bodies being sent now: from their headers until the last byte is sent or
    /// the connection closes.
    pub fn blob_bodies_in_flight(&self) -> usize {
        self.lock().in_flight.now()
    }

    /// The most blob GET bodies that were being sent at once.
    pub fn max_blob_bodies_in_flight(&self) -> usize {
        self.lock().in_flight.max()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Tokens the Bearer realm issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens.issued()
    }
}

/// `bytes` with the bytes in `range` flipped, as a blob with [`Faults::corrupt`] is served.
pub fn corrupted(bytes: &[u8], range: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let end = (range.end as usize).min(out.len());
    for b in out.iter_mut().take(end).skip(range.start as usize) {
        *b = !*b;
    }
    out
}

/// A port on 127.0.0.1 with nothing listening (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    listener.local_addr().expect("local addr")
}

pub(crate) fn response(status: u16, body: impl Into<Bytes>) -> Response<FakeBody> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    response
}

pub(crate) fn with_header(
    mut response: Response<FakeBody>,
    name: &str,
    value: &str,
) -> Response<FakeBody> {
    response.headers_mut().append(
        hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
        HeaderValue::from_str(value).expect("valid header value"),
    );
    response
}

/// An OCI error answer.
pub(crate) fn error(status: u16, code: &str, message: &str) -> Response<FakeBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]}).to_string();
    with_header(response(status, body), "content-type", "application/json")
}

/// What a `/v2/<name>/<kind>/<rest>` path asks for.
enum Route<'a> {
    Root,
    Blob(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    Tags(&'a str),
    Other,
}

fn route(path: &str) -> Route<'_> {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if rest.is_empty() {
        return Route::Root;
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        return Route::Blob(name, digest);
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        return Route::Manifest(name, reference);
    }
    if let Some((name, subject)) = rest.rsplit_once("/referrers/") {
        return Route::Referrers(name, subject);
    }
    match rest.strip_suffix("/tags/list") {
        Some(name) => Route::Tags(name),
        None => Route::Other,
    }
}

async fn handle(state: Arc<Mutex<State>>, conn: u64, req: Request<Incoming>) -> Response<FakeBody> {
    let recorded = Recorded {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers: req.headers().clone(),
        version: req.version(),
        conn,
    };
    let hang = {
        let mut s = state.lock().expect("fake upstream state");
        s.requests.push(recorded.clone());
        s.hang
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(600)).await;
        return response(503, "");
    }
    let mut s = state.lock().expect("fake upstream state");
    answer(&mut s, &recorded)
}

fn answer(s: &mut State, req: &Recorded) -> Response<FakeBody> {
    if let Some(c) = s.canned.get(&req.path) {
        let mut r = response(c.status, c.body.clone());
        for (k, v) in &c.headers {
            r = with_header(r, k, v);
        }
        return r;
    }
    if req.path == "/token" {
        return auth::token(s, req);
    }
    if let Some(digest) = req.path.strip_prefix("/cdn/blobs/") {
        return cdn_blob(s, digest, req);
    }
    let route = route(&req.path);
    let repo = match &route {
        Route::Blob(name, _)
        | Route::Manifest(name, _)
        | Route::Referrers(name, _)
        | Route::Tags(name) => Some(*name),
        Route::Root | Route::Other => None,
    };
    if let Some(refused) = auth::refusal(s, req, repo) {
        return refused;
    }
    let target = match route {
        Route::Blob(..) => Target::Blobs,
        Route::Manifest(..) => Target::Manifests,
        _ => Target::Any,
    };
    if let Some(limit) = s.rate_limit.as_mut() {
        let applies = limit.target == Target::Any || limit.target == target;
        if applies && limit.times > 0 {
            limit.times -= 1;
            let r = error(limit.status, "TOOMANYREQUESTS", "slow down");
            return with_header(r, "retry-after", &limit.retry_after);
        }
    }
    match route {
        Route::Blob(_, digest) => blob(s, digest, req),
        Route::Manifest(_, reference) => manifest(s, reference, req),
        Route::Referrers(_, subject) => referrers(s, subject, req),
        Route::Tags(name) => tags(s, name, req),
        Route::Root | Route::Other => {
            with_header(response(200, "{}"), "content-type", "application/json")
        }
    }
}

fn blob(s: &mut State, digest: &str, req: &Recorded) -> Response<FakeBody> {
    let redirect = match (&s.redirect, req.method.as_str()) {
        (Some(r), "GET") => Some((r.cdn.clone(), r.base.clone(), r.ttl)),
        _ => None,
    };
    let Some(entry) = s.blobs.get_mut(digest) else {
        return error(404, "BLOB_UNKNOWN", "blob unknown to registry");
    };
    if let Some(refused) = entry.refusal() {
        return refused;
    }
    let Some((cdn, base, ttl)) = redirect else {
        return blob_response(entry, digest, req, &s.in_flight);
    };
    let bytes = entry.bytes.clone();
    cdn.lock()
        .expect("CDN state")
        .blobs
        .entry(digest.to_string())
        .or_insert_with(|| BlobEntry::new(bytes, Faults::none()));
    *s.redirects.entry(digest.to_string()).or_insert(0) += 1;
    let expires = now_ms() + ttl.as_millis() as u64;
    let location = format!("{base}/cdn/blobs/{digest}?expires={expires}");
    with_header(response(307, ""), "location", &location)
}

fn cdn_blob(s: &mut State, digest: &str, req: &Recorded) -> Response<FakeBody> {
    let expires = req
        .query_param("expires")
        .and_then(|e| e.parse::<u64>().ok());
    if expires.is_none_or(|e| now_ms() > e) {
        return with_header(
            response(
                403,
                "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
            ),
            "content-type",
            "application/xml",
        );
    }
    match s.blobs.get_mut(digest) {
        Some(entry) => match entry.refusal() {
            Some(refused) => refused,
            None => blob_response(entry, digest, req, &s.in_flight),
        },
        None => response(404, "<Error><Code>NoSuchKey</Code></Error>"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `manifest_status`, when set: the answer for manifests, tags and referrers.
fn failing(s: &State) -> Option<Response<FakeBody>> {
    let status = s.manifest_status?;
    Some(with_header(
        error(status, "TOOMANYREQUESTS", "slow down"),
        "retry-after",
        "30",
    ))
}

fn manifest(s: &mut State, reference: &str, req: &Recorded) -> Response<FakeBody> {
    if let Some(failed) = failing(s) {
        return failed;
    }
    let mut limit_headers = Vec::new();
    if let Some(limit) = s.pull_limit.as_mut() {
        let exhausted = limit.remaining == 0;
        if req.method == "GET" && !exhausted {
            limit.remaining -= 1;
        }
        limit_headers = match limit.style {
            LimitHeaders::Docker => vec![
                ("ratelimit-limit", format!("{};w=21600", limit.limit)),
                (
                    "ratelimit-remaining",
                    format!("{};w=21600", limit.remaining),
                ),
                ("docker-ratelimit-source", "127.0.0.1".to_string()),
            ],
            LimitHeaders::Ietf => vec![
                ("RateLimit-Limit", limit.limit.to_string()),
                ("RateLimit-Remaining", limit.remaining.to_string()),
                ("RateLimit-Reset", "60".to_string()),
            ],
        };
        if exhausted && req.method == "GET" {
            let mut r = with_header(
                error(
                    429,
                    "TOOMANYREQUESTS",
                    "You have reached your pull rate limit.",
                ),
                "retry-after",
                "60",
            );
            for (k, v) in &limit_headers {
                r = with_header(r, k, v);
            }
            return r;
        }
    }
    let Some((bytes, media_type)) = s.manifests.get(reference).cloned() else {
        return error(404, "MANIFEST_UNKNOWN", "manifest unknown");
    };
    let mut r = with_header(response(200, bytes.clone()), "content-type", &media_type);
    r = with_header(r, "docker-content-digest", &sha256(&bytes));
    for (k, v) in &limit_headers {
        r = with_header(r, k, v);
    }
    r
}

fn referrers(s: &mut State, subject: &str, req: &Recorded) -> Response<FakeBody> {
    if let Some(failed) = failing(s) {
        return failed;
    }
    let mut index: serde_json::Value = s
        .referrers
        .get(subject)
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_else(
            || serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
        );
    let mut r = Vec::new();
    if let Some(t) = req.query_param("artifactType") {
        if let Some(list) = index["manifests"].as_array_mut() {
            list.retain(|d| d["artifactType"].as_str() == Some(t.as_str()));
        }
        r.push(("oci-filters-applied", "artifactType"));
    }
    let mut out = with_header(response(200, index.to_string()), "content-type", OCI_INDEX);
    for (k, v) in r {
        out = with_header(out, k, v);
    }
    out
}

fn tags(s: &mut State, name: &str, req: &Recorded) -> Response<FakeBody> {
    if let Some(failed) = failing(s) {
        return failed;
    }
    let Some(mut tags) = s.tags.clone() else {
        return error(404, "NAME_UNKNOWN", "repository name not known to registry");
    };
    tags.sort();
    let last = req.query_param("last");
    let rest: Vec<&String> = tags
        .iter()
        .filter(|t| last.as_ref().is_none_or(|l| *t > l))
        .collect();
    let page: Vec<&String> = rest.iter().copied().take(s.tags_page).collect();
    let body = serde_json::json!({"name": name, "tags": page}).to_string();
    let mut r = with_header(response(200, body), "content-type", "application/json");
    if rest.len() > s.tags_page {
        if let Some(l) = page.last() {
            let link = format!("<{}?n={}&last={l}>; rel=\"next\"", req.path, s.tags_page);
            r = with_header(r, "link", &link);
        }
    }
    r
}

/// A test CA and a server certificate it signed for `localhost` only (so 127.0.0.1 is a
/// name the certificate does not cover), for [`FakeUpstream::start_tls`].
pub struct TestPki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

pub fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sparkcr-edge test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "fake upstream");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca)
        .expect("leaf certificate");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
    .expect("server certificate");
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TestPki {
        ca_pem: ca.pem(),
        server_config: Arc::new(server_config),
    }
}
