//! Cosign's key-based image signatures ("simple signing"), as `[[policy]]
//! require_signature` checks them: the public keys an admin trusts (PEM
//! SubjectPublicKeyInfo, ECDSA P-256 or Ed25519), a signature manifest's layers (each a
//! payload blob and its base64 signature in the `dev.cosignproject.cosign/signature`
//! annotation), and the payload's claim (`critical.image.docker-manifest-digest`). The
//! arithmetic is ring's. Key-based only: no transparency log, no certificates.
//!
//! Owns: parsing and checking those formats. Must not: fetch anything or decide which
//! images need a signature.

use super::Digest;
use base64::Engine as _;
use std::sync::Arc;

/// The media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the base64 signature over the payload.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `artifactType` of a cosign signature attached as an OCI 1.1 referrer.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
/// The `critical.type` of a container image signature payload.
const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Signature layers read from one signature manifest, at most.
pub const MAX_SIGNATURE_LAYERS: usize = 16;
/// A payload larger than this is not a simple-signing payload (they are a few hundred
/// bytes).
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;

/// The tag cosign attaches `subject`'s signatures under (`sha256-<hex>.sig`).
pub fn signature_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

/// A public key a signature may be made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// An uncompressed P-256 point (ECDSA with SHA-256, ASN.1 DER signatures).
    EcdsaP256(Vec<u8>),
    /// A 32-byte Ed25519 key.
    Ed25519(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("it holds no PEM \"PUBLIC KEY\" block ({0})")]
    NotPem(String),
    #[error(
        "its public key is not one this edge verifies with: expected ECDSA P-256 or Ed25519 ({0})"
    )]
    Unsupported(String),
}

impl PublicKey {
    /// The key of a PEM `PUBLIC KEY` block (what `cosign generate-key-pair` writes to
    /// `cosign.pub`, and `openssl pkey -pubout`).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, KeyError> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(pem)
            .map_err(|e| KeyError::NotPem(e.to_string()))?;
        Self::from_spki_der(der.as_ref())
    }

    /// The key of a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
        use x509_parser::prelude::FromDer as _;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| KeyError::Unsupported(format!("not a SubjectPublicKeyInfo: {e}")))?;
        let key = spki.subject_public_key.data.to_vec();
        let alg = &spki.algorithm;
        if alg.algorithm == OID_SIG_ED25519 && key.len() == 32 {
            return Ok(PublicKey::Ed25519(key));
        }
        if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
            if curve.as_ref() == Some(&OID_EC_P256) && key.len() == 65 && key[0] == 4 {
                return Ok(PublicKey::EcdsaP256(key));
            }
            return Err(KeyError::Unsupported(format!(
                "an EC key on curve {}",
                curve.map_or_else(|| "(none)".to_string(), |c| c.to_id_string())
            )));
        }
        Err(KeyError::Unsupported(format!(
            "algorithm {}",
            alg.algorithm.to_id_string()
        )))
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};
        match self {
            PublicKey::EcdsaP256(k) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, k)
                .verify(message, signature)
                .is_ok(),
            PublicKey::Ed25519(k) => UnparsedPublicKey::new(&ED25519, k)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// The keys one policy block trusts, each named by its file.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<(String, PublicKey)>,
    /// Unique per set made: verdicts kept under one never apply to another.
    id: u64,
}

impl KeySet {
    pub fn new(keys: Vec<(String, PublicKey)>) -> KeySet {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        KeySet {
            keys,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// This set's identity (no two sets made by one process share it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The key files, as refusals name the set.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        names.join(", ")
    }

    /// The name of the key that made `signature` over `payload`, if one did.
    pub fn signer(&self, payload: &[u8], signature: &[u8]) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, k)| k.verifies(payload, signature))
            .map(|(n, _)| n.as_str())
    }
}

/// What a block with `require_signature` asks of a pull, as the cache applies it.
#[derive(Debug)]
pub struct SignatureRule {
    /// The block's name (refusals name it).
    pub block: Arc<str>,
    pub keys: KeySet,
}

/// Two rules are the same when they name the same block and the same key set.
impl PartialEq for SignatureRule {
    fn eq(&self, other: &SignatureRule) -> bool {
        self.block == other.block && self.keys.id == other.keys.id
    }
}

impl Eq for SignatureRule {}

/// A layer of a signature manifest: the payload it signs and the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureLayer {
    pub payload: Digest,
    pub size: u64,
    /// The decoded signature (empty when the annotation was not base64).
    pub signature: Vec<u8>,
}

/// The simple-signing layers of a signature manifest (at most [`MAX_SIGNATURE_LAYERS`];
/// untrusted bytes: anything else is left out).
pub fn signature_layers(manifest: &[u8]) -> Vec<SignatureLayer> {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(manifest) else {
        return Vec::new();
    };
    let Some(layers) = json.get("layers").and_then(|l| l.as_array()) else {
        return Vec::new();
    };
    layers
        .iter()
        .filter(|l| l["mediaType"] == SIMPLE_SIGNING_MEDIA_TYPE)
        .filter_map(|l| {
            let payload = l["digest"].as_str()?.parse().ok()?;
            let size = l["size"].as_u64()?;
            let b64 = l["annotations"][SIGNATURE_ANNOTATION].as_str()?;
            let signature = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap_or_default();
            Some(SignatureLayer {
                payload,
                size,
                signature,
            })
        })
        .take(MAX_SIGNATURE_LAYERS)
        .collect()
}

/// The manifest digest a simple-signing payload vouches for.
pub fn signed_manifest(payload: &[u8]) -> Result<Digest, String> {
    let json: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not JSON: {e}"))?;
    let critical = &json["critical"];
    let kind = critical["type"].as_str().unwrap_or_default();
    if !kind.eq_ignore_ascii_case(PAYLOAD_TYPE) {
        return Err(format!(
            "the signed payload's critical.type is {kind:?}, not {PAYLOAD_TYPE:?}"
        ));
    }
    critical["image"]["docker-manifest-digest"]
        .as_str()
        .ok_or_else(|| "the signed payload names no docker-manifest-digest".to_string())?
        .parse()
        .map_err(|e| format!("the signed payload's docker-manifest-digest is not a digest: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING,
    };

    /// SubjectPublicKeyInfo prefixes of the two key types.
    const P256_SPKI: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
    const ED25519_SPKI: &str = "302a300506032b6570032100";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    fn payload(d: &Digest) -> Vec<u8> {
        serde_json::json!({"critical": {"identity": {"docker-reference": "r.test/app"},
            "image": {"docker-manifest-digest": d.to_string()},
            "type": "cosign container image signature"}, "optional": null})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn p256_and_ed25519_keys_verify_their_own_signatures_only() {
        let rng = SystemRandom::new();
        let p8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p8.as_ref(), &rng)
            .expect("key");
        let ec_pub = PublicKey::from_pem(
            pem(&[hex(P256_SPKI), ec.public_key().as_ref().to_vec()].concat()).as_bytes(),
        )
        .expect("P-256 key");
        assert!(matches!(ec_pub, PublicKey::EcdsaP256(_)));
        let p8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let ed = Ed25519KeyPair::from_pkcs8(p8.as_ref()).expect("key");
        let ed_pub = PublicKey::from_pem(
            pem(&[hex(ED25519_SPKI), ed.public_key().as_ref().to_vec()].concat()).as_bytes(),
        )
        .expect("Ed25519 key");

        let body = payload(&Digest::of(b"m"));
        let ec_sig = ec.sign(&rng, &body).expect("sign").as_ref().to_vec();
        let ed_sig = ed.sign(&body).as_ref().to_vec();
        assert!(ec_pub.verifies(&body, &ec_sig));
        assert!(ed_pub.verifies(&body, &ed_sig));
        assert!(!ec_pub.verifies(&body, &ed_sig));
        assert!(!ed_pub.verifies(b"other", &ed_sig));
        let set = KeySet::new(vec![("a.pub".into(), ec_pub), ("b.pub".into(), ed_pub)]);
        assert_eq!(set.signer(&body, &ed_sig), Some("b.pub"));
        assert_eq!(set.signer(b"x", &ec_sig), None);
        assert_eq!(set.names(), "a.pub, b.pub");
    }

    #[test]
    fn keys_that_are_not_p256_or_ed25519_are_refused_in_words() {
        assert!(matches!(
            PublicKey::from_pem(b"not a key"),
            Err(KeyError::NotPem(_))
        ));
        // A P-384 key: id-ecPublicKey on secp384r1.
        let p384 = [
            hex("3076301006072a8648ce3d020106052b8104002203620004"),
            vec![7; 96],
        ]
        .concat();
        let e = PublicKey::from_pem(pem(&p384).as_bytes()).expect_err("P-384");
        assert!(e.to_string().contains("1.3.132.0.34"), "{e}");
    }

    #[test]
    fn a_signature_manifest_gives_its_layers_and_a_payload_its_digest() {
        let d = Digest::of(b"m");
        let body = payload(&d);
        let manifest = serde_json::json!({"schemaVersion": 2, "layers": [
            {"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "digest": Digest::of(&body).to_string(),
             "size": body.len(), "annotations": {SIGNATURE_ANNOTATION: "AQID"}},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": 1},
        ]});
        let layers = signature_layers(manifest.to_string().as_bytes());
        assert_eq!(
            layers,
            vec![SignatureLayer {
                payload: Digest::of(&body),
                size: body.len() as u64,
                signature: vec![1, 2, 3],
            }]
        );
        assert_eq!(signed_manifest(&body), Ok(d));
        assert!(signed_manifest(b"{\"critical\":{\"type\":\"x\"}}").is_err());
        assert!(signature_layers(b"[").is_empty());
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
    }
}
