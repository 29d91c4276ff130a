//! Secrets and signed tokens.
//!
//! Owns: making a new client secret (`spk_` + 32 random bytes, base64url) and its
//! configured hash (`sha256:<hex>`), and the short-lived bearer tokens the edge's `/token`
//! endpoint issues: `v1.<payload>.<HMAC-SHA256 tag>` (base64url), signed with a key made at
//! process start, so a restart revokes every bearer token. The payload carries the holder's
//! name, scopes and expiry.
//!
//! Must not: decide what a scope allows (that is [`super::Access`]), or ever log or keep a
//! secret.

use crate::config::{Scope, TokenHash};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What every new secret starts with, so one found in a log or a paste is recognisable.
pub const SECRET_PREFIX: &str = "spk_";
/// Bearer tokens live this long.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);
const TOKEN_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the system random number generator failed")]
    Random,
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// A new client secret and the hash to configure for it.
pub struct NewSecret {
    pub secret: String,
    pub hash: TokenHash,
}

/// Makes a secret of 256 random bits.
pub fn new_secret() -> Result<NewSecret, TokenError> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| TokenError::Random)?;
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_secret(&secret);
    Ok(NewSecret { secret, hash })
}

/// The configured form of a secret. A fast hash is enough: secrets are 256 random bits.
pub fn hash_secret(secret: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    TokenHash(out)
}

/// What a bearer token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// The `[[auth.token]]` name; `None` for an anonymous client's token.
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Signs and checks bearer tokens with a per-process random key.
pub struct Signer {
    key: hmac::Key,
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    pub fn new() -> Result<Signer, TokenError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| TokenError::Random)?;
        Ok(Signer { key })
    }

    /// A token for `name` (None: anonymous) with `scopes`, valid from `now` for
    /// [`TOKEN_LIFETIME`].
    pub fn issue(&self, name: Option<&str>, scopes: &[Scope], now: SystemTime) -> String {
        let expires_at = unix_secs(now) + TOKEN_LIFETIME.as_secs();
        let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        // Names are [A-Za-z0-9._@-] (config validation), so '|' and ',' cannot appear.
        let payload = format!(
            "{expires_at}|{}|{}",
            scopes.join(","),
            name.map(|n| format!("t:{n}"))
                .unwrap_or_else(|| "anon".into())
        );
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!(
            "{TOKEN_VERSION}.{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }

    /// Checks the signature (in constant time) and the expiry.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > 1024 {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(TOKEN_VERSION), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| TokenError::BadSignature)?;
        // Signed by us: the rest is our own format.
        let text = std::str::from_utf8(&payload).map_err(|_| TokenError::Malformed)?;
        let mut fields = text.splitn(3, '|');
        let (Some(exp), Some(scopes), Some(who)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let expires_at: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        if unix_secs(now) >= expires_at {
            return Err(TokenError::Expired);
        }
        let scopes = scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TokenError::Malformed)?;
        let name = match who {
            "anon" => None,
            n => Some(
                n.strip_prefix("t:")
                    .ok_or(TokenError::Malformed)?
                    .to_string(),
            ),
        };
        Ok(Claims {
            name,
            scopes,
            expires_at,
        })
    }

    /// Compares a presented secret's hash with a configured one in constant time: both
    /// go through HMAC and ring compares the tags without early exit.
    pub fn same_hash(&self, presented: &TokenHash, configured: &hmac::Tag) -> bool {
        hmac::verify(&self.key, &presented.0, configured.as_ref()).is_ok()
    }

    /// The HMAC of a configured hash, computed once at start for [`Signer::same_hash`].
    pub fn tag_of(&self, configured: &TokenHash) -> hmac::Tag {
        hmac::sign(&self.key, &configured.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_as_configured() {
        let a = new_secret().expect("secret");
        let b = new_secret().expect("secret");
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(SECRET_PREFIX));
        assert_eq!(a.secret.len(), SECRET_PREFIX.len() + 43);
        assert_eq!(hash_secret(&a.secret), a.hash);
        let text = a.hash.to_string();
        assert_eq!(TokenHash::parse(&text).expect("parses"), a.hash);
    }

    #[test]
    fn tokens_round_trip_and_are_checked() {
        let s = Signer::new().expect("signer");
        let now = SystemTime::now();
        let t = s.issue(Some("ci"), &[Scope::PullPublic, Scope::PullPrivate], now);
        let c = s.verify(&t, now).expect("valid");
        assert_eq!(c.name.as_deref(), Some("ci"));
        assert_eq!(c.scopes, vec![Scope::PullPublic, Scope::PullPrivate]);
        let anon = s.issue(None, &[], now);
        assert_eq!(s.verify(&anon, now).expect("valid").name, None);
        // Expired after the lifetime.
        assert!(matches!(
            s.verify(&t, now + TOKEN_LIFETIME),
            Err(TokenError::Expired)
        ));
        // Another process's key does not verify it.
        let other = Signer::new().expect("signer");
        assert!(matches!(
            other.verify(&t, now),
            Err(TokenError::BadSignature)
        ));
        // Tampering with the payload breaks the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(b"99999999999|pull:private|t:ci");
        parts[1] = &forged;
        assert!(matches!(
            s.verify(&parts.join("."), now),
            Err(TokenError::BadSignature)
        ));
        for junk in ["", "v1", "v1..", "v2.a.b", "v1.!!.??", "v1.a.b.c"] {
            assert!(s.verify(junk, now).is_err(), "{junk}");
        }
    }

    #[test]
    fn hash_comparison() {
        let s = Signer::new().expect("signer");
        let a = new_secret().expect("secret");
        let tag = s.tag_of(&a.hash);
        assert!(s.same_hash(&hash_secret(&a.secret), &tag));
        assert!(!s.same_hash(&hash_secret("spk_wrong"), &tag));
    }
}
