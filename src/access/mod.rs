//! Access control: who is asking, and what they may pull, push and read.
//!
//! Owns: the client-network allow list (`auth.allow_cidrs`) and the operator pages' list
//! (`auth.admin_cidrs`), reading credentials from an `Authorization` header (HTTP Basic
//! with a token secret as the password, or a bearer token this edge issued), the scopes of
//! each identity, the rules of which upstreams an identity may pull through (`pull:public`,
//! `pull:private` for upstreams marked `private`) and push through (`push`, to upstreams
//! with `push = true`), issuing short-lived bearer tokens, the per-address quota of
//! anonymous clients (governor), and counting every refusal it makes by reason
//! (`auth_denials_total`): callers act on a refusal, they never count it.
//!
//! Every check is cheap and constant-time where secrets are compared: a presented secret is
//! hashed once with SHA-256 (secrets are 256 random bits, so no slow hash is needed) and
//! compared with every configured hash through HMAC tags; bearer tokens are HMAC-SHA256.
//!
//! Must not: build HTTP responses or OCI errors (that is `registry`), know about sockets
//! (that is `server`), or keep or log a secret.

pub mod token;

use crate::config::{Cidr, Config, RateConfig, Scope, TokenConfig};
use crate::metrics::Metrics;
use base64::Engine as _;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::collections::HashSet;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
pub use token::{Signer, TokenError, SECRET_PREFIX, TOKEN_LIFETIME};

/// The `service` this edge names in its bearer challenge and `/token` endpoint.
pub const SERVICE: &str = "sparkcr-edge";
/// The realm of the Basic challenge.
pub const BASIC_REALM: &str = "sparkcr-edge";

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot make the token signing key: {0}")]
    Key(#[from] TokenError),
}

/// Why a request was refused; the label of `auth_denials_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// The client's address is outside `auth.allow_cidrs`.
    Network,
    /// No credentials where they are needed.
    NoCredentials,
    /// Credentials that match no token, or an invalid or expired bearer token.
    BadCredentials,
    /// A token without the scope this needs.
    Scope,
    /// Over the anonymous per-address quota.
    RateLimited,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Network => "network",
            DenyReason::NoCredentials => "no_credentials",
            DenyReason::BadCredentials => "bad_credentials",
            DenyReason::Scope => "scope",
            DenyReason::RateLimited => "rate_limited",
        }
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Token { name: Arc<str>, scopes: Vec<Scope> },
}

impl Identity {
    pub fn has(&self, scope: Scope) -> bool {
        match self {
            Identity::Anonymous => false,
            Identity::Token { scopes, .. } => scopes.contains(&scope),
        }
    }

    /// The token's name for logs; `-` for anonymous.
    pub fn name(&self) -> &str {
        match self {
            Identity::Anonymous => "-",
            Identity::Token { name, .. } => name,
        }
    }
}

/// What a request wants to do.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// `/v2/`: the API check, where clients learn the challenge.
    Ping,
    /// `/v2/_catalog` (filtered by [`Access::may_pull`]).
    Catalog,
    /// A request that names no endpoint: only a client that may use the edge at all
    /// learns why.
    Unrouted,
    /// Manifests, blobs and tag lists of a repository on this upstream.
    Pull { upstream: &'a str },
    /// Uploads, manifest puts and deletes through an upstream with `push = true`.
    Push { upstream: &'a str },
}

/// The answer to [`Access::authorize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401 with a challenge: credentials would help.
    Challenge(DenyReason),
    /// 403: the credentials are fine but do not allow this.
    Forbid(DenyReason),
}

struct ConfiguredToken {
    name: Arc<str>,
    /// HMAC of the configured hash under the process key (see [`Signer::same_hash`]).
    tag: ring::hmac::Tag,
    scopes: Vec<Scope>,
}

/// Why [`Access::admit`] turned a request away (counted already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Credentials are present but valid for no token (401).
    BadCredentials,
    /// An anonymous client over its per-address quota; it may come back after this (429).
    OverQuota { retry_after: Duration },
}

/// A bearer token from `/token`.
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: SystemTime,
}

/// The anonymous per-address quota (IPv6: per `ipv6_prefix`).
struct AnonymousQuota {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    checks: AtomicU64,
    ipv6_prefix: u8,
}

/// The key a client's requests are counted under: an IPv4 address (IPv4-mapped IPv6
/// addresses from a dual-stack listener included) as it is, an IPv6 address cut to its
/// first `ipv6_prefix` bits.
fn quota_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if ipv6_prefix < 128 => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(ipv6_prefix))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
        other => other,
    }
}

/// Forget idle addresses every this many checks, so the table stays small.
const QUOTA_CLEANUP_EVERY: u64 = 4096;

impl AnonymousQuota {
    fn new(rate: &RateConfig) -> Option<Self> {
        let per_minute = NonZeroU32::new(rate.per_minute)?;
        let burst = NonZeroU32::new(rate.burst)?;
        let quota = Quota::per_minute(per_minute).allow_burst(burst);
        Some(AnonymousQuota {
            limiter: DefaultKeyedRateLimiter::dashmap(quota),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            ipv6_prefix: rate.ipv6_prefix,
        })
    }

    fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % QUOTA_CLEANUP_EVERY
            == QUOTA_CLEANUP_EVERY - 1
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&quota_key(ip, self.ipv6_prefix))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

/// The access policy of one daemon, built from the config at start.
pub struct Access {
    anonymous: bool,
    allow: Vec<Cidr>,
    admin: Vec<Cidr>,
    tokens: Vec<ConfiguredToken>,
    private_upstreams: HashSet<String>,
    push_upstreams: HashSet<String>,
    signer: Signer,
    quota: Option<AnonymousQuota>,
    metrics: Arc<Metrics>,
}

impl Access {
    pub fn from_config(c: &Config, metrics: Arc<Metrics>) -> Result<Access, AccessError> {
        let signer = Signer::new()?;
        let tokens = c
            .auth
            .token
            .iter()
            .map(|t: &TokenConfig| ConfiguredToken {
                name: Arc::from(t.name.as_str()),
                tag: signer.tag_of(&t.hash),
                scopes: t.scopes.clone(),
            })
            .collect();
        Ok(Access {
            anonymous: c.auth.anonymous,
            allow: c.auth.allow_cidrs.clone(),
            admin: c.auth.admin_cidrs.clone(),
            tokens,
            private_upstreams: c
                .upstream
                .iter()
                .filter(|u| u.private)
                .map(|u| u.name.to_ascii_lowercase())
                .collect(),
            push_upstreams: c
                .upstream
                .iter()
                .filter(|u| u.push && u.private)
                .map(|u| u.name.to_ascii_lowercase())
                .collect(),
            signer,
            quota: c.auth.anonymous_rate.as_ref().and_then(AnonymousQuota::new),
            metrics,
        })
    }

    /// Counts a refusal in `auth_denials_total{reason}`.
    fn count_denial(&self, reason: DenyReason) {
        self.metrics
            .auth_denials
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Whether a client at `ip` may talk to the edge at all; a refusal is counted.
    pub fn peer_allowed(&self, ip: IpAddr) -> bool {
        let allowed = self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip));
        if !allowed {
            self.count_denial(DenyReason::Network);
        }
        allowed
    }

    /// Whether a client at `ip` sending `authorization` may read the operator's pages:
    /// from `auth.admin_cidrs`, or with a token that has the `admin` scope. A refusal is
    /// counted.
    pub fn admin_allowed(
        &self,
        ip: IpAddr,
        authorization: Option<&[u8]>,
    ) -> Result<(), DenyReason> {
        let verdict = self.admin_verdict(ip, authorization);
        if let Err(reason) = verdict {
            self.count_denial(reason);
        }
        verdict
    }

    /// [`Access::admin_allowed`] without counting a refusal: for what is only left out
    /// for non-admins (`/readyz`'s details), not refused.
    pub fn is_admin(&self, ip: IpAddr, authorization: Option<&[u8]>) -> bool {
        self.admin_verdict(ip, authorization).is_ok()
    }

    fn admin_verdict(&self, ip: IpAddr, authorization: Option<&[u8]>) -> Result<(), DenyReason> {
        if self.admin.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match self.authenticate(authorization) {
            Ok(who) if who.has(Scope::Admin) => Ok(()),
            Ok(Identity::Anonymous) => Err(DenyReason::NoCredentials),
            Ok(Identity::Token { .. }) => Err(DenyReason::Scope),
            Err(reason) => Err(reason),
        }
    }

    /// Whether a client at `ip` may ask an operator endpoint (`/metrics`, `/readyz`,
    /// `/status`) now: from `auth.admin_cidrs` or with a valid token always; from elsewhere
    /// within the anonymous quota (the same count as its registry requests), so the
    /// endpoints cannot be used to load the edge. `Err(wait)` when over it; the refusal is
    /// counted.
    pub fn operator_rate(&self, ip: IpAddr, authorization: Option<&[u8]>) -> Result<(), Duration> {
        if self.admin.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if matches!(self.authenticate(authorization), Ok(Identity::Token { .. })) {
            return Ok(());
        }
        self.check_anonymous_rate(ip).inspect_err(|_| {
            self.count_denial(DenyReason::RateLimited);
        })
    }

    /// Who sends `authorization` from `ip`, if the request may go on: valid credentials (or
    /// none), and an anonymous client within its quota. A refusal is counted.
    pub fn admit(&self, authorization: Option<&[u8]>, ip: IpAddr) -> Result<Identity, Refused> {
        let who = self.authenticate(authorization).map_err(|reason| {
            self.count_denial(reason);
            Refused::BadCredentials
        })?;
        if who == Identity::Anonymous {
            self.check_anonymous_rate(ip).map_err(|retry_after| {
                self.count_denial(DenyReason::RateLimited);
                Refused::OverQuota { retry_after }
            })?;
        }
        Ok(who)
    }

    pub fn is_private(&self, upstream: &str) -> bool {
        self.private_upstreams.contains(upstream)
    }

    /// Whether upstream `upstream` takes pushes through the edge (`push = true`).
    pub fn push_enabled(&self, upstream: &str) -> bool {
        self.push_upstreams.contains(upstream)
    }

    /// Whether `who` may push through `upstream`: a token with `push`, to an upstream
    /// with `push = true`. Pulls are not implied, nor needed.
    pub fn may_push(&self, who: &Identity, upstream: &str) -> bool {
        self.push_enabled(upstream) && who.has(Scope::Push)
    }

    /// Reads the `Authorization` header. `Ok(Anonymous)` when there is none; an error for
    /// credentials that are present but not valid. Counts nothing (see [`Access::admit`]).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Identity, DenyReason> {
        let Some(raw) = authorization else {
            return Ok(Identity::Anonymous);
        };
        let text = std::str::from_utf8(raw).map_err(|_| DenyReason::BadCredentials)?;
        let (scheme, rest) = text
            .trim()
            .split_once(' ')
            .ok_or(DenyReason::BadCredentials)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| DenyReason::BadCredentials)?;
            let decoded = String::from_utf8(decoded).map_err(|_| DenyReason::BadCredentials)?;
            // Any user name: the password is the token secret.
            let (_, secret) = decoded.split_once(':').ok_or(DenyReason::BadCredentials)?;
            self.by_secret(secret).ok_or(DenyReason::BadCredentials)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let claims = self
                .signer
                .verify(rest, SystemTime::now())
                .map_err(|_| DenyReason::BadCredentials)?;
            Ok(match claims.name {
                None => Identity::Anonymous,
                Some(name) => Identity::Token {
                    name: Arc::from(name.as_str()),
                    scopes: claims.scopes,
                },
            })
        } else {
            Err(DenyReason::BadCredentials)
        }
    }

    /// The configured token whose secret this is. Compares with every token (no early
    /// exit), each comparison constant-time.
    fn by_secret(&self, secret: &str) -> Option<Identity> {
        let presented = token::hash_secret(secret);
        let mut found = None;
        for t in &self.tokens {
            if self.signer.same_hash(&presented, &t.tag) && found.is_none() {
                found = Some(Identity::Token {
                    name: t.name.clone(),
                    scopes: t.scopes.clone(),
                });
            }
        }
        found
    }

    /// The anonymous quota for `ip`: `Err(wait)` when over it.
    fn check_anonymous_rate(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.quota {
            Some(q) => q.check(ip.to_canonical()),
            None => Ok(()),
        }
    }

    /// Whether `who` may pull through `upstream`.
    pub fn may_pull(&self, who: &Identity, upstream: &str) -> bool {
        let need = if self.is_private(upstream) {
            Scope::PullPrivate
        } else {
            Scope::PullPublic
        };
        match who {
            Identity::Anonymous => self.anonymous && need == Scope::PullPublic,
            Identity::Token { .. } => who.has(need),
        }
    }

    /// Whether `who` may do `action`; a refusal is counted.
    pub fn authorize(&self, who: &Identity, action: Action<'_>) -> Decision {
        let decision = self.decide(who, action);
        if let Decision::Challenge(reason) | Decision::Forbid(reason) = decision {
            self.count_denial(reason);
        }
        decision
    }

    fn decide(&self, who: &Identity, action: Action<'_>) -> Decision {
        match (who, action) {
            (Identity::Token { .. }, Action::Ping | Action::Catalog) => Decision::Allow,
            (Identity::Anonymous, _) if !self.anonymous => {
                Decision::Challenge(DenyReason::NoCredentials)
            }
            (_, Action::Unrouted) => Decision::Allow,
            // Clients learn the challenge at `/v2/` (Docker only sends credentials to a
            // registry whose `/v2/` asked for them), so anonymous pings are challenged as
            // soon as there are tokens; anonymous clients then get an anonymous token.
            (Identity::Anonymous, Action::Ping) if !self.tokens.is_empty() => {
                Decision::Challenge(DenyReason::NoCredentials)
            }
            (Identity::Anonymous, Action::Ping | Action::Catalog) => Decision::Allow,
            (_, Action::Pull { upstream }) if self.may_pull(who, upstream) => Decision::Allow,
            (_, Action::Push { upstream }) if self.may_push(who, upstream) => Decision::Allow,
            (Identity::Anonymous, Action::Push { .. }) => {
                Decision::Challenge(DenyReason::NoCredentials)
            }
            (Identity::Token { .. }, Action::Push { .. }) => Decision::Forbid(DenyReason::Scope),
            (Identity::Anonymous, Action::Pull { .. }) => {
                Decision::Challenge(DenyReason::NoCredentials)
            }
            (Identity::Token { .. }, Action::Pull { .. }) => Decision::Forbid(DenyReason::Scope),
        }
    }

    /// A bearer token for `who` (`/token`); anonymous clients get one only when anonymous
    /// access is on (a refusal is counted).
    pub fn issue(&self, who: &Identity) -> Option<IssuedToken> {
        let now = SystemTime::now();
        let token = match who {
            Identity::Anonymous if !self.anonymous => {
                self.count_denial(DenyReason::NoCredentials);
                return None;
            }
            Identity::Anonymous => self.signer.issue(None, &[], now),
            Identity::Token { name, scopes } => self.signer.issue(Some(name), scopes, now),
        };
        Some(IssuedToken {
            token,
            expires_in: TOKEN_LIFETIME.as_secs(),
            issued_at: now,
        })
    }
}

#[cfg(test)]
mod tests;
