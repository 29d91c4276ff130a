//! `sparkcr-edge tls self-signed`: a small private CA and a server certificate for sites
//! without one, covering the edge's host name and every alias host (`docker.edge.lan`, ...),
//! plus how to make Docker, containerd and Podman trust it.
//!
//! The CA carries X.509 name constraints: it may sign only for the names it was made for
//! (each DNS name as a subtree, so `docker.<host>` is covered by `<host>`; each IP address
//! exactly; no IP address at all when it was made for none). Trusting it system-wide then
//! cannot let whoever holds its key impersonate `github.com`. `--force` issues from the
//! existing CA only names inside its constraints; a CA made before constraints existed
//! keeps working, and `check-config` warns about it ([`unconstrained_ca_warning`]).

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
    #[error("{name:?} is outside the names the CA at {ca} may sign for ({allowed}); pass --new-ca to make a CA for the new names (every client must then trust the new ca.pem)")]
    OutsideCa {
        name: String,
        ca: PathBuf,
        allowed: String,
    },
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
                | SelfSignedError::OutsideCa { .. }
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
        let ca_pem = read(&ca_path)?;
        if let Some(allowed) = CaNames::of_pem(&ca_pem) {
            if let Some(outside) = names.iter().find(|n| !allowed.permits(n)) {
                return Err(SelfSignedError::OutsideCa {
                    name: outside.clone(),
                    ca: ca_path,
                    allowed: allowed.to_string(),
                });
            }
        }
        (ca_pem, key)
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
        ca_params.name_constraints = Some(name_constraints(names));
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

/// The CA's name constraints for `names`: each DNS name as a subtree (a leading `*.`
/// dropped; a name under another one listed adds nothing), each IP address exactly; with
/// no IP address among them, every IPv4 and IPv6 address is excluded.
fn name_constraints(names: &[String]) -> rcgen::NameConstraints {
    let dns: Vec<String> = names
        .iter()
        .filter(|n| n.parse::<std::net::IpAddr>().is_err())
        .map(|n| n.trim_start_matches("*.").to_ascii_lowercase())
        .collect();
    let mut permitted: Vec<rcgen::GeneralSubtree> = Vec::new();
    for d in &dns {
        let covered = dns.iter().any(|o| o != d && under_dns(d, o));
        let listed = permitted
            .iter()
            .any(|p| matches!(p, rcgen::GeneralSubtree::DnsName(x) if x == d));
        if !covered && !listed {
            permitted.push(rcgen::GeneralSubtree::DnsName(d.clone()));
        }
    }
    let ips: Vec<std::net::IpAddr> = names.iter().filter_map(|n| n.parse().ok()).collect();
    for ip in &ips {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        permitted.push(rcgen::GeneralSubtree::IpAddress(
            rcgen::CidrSubnet::from_addr_prefix(*ip, bits),
        ));
    }
    let excluded = if ips.is_empty() {
        vec![
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v4_prefix([0; 4], 0)),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_v6_prefix([0; 16], 0)),
        ]
    } else {
        Vec::new()
    };
    rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    }
}

/// Whether DNS name `name` is `base` or under it.
fn under_dns(name: &str, base: &str) -> bool {
    let (name, base) = (name.to_ascii_lowercase(), base.to_ascii_lowercase());
    name == base || name.ends_with(&format!(".{base}"))
}

/// The names a CA certificate's name constraints let it sign for (permitted DNS subtrees
/// and IP ranges; the edge's CAs exclude nothing else).
pub struct CaNames {
    dns: Vec<String>,
    ips: Vec<(Vec<u8>, Vec<u8>)>,
}

impl CaNames {
    /// The constraints of the CA in `pem`; `None` when it has none (or cannot be read).
    pub fn of_pem(pem: &str) -> Option<CaNames> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
        CaNames::of_cert(&pem.parse_x509().ok()?)
    }

    /// [`of_pem`](Self::of_pem) for a parsed certificate.
    fn of_cert(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<CaNames> {
        use x509_parser::extensions::GeneralName;
        let nc = cert.name_constraints().ok()??.value;
        let mut names = CaNames {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        for sub in nc.permitted_subtrees.iter().flatten() {
            match &sub.base {
                GeneralName::DNSName(d) => names.dns.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) if b.len() == 8 || b.len() == 32 => {
                    let (a, m) = b.split_at(b.len() / 2);
                    names.ips.push((a.to_vec(), m.to_vec()));
                }
                _ => {}
            }
        }
        Some(names)
    }

    /// Whether a certificate for `name` (a DNS name, `*.` wildcard, or an IP address)
    /// issued by this CA would be valid.
    pub fn permits(&self, name: &str) -> bool {
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => {
                let octets = match ip {
                    std::net::IpAddr::V4(v) => v.octets().to_vec(),
                    std::net::IpAddr::V6(v) => v.octets().to_vec(),
                };
                self.ips.iter().any(|(a, m)| {
                    a.len() == octets.len()
                        && octets
                            .iter()
                            .zip(a)
                            .zip(m)
                            .all(|((o, a), m)| o & m == a & m)
                })
            }
            Err(_) => {
                let name = name.trim_start_matches("*.");
                self.dns.iter().any(|d| under_dns(name, d))
            }
        }
    }
}

impl std::fmt::Display for CaNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.dns.iter().map(|d| format!("{d} and below")).collect();
        for (a, _) in &self.ips {
            let ip = match a.len() {
                4 => <[u8; 4]>::try_from(a.as_slice())
                    .map(std::net::IpAddr::from)
                    .ok(),
                _ => <[u8; 16]>::try_from(a.as_slice())
                    .map(std::net::IpAddr::from)
                    .ok(),
            };
            if let Some(ip) = ip {
                parts.push(ip.to_string());
            }
        }
        if parts.is_empty() {
            f.write_str("no names")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A warning when the CA beside the served certificate (`ca.pem` in its directory, as
/// `tls self-signed` writes it) has no name constraints: it was made by an older
/// sparkcr-edge, and whoever holds its key can issue a certificate for any name that
/// clients trusting it accept.
pub fn unconstrained_ca_warning(cert: &Path) -> Option<String> {
    let ca = cert.parent()?.join("ca.pem");
    let pem = std::fs::read_to_string(&ca).ok()?;
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = parsed.parse_x509().ok()?;
    if !cert.is_ca() || CaNames::of_cert(&cert).is_some() {
        return None;
    }
    Some(format!(
        "{}: this CA has no name constraints, so whoever holds its key (ca-key.pem) can issue a certificate for any name, and every client that trusts it will accept it; make a constrained CA with `sparkcr-edge tls self-signed --new-ca` (then every client must trust the new ca.pem)",
        ca.display()
    ))
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
    let what_trust_means = match std::fs::read_to_string(ca)
        .ok()
        .and_then(|p| CaNames::of_pem(&p))
    {
        Some(names) => format!(
            "This CA may sign only for {names} (its name constraints): a client that trusts it\n\
             accepts it for those names and nothing else. Keep ca-key.pem secret: whoever holds\n\
             it can issue certificates for them.\n\n"
        ),
        None => {
            "This CA has no name constraints: a client that trusts it accepts whatever it signs,\n\
                 for any name. Keep ca-key.pem secret, or make a constrained CA with --new-ca.\n\n"
                .to_string()
        }
    };
    let mut s = format!(
        "{what_trust_means}Copy {ca} to each client, then trust it:\n\n\
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
        // --force with a new alias host: same CA, new leaf covering it.
        let names = names_for("edge.lan", &["quay".into()], &[]);
        let again = generate(dir.path(), &names, Replace::ServerCertificate).expect("reissue");
        assert!(!again.new_ca);
        assert_eq!(std::fs::read(&again.ca).expect("ca"), ca_before);
        verifies(&old_trust, &again.cert, "quay.edge.lan").expect("old CA trusts the new cert");
        // --force with a name outside the CA's constraints: refused, saying what to do.
        let names = names_for("edge.lan", &[], &["cache.lan".into()]);
        match generate(dir.path(), &names, Replace::ServerCertificate) {
            Err(e @ SelfSignedError::OutsideCa { .. }) => {
                assert!(e.is_usage_error());
                let text = e.to_string();
                assert!(
                    text.contains("cache.lan") && text.contains("--new-ca"),
                    "{text}"
                );
                assert!(text.contains("edge.lan and below"), "{text}");
            }
            Err(e) => panic!("expected OutsideCa, got {e}"),
            Ok(_) => panic!("a name outside the CA's constraints was issued"),
        }
        assert_eq!(
            std::fs::read(&first.ca).expect("ca"),
            ca_before,
            "nothing replaced"
        );
        // --new-ca: a different CA the old trust does not cover.
        let fresh = generate(dir.path(), &names, Replace::Everything).expect("new ca");
        assert!(fresh.new_ca);
        assert_ne!(std::fs::read(&fresh.ca).expect("ca"), ca_before);
        assert!(verifies(&old_trust, &fresh.cert, "edge.lan").is_err());
        verifies(&fresh.ca, &fresh.cert, "edge.lan").expect("new CA trusts it");
        verifies(&fresh.ca, &fresh.cert, "cache.lan").expect("and its new name");
        // A CA without its key (an older install) cannot be reused, and says what to do.
        std::fs::remove_file(dir.path().join("ca-key.pem")).expect("rm");
        let Err(err) = generate(dir.path(), &names, Replace::ServerCertificate) else {
            panic!("a CA without its key was reused");
        };
        assert!(err.to_string().contains("--new-ca"), "{err}");
    }

    /// A leaf for `host` signed with the CA key in `dir` (as someone holding ca-key.pem
    /// could make), written to `dir/<host>.pem` with the chain.
    fn forged_leaf(dir: &Path, host: &str) -> PathBuf {
        let ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
        let key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(dir.join("ca-key.pem")).expect("ca key"),
        )
        .expect("key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &key).expect("issuer");
        let mut leaf = rcgen::CertificateParams::new(vec![host.to_string()]).expect("params");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = leaf
            .signed_by(&rcgen::KeyPair::generate().expect("key"), &issuer)
            .expect("sign");
        let path = dir.join(format!("{host}.pem"));
        std::fs::write(&path, format!("{}{ca_pem}", cert.pem())).expect("write");
        path
    }

    #[test]
    fn the_ca_cannot_vouch_for_other_names() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let names = names_for("edge.lan", &["docker".into()], &["10.1.2.3".into()]);
        let out = generate(dir.path(), &names, Replace::Nothing).expect("generate");
        let allowed =
            CaNames::of_pem(&std::fs::read_to_string(&out.ca).expect("ca")).expect("constrained");
        for ok in [
            "edge.lan",
            "docker.edge.lan",
            "*.edge.lan",
            "x.y.edge.lan",
            "10.1.2.3",
        ] {
            assert!(allowed.permits(ok), "{ok}");
        }
        for no in ["github.com", "evil-edge.lan", "lan", "10.1.2.4", "::1"] {
            assert!(!allowed.permits(no), "{no}");
        }
        // What a verifier says: a certificate for another name, made with the CA's own
        // key, is refused; one for a name inside is accepted.
        let github = forged_leaf(dir.path(), "github.com");
        assert!(verifies(&out.ca, &github, "github.com").is_err());
        let inside = forged_leaf(dir.path(), "registry.edge.lan");
        verifies(&out.ca, &inside, "registry.edge.lan").expect("inside the constraints");
        // The instructions say what trusting it means, and serving it raises no warning.
        let text = trust_instructions(&out.ca, &names, Some(443));
        assert!(
            text.contains("may sign only for edge.lan and below, 10.1.2.3"),
            "{text}"
        );
        assert_eq!(unconstrained_ca_warning(&out.cert), None);

        // Without an IP address among the names, it may sign for no IP address at all.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let out2 = generate(
            dir2.path(),
            &names_for("edge.lan", &[], &[]),
            Replace::Nothing,
        )
        .expect("generate");
        let ip = forged_leaf(dir2.path(), "192.168.1.1");
        assert!(verifies(&out2.ca, &ip, "192.168.1.1").is_err());
    }

    #[test]
    fn a_ca_without_constraints_is_warned_about_and_keeps_working() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        // A CA as older releases made it: no name constraints.
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = ca.self_signed(&key).expect("self-signed");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("ca");
        std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).expect("key");
        let names = names_for("edge.lan", &[], &["cache.lan".into()]);
        // --force issues from it (any name: it has no constraints to check).
        let out = generate(dir.path(), &names, Replace::ServerCertificate).expect("reissue");
        verifies(&out.ca, &out.cert, "cache.lan").expect("still trusted");
        let warning = unconstrained_ca_warning(&out.cert).expect("a warning");
        assert!(
            warning.contains("no name constraints") && warning.contains("--new-ca"),
            "{warning}"
        );
        let text = trust_instructions(&out.ca, &names, None);
        assert!(text.contains("no name constraints"), "{text}");
    }
}
