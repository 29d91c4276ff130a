"""Signs an image manifest the way `cosign sign --key` does, with a new ECDSA P-256 key
made by Python's `cryptography` (a second implementation beside the tests' own ring
signer): a simple-signing payload blob, its ASN.1 signature in the layer annotation
`dev.cosignproject.cosign/signature`, the signature manifest under the
`sha256-<hex>.sig` tag. Writes the public key as a PEM `PUBLIC KEY`.

Usage: cosign_sign.py REGISTRY_URL REPO MANIFEST_DIGEST PUBLIC_KEY_OUT
"""
import base64
import hashlib
import json
import sys
import urllib.parse
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

base, repo, digest, public_out = sys.argv[1:5]
key = ec.generate_private_key(ec.SECP256R1())
with open(public_out, "wb") as f:
    f.write(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

host = urllib.parse.urlparse(base).netloc
payload = json.dumps({
    "critical": {
        "identity": {"docker-reference": f"{host}/{repo}"},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature",
    },
    "optional": None,
}).encode()
signature = base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def push_blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"{base}/v2/{repo}/blobs/uploads/", method="POST")
    loc = urllib.request.urlopen(start).headers["Location"]
    url = loc if loc.startswith("http") else base + loc
    url += ("&" if "?" in url else "?") + f"digest={d}"
    urllib.request.urlopen(urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"}))
    return d


config = b"{}"
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": push_blob(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                "digest": push_blob(payload), "size": len(payload),
                "annotations": {"dev.cosignproject.cosign/signature": signature}}],
}).encode()
tag = digest.replace(":", "-") + ".sig"
urllib.request.urlopen(urllib.request.Request(
    f"{base}/v2/{repo}/manifests/{tag}", data=manifest, method="PUT",
    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
