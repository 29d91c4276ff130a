//! Cooldowns (`[[policy]] cooldown`): a quarantine for digests that appeared upstream a
//! short while ago. A tag whose newest digest the edge first saw less than the block's
//! `cooldown` ago resolves to the newest digest it pointed at before that may be served:
//! one that has served its time or an admin released, or (open mode) the first digest the
//! edge saw the tag point at, which open mode served at once. With none, `mode = "open"`
//! serves the newest and `"closed"` refuses until the first of them comes out. A by-digest pull of a digest held
//! back this way is refused the same way; a digest never seen through a tag is not held.
//! The manifest a cooldown serves instead (and, for an index, the manifests it lists) is
//! held in the store against eviction and expiry while it does.
//!
//! Owns: reading a tag's history against a rule ([`resolve`], [`digest_hold`]), the holds
//! and the releases. Must not: decide which rule applies (the policy, in the registry's
//! front door), or revalidate tags or answer clients itself (`gate.rs` does, first).

use super::{Cache, CacheError};
use crate::config::{CooldownMode, CooldownRule};
use crate::oci::{index_manifests, Digest, Reference, RepoTarget, Tag};
use crate::store::{SeenDigest, TagKey, TagRecord};
use std::time::{Duration, SystemTime};

/// What a tag resolves to under a cooldown now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Resolution {
    /// Its newest digest (cooled down, released, or open mode with nothing earlier).
    Newest,
    /// An earlier digest, while the newer ones cool down (until `until`).
    Earlier { digest: Digest, until: SystemTime },
    /// Nothing yet (closed mode): the first digest comes out at `until`.
    Refused { until: SystemTime },
}

/// A tag's history, oldest first, ending with its digest (records from before histories
/// were kept hold only their digest, first seen when fetched).
pub(super) fn history(rec: &TagRecord) -> Vec<SeenDigest> {
    let mut seen = rec.seen.clone();
    if seen.last().map(|s| s.digest) != Some(rec.digest) {
        seen.retain(|s| s.digest != rec.digest);
        seen.push(SeenDigest {
            digest: rec.digest,
            first_seen: rec.fetched_at,
            released: false,
        });
    }
    seen
}

/// The history of a tag that now points at `digest` (seen at `now`), after `before`: a
/// digest it pointed at before keeps when it was first seen (a rollback to a digest that
/// already cooled down is served at once) and its release.
pub(super) fn moved_to(
    before: Option<&TagRecord>,
    digest: Digest,
    now: SystemTime,
) -> Vec<SeenDigest> {
    let mut seen = before.map(history).unwrap_or_default();
    let entry = match seen.iter().position(|s| s.digest == digest) {
        Some(i) => seen.remove(i),
        None => SeenDigest {
            digest,
            first_seen: now,
            released: false,
        },
    };
    seen.push(entry);
    let keep = crate::store::TAG_HISTORY;
    if seen.len() > keep {
        seen.drain(..seen.len() - keep);
    }
    seen
}

fn out_at(s: &SeenDigest, period: Duration) -> SystemTime {
    s.first_seen + period
}

fn cooled(s: &SeenDigest, period: Duration, now: SystemTime) -> bool {
    s.released || out_at(s, period) <= now
}

/// Whether the `i`th digest of a tag's history may be served: it cooled down or was
/// released, or (open mode) it is the first the edge saw the tag point at, which open mode
/// served when nothing came before it.
fn admissible(seen: &[SeenDigest], i: usize, rule: &CooldownRule, now: SystemTime) -> bool {
    cooled(&seen[i], rule.period, now) || (i == 0 && rule.mode == CooldownMode::Open)
}

/// What `rec`'s tag resolves to under `rule` at `now`.
pub(super) fn resolve(rec: &TagRecord, rule: &CooldownRule, now: SystemTime) -> Resolution {
    let seen = history(rec);
    let Some(last) = seen.len().checked_sub(1) else {
        return Resolution::Newest;
    };
    if admissible(&seen, last, rule, now) {
        return Resolution::Newest;
    }
    // The first time one of the digests still held back comes out (asked again then, the
    // tag resolves to that one, or to a newer one).
    let next_out = |from: usize| {
        seen[from..]
            .iter()
            .filter(|s| !cooled(s, rule.period, now))
            .map(|s| out_at(s, rule.period))
            .min()
            .unwrap_or_else(|| out_at(&seen[last], rule.period))
    };
    match (0..last).rev().find(|&i| admissible(&seen, i, rule, now)) {
        Some(i) => Resolution::Earlier {
            digest: seen[i].digest,
            until: next_out(i + 1),
        },
        None => Resolution::Refused { until: next_out(0) },
    }
}

/// Whether a by-digest pull of `d` is held back under `rule`: `Some((tag, until))` when
/// some tag of the repository has pointed at it, none would serve it now, and it may not
/// be served in any of them.
pub(super) fn digest_hold(
    tags: &[(Tag, TagRecord)],
    d: &Digest,
    rule: &CooldownRule,
    now: SystemTime,
) -> Option<(Tag, SystemTime)> {
    let mut held: Option<(Tag, SystemTime)> = None;
    for (tag, rec) in tags {
        let seen = history(rec);
        let Some(i) = seen.iter().position(|s| s.digest == *d) else {
            continue;
        };
        if admissible(&seen, i, rule, now) {
            return None;
        }
        let until = out_at(&seen[i], rule.period);
        if held.as_ref().is_none_or(|(_, u)| until < *u) {
            held = Some((tag.clone(), until));
        }
    }
    held
}

/// A time in refusals and decisions: RFC 3339, UTC, to the second.
fn when(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The end of a cooldown refusal: when it will be allowed, and how to allow it sooner.
fn allowed_after(until: SystemTime) -> String {
    format!(
        "it will be allowed after {} (an admin can release it sooner with `sparkcr-edge policy release`)",
        when(until)
    )
}

impl Cache {
    /// The digest `rec`'s tag resolves to under `rule` now, with the decision in words when
    /// it is an earlier one held in place of the newest (its manifest then held in the
    /// store), or `DENIED` saying when the tag will be allowed.
    pub(super) fn choose_under_cooldown(
        &self,
        target: &RepoTarget,
        tag: &Tag,
        rec: &TagRecord,
        rule: &CooldownRule,
    ) -> Result<(Digest, Option<String>), CacheError> {
        match resolve(rec, rule, SystemTime::now()) {
            Resolution::Newest => Ok((rec.digest, None)),
            Resolution::Earlier { digest, until } => {
                self.hold_for_cooldown(&digest, until);
                self.metrics
                    .policy_cooldowns
                    .with_label_values(&["held_back"])
                    .inc();
                tracing::info!(upstream = %target.upstream, repo = %target.repo, tag = %tag, newest = %rec.digest, served = %digest, policy = &*rule.block, "tag moved upstream less than its cooldown ago: serving the digest before it");
                let decision = format!(
                    "cooldown (policy block \"{}\"): served {digest} in place of {}, held back until {}",
                    rule.block,
                    rec.digest,
                    when(until)
                );
                Ok((digest, Some(decision)))
            }
            Resolution::Refused { until } => Err(self.cooldown_refusal(
                rule,
                format!(
                    "{}:{} through {} points at {}, which this edge first saw less than {} ago: policy block \"{}\" holds new digests back for that long (mode = \"closed\"), and the tag has no earlier digest to serve; {}",
                    target.repo,
                    tag,
                    target.upstream,
                    rec.digest,
                    humantime::format_duration(rule.period),
                    rule.block,
                    allowed_after(until)
                ),
            )),
        }
    }

    /// `DENIED` by `rule`'s block, counted as a cooldown refusal.
    fn cooldown_refusal(&self, rule: &CooldownRule, message: String) -> CacheError {
        self.metrics
            .policy_cooldowns
            .with_label_values(&["refused"])
            .inc();
        CacheError::PolicyRefused {
            block: rule.block.clone(),
            check: "cooldown",
            message,
        }
    }

    /// `DENIED` for a by-digest pull of a digest a cooldown holds back.
    pub(super) fn refuse_held_digest(
        &self,
        target: &RepoTarget,
        d: &Digest,
        rule: &CooldownRule,
    ) -> Result<(), CacheError> {
        let mut tags = self.store.repo_tags(&target.upstream, &target.repo)?;
        tags.retain(|(t, _)| !super::gate::is_artifact_tag(t));
        let Some((tag, until)) = digest_hold(&tags, d, rule, SystemTime::now()) else {
            return Ok(());
        };
        Err(self.cooldown_refusal(
            rule,
            format!(
                "{}@{d} through {} is held back: this edge first saw {}:{tag} point at it less than {} ago, and policy block \"{}\" holds new digests back for that long; {}",
                target.repo,
                target.upstream,
                target.repo,
                humantime::format_duration(rule.period),
                rule.block,
                allowed_after(until)
            ),
        ))
    }

    /// Keeps the manifest a cooldown serves (and those an index lists) in the store until
    /// `until`.
    fn hold_for_cooldown(&self, d: &Digest, until: SystemTime) {
        self.store.hold_manifest(d, until);
        if let Ok(Some(m)) = self.store.manifest(d) {
            for child in index_manifests(&m.bytes) {
                self.store.hold_manifest(&child, until);
            }
        }
    }

    /// Releases `reference` of `target` from cooldowns early (`policy release`): a digest,
    /// or a tag's newest digest. Returns the digest and the tags that had pointed at it.
    pub fn release_from_cooldown(
        &self,
        target: &RepoTarget,
        reference: &Reference,
        reason: &str,
    ) -> Result<(Digest, Vec<Tag>), CacheError> {
        let digest = match reference {
            Reference::Digest(d) => *d,
            Reference::Tag(t) => {
                let key = TagKey {
                    upstream: target.upstream.clone(),
                    repo: target.repo.clone(),
                    tag: t.clone(),
                };
                self.store
                    .tag(&key)?
                    .ok_or_else(|| {
                        CacheError::ManifestUnknown(format!(
                            "{}:{t} through {} (the edge has not seen this tag, so nothing of it is held back)",
                            target.repo, target.upstream
                        ))
                    })?
                    .digest
            }
        };
        let tags = self
            .store
            .release_digest(&target.upstream, &target.repo, &digest)?;
        if tags.is_empty() {
            return Err(CacheError::ManifestUnknown(format!(
                "{}@{digest} through {} (no tag the edge has seen pointed at it, so nothing holds it back)",
                target.repo, target.upstream
            )));
        }
        self.metrics
            .policy_cooldowns
            .with_label_values(&["released"])
            .inc();
        let names: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
        tracing::warn!(upstream = %target.upstream, repo = %target.repo, digest = %digest, tags = %names.join(","), reason, "released from cooldown by an admin");
        Ok((digest, tags))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn rule(mode: CooldownMode) -> CooldownRule {
        CooldownRule {
            block: "quarantine".into(),
            period: HOUR,
            mode,
        }
    }

    /// A tag record that moved through `steps` (digest, seen at), newest last.
    fn record(steps: &[(u8, SystemTime)]) -> TagRecord {
        let mut rec: Option<TagRecord> = None;
        for &(n, at) in steps {
            let seen = moved_to(rec.as_ref(), d(n), at);
            rec = Some(TagRecord {
                digest: d(n),
                media_type: "m".into(),
                fetched_at: at,
                validated_at: at,
                seen,
            });
        }
        rec.expect("at least one step")
    }

    #[test]
    fn a_new_digest_waits_behind_the_one_before_until_it_cools_down() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let moved = t0 + 5 * HOUR;
        let rec = record(&[(1, t0), (2, moved)]);
        let open = rule(CooldownMode::Open);
        assert_eq!(
            resolve(&rec, &open, moved + HOUR / 2),
            Resolution::Earlier {
                digest: d(1),
                until: moved + HOUR
            }
        );
        assert_eq!(resolve(&rec, &open, moved + HOUR), Resolution::Newest);
        // Closed mode changes nothing when there is an earlier digest.
        assert_eq!(
            resolve(&rec, &rule(CooldownMode::Closed), moved + HOUR / 2),
            Resolution::Earlier {
                digest: d(1),
                until: moved + HOUR
            }
        );
    }

    #[test]
    fn a_quick_move_after_the_first_digest_waits_behind_it_in_open_mode_only() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let moved = t0 + HOUR / 6;
        let rec = record(&[(1, t0), (2, moved)]);
        let now = moved + HOUR / 6;
        // Open mode served the first digest at once: the new one waits behind it.
        assert_eq!(
            resolve(&rec, &rule(CooldownMode::Open), now),
            Resolution::Earlier {
                digest: d(1),
                until: moved + HOUR
            }
        );
        // Closed mode served neither yet: the first comes out first.
        let closed = rule(CooldownMode::Closed);
        assert_eq!(
            resolve(&rec, &closed, now),
            Resolution::Refused { until: t0 + HOUR }
        );
        assert_eq!(
            resolve(&rec, &closed, t0 + HOUR),
            Resolution::Earlier {
                digest: d(1),
                until: moved + HOUR
            }
        );
    }

    #[test]
    fn with_nothing_earlier_open_serves_and_closed_refuses_until_it_cools_down() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let rec = record(&[(1, t0)]);
        assert_eq!(
            resolve(&rec, &rule(CooldownMode::Open), t0),
            Resolution::Newest
        );
        assert_eq!(
            resolve(&rec, &rule(CooldownMode::Closed), t0 + HOUR / 4),
            Resolution::Refused { until: t0 + HOUR }
        );
        assert_eq!(
            resolve(&rec, &rule(CooldownMode::Closed), t0 + HOUR),
            Resolution::Newest
        );
    }

    #[test]
    fn two_quick_moves_fall_back_to_the_last_digest_that_cooled_down() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let (b, c) = (t0 + 10 * HOUR, t0 + 10 * HOUR + HOUR / 2);
        let rec = record(&[(1, t0), (2, b), (3, c)]);
        let open = rule(CooldownMode::Open);
        // B comes out first: the tag resolves to B then, to C after that.
        assert_eq!(
            resolve(&rec, &open, c),
            Resolution::Earlier {
                digest: d(1),
                until: b + HOUR
            }
        );
        assert_eq!(
            resolve(&rec, &open, b + HOUR),
            Resolution::Earlier {
                digest: d(2),
                until: c + HOUR
            }
        );
        assert_eq!(resolve(&rec, &open, c + HOUR), Resolution::Newest);
    }

    #[test]
    fn a_rollback_to_a_cooled_digest_is_served_at_once_and_a_release_counts() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let rec = record(&[
            (1, t0),
            (2, t0 + 10 * HOUR),
            (1, t0 + 10 * HOUR + 60 * Duration::from_secs(1)),
        ]);
        let open = rule(CooldownMode::Open);
        assert_eq!(
            resolve(&rec, &open, t0 + 10 * HOUR + HOUR / 2),
            Resolution::Newest
        );
        assert_eq!(history(&rec).len(), 2, "each digest once");

        let mut moved = record(&[(1, t0), (2, t0 + 10 * HOUR)]);
        let soon = t0 + 10 * HOUR + HOUR / 4;
        assert_ne!(resolve(&moved, &open, soon), Resolution::Newest);
        moved.seen = history(&moved);
        if let Some(s) = moved.seen.iter_mut().find(|s| s.digest == d(2)) {
            s.released = true;
        }
        assert_eq!(resolve(&moved, &open, soon), Resolution::Newest);
    }

    #[test]
    fn by_digest_only_what_a_tag_holds_back_is_refused() {
        let t0 = SystemTime::UNIX_EPOCH + 100 * HOUR;
        let moved = t0 + 10 * HOUR;
        let soon = moved + HOUR / 4;
        let tag = |s: &str| s.parse::<Tag>().expect("tag");
        let latest = record(&[(1, t0), (2, moved)]);
        let open = rule(CooldownMode::Open);
        let closed = rule(CooldownMode::Closed);
        let tags = vec![(tag("latest"), latest.clone())];
        assert_eq!(
            digest_hold(&tags, &d(2), &open, soon),
            Some((tag("latest"), moved + HOUR))
        );
        assert_eq!(
            digest_hold(&tags, &d(1), &open, soon),
            None,
            "served by the tag"
        );
        assert_eq!(
            digest_hold(&tags, &d(9), &open, soon),
            None,
            "never seen through a tag"
        );
        assert_eq!(
            digest_hold(&tags, &d(2), &open, moved + HOUR),
            None,
            "cooled down"
        );
        // Another tag that already served it long ago: not held.
        let stable = record(&[(2, t0)]);
        let both = vec![(tag("latest"), latest), (tag("v2"), stable)];
        assert_eq!(digest_hold(&both, &d(2), &open, soon), None);
        // A fresh tag with nothing earlier: open mode serves it, closed mode holds it.
        let fresh = vec![(tag("new"), record(&[(5, moved)]))];
        assert_eq!(digest_hold(&fresh, &d(5), &open, soon), None);
        assert_eq!(
            digest_hold(&fresh, &d(5), &closed, soon),
            Some((tag("new"), moved + HOUR))
        );
    }
}
