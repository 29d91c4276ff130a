//! The edge over the network, as this client sees it: `/v2/` answers over a trusted
//! connection, the stored login is needed (or not) and accepted, and a given image's
//! manifest resolves through the edge's path-prefix route.

use super::machine::{login_check, Found, Login};
use super::{Check, DoctorOptions};
use crate::oci::MANIFEST_MEDIA_TYPES;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const S: &str = "edge";

/// An HTTP client trusting the system store plus `ca_files`.
fn client(ca_files: &[PathBuf]) -> Result<reqwest::Client, String> {
    let mut roots = Vec::new();
    for f in ca_files {
        let certs = CertificateDer::pem_file_iter(f)
            .map_err(|e| format!("{}: {e}", f.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", f.display()))?;
        roots.extend(certs);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider.clone())
            .map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("sparkcr-edge-doctor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The error chain of a reqwest error in one line.
fn chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

pub(super) async fn check_edge(opts: &DoctorOptions, found: &Found) -> Vec<Check> {
    let (edge, ca_files) = (&opts.edge, &found.ca_files);
    let mut out = Vec::new();
    let http = match client(ca_files) {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::problem(
                S,
                format!("cannot read a CA file: {e}"),
                "pass readable PEM files with --ca",
            ));
            return out;
        }
    };
    let ping = format!("{}/v2/", edge.url());
    let needs_login = match http.get(&ping).send().await {
        Err(e) => {
            let why = chain(&e);
            let tls =
                why.contains("certificate") || why.contains("UnknownIssuer") || why.contains("tls");
            out.push(if tls {
                Check::problem(
                    S,
                    format!("{ping}: the edge's certificate is not trusted here ({why})"),
                    "copy the edge's ca.pem to /usr/local/share/ca-certificates/sparkcr-edge.crt and run update-ca-certificates (`sparkcr-edge tls self-signed` prints every client's way)",
                )
            } else {
                Check::problem(
                    S,
                    format!("{ping}: no answer ({why})"),
                    "check the URL, that the edge runs (systemctl status sparkcr-edge) and that a firewall lets this machine in",
                )
            });
            return out;
        }
        Ok(r) if r.status() == 200 => {
            out.push(Check::ok(
                S,
                format!(
                    "{ping} answers 200{}",
                    if edge.insecure() {
                        ""
                    } else {
                        " over a trusted certificate"
                    }
                ),
            ));
            false
        }
        Ok(r) if r.status() == 401 => {
            out.push(Check::ok(
                S,
                format!(
                    "{ping} answers 401: this edge wants a login{}",
                    if edge.insecure() {
                        ""
                    } else {
                        " (certificate trusted)"
                    }
                ),
            ));
            true
        }
        Ok(r) if r.status() == 403 => {
            out.push(Check::problem(
                S,
                format!("{ping} answers 403: this machine's network is not in the edge's auth.allow_cidrs"),
                "add this network to auth.allow_cidrs on the edge and restart it",
            ));
            return out;
        }
        Ok(r) => {
            out.push(Check::problem(
                S,
                format!(
                    "{ping} answers {}: not a registry (is the URL the edge's?)",
                    r.status()
                ),
                "pass the edge's base URL with --edge",
            ));
            return out;
        }
    };
    if needs_login {
        for source in &found.login_sources {
            out.push(login_check(
                source.subject,
                edge,
                &source.files,
                &found.logins,
                source.how,
            ));
        }
    } else {
        out.push(Check::ok(S, "anonymous clients may pull: no login needed"));
    }
    let Some(img) = &opts.image else {
        return out;
    };
    let reference = img.reference.to_string();
    let url = format!("{}{}/manifests/{reference}", edge.url(), img.edge_path());
    let login: Option<&Login> = found
        .logins
        .iter()
        .find(|l| l.user_password.is_some() && edge.is_named_by(&l.key, &edge.scheme));
    let mut rb = http.get(&url);
    for m in MANIFEST_MEDIA_TYPES {
        rb = rb.header("accept", *m);
    }
    if let Some((user, password)) = login.and_then(|l| l.user_password.as_ref()) {
        rb = rb.basic_auth(user, Some(password));
    }
    out.push(match rb.send().await {
        Err(e) => Check::problem(
            S,
            format!("{img}: no answer from {url} ({})", chain(&e)),
            "check the edge's log (journalctl -u sparkcr-edge)",
        ),
        Ok(r) => {
            let status = r.status().as_u16();
            let digest = r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string();
            let body: String = r
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            match status {
                200 => Check::ok(S, format!("{img} resolves through the edge to {digest}")),
                401 | 403 => Check::problem(
                    S,
                    format!(
                        "{img}: the edge refused the request ({status}): {}",
                        if login.is_some() {
                            "the stored login is not accepted"
                        } else {
                            "no stored login for the edge"
                        }
                    ),
                    format!(
                        "log in to {} with a token that may pull from {}",
                        edge.authority, img.registry
                    ),
                ),
                404 => Check::problem(
                    S,
                    format!("{img}: not found through the edge ({body})"),
                    format!(
                        "check the image name and tag, and that the edge has an upstream for {}",
                        img.registry
                    ),
                ),
                _ => Check::problem(
                    S,
                    format!("{img}: the edge answered {status} ({body})"),
                    "the edge could not reach the upstream: see its status page (/status) and log",
                ),
            }
        }
    });
    out
}
