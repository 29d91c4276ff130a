//! What may be pulled through the edge: the `[[policy]]` blocks compiled (globs, an
//! allowing block's cooldown, and the public keys its `require_signature` files hold), the
//! first block that fits an upstream and a repository deciding (none fits: allowed), and
//! the blocks in force, swapped whole when the config is reloaded (SIGHUP) so a request
//! sees one set.
//!
//! Owns: matching, loading the key files blocks name, and the blocks in force. Must not:
//! know who asks (that is `access`), speak HTTP (the registry's front door turns a denial
//! into `403 DENIED`), apply a cooldown or check a signature (the cache's trust gate does,
//! with the rules a verdict carries), or read the config file (the daemon does, and hands
//! the blocks over).

use crate::config::{CooldownRule, PolicyAction, PolicyConfig};
use crate::oci::signature::{KeySet, PublicKey, SignatureRule};
use globset::{Candidate, GlobSet, GlobSetBuilder};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// A block, without its globs (they are all in [`Policy::globs`]).
struct Block {
    name: Arc<str>,
    /// `None`: every upstream.
    upstream: Option<String>,
    action: PolicyAction,
    cooldown: Option<Arc<CooldownRule>>,
    signature: Option<Arc<SignatureRule>>,
}

/// A set of blocks, in config order. Every block's globs are compiled into one set, so a
/// decision is one matching pass over the repository name however many blocks there are.
#[derive(Default)]
pub struct Policy {
    blocks: Vec<Block>,
    globs: GlobSet,
    /// The block of each glob of `globs`, by the glob's index.
    block_of: Vec<usize>,
}

impl Verdict {
    /// The cooldown the deciding block puts on tags, if any.
    pub fn cooldown(&self) -> Option<&Arc<CooldownRule>> {
        match self {
            Verdict::AllowedBy { cooldown, .. } => cooldown.as_ref(),
            _ => None,
        }
    }

    /// The signatures the deciding block requires, if any.
    pub fn signature(&self) -> Option<&Arc<SignatureRule>> {
        match self {
            Verdict::AllowedBy { signature, .. } => signature.as_ref(),
            _ => None,
        }
    }
}

/// What the policy says about one repository of one upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No block fits: allowed.
    Open,
    /// Allowed by the named block, under its cooldown and signature rule if it has them.
    AllowedBy {
        block: Arc<str>,
        cooldown: Option<Arc<CooldownRule>>,
        signature: Option<Arc<SignatureRule>>,
    },
    /// Denied by the named block.
    DeniedBy(Arc<str>),
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy block {block}: {glob:?} is not a glob: {source}")]
    Glob {
        block: String,
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("policy block {block}: require_signature: {}: {reason}", path.display())]
    Key {
        block: String,
        path: PathBuf,
        reason: String,
    },
}

/// The keys of `paths`, each named by its file name.
fn load_keys(block: &str, paths: &[PathBuf]) -> Result<KeySet, PolicyError> {
    let mut keys = Vec::new();
    for path in paths {
        let failed = |reason: String| PolicyError::Key {
            block: block.to_string(),
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
        let key = PublicKey::from_pem(&pem).map_err(|e| failed(e.to_string()))?;
        keys.push((path.display().to_string(), key));
    }
    Ok(KeySet::new(keys))
}

impl Policy {
    /// The blocks of `[[policy]]` (already validated by the config's loader; a glob that
    /// does not compile is still an error here, never a panic).
    pub fn from_config(blocks: &[PolicyConfig]) -> Result<Policy, PolicyError> {
        let mut out = Vec::new();
        let mut set = GlobSetBuilder::new();
        let mut block_of = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let name = b.display_name(i);
            for g in &b.matches {
                let glob =
                    crate::config::policy::compile_glob(g).map_err(|source| PolicyError::Glob {
                        block: name.clone(),
                        glob: g.clone(),
                        source,
                    })?;
                set.add(glob);
                block_of.push(i);
            }
            let signature = match b.require_signature.as_slice() {
                [] => None,
                paths => Some(Arc::new(SignatureRule {
                    block: name.as_str().into(),
                    keys: load_keys(&name, paths)?,
                })),
            };
            out.push(Block {
                name: name.into(),
                upstream: (b.upstream != "*").then(|| b.upstream.clone()),
                action: b.action,
                cooldown: b.cooldown_rule(i).map(Arc::new),
                signature,
            });
        }
        let globs = set.build().map_err(|source| PolicyError::Glob {
            block: "(all blocks)".into(),
            glob: blocks
                .iter()
                .flat_map(|b| b.matches.iter().cloned())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        })?;
        Ok(Policy {
            blocks: out,
            globs,
            block_of,
        })
    }

    /// How many blocks there are.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The verdict on `repo` (as the upstream names it) through `upstream`.
    pub fn decide(&self, upstream: &str, repo: &str) -> Verdict {
        if self.blocks.is_empty() {
            return Verdict::Open;
        }
        let candidate = Candidate::new(repo);
        let first = self
            .globs
            .matches_candidate(&candidate)
            .into_iter()
            .map(|g| self.block_of[g])
            .filter(|&i| {
                self.blocks[i]
                    .upstream
                    .as_deref()
                    .is_none_or(|u| u == upstream)
            })
            .min();
        match first.map(|i| &self.blocks[i]) {
            None => Verdict::Open,
            Some(b) if b.action == PolicyAction::Allow => Verdict::AllowedBy {
                block: b.name.clone(),
                cooldown: b.cooldown.clone(),
                signature: b.signature.clone(),
            },
            Some(b) => Verdict::DeniedBy(b.name.clone()),
        }
    }
}

/// The policy in force, shared by every request and replaced whole on reload; it counts
/// the pulls it denies.
#[derive(Default)]
pub struct PolicyGate {
    current: RwLock<Arc<Policy>>,
    denials: Option<prometheus::IntCounter>,
}

impl PolicyGate {
    /// `policy` in force, its denials counted in `denials`.
    pub fn new(policy: Policy, denials: prometheus::IntCounter) -> PolicyGate {
        PolicyGate {
            current: RwLock::new(Arc::new(policy)),
            denials: Some(denials),
        }
    }

    /// The verdict of the policy in force on `repo` through `upstream` (counted when
    /// denied).
    pub fn decide(&self, upstream: &str, repo: &str) -> Verdict {
        let verdict = self.current().decide(upstream, repo);
        if let (Verdict::DeniedBy(_), Some(c)) = (&verdict, &self.denials) {
            c.inc();
        }
        verdict
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts `policy` in force for every request from now on.
    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(name: &str, upstream: &str, matches: &[&str], action: PolicyAction) -> PolicyConfig {
        PolicyConfig {
            name: (!name.is_empty()).then(|| name.to_string()),
            upstream: upstream.into(),
            matches: matches.iter().map(|s| s.to_string()).collect(),
            action,
            cooldown: None,
            mode: None,
            require_signature: Vec::new(),
        }
    }

    #[test]
    fn the_first_block_that_fits_decides_and_none_means_open() {
        use PolicyAction::*;
        let p = Policy::from_config(&[
            block("hub-official", "docker.io", &["library/*"], Allow),
            block("", "docker.io", &["**"], Deny),
            block("no-test-images", "*", &["**/test-*", "test-*"], Deny),
        ])
        .expect("valid");
        assert_eq!(
            p.decide("docker.io", "library/nginx"),
            Verdict::AllowedBy {
                block: "hub-official".into(),
                cooldown: None,
                signature: None,
            }
        );
        assert_eq!(
            p.decide("docker.io", "bitnami/redis"),
            Verdict::DeniedBy("policy[1]".into())
        );
        assert_eq!(
            p.decide("docker.io", "library/nginx/extra"),
            Verdict::DeniedBy("policy[1]".into()),
            "* stays within one segment"
        );
        assert_eq!(p.decide("ghcr.io", "team/app"), Verdict::Open);
        assert_eq!(
            p.decide("ghcr.io", "team/sub/test-x"),
            Verdict::DeniedBy("no-test-images".into())
        );
        assert_eq!(
            p.decide("ghcr.io", "test-y"),
            Verdict::DeniedBy("no-test-images".into())
        );
        assert!(Policy::default().is_empty());
        assert_eq!(Policy::default().decide("a", "b"), Verdict::Open);
    }

    #[test]
    fn an_allowing_block_hands_its_cooldown_to_the_pull() {
        use crate::config::units::HumanDuration;
        use crate::config::CooldownMode;
        let mut quarantine = block("q", "*", &["team/*"], PolicyAction::Allow);
        quarantine.cooldown = Some(HumanDuration(std::time::Duration::from_secs(3600)));
        quarantine.mode = Some(CooldownMode::Closed);
        let p = Policy::from_config(&[quarantine]).expect("valid");
        let verdict = p.decide("docker.io", "team/app");
        let rule = verdict.cooldown().expect("a cooldown");
        assert_eq!(
            (&*rule.block, rule.period.as_secs(), rule.mode),
            ("q", 3600, CooldownMode::Closed)
        );
        assert!(p.decide("docker.io", "other/app").cooldown().is_none());
    }

    #[test]
    fn a_key_file_that_holds_no_usable_key_is_refused_naming_block_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("team.pub");
        std::fs::write(&path, "not a key").expect("write");
        let mut signed = block("signed", "*", &["**"], PolicyAction::Allow);
        signed.require_signature = vec![path.clone()];
        let Err(e) = Policy::from_config(&[signed]) else {
            panic!("a file without a key must be refused");
        };
        let msg = e.to_string();
        assert!(msg.contains("policy block signed"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("PUBLIC KEY"), "{msg}");
    }

    #[test]
    fn a_gate_swaps_the_whole_policy() {
        let denials = prometheus::IntCounter::new("d", "d").expect("counter");
        let gate = PolicyGate::new(Policy::default(), denials.clone());
        let before = gate.current();
        assert_eq!(before.decide("a.io", "x"), Verdict::Open);
        gate.replace(
            Policy::from_config(&[block("", "*", &["x"], PolicyAction::Deny)]).expect("valid"),
        );
        assert_eq!(
            gate.decide("a.io", "x"),
            Verdict::DeniedBy("policy[0]".into())
        );
        assert_eq!(gate.decide("a.io", "y"), Verdict::Open);
        assert_eq!(denials.get(), 1, "denials counted");
        assert_eq!(
            before.decide("a.io", "x"),
            Verdict::Open,
            "a request's policy stays as it was"
        );
    }
}
