//! Faults a real registry will not produce, from a hand-written upstream on 127.0.0.1:
//! a connection reset mid-blob (the edge resumes with Range), a cold Range on a large blob
//! (answered from the fill, which fetches the blob as ranged pieces), wrong bytes for a digest
//! (the client's response is aborted and nothing is stored), 429 and 5xx (cached content
//! is served stale, uncached gets 503), and a stalled body (times out; other clients are
//! not held up).

mod common;
use common::edge_config::edge_for;
use common::fake_upstream::*;
use common::images::pseudo_random;
use common::registry2::sha256_digest;
use common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_blob_is_resumed_with_range() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(1, 4 << 20);
    let d = up.add_blob_with(bytes.clone(), Faults::none().cut_first(3 << 20, 1));
    let edge = edge_for(&up);
    let body = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("whole body");
    assert_eq!(sha256_digest(&body), d);
    let ranged: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| r.range().map(str::to_string))
        .collect();
    // The first piece's range (the 4 MiB blob is no larger: one stream), then one Range
    // request that resumed it.
    assert_eq!(
        ranged,
        [
            format!("bytes=0-{}", (4 << 20) - 1),
            format!("bytes={}-", 3 << 20)
        ],
        "{:?}",
        up.requests()
    );
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_fill_resumes_total"
        ) >= 1.0
    );
    // Stored: the next GET does not touch the upstream.
    let before = up.requests_containing("/blobs/").len();
    let again = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&again), d);
    assert_eq!(up.requests_containing("/blobs/").len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_bytes_abort_the_client_and_store_nothing() {
    let up = FakeUpstream::start().await;
    // Other bytes of the same length: the middle one flipped.
    let mid = (3u64 << 20) / 2;
    let d = up.add_blob_with(
        pseudo_random(2, 3 << 20),
        Faults::none().corrupt(mid..mid + 1),
    );
    let edge = edge_for(&up);
    for _ in 0..2 {
        let r = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{d}")))
            .await
            .expect("get");
        assert_eq!(
            r.status(),
            200,
            "headers went out before the bytes were known to be wrong"
        );
        assert!(
            r.bytes().await.is_err(),
            "the response must not end cleanly on wrong bytes"
        );
    }
    assert_eq!(
        up.requests_containing("/blobs/").len(),
        2,
        "nothing was stored, so the second GET asked again"
    );
    // The fill counts the mismatch and removes its chunk files after the client was
    // aborted.
    edge.wait_fills_settled().await;
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_digest_mismatches_total"
        ) >= 2.0
    );
    let chunks = edge.dir.path().join("data/chunks");
    let files = walk(&chunks);
    assert!(files.is_empty(), "no chunk files left behind: {files:?}");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_5xx_serve_stale() {
    let up = FakeUpstream::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#.to_vec();
    let digest = sha256_digest(&manifest);
    up.add_manifest("v1", &manifest);
    let edge = edge_for(&up);
    let client = reqwest::Client::new();
    let get = |tag: &str| {
        client
            .get(edge.url(&format!("/v2/team/app/manifests/{tag}")))
            .send()
    };
    let r = get("v1").await.expect("get");
    assert_eq!(r.status(), 200);
    for code in [429u16, 500, 502, 503] {
        up.set_manifest_status(Some(code));
        let r = get("v1").await.expect("get");
        assert_eq!(r.status(), 200, "stale on {code}");
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        assert_eq!(&r.bytes().await.expect("body")[..], &manifest[..]);
        let r = get("never-cached").await.expect("get");
        if code == 429 || code == 503 {
            // The fake sends `Retry-After: 30`, longer than the edge waits: passed on.
            assert_eq!(r.status(), 429, "uncached on {code}");
            assert_eq!(r.headers()["retry-after"], "30", "uncached on {code}");
        } else {
            assert_eq!(r.status(), 503, "uncached on {code}");
        }
    }
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_stale_served_total{kind=\"manifest\"}"
        ) >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_times_out_without_holding_up_others() {
    let up = FakeUpstream::start().await;
    let stalled = up.add_blob_with(pseudo_random(3, 2 << 20), Faults::none().stall_at(1024));
    let fine = up.add_blob(pseudo_random(4, 2 << 20));
    let edge = edge_for(&up);
    let url = edge.url(&format!("/v2/team/app/blobs/{stalled}"));
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        match reqwest::get(&url).await {
            Ok(r) => r.bytes().await.is_err(),
            Err(_) => true,
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let body = reqwest::get(edge.url(&format!("/v2/team/app/blobs/{fine}")))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&body), fine);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "another blob is not held up by the stall"
    );
    assert!(
        slow.await.expect("task"),
        "the stalled blob's client gets an error, not a clean end"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "gave up in bounded time"
    );
    edge.wait_for_log("blob fill failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_a_cold_miss() {
    let up = FakeUpstream::start().await;
    let bytes = pseudo_random(5, 40 << 20);
    let d = up.add_blob(bytes.clone());
    let edge = edge_for(&up);
    let client = reqwest::Client::new();
    let url = edge.url(&format!("/v2/team/app/blobs/{d}"));
    // Far beyond the fill: answered by its own ranged request, without waiting for the fill.
    let far = 36 << 20;
    let r = client
        .get(&url)
        .header("range", format!("bytes={far}-"))
        .send()
        .await
        .expect("far range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {far}-{}/{}", bytes.len() - 1, bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[far..]);
    // Near the start: served from the fill as it arrives.
    let r = client
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .expect("near range");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    assert_eq!(&r.bytes().await.expect("body")[..], &bytes[100..200]);
    // An impossible range is 416 with the size.
    let r = client
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len() + 5))
        .send()
        .await
        .expect("bad range");
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", bytes.len()).as_str()
    );
    // The single fill completed and cached the blob whole: it fetched the 40 MiB blob as
    // ranged pieces (4 MiB first, the rest at once), every byte asked for once.
    let whole = client
        .get(&url)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body");
    assert_eq!(sha256_digest(&whole), d);
    let blob_gets = up.requests_containing("/blobs/");
    let mut pieces: Vec<(usize, usize)> = blob_gets
        .iter()
        .filter_map(|r| {
            let (a, b) = r.range()?.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    pieces.sort();
    assert_eq!(pieces.len(), blob_gets.len(), "only pieces: {blob_gets:?}");
    assert!(pieces.len() >= 2, "{pieces:?}");
    assert_eq!(pieces[0], (0, (4 << 20) - 1), "{pieces:?}");
    let mut at = 0;
    for (a, b) in &pieces {
        assert_eq!(*a, at, "the pieces partition the blob: {pieces:?}");
        at = b + 1;
    }
    assert_eq!(at, bytes.len(), "{pieces:?}");
    assert!(
        metric(
            &edge.metrics_text().await,
            "sparkcr_edge_fill_pieces_total{result=\"ok\"}"
        ) >= pieces.len() as f64
    );
}
