//! The API handler: one request in, one response out, in four phases: authenticate,
//! route, authorize (`door.rs`), then dispatch to the pull side (`pull.rs`) or the push
//! side (`push.rs`).
//!
//! Owns: [`RegistryApi`] (the routing table, the cache, access control and the push side
//! it serves with), the order of the phases, and the types the server sees
//! ([`ApiResponse`], [`ClientInfo`]). Must not: check access or serve
//! content itself (the phases do).

use super::body::ResponseBody;
use super::door::{Authorized, Incoming, Refusal, Side};
use super::error::OciError;
use super::response::CacheStatusEntries;
use super::route::{route, ApiRoute, RequestParts, UpstreamTable};
use crate::access::{Access, Identity};
use crate::cache::push::{Pushes, UploadBody};
use crate::cache::Cache;
use crate::policy::PolicyGate;
use http::Response;
use std::net::SocketAddr;
use std::sync::Arc;

/// A response plus the route label metrics and logs use.
pub struct ApiResponse {
    pub response: Response<ResponseBody>,
    pub route: &'static str,
}

pub struct RegistryApi {
    /// This edge's `Cache-Status` entries (named by `server.name`, or host name and id).
    pub(super) cache_status: CacheStatusEntries,
    /// This edge in `Via` (see [`EdgeHop`]); `None` in tests that build an API without one.
    pub(super) hop: Option<EdgeHop>,
    pub(super) table: UpstreamTable,
    pub(super) cache: Arc<Cache>,
    pub(super) access: Arc<Access>,
    /// The push side, when any upstream has `push = true`.
    pub(super) pushes: Option<Arc<Pushes>>,
    /// What may be pulled at all (`[[policy]]`), checked after access control.
    pub(super) policy: Arc<PolicyGate>,
}

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    /// It arrived over TLS (the bearer realm is then `https://`).
    pub tls: bool,
}

/// Who an audit record names for a request whose credentials were refused.
const BAD_CREDENTIALS: &str = "(bad credentials)";

/// The path of the edge's own token endpoint (the bearer realm).
pub const TOKEN_PATH: &str = "/token";

/// This edge as a `Via` hop: the pseudonym a loop is recognised by, and the hop appended to
/// the chain (made once: a request without `Via` only clones it).
pub(super) struct EdgeHop {
    pseudonym: String,
    hop: Arc<str>,
}

/// A request's `Via` header values, in order.
fn incoming_via(req: &http::request::Parts) -> Vec<&str> {
    req.headers
        .get_all(http::header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

/// Echoes the upstream a routed request went to (`OCI-Namespace`, as the distribution
/// spec asks of a proxy that uses namespaces), on every response to a request access
/// control let through (a refusal names no upstream: the default one may be private).
fn with_namespace(mut answer: ApiResponse, namespace: Option<String>) -> ApiResponse {
    if let Some(v) = namespace.and_then(|n| http::HeaderValue::from_str(&n).ok()) {
        answer
            .response
            .headers_mut()
            .insert(super::door::OCI_NAMESPACE, v);
    }
    answer
}

impl RegistryApi {
    pub fn new(table: UpstreamTable, cache: Arc<Cache>, access: Arc<Access>) -> Self {
        RegistryApi {
            cache_status: CacheStatusEntries::named("sparkcr-edge")
                .expect("a constant name is a header value"),
            hop: None,
            table,
            cache,
            access,
            pushes: None,
            policy: Arc::default(),
        }
    }

    /// Checks every pull against `policy` (the daemon replaces its blocks on reload).
    pub fn with_policy(mut self, policy: Arc<PolicyGate>) -> Self {
        self.policy = policy;
        self
    }

    /// Names this edge `name` in `Cache-Status` (a token such as `edge-a`; anything that is
    /// not a valid header value keeps the default).
    pub fn with_edge_name(mut self, name: &str) -> Self {
        if let Some(entries) = CacheStatusEntries::named(name) {
            self.cache_status = entries;
        }
        self
    }

    /// Appends this edge (id `edge_id`) to the `Via` chain of the upstream requests each
    /// request makes, and refuses requests whose `Via` already names it: they went round a
    /// loop of edges.
    pub fn with_edge_id(mut self, edge_id: &str) -> Self {
        self.hop = Some(EdgeHop {
            pseudonym: crate::oci::hops::pseudonym(edge_id),
            hop: Arc::from(crate::oci::hops::own_hop(edge_id)),
        });
        self
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

    /// `server.strict_host` for requests outside the registry API (the status page): the
    /// `Host` must name this edge, as it must for `/v2/` (an answer to any name would let a
    /// page on another site read it through DNS rebinding in an admin's browser).
    pub fn check_host(&self, req: &http::request::Parts) -> Result<(), OciError> {
        self.table.check_host(super::door::request_host(req))
    }

    /// The cache behind the API (read by the status page).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Routes a request's parts (as `handle` does): the push API routes a mount's `from`.
    pub(super) fn route(&self, parts: &RequestParts<'_>) -> Result<ApiRoute, OciError> {
        route(parts, &self.table)
    }

    /// One request; `body` is read only by the push API.
    pub async fn handle(
        &self,
        req: &http::request::Parts,
        body: UploadBody,
        client: ClientInfo,
    ) -> ApiResponse {
        let at = Incoming::new(req, client);
        let incoming = incoming_via(req);
        let came_back = self
            .hop
            .as_ref()
            .is_some_and(|h| crate::oci::hops::names(&incoming, &h.pseudonym));
        if came_back {
            let e = OciError::new(
                http::StatusCode::LOOP_DETECTED,
                super::error::ErrorCode::Unsupported,
                "request loop: this edge already forwarded this request (its own id is in the Via header); an upstream's url points back at this edge, directly or through other edges",
            );
            tracing::warn!(client = %client.peer, path = %req.uri.path(), "request loop: this edge's own id is in the request's Via header; check the upstreams' url settings");
            return ApiResponse {
                response: super::response::error_response(&e, at.head),
                route: "loop",
            };
        }
        let via = self
            .hop
            .as_ref()
            .map(|h| crate::oci::hops::outgoing(&incoming, &h.hop));
        // A manifest or blob request's audit subject, once it is routed.
        let mut audited = None;
        let answer = async {
            let who = match self.authenticate(&at) {
                Ok(who) => who,
                Err(refused) => {
                    // Audited too: a failed login says what it was for.
                    audited = self
                        .route_request(&at, &Identity::Anonymous)
                        .ok()
                        .and_then(|r| super::audit::subject_of(&r, &Identity::Anonymous, req))
                        .map(|s| crate::audit::AuditSubject {
                            who: BAD_CREDENTIALS.into(),
                            ..s
                        });
                    return Err(refused);
                }
            };
            if at.is_token_endpoint() {
                return self.token_endpoint(&at, &who);
            }
            let routed = self.route_request(&at, &who)?;
            audited = super::audit::subject_of(&routed, &who, req);
            let namespace = routed.target().map(|t| t.upstream.clone());
            let authorized = self.authorize(&at, who, routed)?;
            let answer = self.dispatch(&at, body, authorized).await;
            Ok::<_, Refusal>(with_namespace(answer, namespace))
        };
        let mut refusal = None;
        let mut answer = crate::oci::hops::scope(via, answer)
            .await
            .unwrap_or_else(|refused| {
                refusal = Some(refused.decision());
                refused.answer(at.head)
            });
        super::response::set_cache_status(&mut answer.response, &self.cache_status);
        if let Some(subject) = audited {
            super::audit::complete(subject, &mut answer.response, refusal);
        }
        answer
    }

    /// Phase 4: the side access control chose serves the request.
    async fn dispatch(
        &self,
        at: &Incoming<'_>,
        body: UploadBody,
        authorized: Authorized,
    ) -> ApiResponse {
        let (who, routed, side, rules) = authorized.into_parts();
        match side {
            Side::Push(pushes) => self.push(&pushes, at.req, body, routed, who.name()).await,
            Side::Pull => self.pull(at, &who, routed, &rules).await,
        }
    }
}
