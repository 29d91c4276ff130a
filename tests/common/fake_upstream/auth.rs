//! The fake's authentication: none, Basic (one user), or Bearer with a token realm served
//! by the fake itself at `/token` (`WWW-Authenticate: Bearer realm=...,service=...,
//! scope=...`; Basic credentials or none → a token `tok-<n>` granting the requested scopes
//! the user has). A request without a valid token gets 401 and the challenge; a valid token
//! without the repository's scope (`pull` for GET and HEAD, `push` otherwise) gets 403.

use super::{error, response, with_header, FakeBody, Recorded, State};
use base64::Engine as _;
use hyper::Response;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(Bearer),
}

impl Auth {
    pub fn basic(user: &str, password: &str) -> Self {
        Auth::Basic {
            user: user.to_string(),
            password: password.to_string(),
        }
    }
}

/// A Bearer token realm. Scopes are `repository:<name>:<action>`, `<name>` may be `*`.
#[derive(Clone, Debug)]
pub struct Bearer {
    pub service: String,
    pub lifetime: Duration,
    /// Whether the challenge names the scope (some registries leave it to the client).
    pub scope_in_challenge: bool,
    /// (user, password, scopes).
    pub users: Vec<(String, String, Vec<String>)>,
    /// Scopes granted without credentials; `None`: the realm refuses anonymous requests.
    pub anonymous: Option<Vec<String>>,
    /// The base URL the challenge names for the realm (`<base>/token`) instead of the
    /// fake's own: another name of the same fake, to look like a foreign token host.
    pub realm_base: Option<String>,
}

impl Bearer {
    /// Service `fake-registry`, tokens for 300 s, scope in the challenge, nobody allowed.
    pub fn new() -> Self {
        Bearer {
            service: "fake-registry".to_string(),
            lifetime: Duration::from_secs(300),
            scope_in_challenge: true,
            users: Vec::new(),
            anonymous: None,
            realm_base: None,
        }
    }

    /// The challenge names `<base>/token` as the realm.
    pub fn realm_at(mut self, base: &str) -> Self {
        self.realm_base = Some(base.to_string());
        self
    }

    pub fn user(mut self, name: &str, password: &str, scopes: &[&str]) -> Self {
        let scopes = scopes.iter().map(|s| s.to_string()).collect();
        self.users
            .push((name.to_string(), password.to_string(), scopes));
        self
    }

    pub fn anonymous(mut self, scopes: &[&str]) -> Self {
        self.anonymous = Some(scopes.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn without_scope_in_challenge(mut self) -> Self {
        self.scope_in_challenge = false;
        self
    }
}

impl Default for Bearer {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
pub struct Tokens {
    /// token -> (granted scopes, expiry).
    live: HashMap<String, (Vec<String>, Instant)>,
    issued: usize,
}

impl Tokens {
    pub fn issued(&self) -> usize {
        self.issued
    }
}

pub fn basic_header(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn unauthorized(challenge: &str) -> Response<FakeBody> {
    with_header(
        error(401, "UNAUTHORIZED", "authentication required"),
        "www-authenticate",
        challenge,
    )
}

/// The refusal `req` (for repository `repo`, or the `/v2/` root) gets; `None` when it may go
/// on.
pub fn refusal(s: &State, req: &Recorded, repo: Option<&str>) -> Option<Response<FakeBody>> {
    match &s.auth {
        Auth::None => None,
        Auth::Basic { user, password } => {
            if req.header("authorization") == Some(basic_header(user, password).as_str()) {
                None
            } else {
                Some(unauthorized(r#"Basic realm="fake registry""#))
            }
        }
        Auth::Bearer(bearer) => {
            let action = if req.method == "GET" || req.method == "HEAD" {
                "pull"
            } else {
                "push"
            };
            let scopes = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .and_then(|t| s.tokens.live.get(t))
                .filter(|(_, expires)| Instant::now() < *expires)
                .map(|(scopes, _)| scopes);
            let Some(scopes) = scopes else {
                let scope = match repo {
                    Some(name) if bearer.scope_in_challenge => {
                        format!(r#",scope="repository:{name}:{action}""#)
                    }
                    _ => String::new(),
                };
                return Some(unauthorized(&format!(
                    r#"Bearer realm="{}/token",service="{}"{scope}"#,
                    bearer.realm_base.as_deref().unwrap_or(&s.base_url),
                    bearer.service
                )));
            };
            match repo {
                Some(name) if !scopes.contains(&format!("repository:{name}:{action}")) => Some(
                    error(403, "DENIED", "requested access to the resource is denied"),
                ),
                _ => None,
            }
        }
    }
}

/// The token endpoint: checks `service` and the credentials, grants the requested scopes
/// the user has.
pub fn token(s: &mut State, req: &Recorded) -> Response<FakeBody> {
    let Auth::Bearer(bearer) = &s.auth else {
        return response(404, "no token realm here");
    };
    if req.query_param("service").as_deref() != Some(bearer.service.as_str()) {
        return response(400, "bad service");
    }
    let allowed = match req.header("authorization") {
        Some(given) => bearer
            .users
            .iter()
            .find(|(u, p, _)| basic_header(u, p) == given)
            .map(|(_, _, scopes)| scopes.clone()),
        None => bearer.anonymous.clone(),
    };
    let Some(allowed) = allowed else {
        return response(401, "bad credentials");
    };
    let mut granted = Vec::new();
    for scope in req.query_params("scope") {
        for one in scope.split(' ') {
            let mut parts = one.splitn(3, ':');
            let (Some("repository"), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            for action in actions.split(',') {
                let has = allowed.contains(&format!("repository:{name}:{action}"))
                    || allowed.contains(&format!("repository:*:{action}"));
                if has {
                    granted.push(format!("repository:{name}:{action}"));
                }
            }
        }
    }
    let lifetime = bearer.lifetime;
    s.tokens.issued += 1;
    let token = format!("tok-{}", s.tokens.issued);
    s.tokens
        .live
        .insert(token.clone(), (granted, Instant::now() + lifetime));
    let body = serde_json::json!({"token": token, "expires_in": lifetime.as_secs()});
    with_header(
        response(200, body.to_string()),
        "content-type",
        "application/json",
    )
}
