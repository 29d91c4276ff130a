//! A small registry token server on 127.0.0.1, like Docker Hub's auth service: issues
//! ES256 JWTs with an `x5c` header that registry:2's `auth.token` accepts (its
//! `rootcertbundle` is our certificate). Requires HTTP Basic credentials, and records every
//! token request so tests can see who asked for which scope.
#![allow(dead_code)]

use base64::Engine as _;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SERVICE: &str = "test-registry";
pub const ISSUER: &str = "test-issuer";

/// (query, `Authorization` header) of each token request.
pub type TokenRequests = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub struct TokenServer {
    pub addr: std::net::SocketAddr,
    pub cert_pem_path: std::path::PathBuf,
    pub requests: TokenRequests,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_b64: String,
    user: String,
    password: String,
}

impl TokenServer {
    pub async fn start(user: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token signer");
        let cert = params.self_signed(&key).expect("cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert_pem_path = dir.path().join("token-signer.pem");
        std::fs::write(&cert_pem_path, cert.pem()).expect("write cert");
        let rng = ring::rand::SystemRandom::new();
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .expect("ring key"),
            cert_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            user: user.into(),
            password: password.into(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, signer.clone(), reqs.clone()));
            }
        });
        TokenServer {
            addr,
            cert_pem_path,
            requests,
            _dir: dir,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A token for `scope` as the test's own push client needs it.
    pub async fn token(&self, user: &str, password: &str, scope: &str) -> String {
        let mut url = reqwest::Url::parse(&self.realm()).expect("realm");
        url.query_pairs_mut()
            .append_pair("service", SERVICE)
            .append_pair("scope", scope);
        let r = reqwest::Client::new()
            .get(url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        v["token"].as_str().expect("token").to_string()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn serve(mut sock: tokio::net::TcpStream, signer: Arc<Signer>, requests: TokenRequests) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match sock.read(&mut b).await {
            Ok(1) => buf.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let target = text.split(' ').nth(1).unwrap_or_default().to_string();
    let query = target
        .split_once('?')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let auth = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim().to_string());
    requests
        .lock()
        .expect("lock")
        .push((query.clone(), auth.clone()));
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", signer.user, signer.password))
    );
    if auth.as_deref() != Some(want.as_str()) {
        let body = r#"{"details":"bad credentials"}"#;
        let _ = sock
            .write_all(format!("HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
            .await;
        return;
    }
    let params: Vec<(String, String)> = url_pairs(&query);
    let scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut p = s.splitn(3, ':');
            let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
            Some(serde_json::json!({ "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>() }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [signer.cert_b64] });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": signer.user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand_id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let sig = signer
        .key
        .sign(&rng, signing_input.as_bytes())
        .expect("sign");
    let jwt = format!("{signing_input}.{}", b64url(sig.as_ref()));
    let body = serde_json::json!({ "token": jwt, "expires_in": 300 }).to_string();
    let _ = sock
        .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
        .await;
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}
