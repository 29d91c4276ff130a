//! Cosign-format signatures for tests, made here: keys (ECDSA P-256 and Ed25519, by ring)
//! written as PEM `PUBLIC KEY` files the edge trusts, and signatures pushed to a registry:2
//! the two ways cosign attaches them: the `sha256-<hex>.sig` tag, and an OCI 1.1 referrer
//! (`subject`) listed under the referrers tag schema (registry:2 has no referrers API). A
//! second, independent signer (Python's `cryptography`, `cosign_sign.py` beside this
//! file) signs the same format.

use super::registry2::Registry2;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use std::path::{Path, PathBuf};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub enum TestKey {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl TestKey {
    pub fn p256() -> TestKey {
        let rng = SystemRandom::new();
        let p8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        TestKey::P256(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p8.as_ref(), &rng)
                .expect("key"),
        )
    }

    pub fn ed25519() -> TestKey {
        let p8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        TestKey::Ed25519(Ed25519KeyPair::from_pkcs8(p8.as_ref()).expect("key"))
    }

    /// The public key as a PEM SubjectPublicKeyInfo (what `cosign.pub` holds).
    pub fn public_pem(&self) -> String {
        let der = match self {
            TestKey::P256(k) => [
                hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").expect("hex"),
                k.public_key().as_ref().to_vec(),
            ]
            .concat(),
            TestKey::Ed25519(k) => [
                hex::decode("302a300506032b6570032100").expect("hex"),
                k.public_key().as_ref().to_vec(),
            ]
            .concat(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// Writes the public key to `dir/name`; returns the path.
    pub fn write_public(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.public_pem()).expect("write key");
        path
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            TestKey::P256(k) => k
                .sign(&SystemRandom::new(), message)
                .expect("sign")
                .as_ref()
                .to_vec(),
            TestKey::Ed25519(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// A simple-signing payload vouching for `claimed`.
pub fn payload(reg: &Registry2, repo: &str, claimed: &str) -> Vec<u8> {
    serde_json::json!({
        "critical": {
            "identity": {"docker-reference": format!("{}/{repo}", reg.host())},
            "image": {"docker-manifest-digest": claimed},
            "type": "cosign container image signature"
        },
        "optional": null
    })
    .to_string()
    .into_bytes()
}

/// Pushes a signature manifest for `claimed`, signed by `key`, with `extra` fields
/// (`subject`, `artifactType`) merged in; returns (digest, bytes) of the manifest.
async fn push_signature_manifest(
    reg: &Registry2,
    repo: &str,
    claimed: &str,
    key: &TestKey,
    extra: serde_json::Value,
    reference: Option<&str>,
) -> (String, Vec<u8>) {
    let body = payload(reg, repo, claimed);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&body));
    let payload_digest = reg.push_blob(repo, &body).await;
    let config = b"{}";
    let config_digest = reg.push_blob(repo, config).await;
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": SIMPLE_SIGNING, "digest": payload_digest, "size": body.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": signature}}],
    });
    if let (Some(m), Some(e)) = (manifest.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    let bytes = manifest.to_string().into_bytes();
    let digest = super::registry2::sha256_digest(&bytes);
    reg.push_manifest(repo, reference.unwrap_or(&digest), OCI_MANIFEST, &bytes)
        .await;
    (digest, bytes)
}

/// Signs `subject` (a manifest digest of `repo`) as `cosign sign` does by default: the
/// signature manifest under the `sha256-<hex>.sig` tag. `claimed` is the digest the payload
/// vouches for (the subject's, unless a test wants it wrong).
pub async fn sign_with_tag(
    reg: &Registry2,
    repo: &str,
    subject: &str,
    claimed: &str,
    key: &TestKey,
) {
    let tag = format!("{}.sig", subject.replace(':', "-"));
    push_signature_manifest(reg, repo, claimed, key, serde_json::json!({}), Some(&tag)).await;
}

/// [`sign_with_tag`] with the payload vouching for `subject` itself.
pub async fn sign(reg: &Registry2, repo: &str, subject: &str, key: &TestKey) {
    sign_with_tag(reg, repo, subject, subject, key).await
}

/// Signs `subject` as an OCI 1.1 referrer (`cosign sign --registry-referrers-mode
/// oci-1-1`): the signature manifest names it as `subject`, and, registry:2 having no
/// referrers API, the referrers tag schema's index (`sha256-<hex>`) lists it.
pub async fn sign_as_referrer(
    reg: &Registry2,
    repo: &str,
    subject: (&str, &str, usize),
    key: &TestKey,
) {
    let (digest, media_type, size) = subject;
    let extra = serde_json::json!({
        "artifactType": SIGNATURE_ARTIFACT,
        "subject": {"mediaType": media_type, "digest": digest, "size": size},
    });
    let (sig_digest, sig_bytes) =
        push_signature_manifest(reg, repo, digest, key, extra, None).await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sig_digest, "size": sig_bytes.len(),
                       "artifactType": SIGNATURE_ARTIFACT}],
    });
    reg.push_manifest(
        repo,
        &digest.replace(':', "-"),
        OCI_INDEX,
        index.to_string().as_bytes(),
    )
    .await;
}

/// Signs `subject` with a key Python's `cryptography` makes (`cosign_sign.py`), pushing
/// the `.sig` tag itself; returns the public key file it wrote into `dir`.
pub fn sign_with_python(reg: &Registry2, repo: &str, subject: &str, dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/cosign_sign.py");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    let python = if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".to_string()
    };
    let public = dir.join("python.pub");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([&reg.url(), repo, subject])
        .arg(&public)
        .output()
        .expect("run cosign_sign.py");
    assert!(
        out.status.success(),
        "cosign_sign.py failed (scripts/test installs cryptography into target/test-venv): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    public
}
