//! What a manifest or blob request tells the audit trail: its subject (what was asked, by
//! whom, through which upstream, with which `Range`) taken once it is routed, completed
//! from the answer (the digest a tag resolved to, the media type, what the cache did, or
//! the refusal) and left in the response's extensions, where the server finishes the
//! record when the body ends.
//!
//! Owns: which requests are audited and what of the request and the answer goes into a
//! record. Must not: write records (that is `audit`, through the server), or change an
//! answer's headers or body.

use super::body::ResponseBody;
use super::response::{CacheOutcome, DOCKER_CONTENT_DIGEST};
use super::route::ApiRoute;
use crate::access::Identity;
use crate::audit::{AuditSubject, SubjectKind};
use crate::oci::Reference;
use http::{header, Response, StatusCode};

/// What the trust gate decided for a request it served or refused, in words: left in the
/// response's extensions by the pull side, read into the audit record.
#[derive(Clone, Debug)]
pub(super) struct GateDecision(pub std::sync::Arc<str>);

/// A pull a `[[policy]]` block refused, left in the response's extensions for the server,
/// which counts it and keeps it for the status page.
#[derive(Clone, Debug)]
pub struct PolicyDenial {
    pub upstream: String,
    pub repository: String,
    /// The tag or digest asked for, if the request named one.
    pub reference: Option<String>,
    pub block: String,
    /// `deny`, `cooldown` or `signature`.
    pub check: &'static str,
    pub message: String,
}

impl PolicyDenial {
    /// A denial of a request routed to `routed`.
    pub(super) fn of(
        routed: &ApiRoute,
        block: &str,
        check: &'static str,
        message: &str,
    ) -> Option<PolicyDenial> {
        let target = routed.target()?;
        let reference = match routed {
            ApiRoute::Manifest { reference, .. } => Some(reference.to_string()),
            ApiRoute::Blob { digest, .. } => Some(digest.to_string()),
            _ => None,
        };
        Some(PolicyDenial {
            upstream: target.upstream.clone(),
            repository: target.repo.to_string(),
            reference,
            block: block.to_string(),
            check,
            message: message.to_string(),
        })
    }
}

/// The subject of a routed request, if it is a manifest or blob request.
pub(super) fn subject_of(
    routed: &ApiRoute,
    who: &Identity,
    req: &http::request::Parts,
) -> Option<AuditSubject> {
    let (kind, target, tag, digest) = match routed {
        ApiRoute::Manifest { target, reference } => match reference {
            Reference::Tag(t) => (SubjectKind::Manifest, target, Some(t.to_string()), None),
            Reference::Digest(d) => (SubjectKind::Manifest, target, None, Some(d.to_string())),
        },
        ApiRoute::Blob { target, digest } => {
            (SubjectKind::Blob, target, None, Some(digest.to_string()))
        }
        _ => return None,
    };
    let range = req
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| r.chars().take(64).collect());
    Some(AuditSubject {
        kind,
        who: who.name().to_string(),
        upstream: target.upstream.clone(),
        repository: target.repo.to_string(),
        tag,
        digest,
        media_type: None,
        range,
        cache: None,
        decision: None,
    })
}

/// Completes `subject` from the answer (and the refusal's message, if access control
/// refused the request) and leaves it in the answer's extensions.
pub(super) fn complete(
    mut subject: AuditSubject,
    response: &mut Response<ResponseBody>,
    refusal: Option<String>,
) {
    let headers = response.headers();
    if subject.digest.is_none() {
        subject.digest = headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    let ok = response.status().is_success();
    if ok && subject.kind == SubjectKind::Manifest {
        subject.media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
    }
    subject.cache = match response.extensions().get::<CacheOutcome>() {
        Some(CacheOutcome::Hit) => Some("hit"),
        Some(CacheOutcome::Miss) => Some("miss"),
        Some(CacheOutcome::Collapsed) => Some("collapsed"),
        Some(CacheOutcome::Stale) => Some("stale"),
        Some(CacheOutcome::QuotaReserve) => Some("quota-reserve"),
        None => match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Some("denied"),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Some("unreachable"),
            _ => None,
        },
    };
    subject.decision = refusal.or_else(|| {
        response
            .extensions()
            .get::<GateDecision>()
            .map(|d| d.0.to_string())
    });
    response.extensions_mut().insert(subject);
}
