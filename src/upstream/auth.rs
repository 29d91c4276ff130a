//! Authentication with one upstream: configured credentials, the Bearer token flow of the
//! Docker/OCI token spec, and HTTP Basic.
//!
//! Owns: the credentials (password or `password_file`), what this upstream is known to want
//! (nothing yet, Basic, or Bearer from a given realm), and the token cache: one slot per
//! scope, usable until 30 s before expiry (half the lifetime for short-lived tokens). A
//! slot is an async mutex, so concurrent requests for one scope share one token fetch.
//!
//! Must not: log or format credentials or tokens (every `Authorization` value is marked
//! sensitive, and `Debug` here is redacted), or retry more than the caller asks for.

use super::challenge::Challenge;
use super::transport::{self, RequestKind, UpstreamMetrics};
use super::trust::CredentialTrust;
use super::UpstreamError;
use crate::config::UpstreamConfig;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::Url;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lifetime of a token whose response gives no `expires_in` (the token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A token is no longer used this long before it expires...
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Largest token response accepted.
const TOKEN_RESPONSE_LIMIT: usize = 64 * 1024;
/// Above this many cached scopes, expired ones are dropped on the next insert.
const TOKEN_CACHE_PRUNE_AT: usize = 1024;

/// A username and password for this upstream. `Debug` never shows the password.
#[derive(Clone)]
pub(crate) struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// The configured credentials: `username` with `password`, or with the first line of
    /// `password_file` (read now, once). No username means anonymous.
    pub(crate) fn from_config(cfg: &UpstreamConfig) -> Result<Option<Credentials>, UpstreamError> {
        let Some(username) = cfg.username.clone() else {
            return Ok(None);
        };
        let password = match (&cfg.password, &cfg.password_file) {
            (Some(password), _) => password.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    UpstreamError::Config(format!(
                        "upstream {:?}: cannot read password_file {}: {e}",
                        cfg.name,
                        path.display()
                    ))
                })?;
                text.trim_end_matches(['\n', '\r']).to_string()
            }
            (None, None) => String::new(),
        };
        Ok(Some(Credentials { username, password }))
    }

    fn basic_header(&self) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        sensitive_header(&format!("Basic {encoded}"))
            .expect("base64 text is always a valid header value")
    }
}

/// An `Authorization` value that hyper will not log or index.
fn sensitive_header(value: &str) -> Option<HeaderValue> {
    let mut header = HeaderValue::from_str(value).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// Where Bearer tokens for this upstream come from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct TokenEndpoint {
    realm: Url,
    service: Option<String>,
}

/// What this upstream is known to want, learnt from its challenges.
#[derive(Clone, Debug)]
enum KnownScheme {
    Unknown,
    Basic,
    Bearer(TokenEndpoint),
}

struct CachedToken {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    usable_until: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Auth state of one upstream.
pub(crate) struct Authenticator {
    credentials: Option<Credentials>,
    /// Which token realms the credentials may be sent to.
    trust: CredentialTrust,
    /// Realms refused credentials, so each refusal is logged once.
    refused_realms: Mutex<Vec<String>>,
    known: Mutex<KnownScheme>,
    tokens: Mutex<HashMap<String, TokenSlot>>,
    metrics: UpstreamMetrics,
}

impl Authenticator {
    pub(crate) fn new(
        credentials: Option<Credentials>,
        trust: CredentialTrust,
        metrics: UpstreamMetrics,
    ) -> Self {
        Authenticator {
            credentials,
            trust,
            refused_realms: Mutex::new(Vec::new()),
            known: Mutex::new(KnownScheme::Unknown),
            tokens: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn known(&self) -> KnownScheme {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn learn(&self, scheme: KnownScheme) {
        *self
            .known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = scheme;
    }

    /// The `Authorization` to send up front for a request needing `scope`, from what this
    /// upstream asked for before: Basic credentials, or a (cached or freshly fetched)
    /// token. `None` until the upstream has challenged us once.
    pub(crate) async fn proactive(
        &self,
        client: &reqwest::Client,
        scope: &str,
    ) -> Result<Option<HeaderValue>, UpstreamError> {
        match self.known() {
            KnownScheme::Unknown => Ok(None),
            KnownScheme::Basic => Ok(self.credentials.as_ref().map(Credentials::basic_header)),
            KnownScheme::Bearer(endpoint) => {
                self.bearer(client, &endpoint, scope, None).await.map(Some)
            }
        }
    }

    /// The `Authorization` to retry with after a 401 carrying `challenges`. `sent` is what
    /// the refused request carried: a token equal to it is not reused, and Basic
    /// credentials already refused mean [`UpstreamError::Unauthorized`].
    pub(crate) async fn answer(
        &self,
        client: &reqwest::Client,
        challenges: &[Challenge],
        default_scope: &str,
        sent: Option<&HeaderValue>,
    ) -> Result<HeaderValue, UpstreamError> {
        let refused = UpstreamError::Unauthorized { status: 401 };
        if let Some(bearer) = challenges.iter().find(|c| c.is_bearer()) {
            let endpoint = token_endpoint(bearer)?;
            let scope = bearer
                .param("scope")
                .filter(|s| !s.is_empty())
                .unwrap_or(default_scope);
            self.learn(KnownScheme::Bearer(endpoint.clone()));
            let header = self.bearer(client, &endpoint, scope, sent).await?;
            if sent == Some(&header) {
                return Err(refused);
            }
            if scope != default_scope {
                // Requests for this repository will ask for `default_scope` up front.
                self.alias_token(default_scope, scope).await;
            }
            return Ok(header);
        }
        if challenges.iter().any(Challenge::is_basic) {
            let Some(credentials) = &self.credentials else {
                return Err(refused);
            };
            let header = credentials.basic_header();
            if sent == Some(&header) {
                return Err(refused);
            }
            self.learn(KnownScheme::Basic);
            return Ok(header);
        }
        Err(refused)
    }

    /// A token for `scope`: the cached one if still usable and not `rejected`, else a new
    /// one. Holding the scope's slot while fetching makes concurrent callers wait for and
    /// share this fetch.
    async fn bearer(
        &self,
        client: &reqwest::Client,
        endpoint: &TokenEndpoint,
        scope: &str,
        rejected: Option<&HeaderValue>,
    ) -> Result<HeaderValue, UpstreamError> {
        let slot = self.slot(scope);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.usable_until > Instant::now() && Some(&token.header) != rejected {
                return Ok(token.header.clone());
            }
        }
        let fresh = self.fetch_token(client, endpoint, scope).await?;
        let header = fresh.header.clone();
        *cached = Some(fresh);
        Ok(header)
    }

    /// Copies the token cached for `from_scope` into `to_scope`'s slot.
    async fn alias_token(&self, to_scope: &str, from_scope: &str) {
        let source = self.slot(from_scope);
        let copy = source.lock().await.as_ref().map(|t| CachedToken {
            header: t.header.clone(),
            usable_until: t.usable_until,
        });
        if let Some(copy) = copy {
            *self.slot(to_scope).lock().await = Some(copy);
        }
    }

    fn slot(&self, scope: &str) -> TokenSlot {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = tokens.get(scope) {
            return slot.clone();
        }
        if tokens.len() >= TOKEN_CACHE_PRUNE_AT {
            let now = Instant::now();
            // Keep slots in use (locked) or holding a usable token.
            tokens.retain(|_, slot| match slot.try_lock() {
                Ok(token) => token.as_ref().is_some_and(|t| t.usable_until > now),
                Err(_) => true,
            });
        }
        tokens.entry(scope.to_string()).or_default().clone()
    }

    async fn fetch_token(
        &self,
        client: &reqwest::Client,
        endpoint: &TokenEndpoint,
        scope: &str,
    ) -> Result<CachedToken, UpstreamError> {
        let mut url = endpoint.realm.clone();
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = &endpoint.service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = client.get(url);
        if let Some(credentials) = self.credentials_for(&endpoint.realm) {
            request = request.header(AUTHORIZATION, credentials.basic_header());
        }
        let requested_at = Instant::now();
        let result = self.request_token(request).await;
        match &result {
            Ok(_) => self.metrics.token_fetch("ok"),
            Err(UpstreamError::Unauthorized { .. }) => self.metrics.token_fetch("unauthorized"),
            Err(_) => self.metrics.token_fetch("error"),
        }
        let (token, lifetime) = result?;
        tracing::debug!(
            scope,
            lifetime_secs = lifetime.as_secs(),
            "fetched upstream token"
        );
        let header = sensitive_header(&format!("Bearer {token}")).ok_or_else(|| {
            UpstreamError::BadResponse("token is not a valid header value".to_string())
        })?;
        Ok(CachedToken {
            header,
            usable_until: requested_at + usable_lifetime(lifetime),
        })
    }

    /// The credentials to send to token realm `realm`: none when the trust rule refuses it
    /// (the token is then asked for anonymously; the refusal is logged once per realm).
    fn credentials_for(&self, realm: &Url) -> Option<&Credentials> {
        let credentials = self.credentials.as_ref()?;
        match self.trust.allows_realm(realm) {
            Ok(()) => Some(credentials),
            Err(why) => {
                let shown = format!(
                    "{}://{}{}",
                    realm.scheme(),
                    realm.host_str().unwrap_or_default(),
                    realm.port().map(|p| format!(":{p}")).unwrap_or_default()
                );
                let mut refused = self
                    .refused_realms
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !refused.contains(&shown) {
                    tracing::warn!(
                        upstream = %self.trust.upstream(),
                        realm = %shown,
                        "not sending the upstream's credentials to this token realm ({}); asking for a token without them",
                        why.as_sentence()
                    );
                    refused.push(shown);
                }
                None
            }
        }
    }

    /// Sends the token request; the token and its lifetime.
    async fn request_token(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(String, Duration), UpstreamError> {
        let response = transport::send(&self.metrics, RequestKind::Token, request).await?;
        if !response.status().is_success() {
            return Err(UpstreamError::from_response(response).await);
        }
        let body =
            transport::read_limited(response, TOKEN_RESPONSE_LIMIT, self.metrics.bytes()).await?;
        parse_token_response(&body)
    }
}

/// Realm and service of a Bearer challenge; the realm must be an http(s) URL.
fn token_endpoint(challenge: &Challenge) -> Result<TokenEndpoint, UpstreamError> {
    let realm = challenge
        .param("realm")
        .ok_or_else(|| UpstreamError::BadResponse("Bearer challenge without realm".into()))?;
    let realm = Url::parse(realm)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            UpstreamError::BadResponse(format!(
                "Bearer realm {:?} is not an http(s) URL",
                realm.chars().take(100).collect::<String>()
            ))
        })?;
    Ok(TokenEndpoint {
        realm,
        service: challenge
            .param("service")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
    })
}

/// `{"token": .., "access_token": .., "expires_in": .., "issued_at": ..}` → the token and
/// its lifetime. `issued_at` is ignored: expiry counts from when we asked, which is safe
/// against clock skew between us and the auth server.
fn parse_token_response(body: &[u8]) -> Result<(String, Duration), UpstreamError> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::BadResponse(format!("token response is not JSON: {e}")))?;
    let token = parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| UpstreamError::BadResponse("token response has no token".into()))?;
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

/// How long a token with `lifetime` is used: until [`TOKEN_EXPIRY_MARGIN`] before expiry,
/// or half its lifetime when that is shorter than twice the margin.
fn usable_lifetime(lifetime: Duration) -> Duration {
    lifetime - TOKEN_EXPIRY_MARGIN.min(lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn token_responses() {
        let (t, l) = parse_token_response(br#"{"token":"abc","expires_in":300}"#).expect("ok");
        assert_eq!((t.as_str(), l), ("abc", Duration::from_secs(300)));
        let (t, l) =
            parse_token_response(br#"{"access_token":"xyz","issued_at":"2024-01-01T00:00:00Z"}"#)
                .expect("ok");
        assert_eq!((t.as_str(), l), ("xyz", DEFAULT_TOKEN_LIFETIME));
        let (t, _) = parse_token_response(br#"{"token":"","access_token":"second"}"#).expect("ok");
        assert_eq!(t, "second");
        assert!(matches!(
            parse_token_response(br#"{"expires_in":5}"#),
            Err(UpstreamError::BadResponse(_))
        ));
        assert!(matches!(
            parse_token_response(b"<html>"),
            Err(UpstreamError::BadResponse(_))
        ));
    }

    #[test]
    fn usable_lifetimes() {
        assert_eq!(
            usable_lifetime(Duration::from_secs(300)),
            Duration::from_secs(270)
        );
        assert_eq!(
            usable_lifetime(Duration::from_secs(60)),
            Duration::from_secs(30)
        );
        assert_eq!(
            usable_lifetime(Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(usable_lifetime(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn realm_must_be_http_url() {
        let challenge = |realm: &str| Challenge {
            scheme: "bearer".into(),
            params: BTreeMap::from([
                ("realm".to_string(), realm.to_string()),
                ("service".to_string(), "svc".to_string()),
            ]),
        };
        let endpoint = token_endpoint(&challenge("https://auth.example/token")).expect("ok");
        assert_eq!(endpoint.service.as_deref(), Some("svc"));
        assert!(token_endpoint(&challenge("file:///etc/passwd")).is_err());
        assert!(token_endpoint(&challenge("/relative")).is_err());
        assert!(token_endpoint(&Challenge::default()).is_err());
    }

    #[test]
    fn credentials_debug_is_redacted_and_password_file_trimmed() {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        write!(file, "s3cret\r\n").expect("write");
        let mut cfg = UpstreamConfig::builtin("r.example", "https://r.example", "r");
        cfg.username = Some("bob".into());
        cfg.password_file = Some(file.path().to_path_buf());
        let credentials = Credentials::from_config(&cfg)
            .expect("readable")
            .expect("configured");
        assert_eq!(credentials.password, "s3cret");
        assert!(!format!("{credentials:?}").contains("s3cret"));
        let expected = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        assert_eq!(
            credentials.basic_header().to_str().ok(),
            Some(format!("Basic {expected}").as_str())
        );

        cfg.password_file = Some("/nonexistent/pw".into());
        let err = Credentials::from_config(&cfg).expect_err("unreadable");
        assert!(err.to_string().contains("/nonexistent/pw"), "{err}");

        cfg.username = None;
        assert!(Credentials::from_config(&cfg).expect("ok").is_none());
    }
}
