//! The shared tier over an in-memory object store: keys, write-through rules.

use super::*;
use object_store::memory::InMemory;

#[test]
fn keys_are_content_addressed_under_the_prefix() {
    let metrics = Arc::new(Metrics::new());
    let d = Digest::of(b"x");
    let tier = SharedTier::with_store(Arc::new(InMemory::new()), "/site-a/", metrics.clone());
    assert_eq!(
        tier.blob_key(&d).to_string(),
        format!("site-a/blobs/sha256/{}", d.hex())
    );
    let bare = SharedTier::with_store(Arc::new(InMemory::new()), "", metrics);
    assert_eq!(
        bare.manifest_key(&d).to_string(),
        format!("manifests/sha256/{}", d.hex())
    );
}
