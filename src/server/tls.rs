//! TLS termination with rustls (ring provider): certificate loading, ALPN `h2` +
//! `http/1.1`, and a certificate that can be swapped on SIGHUP without touching open
//! connections (new handshakes get the new certificate; a bad new one is refused and the
//! old one kept).
//!
//! Owns: the served certificate and key, and the rustls server config. Must not: accept
//! connections or decide who may connect (that is `mod.rs`, asking `access`).

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {reason} — it must be PEM (-----BEGIN CERTIFICATE-----), the server certificate first; \"sparkcr-edge tls self-signed\" makes one")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read private key {path}: {reason} — it must be a PEM private key (PKCS#8, PKCS#1 or SEC1) the sparkcr-edge user can read")]
    Key { path: PathBuf, reason: String },
    #[error("{cert} and {key} do not belong together: {reason} — put the key made with this certificate in server.tls_key")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Reads a PEM certificate chain and private key into a key rustls can serve.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| TlsError::Cert {
            path: cert_path.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Cert {
            path: cert_path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path.into(),
            reason: "no PEM CERTIFICATE block found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.into(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert_path.into(),
        key: key_path.into(),
        reason: e.to_string(),
    })?;
    Ok(ck)
}

/// The server certificate, swappable at run time.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let ck = load_certified_key(cert_path, key_path)?;
        Ok(ReloadableCert {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            current: RwLock::new(Arc::new(ck)),
        })
    }

    /// Re-reads the files; on error the current certificate stays in service.
    pub fn reload(&self) -> Result<(), TlsError> {
        let ck = load_certified_key(&self.cert_path, &self.key_path)?;
        match self.current.write() {
            Ok(mut guard) => *guard = Arc::new(ck),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ck),
        }
        Ok(())
    }

    /// The certificate file served.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The end of the served certificate's validity, in Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        super::cert_expiry::not_after(self.current().cert.first()?.as_ref())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server config serving `cert`, offering h2 and http/1.1.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Setup(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_say_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let params = rcgen::CertificateParams::new(vec!["edge.lan".to_string()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let other = rcgen::KeyPair::generate().expect("other key");
        let cert = params.self_signed(&key).expect("cert");
        let (c, k, junk) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("junk.pem"),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, other.serialize_pem()).expect("write");
        std::fs::write(&junk, "not pem").expect("write");
        let e = load_certified_key(&c, &k)
            .expect_err("mismatch")
            .to_string();
        assert!(
            e.contains("do not belong together") && e.contains("server.tls_key"),
            "{e}"
        );
        let e = load_certified_key(&junk, &k)
            .expect_err("no PEM")
            .to_string();
        assert!(
            e.contains("BEGIN CERTIFICATE") && e.contains("tls self-signed"),
            "{e}"
        );
        let e = load_certified_key(&c, &junk)
            .expect_err("no key")
            .to_string();
        assert!(e.contains("PEM private key"), "{e}");
    }
}
