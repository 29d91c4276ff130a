//! Signatures (`[[policy]] require_signature`): whether a manifest carries a cosign
//! simple-signing signature made by one of a block's keys, found as the
//! `sha256-<hex>.sig` tag or as a referrer whose `subject` is the manifest. The signature
//! manifests and payloads come through the cache like any content (so a warmed edge checks
//! offline, and the lookups count toward an upstream's quota like any manifest request);
//! verdicts are kept per key set and digest (a verified one for good, a refusal for the
//! tag TTL, since a signature may be pushed later). A verified index admits the manifests
//! it lists.
//!
//! Owns: finding and checking signatures, and the verdicts. Must not: parse key or
//! payload formats (that is `oci::signature`) or decide which pulls need a signature.

use super::{Cache, CacheError, Requester};
use crate::oci::signature::{
    signature_layers, signature_tag, signed_manifest, SignatureRule, MAX_PAYLOAD_BYTES,
    SIGNATURE_ARTIFACT_TYPE,
};
use crate::oci::{index_manifests, Digest, Reference, RepoTarget};
use futures_util::StreamExt as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Referrers read per manifest, at most.
const MAX_REFERRERS: usize = 8;
/// Verdicts kept at most (all are dropped when full; they are asked again).
const MAX_VERDICTS: usize = 16 * 1024;

/// What a manifest's signatures say under one key set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Signed by the named key, for this manifest.
    Verified { key: String },
    /// Signed by a trusted key, but for another manifest.
    WrongDigest { key: String, names: Digest },
    /// Signatures are there; no trusted key made them (or their payload is not a
    /// container image signature).
    BadSignature(String),
    /// No signature at all.
    Unsigned,
    /// The signatures could not be looked up (the upstream failed and nothing is cached).
    LookupFailed(String),
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Verified { .. } => "verified",
            Verdict::WrongDigest { .. } => "wrong_digest",
            Verdict::BadSignature(_) => "bad_signature",
            Verdict::Unsigned => "unsigned",
            Verdict::LookupFailed(_) => "lookup_failed",
        }
    }

    fn reason(&self) -> String {
        match self {
            Verdict::Verified { key } => format!("signed by {key}"),
            Verdict::WrongDigest { key, names } => {
                format!("wrong digest: the signature by {key} is for {names}, not this manifest")
            }
            Verdict::BadSignature(why) => format!("bad signature: {why}"),
            Verdict::Unsigned => {
                "no signature: neither a sha256-<digest>.sig tag nor a signature referrer".into()
            }
            Verdict::LookupFailed(why) => format!("the signatures could not be read: {why}"),
        }
    }
}

/// Verdicts per (key set, manifest), and the manifests verified indexes admit.
#[derive(Default)]
pub(super) struct SignatureVerdicts {
    verdicts: Mutex<HashMap<(u64, Digest), (Instant, Verdict)>>,
    admitted: Mutex<HashMap<(u64, Digest), Digest>>,
    /// The decision in words for every manifest found signed or admitted: what a hit reads
    /// (one lookup, no allocation).
    passed: Mutex<HashMap<(u64, Digest), Arc<str>>>,
}

/// A key set's identity in the verdicts (a reload makes a new set, with new verdicts).
fn set_id(rule: &SignatureRule) -> u64 {
    rule.keys.id()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cache {
    /// The decision in words when `d` (a manifest of `target`, named by `what` in
    /// messages) is signed by one of `rule`'s keys, or listed by an index that is; else
    /// `DENIED` naming the keys and why.
    pub(super) async fn require_signed(
        &self,
        target: &RepoTarget,
        d: &Digest,
        rule: &SignatureRule,
        what: impl FnOnce() -> String,
    ) -> Result<Arc<str>, CacheError> {
        let id = set_id(rule);
        // Passed before (a hit): one lookup.
        if let Some(text) = lock(&self.signatures.passed).get(&(id, *d)) {
            return Ok(text.clone());
        }
        let listed_by = |index: Digest| {
            format!(
                "signature verified (policy block \"{}\"): listed by the signed index {index}",
                rule.block
            )
        };
        // A platform manifest of an index verified since the start: no lookups of its own.
        let admitted = lock(&self.signatures.admitted).get(&(id, *d)).copied();
        let verdict = match admitted {
            Some(index) => return Ok(self.passed(id, d, listed_by(index))),
            None => self.signature_verdict(target, d, rule).await,
        };
        if let Verdict::Verified { key } = &verdict {
            let text = format!(
                "signature verified (policy block \"{}\"): signed by {key}",
                rule.block
            );
            return Ok(self.passed(id, d, text));
        }
        if let Some(index) = self.admitted_by_index(target, d, rule).await {
            return Ok(self.passed(id, d, listed_by(index)));
        }
        let what = what();
        Err(CacheError::PolicyRefused {
            block: rule.block.clone(),
            check: "signature",
            message: format!(
            "{what} through {} resolves to {d}, which policy block \"{}\" admits only when signed by {}: {}",
            target.upstream,
            rule.block,
            rule.keys.names(),
            verdict.reason()
        ),
        })
    }

    /// Keeps `text` as the decision on `d` under key set `id`.
    fn passed(&self, id: u64, d: &Digest, text: String) -> Arc<str> {
        let text: Arc<str> = text.into();
        let mut passed = lock(&self.signatures.passed);
        if passed.len() >= MAX_VERDICTS {
            passed.clear();
        }
        passed.insert((id, *d), text.clone());
        text
    }

    /// The verified index among the manifests of the repository's tags that lists `d`, if
    /// any (after a restart, before the index was asked for again).
    async fn admitted_by_index(
        &self,
        target: &RepoTarget,
        d: &Digest,
        rule: &SignatureRule,
    ) -> Option<Digest> {
        let tags = self.store.repo_tags(&target.upstream, &target.repo).ok()?;
        for (_, rec) in tags {
            let listed = match self.store.manifest(&rec.digest) {
                Ok(Some(m)) => index_manifests(&m.bytes).contains(d),
                _ => false,
            };
            if listed
                && matches!(
                    self.signature_verdict(target, &rec.digest, rule).await,
                    Verdict::Verified { .. }
                )
            {
                return Some(rec.digest);
            }
        }
        None
    }

    /// The verdict on `d`'s signatures under `rule` (kept, see the module doc).
    pub(super) async fn signature_verdict(
        &self,
        target: &RepoTarget,
        d: &Digest,
        rule: &SignatureRule,
    ) -> Verdict {
        let id = set_id(rule);
        if let Some((at, v)) = lock(&self.signatures.verdicts).get(&(id, *d)) {
            let fresh = at.elapsed() < self.settings.tag_ttl;
            if matches!(v, Verdict::Verified { .. }) || fresh {
                return v.clone();
            }
        }
        let verdict = self.look_up_signatures(target, d, rule).await;
        self.metrics
            .policy_signatures
            .with_label_values(&[verdict.label()])
            .inc();
        match &verdict {
            Verdict::Verified { key } => {
                tracing::debug!(manifest = %d, key, policy = &*rule.block, "signature verified");
                if let Ok(Some(m)) = self.store.manifest(d) {
                    let mut admitted = lock(&self.signatures.admitted);
                    if admitted.len() >= MAX_VERDICTS {
                        admitted.clear();
                    }
                    for child in index_manifests(&m.bytes) {
                        admitted.insert((id, child), *d);
                    }
                }
            }
            other => {
                tracing::info!(upstream = %target.upstream, repo = %target.repo, manifest = %d, policy = &*rule.block, reason = %other.reason(), "signature check failed");
            }
        }
        if !matches!(verdict, Verdict::LookupFailed(_)) {
            let mut verdicts = lock(&self.signatures.verdicts);
            if verdicts.len() >= MAX_VERDICTS {
                verdicts.clear();
            }
            verdicts.insert((id, *d), (Instant::now(), verdict.clone()));
        }
        verdict
    }

    /// Reads `d`'s signature manifests (the `.sig` tag, then referrers) and checks each
    /// simple-signing layer against `rule`'s keys.
    async fn look_up_signatures(
        &self,
        target: &RepoTarget,
        d: &Digest,
        rule: &SignatureRule,
    ) -> Verdict {
        let mut manifests = Vec::new();
        let mut failure = None;
        if let Ok(tag) = signature_tag(d).parse() {
            match self
                .manifest(target, &Reference::Tag(tag), &[], false)
                .await
            {
                Ok(a) => manifests.extend(a.bytes),
                Err(CacheError::ManifestUnknown(_) | CacheError::NameUnknown(_)) => {}
                Err(e) => failure = Some(e.to_string()),
            }
        }
        if let Ok(answer) = self.referrers(target, d, None).await {
            let listed: Vec<Digest> = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|v| {
                    let list = v["manifests"].as_array()?.iter().filter(|m| {
                        m["artifactType"]
                            .as_str()
                            .is_none_or(|t| t == SIGNATURE_ARTIFACT_TYPE)
                    });
                    Some(
                        list.filter_map(|m| m["digest"].as_str()?.parse().ok())
                            .take(MAX_REFERRERS)
                            .collect(),
                    )
                })
                .unwrap_or_default();
            for r in listed {
                if let Ok(a) = self
                    .manifest(target, &Reference::Digest(r), &[], false)
                    .await
                {
                    manifests.extend(a.bytes);
                }
            }
        }
        let mut found = Verdict::Unsigned;
        for layer in manifests.iter().flat_map(|m| signature_layers(m)) {
            if layer.size > MAX_PAYLOAD_BYTES {
                continue;
            }
            let payload = match self.small_blob(target, &layer.payload).await {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(format!("signature payload {}: {e}", layer.payload));
                    continue;
                }
            };
            let Some(key) = rule.keys.signer(&payload, &layer.signature) else {
                if !matches!(found, Verdict::WrongDigest { .. }) {
                    found = Verdict::BadSignature(
                        "a signature is there, but none of these keys made it".into(),
                    );
                }
                continue;
            };
            match signed_manifest(&payload) {
                Ok(names) if names == *d => {
                    return Verdict::Verified {
                        key: key.to_string(),
                    }
                }
                Ok(names) => {
                    found = Verdict::WrongDigest {
                        key: key.to_string(),
                        names,
                    }
                }
                Err(why) => {
                    if !matches!(found, Verdict::WrongDigest { .. }) {
                        found = Verdict::BadSignature(why);
                    }
                }
            }
        }
        match (found, failure) {
            (Verdict::Unsigned, Some(why)) => Verdict::LookupFailed(why),
            (v, _) => v,
        }
    }

    /// A small blob of `target` (a signature payload), read whole through the cache.
    async fn small_blob(&self, target: &RepoTarget, d: &Digest) -> Result<Vec<u8>, CacheError> {
        let answer = self
            .blob_for(target, d, None, false, Requester::Client)
            .await?;
        let mut out = Vec::new();
        if let Some(mut body) = answer.body {
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| CacheError::Internal(format!("reading blob {d}: {e}")))?;
                out.extend_from_slice(&chunk);
                if out.len() as u64 > MAX_PAYLOAD_BYTES {
                    return Err(CacheError::Internal(format!(
                        "blob {d} is larger than a signature payload"
                    )));
                }
            }
        }
        Ok(out)
    }
}
