//! The API handler: one request in, one response out, in four phases: authenticate,
//! route, authorize (`door.rs`), then dispatch to the pull side (`pull.rs`) or the push
//! side (`push.rs`).
//!
//! Owns: [`RegistryApi`] (the routing table, the cache, access control and the push side
//! it serves with), the order of the phases, and the types the server sees
//! ([`ApiResponse`], [`ClientInfo`], [`ServedRepo`]). Must not: check access or serve
//! content itself (the phases do).

use super::body::ResponseBody;
use super::door::{Authorized, Incoming, Refusal, Side};
use super::error::OciError;
use super::route::{route, ApiRoute, RequestParts, UpstreamTable};
use crate::access::Access;
use crate::cache::push::{Pushes, UploadBody};
use crate::cache::Cache;
use http::Response;
use std::net::SocketAddr;
use std::sync::Arc;

/// A response plus the route label metrics and logs use.
pub struct ApiResponse {
    pub response: Response<ResponseBody>,
    pub route: &'static str,
}

pub struct RegistryApi {
    pub(super) table: UpstreamTable,
    pub(super) cache: Arc<Cache>,
    pub(super) access: Arc<Access>,
    /// The push side, when any upstream has `push = true`.
    pub(super) pushes: Option<Arc<Pushes>>,
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

/// In a manifest or blob response's extensions: the `upstream/repo` it is of (for the
/// status page's bytes served per repository).
#[derive(Clone, Debug)]
pub struct ServedRepo(pub String);

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

    /// One request; `body` is read only by the push API.
    pub async fn handle(
        &self,
        req: &http::request::Parts,
        body: UploadBody,
        client: ClientInfo,
    ) -> ApiResponse {
        let at = Incoming::new(req, client);
        let answer = async {
            let who = self.authenticate(&at)?;
            if at.is_token_endpoint() {
                return self.token_endpoint(&at, &who);
            }
            let routed = self.route_request(&at, &who)?;
            let authorized = self.authorize(&at, who, routed)?;
            Ok::<_, Refusal>(self.dispatch(&at, body, authorized).await)
        };
        answer
            .await
            .unwrap_or_else(|refused| refused.answer(at.head))
    }

    /// Phase 4: the side access control chose serves the request.
    async fn dispatch(
        &self,
        at: &Incoming<'_>,
        body: UploadBody,
        authorized: Authorized,
    ) -> ApiResponse {
        let (who, routed, side) = authorized.into_parts();
        match side {
            Side::Push(pushes) => self.push(&pushes, at.req, body, routed, who.name()).await,
            Side::Pull => self.pull(at, &who, routed).await,
        }
    }
}
