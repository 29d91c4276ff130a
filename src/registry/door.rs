//! The front door of the API: the first three phases of every request (authenticate,
//! route, authorize), each once and in that order, and the edge's own `GET /token`.
//!
//! Owns: putting [`crate::access`]'s and [`crate::policy`]'s answers the way the registry
//! protocol wants them (a pull the policy denies: `403 DENIED` naming the block, left in
//! the answer as a `PolicyDenial` for the server to count; a pull it allows carries the
//! block's cooldown and signature rules to the pull side in [`Authorized`]):
//! `401` with a Bearer challenge only (Docker fails anonymous pulls when Basic is offered
//! beside it; `/token` itself challenges with Basic), `403 DENIED` with the scope that is
//! missing, `429 TOOMANYREQUESTS` with `Retry-After`, and `405` for a push to an upstream
//! that takes none; choosing the side that serves a request (a pusher's `HEAD` on a blob is
//! the push side's); and the [`Authorized`] value, which only [`RegistryApi::authorize`]
//! builds and which dispatch requires.
//!
//! Must not: decide who may do what, or count refusals (that is `access`, which counts each
//! refusal it makes), or serve content (that is `pull.rs` and `push.rs`).

use super::api::{ApiResponse, ClientInfo, RegistryApi, TOKEN_PATH};
use super::audit::PolicyDenial;
use super::error::{ErrorCode, OciError};
use super::response::{error_response, json_response};
use super::route::{ApiRoute, RequestParts};
use crate::access::{Action, Decision, Identity, Refused, BASIC_REALM, SERVICE};
use crate::cache::push::Pushes;
use crate::cache::PullRules;
use crate::policy::Verdict;
use http::{header, HeaderValue, Method, StatusCode};
use std::sync::Arc;

/// The 401 message when credentials are needed and none were sent.
const LOGIN_REQUIRED: &str =
    "authentication required: this edge does not allow anonymous pulls; log in (docker login / podman login) with a token secret as the password";

/// A request as it arrives at the door: its parts, where it came from, and what every
/// phase reads of it.
pub(super) struct Incoming<'a> {
    pub(super) req: &'a http::request::Parts,
    pub(super) client: ClientInfo,
    /// A `HEAD`: answers carry no body.
    pub(super) head: bool,
    /// The `Host` header, or the h2 `:authority`.
    host: Option<&'a str>,
}

impl<'a> Incoming<'a> {
    pub(super) fn new(req: &'a http::request::Parts, client: ClientInfo) -> Self {
        Incoming {
            req,
            client,
            head: req.method == Method::HEAD,
            host: request_host(req),
        }
    }

    pub(super) fn is_token_endpoint(&self) -> bool {
        self.req.uri.path() == TOKEN_PATH
    }
}

/// A request turned away before it was served: its OCI error, and the route label it is
/// logged and counted under (`auth`, `push`, `token`, `error`).
pub(super) struct Refusal {
    error: Box<OciError>,
    route: &'static str,
    /// A `[[policy]]` block's denial, for the server's count and status page.
    denial: Option<Box<PolicyDenial>>,
}

impl Refusal {
    fn new(error: OciError, route: &'static str) -> Self {
        Refusal {
            error: Box::new(error),
            route,
            denial: None,
        }
    }

    /// The refusal in words, for the audit trail: its code and message.
    pub(super) fn decision(&self) -> String {
        format!("{}: {}", self.error.code.as_str(), self.error.message)
    }

    pub(super) fn answer(self, head: bool) -> ApiResponse {
        let mut response = error_response(&self.error, head);
        if let Some(d) = self.denial {
            response.extensions_mut().insert(*d);
        }
        ApiResponse {
            response,
            route: self.route,
        }
    }
}

/// Which side of the API serves an authorized request.
pub(super) enum Side {
    /// Manifests, blobs, tag lists, referrers, the catalog, `/v2/`: through the cache.
    Pull,
    /// Uploads, manifest `PUT`s, deletes, and a pusher's `HEAD` on a blob.
    Push(Arc<Pushes>),
}

/// A request that pushes through an upstream, as access control sees it.
#[derive(Clone, Copy)]
struct PushIntent<'r> {
    upstream: &'r str,
    /// The push side serves it (else it is a pusher's `HEAD` on a manifest, served as a
    /// pull).
    served_by_push_side: bool,
}

/// A routed request that access control let through, and the side that serves it. Only
/// [`RegistryApi::authorize`] makes one; dispatch takes nothing else.
pub(super) struct Authorized {
    who: Identity,
    routed: ApiRoute,
    side: Side,
    /// What the policy block that allowed a pull asks of its manifests.
    rules: PullRules,
}

impl Authorized {
    pub(super) fn into_parts(self) -> (Identity, ApiRoute, Side, PullRules) {
        (self.who, self.routed, self.side, self.rules)
    }
}

/// The `Host` header, or the `:authority` of an h2 request.
pub(super) fn request_host(req: &http::request::Parts) -> Option<&str> {
    req.headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// A `Host` value safe to put in a challenge, else `None`.
fn safe_host(h: &str) -> Option<&str> {
    (!h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
    .then_some(h)
}

/// The challenge of `/token`: Basic, where `docker login` sends the token secret.
fn basic_challenge() -> Vec<String> {
    vec![format!("Basic realm=\"{BASIC_REALM}\"")]
}

impl RegistryApi {
    /// Phase 1: who is asking. Credentials that are present must be valid; an anonymous
    /// client must be within its per-address quota.
    pub(super) fn authenticate(&self, at: &Incoming<'_>) -> Result<Identity, Refusal> {
        let authorization = at
            .req
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        match self.access.admit(authorization, at.client.peer.ip()) {
            Ok(who) => Ok(who),
            Err(Refused::BadCredentials) => {
                let challenges = if at.is_token_endpoint() {
                    basic_challenge()
                } else {
                    self.challenges(at, None)
                };
                let e = OciError::unauthorized(
                    "invalid credentials: log in again with a valid token secret as the password",
                    challenges,
                );
                Err(Refusal::new(e, "auth"))
            }
            Err(Refused::OverQuota { retry_after }) => Err(Refusal::new(
                OciError::too_many_requests(retry_after),
                "auth",
            )),
        }
    }

    /// Phase 2: which endpoint, upstream and repository. Why a request routes nowhere is
    /// told only to a client that may use the edge at all; others get the challenge.
    pub(super) fn route_request(
        &self,
        at: &Incoming<'_>,
        who: &Identity,
    ) -> Result<ApiRoute, Refusal> {
        let parts = RequestParts {
            method: &at.req.method,
            host: at.host,
            path: at.req.uri.path(),
            query: at.req.uri.query(),
            namespace: oci_namespace(at.req),
        };
        self.route(&parts)
            .map_err(|e| match self.access.authorize(who, Action::Unrouted) {
                Decision::Challenge(_) => self.login_required(at, None),
                Decision::Allow | Decision::Forbid(_) => Refusal::new(e, "error"),
            })
    }

    /// Phase 3: may `who` do what the routed request asks, and which side serves it. The
    /// only place an [`Authorized`] is made.
    pub(super) fn authorize(
        &self,
        at: &Incoming<'_>,
        who: Identity,
        routed: ApiRoute,
    ) -> Result<Authorized, Refusal> {
        let push = self.push_through(at, &who, &routed);
        if let (Some(PushIntent { upstream, .. }), true) = (push, routed.is_push(&at.req.method)) {
            if !self.access.push_enabled(upstream) || self.pushes.is_none() {
                let e = OciError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::Unsupported,
                    format!("{} is not supported for upstream {upstream}: the edge is a read-only pull-through cache for it (pushes go only to upstreams configured with push = true)", at.req.method),
                );
                return Err(Refusal::new(e, "push"));
            }
        }
        let action = match (push, routed.target()) {
            (Some(PushIntent { upstream, .. }), _) => Action::Push { upstream },
            (None, Some(target)) => Action::Pull {
                upstream: &target.upstream,
            },
            (None, None) if matches!(routed, ApiRoute::Catalog) => Action::Catalog,
            (None, None) => Action::Ping,
        };
        match self.access.authorize(&who, action) {
            Decision::Allow => {}
            Decision::Challenge(_) => {
                let actions = if push.is_some() { "pull,push" } else { "pull" };
                let scope = routed
                    .target()
                    .map(|target| format!("repository:{}:{actions}", target.key()));
                return Err(self.login_required(at, scope));
            }
            Decision::Forbid(_) => return Err(self.forbidden(at, &who, action)),
        }
        // What may enter the site at all: pulls only (a push sends the site's own content).
        let mut rules = PullRules::default();
        if let (None, Some(target)) = (push, routed.target()) {
            let verdict = self.policy.decide(&target.upstream, target.repo.as_str());
            if let Verdict::DeniedBy(block) = verdict {
                return Err(self.denied_by_policy(at, &who, &routed, &block));
            }
            rules.cooldown = verdict.cooldown().cloned();
            rules.signature = verdict.signature().cloned();
        }
        let side = match (push, &self.pushes) {
            (Some(intent), Some(pushes)) if intent.served_by_push_side => {
                Side::Push(pushes.clone())
            }
            _ => Side::Pull,
        };
        Ok(Authorized {
            who,
            routed,
            side,
            rules,
        })
    }

    /// Whether a request pushes through an upstream: the push API itself; a pusher's
    /// `HEAD` on a blob (the push side asks the upstream); a pusher's `HEAD` on a manifest
    /// it may not pull (allowed by `push`, served as a pull).
    fn push_through<'r>(
        &self,
        at: &Incoming<'_>,
        who: &Identity,
        routed: &'r ApiRoute,
    ) -> Option<PushIntent<'r>> {
        let upstream = routed.target()?.upstream.as_str();
        let intent = |served_by_push_side| PushIntent {
            upstream,
            served_by_push_side,
        };
        if routed.is_push(&at.req.method) {
            return Some(intent(true));
        }
        if !at.head || !self.access.may_push(who, upstream) {
            return None;
        }
        match routed {
            ApiRoute::Blob { .. } => Some(intent(true)),
            ApiRoute::Manifest { .. } if !self.access.may_pull(who, upstream) => {
                Some(intent(false))
            }
            _ => None,
        }
    }

    /// 403 naming the policy block that denies pulling `target`.
    fn denied_by_policy(
        &self,
        at: &Incoming<'_>,
        who: &Identity,
        routed: &ApiRoute,
        block: &str,
    ) -> Refusal {
        let (repo, upstream) = routed
            .target()
            .map(|t| (t.repo.to_string(), t.upstream.as_str()))
            .unwrap_or_default();
        let what = format!(
            "pulling {repo} through {upstream} is denied by this edge's policy (block \"{block}\" of [[policy]] in its config); ask the edge's admin"
        );
        tracing::info!(token = who.name(), client = %at.client.peer, policy = block, "{what}");
        let denial = PolicyDenial::of(routed, block, "deny", &what).map(Box::new);
        Refusal {
            denial,
            ..Refusal::new(OciError::denied(what), "policy")
        }
    }

    /// 401 with the Bearer challenge, for the repository's `scope` when there is one.
    fn login_required(&self, at: &Incoming<'_>, scope: Option<String>) -> Refusal {
        let e = OciError::unauthorized(LOGIN_REQUIRED, self.challenges(at, scope.as_deref()));
        Refusal::new(e, "auth")
    }

    /// 403 naming the scope `action` needs.
    fn forbidden(&self, at: &Incoming<'_>, who: &Identity, action: Action<'_>) -> Refusal {
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
        tracing::info!(token = who.name(), client = %at.client.peer, "{what}");
        Refusal::new(OciError::denied(what), "auth")
    }

    /// The `WWW-Authenticate` challenge: the bearer flow against this edge's `/token`, and
    /// only that (as Docker Hub does). Docker's client tries every challenged scheme; a Basic
    /// challenge next to it makes an anonymous `docker pull` fail with "no basic auth
    /// credentials" although it already holds an anonymous bearer token. Basic credentials
    /// are still accepted on every request, so `docker login` (token endpoint) and clients
    /// that send Basic to `/v2/` both work.
    fn challenges(&self, at: &Incoming<'_>, scope: Option<&str>) -> Vec<String> {
        let scheme = if at.client.tls { "https" } else { "http" };
        let host = at.host.and_then(safe_host).unwrap_or(self.table.hostname());
        let mut bearer =
            format!("Bearer realm=\"{scheme}://{host}{TOKEN_PATH}\",service=\"{SERVICE}\"");
        if let Some(scope) = scope {
            bearer.push_str(&format!(",scope=\"{scope}\""));
        }
        vec![bearer]
    }

    /// `GET /token`: a short-lived bearer token for the credentials presented (Basic with
    /// a token secret; none for an anonymous token when anonymous access is on).
    pub(super) fn token_endpoint(
        &self,
        at: &Incoming<'_>,
        who: &Identity,
    ) -> Result<ApiResponse, Refusal> {
        let method = &at.req.method;
        if !matches!(*method, Method::GET | Method::HEAD) {
            return Err(Refusal::new(OciError::unsupported_method(method), "token"));
        }
        let Some(issued) = self.access.issue(who) else {
            let e = OciError::unauthorized(
                "log in with a token secret as the password",
                basic_challenge(),
            );
            return Err(Refusal::new(e, "token"));
        };
        let body = serde_json::json!({
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": humantime::format_rfc3339_seconds(issued.issued_at).to_string(),
        })
        .to_string();
        let mut response = json_response(StatusCode::OK, body.into(), at.head);
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(ApiResponse {
            response,
            route: "token",
        })
    }
}

/// The `OCI-Namespace` request header (a snapshotter's way to name the upstream).
pub(super) fn oci_namespace(req: &http::request::Parts) -> Option<&str> {
    req.headers.get(OCI_NAMESPACE).and_then(|v| v.to_str().ok())
}

/// The header that names the upstream a request is for, both ways.
pub(super) const OCI_NAMESPACE: &str = "oci-namespace";
