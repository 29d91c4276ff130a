//! Construction of the HTTP client one upstream uses: reqwest over rustls (ring), with the
//! upstream's trust settings, timeouts, redirect policy and user agent.
//!
//! Owns: the rustls `ClientConfig` (platform verifier plus the PEM roots of `ca_file`, or
//! an accept-anything verifier when `insecure_skip_verify` is set), ALPN and the HTTP
//! versions a client may speak ([`Protocols`]), timeouts. The proxy comes decided from
//! `proxy` and is only installed here.
//!
//! Must not: send requests or know about registries, auth or metrics. Each upstream gets
//! its own client, so one upstream's trust settings never leak into another's.

use super::proxy::ProxyChoice;
use super::UpstreamError;
use crate::config::UpstreamConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Redirects followed per request (blob downloads are redirected to CDNs).
pub const MAX_REDIRECTS: usize = 10;

/// The user agent sent upstream.
pub const USER_AGENT: &str = concat!("sparkcr-edge/", env!("CARGO_PKG_VERSION"));

/// Which HTTP versions a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocols {
    /// HTTP/2 when the server offers it (ALPN h2, then http/1.1): requests to one host
    /// share one connection. For manifests, tags, tokens, HEADs and pushes.
    H2OrHttp11,
    /// HTTP/1.1 only: every request in flight has a connection of its own. For blob GETs:
    /// one HTTP/2 connection is one TCP flow, so concurrent blobs multiplexed on it share
    /// one congestion and receive window, and on a long fat path (150 ms RTT, a few MiB in
    /// flight per flow) N blobs through one connection go about N times slower than N
    /// connections (issue #28; zot#4333 hit the same). Separate connections also let
    /// ranged pieces of one blob run side by side.
    Http11Only,
}

/// The reqwest client for one upstream. reqwest drops `Authorization` when a redirect
/// changes host, port or scheme; we rely on that so CDN hosts never see our credentials.
/// Every client of an endpoint is built here from the same settings (proxy, trust,
/// timeouts, redirects); only `protocols` differs.
pub(crate) fn build_http_client(
    cfg: &UpstreamConfig,
    proxy: &ProxyChoice,
    protocols: Protocols,
    via: Option<&reqwest::header::HeaderValue>,
) -> Result<reqwest::Client, UpstreamError> {
    let tls = tls_client_config(cfg, protocols)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(v) = via {
        // Every request says this edge forwarded it, so an edge that gets it back (edges
        // configured as each other's upstream) refuses it instead of looping.
        headers.insert(reqwest::header::VIA, v.clone());
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .tls_backend_preconfigured(tls)
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .pool_idle_timeout(Duration::from_secs(90));
    builder = match protocols {
        Protocols::H2OrHttp11 => builder.http2_adaptive_window(true),
        Protocols::Http11Only => builder.http1_only(),
    };
    if !cfg.connect_timeout.is_zero() {
        builder = builder.connect_timeout(cfg.connect_timeout.get());
    }
    if !cfg.read_timeout.is_zero() {
        builder = builder.read_timeout(cfg.read_timeout.get());
    }
    builder = proxy.apply(builder, &cfg.name)?;
    builder.build().map_err(|e| {
        UpstreamError::Config(format!(
            "upstream {:?}: cannot build HTTP client: {e}",
            cfg.name
        ))
    })
}

/// rustls settings for one upstream: ring, TLS 1.2 and 1.3, ALPN h2 then http/1.1 (only
/// http/1.1 for [`Protocols::Http11Only`], so the server never picks h2 for it).
fn tls_client_config(
    cfg: &UpstreamConfig,
    protocols: Protocols,
) -> Result<rustls::ClientConfig, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| {
        UpstreamError::Config(format!("upstream {:?}: TLS setup: {e}", cfg.name))
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let verifier: Arc<dyn ServerCertVerifier> = if cfg.insecure_skip_verify {
        tracing::warn!(
            upstream = %cfg.name,
            "insecure_skip_verify is set: TLS certificates of this upstream are NOT verified; \
             anyone on the path can impersonate it"
        );
        if cfg.ca_file.is_some() {
            tracing::warn!(upstream = %cfg.name, "ca_file is ignored because insecure_skip_verify is set");
        }
        Arc::new(AcceptAnyCertificate { provider })
    } else {
        let extra_roots = match &cfg.ca_file {
            Some(path) => read_pem_certificates(path)?,
            None => Vec::new(),
        };
        Arc::new(
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
                .map_err(tls_error)?,
        )
    };
    let mut config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = match protocols {
        Protocols::H2OrHttp11 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Protocols::Http11Only => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// Every certificate in a PEM file; errors name the file.
fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let bad = |e: &dyn std::fmt::Display| {
        UpstreamError::Config(format!("ca_file {}: {e}", path.display()))
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certificates.is_empty() {
        return Err(bad(&"no PEM CERTIFICATE blocks found"));
    }
    Ok(certificates)
}

/// `insecure_skip_verify`: any certificate is accepted for any name. Handshake signatures
/// are still checked, so the peer must at least hold the key of the certificate it shows.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Path::new("/nonexistent/sparkcr-ca.pem");
        let err = read_pem_certificates(missing).expect_err("missing file");
        assert!(
            err.to_string().contains("/nonexistent/sparkcr-ca.pem"),
            "{err}"
        );

        let mut empty = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(empty, "not a certificate").expect("write temp file");
        let err = read_pem_certificates(empty.path()).expect_err("no certificates");
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        assert!(
            err.to_string()
                .contains(&empty.path().display().to_string()),
            "{err}"
        );
    }
}
