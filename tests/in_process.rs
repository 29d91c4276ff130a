//! The whole daemon driven in-process through its composition root (`daemon::start`, then
//! `run(shutdown)`), in the manner of registry:2's proxy tests: a fake upstream counts the
//! remote calls, and the store is inspected directly.

mod common;

use common::edge_config::{EdgeConfig, Upstream};
use common::fake_upstream::FakeUpstream;
use sparkcr_edge::daemon;
use sparkcr_edge::oci::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_once_then_hits_and_ranges_fetch_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let blob = Arc::new(pseudo_random(5 << 20 | 12_345));
    let digest = Digest::of(&blob);
    let blob_path = format!("/v2/team/app/blobs/{digest}");
    let fake = FakeUpstream::start().await;
    assert_eq!(fake.add_blob(blob.as_ref().clone()), digest.to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.toml");
    EdgeConfig::new(dir.path().join("data"))
        .chunk_size("1MiB")
        .upstream(Upstream::new("fake.test", fake.url()).default())
        .write(&config_path);
    let loaded = sparkcr_edge::config::load(Some(&config_path)).expect("config loads");
    let edge = daemon::start(&loaded.config, "test config")
        .await
        .expect("daemon starts");
    let addr = edge.local_addrs()[0].1;
    let store = edge.store().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(edge.run(async {
        let _ = stopped.await;
    }));
    let url = format!("http://{addr}{blob_path}");
    let client = reqwest::Client::new();

    let gets: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(&url).send().await.expect("get");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body")
            })
        })
        .collect();
    for g in gets {
        let body = g.await.expect("task");
        assert!(body.as_ref() == blob.as_slice(), "byte-exact");
    }
    let remote = || fake.requests_to(&blob_path).len();
    // One fill for the 8 misses: its first piece (4 MiB), then the rest in one request
    // (a fast path), each byte asked for once.
    let asked: u64 = fake
        .requests_to(&blob_path)
        .iter()
        .map(|r| {
            let (a, b) = r
                .range()
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .unwrap_or(("0", ""));
            let a: u64 = a.parse().expect("a start");
            b.parse().unwrap_or(blob.len() as u64 - 1) + 1 - a
        })
        .sum();
    assert_eq!(
        remote(),
        2,
        "8 concurrent misses, one fill: {:?}",
        fake.requests_to(&blob_path)
    );
    assert_eq!(asked, blob.len() as u64, "each byte asked for once");
    let fetched = remote();

    // The commit follows the last byte; then the blob is a hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.blob(&digest).expect("lookup").is_none() {
        assert!(Instant::now() < deadline, "blob committed within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hit = client.get(&url).send().await.expect("get");
    assert_eq!(
        hit.headers().get("x-cache").and_then(|v| v.to_str().ok()),
        Some("HIT")
    );
    assert!(hit.bytes().await.expect("body").as_ref() == blob.as_slice());
    let range = client
        .get(&url)
        .header("range", "bytes=3000000-3999999")
        .send()
        .await
        .expect("range");
    assert_eq!(range.status(), 206);
    assert!(range.bytes().await.expect("body").as_ref() == &blob[3_000_000..4_000_000]);
    assert_eq!(
        remote(),
        fetched,
        "hits and ranges of a stored blob ask nobody"
    );

    let _ = stop.send(());
    let clean = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("daemon stops")
        .expect("task");
    assert!(clean, "every connection finished");
}
