//! `sparkcr-edge tls self-signed`: a small private CA and a server certificate for sites
//! without one, covering the edge's host name and every alias host (`docker.edge.lan`, ...),
//! plus how to make Docker, containerd and Podman trust it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} already exists; pass --force to issue a new server certificate from the existing CA (clients keep trusting it), or --new-ca to replace the CA too")]
    Exists(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is missing (the CA was made by an older sparkcr-edge or elsewhere), so no certificate can be issued from it; pass --new-ca to make a new CA (every client must then trust the new ca.pem)")]
    NoCaKey(PathBuf),
    #[error("{0}: not a usable CA certificate or key ({1}); pass --new-ca to make a new CA")]
    BadCa(PathBuf, rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0:?} is not a DNS name or IP address")]
    BadName(String),
}

impl SelfSignedError {
    /// Whether the request itself is the problem (an existing file, a bad name, a CA that
    /// cannot issue): the message says which flag to pass, and running the same command
    /// again cannot succeed.
    pub fn is_usage_error(&self) -> bool {
        matches!(
            self,
            SelfSignedError::Exists(_)
                | SelfSignedError::BadName(_)
                | SelfSignedError::NoCaKey(_)
                | SelfSignedError::BadCa(..)
        )
    }
}

/// What was written.
pub struct SelfSigned {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub names: Vec<String>,
    /// Whether the CA is new (clients must trust it) or the existing one was reused.
    pub new_ca: bool,
}

/// The names the certificate must cover: the host, `*.host`, and each alias host.
pub fn names_for(hostname: &str, aliases: &[String], extra: &[String]) -> Vec<String> {
    let mut names = vec![hostname.to_string(), format!("*.{hostname}")];
    names.extend(aliases.iter().map(|a| format!("{a}.{hostname}")));
    names.extend(extra.iter().cloned());
    names.dedup();
    names
}

/// How long the CA is valid from now: ten years.
pub const CA_VALID_DAYS: u64 = 3652;
/// How long a server certificate is valid from now: 825 days, the most Apple's clients
/// accept for certificates from private CAs.
pub const LEAF_VALID_DAYS: u64 = 825;

/// Valid from an hour ago (for clients whose clocks run behind) until `days` from now.
fn valid_from_now(params: &mut rcgen::CertificateParams, days: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(std::time::Duration::from_secs(3600));
    params.not_after = epoch + now + std::time::Duration::from_secs(days * 86_400);
}

/// What to do when the files exist already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Refuse ([`SelfSignedError::Exists`]).
    Nothing,
    /// Issue a new server certificate and key from the existing CA (`--force`): clients
    /// that trust the CA need no change.
    ServerCertificate,
    /// A new CA as well (`--new-ca`): every client must trust the new `ca.pem`.
    Everything,
}

pub fn generate(
    out: &Path,
    names: &[String],
    replace: Replace,
) -> Result<SelfSigned, SelfSignedError> {
    let ca_path = out.join("ca.pem");
    let ca_key_path = out.join("ca-key.pem");
    let cert_path = out.join("cert.pem");
    let key_path = out.join("key.pem");
    if replace == Replace::Nothing {
        for p in [&ca_path, &cert_path, &key_path] {
            if p.exists() {
                return Err(SelfSignedError::Exists(p.clone()));
            }
        }
    }
    let reuse_ca = replace == Replace::ServerCertificate && ca_path.exists();
    let (ca_pem, ca_key) = if reuse_ca {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| SelfSignedError::Read {
                path: p.into(),
                source,
            })
        };
        if !ca_key_path.exists() {
            return Err(SelfSignedError::NoCaKey(ca_key_path));
        }
        let key = rcgen::KeyPair::from_pem(&read(&ca_key_path)?)
            .map_err(|e| SelfSignedError::BadCa(ca_key_path.clone(), e))?;
        (read(&ca_path)?, key)
    } else {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("sparkcr-edge CA for {}", names.first().map_or("", |s| s)),
        );
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        valid_from_now(&mut ca_params, CA_VALID_DAYS);
        let key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&key)?;
        (ca.pem(), key)
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key)
        .map_err(|e| SelfSignedError::BadCa(ca_path.clone(), e))?;

    let mut sans = Vec::new();
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                n.clone()
                    .try_into()
                    .map_err(|_| SelfSignedError::BadName(n.clone()))?,
            ),
        };
        sans.push(san);
    }
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = sans;
    leaf.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    valid_from_now(&mut leaf, LEAF_VALID_DAYS);
    let key = rcgen::KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(out).map_err(|source| SelfSignedError::Write {
        path: out.into(),
        source,
    })?;
    let write = |p: &Path, text: String, mode: u32| -> Result<(), SelfSignedError> {
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |source| SelfSignedError::Write {
            path: p.into(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(p)
            .map_err(werr)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(werr)
    };
    if !reuse_ca {
        // The CA's key stays beside it (root only) so that `--force` can reissue.
        write(&ca_key_path, ca_key.serialize_pem(), 0o600)?;
        write(&ca_path, ca_pem.clone(), 0o644)?;
    }
    write(&cert_path, format!("{}{}", cert.pem(), ca_pem), 0o644)?;
    write(&key_path, key.serialize_pem(), 0o600)?;
    Ok(SelfSigned {
        ca: ca_path,
        cert: cert_path,
        key: key_path,
        names: names.to_vec(),
        new_ca: !reuse_ca,
    })
}

/// The `certs.d` directory name Docker, Podman and containerd look in for `host`: with the
/// port whenever the TLS listener is not on 443 (`certs.d/edge.lan:8443/`).
pub fn certs_d_dir(host: &str, tls_port: Option<u16>) -> String {
    match tls_port {
        Some(p) if p != 443 => format!("{host}:{p}"),
        _ => host.to_string(),
    }
}

/// How to trust `ca` on each client, for `hosts` (the edge host and alias hosts) served on
/// `tls_port` (the first TLS listener's port, if any).
pub fn trust_instructions(ca: &Path, hosts: &[String], tls_port: Option<u16>) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| certs_d_dir(h, tls_port)).collect();
    let mut s = format!(
        "Copy {ca} to each client, then trust it:\n\n\
         # system-wide (Debian/Ubuntu; also covers containerd, CRI-O, skopeo and curl)\n\
         sudo cp ca.pem /usr/local/share/ca-certificates/sparkcr-edge.crt && sudo update-ca-certificates\n",
        ca = ca.display()
    );
    s.push_str("\n# Docker (per registry host and port; no restart needed)\n");
    for h in &hosts {
        s.push_str(&format!("sudo mkdir -p /etc/docker/certs.d/{h} && sudo cp ca.pem /etc/docker/certs.d/{h}/ca.crt\n"));
    }
    s.push_str("\n# Podman / CRI-O\n");
    for h in &hosts {
        s.push_str(&format!("sudo mkdir -p /etc/containers/certs.d/{h} && sudo cp ca.pem /etc/containers/certs.d/{h}/ca.crt\n"));
    }
    s.push_str("\n# containerd: in each certs.d/<upstream>/hosts.toml host block\n#   ca = \"/etc/containerd/certs.d/<upstream>/ca.crt\"   (and copy ca.pem there)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_in_the_request_are_usage_errors_and_io_failures_are_not() {
        assert!(SelfSignedError::Exists(PathBuf::from("/x/ca.pem")).is_usage_error());
        assert!(SelfSignedError::BadName("a b".into()).is_usage_error());
        assert!(SelfSignedError::NoCaKey(PathBuf::from("/x/ca.key")).is_usage_error());
        let write = SelfSignedError::Write {
            path: PathBuf::from("/x/cert.pem"),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(!write.is_usage_error());
    }

    #[test]
    fn certs_d_paths_carry_the_port_unless_443() {
        let hosts = vec!["edge.lan".to_string(), "docker.edge.lan".to_string()];
        let text = trust_instructions(Path::new("/x/ca.pem"), &hosts, Some(8443));
        assert!(
            text.contains("/etc/docker/certs.d/edge.lan:8443/ca.crt"),
            "{text}"
        );
        assert!(
            text.contains("/etc/docker/certs.d/docker.edge.lan:8443/ca.crt"),
            "{text}"
        );
        assert!(
            text.contains("/etc/containers/certs.d/edge.lan:8443/ca.crt"),
            "{text}"
        );
        let text = trust_instructions(Path::new("/x/ca.pem"), &hosts, Some(443));
        assert!(
            text.contains("/etc/docker/certs.d/edge.lan/ca.crt"),
            "{text}"
        );
        assert!(!text.contains(":443"), "{text}");
    }

    #[test]
    fn certificate_serves_and_covers_alias_hosts() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let names = names_for(
            "edge.lan",
            &["docker".into(), "ghcr".into()],
            &["127.0.0.1".into()],
        );
        let out = generate(dir.path(), &names, Replace::Nothing).expect("generate");
        // The pair loads as a serving certificate.
        crate::server::tls::load_certified_key(&out.cert, &out.key).expect("usable");
        // And verifies for an alias host against the CA.
        let ca_pem = std::fs::read(&out.ca).expect("ca");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(c.expect("pem")).expect("add");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .expect("verifier");
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&out.cert)
            .expect("read")
            .map(|c| c.expect("pem"))
            .collect();
        for host in ["edge.lan", "docker.edge.lan", "ghcr.edge.lan"] {
            let name = rustls_pki_types::ServerName::try_from(host).expect("name");
            verifier
                .verify_server_cert(
                    &chain[0],
                    &chain[1..],
                    &name,
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        // Valid from now: the leaf for 825 days, the CA for ten years.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let ca_der = rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem)
            .next()
            .expect("a CA")
            .expect("pem");
        for (der, days) in [
            (chain[0].as_ref(), LEAF_VALID_DAYS),
            (ca_der.as_ref(), CA_VALID_DAYS),
        ] {
            let until = crate::server::cert_expiry::not_after(der).expect("notAfter");
            let want = now + days as i64 * 86_400;
            assert!((until - want).abs() < 120, "{until} vs {want}");
        }
        assert!(matches!(
            generate(dir.path(), &names, Replace::Nothing),
            Err(SelfSignedError::Exists(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&out.key)
                .expect("key")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    /// The chain in `cert` verifies for `host` against the roots in `ca`.
    fn verifies(ca: &Path, cert: &Path, host: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(c.expect("pem")).expect("add");
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .expect("verifier");
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .expect("read")
            .map(|c| c.expect("pem"))
            .collect();
        let name = rustls_pki_types::ServerName::try_from(host.to_string()).expect("name");
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn force_reissues_from_the_same_ca_and_new_ca_replaces_it() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate(
            dir.path(),
            &names_for("edge.lan", &[], &[]),
            Replace::Nothing,
        )
        .expect("first");
        assert!(first.new_ca);
        let ca_before = std::fs::read(&first.ca).expect("ca");
        let old_trust = dir.path().join("old-ca.pem");
        std::fs::write(&old_trust, &ca_before).expect("copy");
        // --force with a new name: same CA, new leaf covering it.
        let names = names_for("edge.lan", &[], &["cache.lan".into()]);
        let again = generate(dir.path(), &names, Replace::ServerCertificate).expect("reissue");
        assert!(!again.new_ca);
        assert_eq!(std::fs::read(&again.ca).expect("ca"), ca_before);
        verifies(&old_trust, &again.cert, "cache.lan").expect("old CA trusts the new cert");
        // --new-ca: a different CA the old trust does not cover.
        let fresh = generate(dir.path(), &names, Replace::Everything).expect("new ca");
        assert!(fresh.new_ca);
        assert_ne!(std::fs::read(&fresh.ca).expect("ca"), ca_before);
        assert!(verifies(&old_trust, &fresh.cert, "edge.lan").is_err());
        verifies(&fresh.ca, &fresh.cert, "edge.lan").expect("new CA trusts it");
        // A CA without its key (an older install) cannot be reused, and says what to do.
        std::fs::remove_file(dir.path().join("ca-key.pem")).expect("rm");
        let Err(err) = generate(dir.path(), &names, Replace::ServerCertificate) else {
            panic!("a CA without its key was reused");
        };
        assert!(err.to_string().contains("--new-ca"), "{err}");
    }
}
