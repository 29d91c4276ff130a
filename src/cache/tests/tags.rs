//! Tag records are the upstream's answer for every manifest type, whatever the asking
//! client accepts: a client with a narrow `Accept` cannot pin a multi-arch tag to one
//! platform for everyone (#25 item 2); it is served the index's `linux/amd64` manifest,
//! or `MANIFEST_UNKNOWN` when there is none it takes.

use super::*;
use crate::oci::tag_accept;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An index of an amd64 (Docker v2) and an arm64 (OCI) image, tagged `multi`; the digests
/// of the index, the amd64 and the arm64 manifest.
fn multi_arch(h: &Harness, repo: &str, amd64: bool) -> (Digest, Digest, Digest) {
    let f = h.fake();
    let a = f.add_manifest(DOCKER, "{\"schemaVersion\":2,\"arch\":\"amd64\"}");
    let b = f.add_manifest(IMAGE, "{\"schemaVersion\":2,\"arch\":\"arm64\"}");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {"mediaType": DOCKER, "digest": a.to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": if amd64 { "amd64" } else { "s390x" }}},
            {"mediaType": IMAGE, "digest": b.to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "arm64"}},
        ]
    })
    .to_string();
    let i = f.add_manifest(INDEX, &index);
    f.point_tag(repo, "multi", i);
    (i, a, b)
}

async fn ask(
    h: &Harness,
    repo: &str,
    accept: &[&str],
) -> Result<crate::cache::ManifestAnswer, CacheError> {
    let accept: Vec<String> = accept.iter().map(|a| a.to_string()).collect();
    let reference: Reference = "multi".parse().expect("reference");
    h.cache
        .manifest(&target_on(UP, repo), &reference, &accept, false)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_client_first_does_not_pin_a_multi_arch_tag() {
    let h = Harness::new();
    let (i, a, _) = multi_arch(&h, "team/app", true);
    // An old client that takes Docker v2 manifests only asks first.
    let narrow = ask(&h, "team/app", &[DOCKER]).await.expect("narrow");
    assert_eq!(narrow.digest, a, "the index's linux/amd64 manifest");
    assert_eq!(narrow.media_type, DOCKER);
    // Every client after it that takes indexes gets the index, from the cache.
    let full = ask(&h, "team/app", &[INDEX, IMAGE, DOCKER])
        .await
        .expect("full");
    assert_eq!(full.digest, i, "the tag is still the index for everyone");
    assert!(full.from_cache);
    // And the narrow one again: from the record, amd64 again.
    let again = ask(&h, "team/app", &[DOCKER]).await.expect("narrow again");
    assert_eq!(again.digest, a);
    assert!(again.from_cache);
    // The upstream was only ever asked for the tag with every type.
    let calls = h.fake().calls();
    assert!(!calls.manifest_accepts.is_empty());
    for (n, asked) in calls.manifest_accepts.iter().enumerate() {
        assert_eq!(asked, &tag_accept(), "request {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidating_for_a_narrow_client_keeps_the_index() {
    let h = Setup {
        tag_ttl: Duration::ZERO,
        ..Setup::default()
    }
    .build();
    let (i, a, _) = multi_arch(&h, "team/app", true);
    assert_eq!(ask(&h, "team/app", &[]).await.expect("first").digest, i);
    for _ in 0..3 {
        let narrow = ask(&h, "team/app", &[DOCKER]).await.expect("narrow");
        assert_eq!(narrow.digest, a);
    }
    let full = ask(&h, "team/app", &[INDEX, DOCKER]).await.expect("full");
    assert_eq!(full.digest, i);
    let calls = h.fake().calls();
    assert_eq!(
        calls.manifest_gets, 2,
        "the index once, the amd64 manifest once"
    );
    assert!(
        calls.manifest_heads >= 4,
        "each past-ttl request revalidated with a HEAD"
    );
    assert!(calls.manifest_accepts.iter().all(|a| a == &tag_accept()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrow_client_with_no_amd64_manifest_it_takes_gets_manifest_unknown() {
    let h = Harness::new();
    multi_arch(&h, "team/noamd", false);
    match ask(&h, "team/noamd", &[DOCKER]).await {
        Err(CacheError::ManifestUnknown(m)) => {
            assert!(m.contains("linux/amd64"), "{m}")
        }
        other => panic!(
            "expected MANIFEST_UNKNOWN, got {:?}",
            other.map(|a| a.digest)
        ),
    }
    // The tag's record is the index nonetheless.
    let (i, a, _) = multi_arch(&h, "team/app", true);
    // A client that takes only OCI manifests: the amd64 entry is Docker v2 — unknown.
    assert!(matches!(
        ask(&h, "team/app", &[IMAGE]).await,
        Err(CacheError::ManifestUnknown(_))
    ));
    assert_eq!(ask(&h, "team/app", &["*/*"]).await.expect("any").digest, i);
    assert_eq!(
        ask(&h, "team/app", &[DOCKER, IMAGE])
            .await
            .expect("old")
            .digest,
        a
    );
}

/// #26 `quota_reserve`: with the upstream's announced quota at or below the reserve, a
/// cached tag that moved is served from the cache (its HEAD is free; the GET is not), a
/// tag with nothing cached is still fetched, and above the reserve the move is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_is_served_from_the_cache_while_the_quota_is_at_its_reserve() {
    let h = Setup {
        tag_ttl: Duration::ZERO,
        quota_reserves: [(UP.to_string(), 10)].into_iter().collect(),
        ..Setup::default()
    }
    .build();
    let first = h.fake().set_tag("team/app", "v1", "{\"schemaVersion\":2}");
    let got = h.manifest("team/app", "v1").await.expect("first");
    assert_eq!(got.digest, first);
    let moved = h
        .fake()
        .set_tag("team/app", "v1", "{\"schemaVersion\":2,\"moved\":1}");
    h.metrics
        .activity
        .upstream_quota(UP, 5, Some(100), Some(21600));
    let kept = h.manifest("team/app", "v1").await.expect("at the reserve");
    assert_eq!(kept.digest, first, "served from the cache");
    assert!(kept.stale && kept.quota_reserved);
    assert_eq!(h.fake().calls().manifest_gets, 1, "no GET spent");
    // A miss with nothing cached still goes.
    let other = h
        .fake()
        .set_tag("team/app", "v2", "{\"schemaVersion\":2,\"v\":2}");
    assert_eq!(
        h.manifest("team/app", "v2").await.expect("miss").digest,
        other
    );
    // Above the reserve again: the move is followed.
    h.metrics
        .activity
        .upstream_quota(UP, 50, Some(100), Some(21600));
    let after = h
        .manifest("team/app", "v1")
        .await
        .expect("above the reserve");
    assert_eq!(after.digest, moved);
    assert!(!after.stale && !after.quota_reserved);
}
