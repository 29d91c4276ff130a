//! Everything but blob bytes: the store lock, options, manifests, tags and tag lists, TTL
//! sweeps, purge, verify, crash recovery, recency persistence and corrupt records.

use super::*;
use std::fs;

#[test]
fn a_second_open_is_refused_while_the_store_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let second = Store::open(
        StoreOptions::new(dir.path(), 1 << 20),
        Arc::new(Metrics::new()),
    );
    match second {
        Err(e @ StoreError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("in use by a running sparkcr-edge"), "{msg}");
            assert!(msg.contains("LOCK"), "{msg}");
        }
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got a second store"),
    }
    drop(store);
    open_store(dir.path(), 1 << 20, CHUNK);
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.chunk_size = 1000;
    assert!(matches!(
        Store::open(opts, Arc::new(Metrics::new())),
        Err(StoreError::InvalidOptions(_))
    ));
}

#[test]
fn manifests_are_checked_against_their_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let body = br#"{"schemaVersion":2}"#;
    let d = Digest::of(body);
    let mt = "application/vnd.oci.image.manifest.v1+json";
    assert!(matches!(
        store.put_manifest(&Digest::of(b"other"), mt, body, "docker.io/library/a"),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store
        .manifest(&Digest::of(b"other"))
        .expect("get")
        .is_none());
    assert_eq!(store.stored_bytes(), 0);
    store
        .put_manifest(&d, mt, body, "docker.io/library/a")
        .expect("put");
    store.add_repo(&d, "docker.io/library/b").expect("add repo");
    store
        .add_repo(&d, "docker.io/library/b")
        .expect("idempotent");
    let m = store.manifest(&d).expect("get").expect("stored");
    assert_eq!(m.media_type, mt);
    assert_eq!(&m.bytes[..], body);
    assert_eq!(m.repos, vec!["docker.io/library/a", "docker.io/library/b"]);
    assert_eq!(store.stored_bytes(), body.len() as u64);
    // Storing it again adds nothing to the budget.
    store
        .put_manifest(&d, mt, body, "ghcr.io/x/y")
        .expect("again");
    assert_eq!(store.stored_bytes(), body.len() as u64);
}

fn tag_key(upstream: &str, repo: &str, tag: &str) -> TagKey {
    TagKey {
        upstream: upstream.into(),
        repo: repo.parse().expect("repo"),
        tag: tag.parse().expect("tag"),
    }
}

#[test]
fn tags_tag_lists_and_repositories_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let k = tag_key("docker.io", "library/nginx", "latest");
    assert!(store.tag(&k).expect("tag").is_none());
    let now = SystemTime::now();
    let rec = TagRecord {
        digest: Digest::of(b"m1"),
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        fetched_at: now,
        validated_at: now,
        seen: Vec::new(),
    };
    store.put_tag(&k, &rec).expect("put");
    let got = store.tag(&k).expect("tag").expect("present");
    assert_eq!(got.digest, rec.digest);
    assert_eq!(got.media_type, rec.media_type);
    let later = TagRecord {
        validated_at: now + Duration::from_secs(5),
        ..rec.clone()
    };
    store.put_tag(&k, &later).expect("update");
    assert_eq!(
        codec::micros(store.tag(&k).expect("tag").expect("present").validated_at),
        codec::micros(later.validated_at)
    );
    assert!(store
        .tag(&tag_key("docker.io", "library/nginx", "other"))
        .expect("tag")
        .is_none());
    assert!(store
        .tag(&tag_key("ghcr.io", "library/nginx", "latest"))
        .expect("tag")
        .is_none());

    let repo: RepositoryName = "library/nginx".parse().expect("repo");
    let json = br#"{"name":"library/nginx","tags":["latest"]}"#;
    assert!(store.tag_list("docker.io", &repo).expect("list").is_none());
    store
        .put_tag_list("docker.io", &repo, json)
        .expect("put list");
    assert_eq!(
        store.tag_list("docker.io", &repo).expect("list").as_deref(),
        Some(&json[..])
    );

    put_blob(&store, b"layer", "ghcr.io/org/img");
    let repos = store.repositories().expect("repositories");
    let names: Vec<String> = repos.iter().map(|(u, r)| format!("{u}/{r}")).collect();
    assert_eq!(names, vec!["docker.io/library/nginx", "ghcr.io/org/img"]);
    assert_eq!(store.stats().expect("stats").tags, 1);
}

#[test]
fn ttl_from_access_renews_on_hits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.chunk_size = CHUNK;
    opts.ttl = Some(Duration::from_millis(800));
    opts.ttl_from = TtlFrom::Access;
    let store = Store::open(opts, Arc::new(Metrics::new())).expect("open");
    let hot = put_blob(&store, b"hot", "r/a").digest;
    let cold = put_blob(&store, b"cold", "r/a").digest;
    let body = b"{}";
    store
        .put_manifest(&Digest::of(body), "m", body, "r/a")
        .expect("manifest");
    let now = SystemTime::now();
    let tag = TagRecord {
        digest: Digest::of(body),
        media_type: "m".into(),
        fetched_at: now,
        validated_at: now,
        seen: Vec::new(),
    };
    store.put_tag(&tag_key("u", "a", "t"), &tag).expect("tag");
    assert_eq!(
        store.sweep_expired(SystemTime::now()).expect("sweep"),
        SweepReport::default()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(store.blob(&hot).expect("hit").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let report = store.sweep_expired(SystemTime::now()).expect("sweep");
    assert_eq!(
        (report.blobs, report.manifests, report.tags),
        (1, 1, 1),
        "{report}"
    );
    assert!(store.blob(&cold).expect("lookup").is_none());
    assert!(
        store.blob(&hot).expect("lookup").is_some(),
        "renewed by the hit"
    );
    assert_eq!(store.stored_bytes(), 3);
    // Far in the future everything has expired.
    let report = store
        .sweep_expired(SystemTime::now() + Duration::from_secs(3600))
        .expect("sweep");
    assert_eq!(report.blobs, 1);
    assert_eq!(store.stored_bytes(), 0);
    assert!(chunk_files(&store).is_empty());
    assert_eq!(
        store
            .inner
            .metrics
            .store_expired
            .with_label_values(&["blob"])
            .get(),
        2
    );
}

#[test]
fn ttl_from_fetch_is_not_renewed_and_none_never_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 1 << 20);
    opts.ttl = Some(Duration::from_millis(800));
    opts.ttl_from = TtlFrom::Fetch;
    let store = Store::open(opts, Arc::new(Metrics::new())).expect("open");
    let hot = put_blob(&store, b"hot", "r/a").digest;
    std::thread::sleep(Duration::from_millis(500));
    assert!(store.blob(&hot).expect("hit").is_some());
    std::thread::sleep(Duration::from_millis(500));
    let report = store.sweep_expired(SystemTime::now()).expect("sweep");
    assert_eq!(report.blobs, 1);
    assert!(store.blob(&hot).expect("lookup").is_none());
    drop(store);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let d = put_blob(&store, b"forever", "r/a").digest;
    let far = SystemTime::now() + Duration::from_secs(10 * 365 * 86400);
    assert_eq!(
        store.sweep_expired(far).expect("sweep"),
        SweepReport::default()
    );
    assert!(store.blob(&d).expect("lookup").is_some());
}

#[test]
fn purge_by_repo_and_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let only_a = put_blob(&store, b"only a", "docker.io/library/a").digest;
    let shared = put_blob(&store, b"shared", "docker.io/library/a").digest;
    store.add_repo(&shared, "ghcr.io/org/b").expect("add");
    let only_b = put_blob(&store, b"only b", "ghcr.io/org/b").digest;
    let now = SystemTime::now();
    let tag = TagRecord {
        digest: only_a,
        media_type: "m".into(),
        fetched_at: now,
        validated_at: now,
        seen: Vec::new(),
    };
    store
        .put_tag(&tag_key("docker.io", "library/a", "v1"), &tag)
        .expect("tag a");
    store
        .put_tag(&tag_key("ghcr.io", "org/b", "v1"), &tag)
        .expect("tag b");

    let report = store
        .purge(None, Some(&"library/a".parse().expect("filter")))
        .expect("purge");
    assert_eq!(
        (report.blobs, report.detached, report.tags),
        (1, 1, 1),
        "{report}"
    );
    assert!(store.blob(&only_a).expect("lookup").is_none());
    let kept = store.blob(&shared).expect("lookup").expect("shared kept");
    assert_eq!(kept.repos, vec!["ghcr.io/org/b"]);
    assert!(store.blob(&only_b).expect("lookup").is_some());
    assert!(store
        .tag(&tag_key("docker.io", "library/a", "v1"))
        .expect("tag")
        .is_none());

    // By age: nothing is an hour old; everything is older than 1 ms after a pause.
    let report = store
        .purge(Some(Duration::from_secs(3600)), None)
        .expect("purge");
    assert_eq!(report, PurgeReport::default());
    std::thread::sleep(Duration::from_millis(20));
    let report = store
        .purge(Some(Duration::from_millis(1)), None)
        .expect("purge");
    assert_eq!((report.blobs, report.tags), (2, 1), "{report}");
    assert_eq!(store.stored_bytes(), 0);
    assert!(chunk_files(&store).is_empty());
    assert!(report.to_string().contains("blobs removed"));
}

#[test]
fn verify_drops_a_blob_whose_chunk_was_corrupted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let good = random_bytes(40, 3 * CHUNK);
    let bad = random_bytes(41, 2 * CHUNK + 5);
    put_blob(&store, &good, "r/good");
    let bad_d = put_blob(&store, &bad, "r/bad").digest;
    let clean = store.verify().expect("verify");
    assert!(clean.is_clean(), "{clean}");
    assert_eq!(clean.blobs_checked, 2);

    let victim = store.blob_chunks(&bad_d).expect("chunks").expect("blob")[1];
    let path = store.inner.chunks.path(&victim.id);
    let mut content = fs::read(&path).expect("read chunk");
    content[17] ^= 0x40;
    fs::write(&path, &content).expect("write chunk");

    let report = store.verify().expect("verify");
    assert_eq!(report.corrupt_blobs, vec![bad_d], "{report}");
    assert_eq!(report.corrupt_chunks, vec![victim.id]);
    assert!(store.blob(&bad_d).expect("lookup").is_none());
    assert!(!path.exists(), "the corrupt chunk file was removed");
    assert_eq!(
        read_range(&store, &Digest::of(&good), 0, good.len() as u64),
        good
    );
    assert_eq!(store.stored_bytes(), 3 * CHUNK as u64);
    assert!(store.verify().expect("verify").is_clean());
}

#[test]
fn recovery_removes_orphans_and_drops_blobs_with_missing_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intact, broken);
    {
        let store = open_store(dir.path(), 16 << 20, CHUNK);
        intact = put_blob(&store, &random_bytes(50, 2 * CHUNK), "r/a");
        broken = put_blob(&store, &random_bytes(51, 2 * CHUNK), "r/b");
        let victim = store.blob_chunks(&broken.digest).expect("c").expect("b")[0];
        fs::remove_file(store.inner.chunks.path(&victim.id)).expect("remove chunk");
        // An orphan chunk (a fill that crashed before its commit) and a temp file.
        let orphan = random_bytes(52, 1000);
        store
            .inner
            .chunks
            .write(&ChunkId::of(&orphan), &orphan)
            .expect("orphan");
        fs::write(store.path().join("tmp").join("half.tmp"), b"partial").expect("tmp");
    }
    let store = open_store(dir.path(), 16 << 20, CHUNK);
    let report = store.recovery_report();
    assert_eq!(
        (
            report.tmp_removed,
            report.orphan_chunks_removed,
            report.blobs_dropped
        ),
        (1, 2, 1),
        "{report}"
    );
    assert!(store.blob(&intact.digest).expect("lookup").is_some());
    assert!(store.blob(&broken.digest).expect("lookup").is_none());
    assert_eq!(
        chunk_files(&store).len(),
        2,
        "only the intact blob's chunks"
    );
    assert!(tmp_files(&store).is_empty());
    assert_eq!(store.stored_bytes(), 2 * CHUNK as u64);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.blobs, stats.chunks), (1, 2));
    assert!(stats.to_string().contains("blobs"), "{stats}");
}

#[test]
fn recency_survives_a_reopen_through_flush_access() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Evicting one 5-chunk blob makes room for 12 chunks under the 90 % watermark.
    let budget = 20 * CHUNK as u64;
    let (old, newer);
    {
        let store = open_store(dir.path(), budget, CHUNK);
        old = put_blob(&store, &random_bytes(60, 5 * CHUNK), "r/a").digest;
        newer = put_blob(&store, &random_bytes(61, 5 * CHUNK), "r/a").digest;
        assert!(store.blob(&old).expect("hit").is_some());
        store.flush_access().expect("flush access");
    }
    let store = open_store(dir.path(), budget, CHUNK);
    put_blob(&store, &random_bytes(62, 12 * CHUNK), "r/a");
    assert!(store.blob(&old).expect("lookup").is_some(), "recently read");
    assert!(
        store.blob(&newer).expect("lookup").is_none(),
        "least recent"
    );
}

#[test]
fn corrupt_records_are_dropped_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let d = put_blob(&store, b"abc", "r/a").digest;
    store
        .inner
        .index
        .write_raw("blobs", d.as_bytes(), &[RECORD_VERSION_FOR_TESTS, 1, 2])
        .expect("corrupt it");
    assert!(store.blob(&d).expect("lookup is not an error").is_none());
    assert!(store.read_blob(&d, 0, 0).expect("no error").is_none());
    assert_eq!(
        store
            .inner
            .metrics
            .store_errors
            .with_label_values(&["corrupt_record"])
            .get(),
        1
    );
}

const RECORD_VERSION_FOR_TESTS: u8 = codec::RECORD_VERSION;

#[test]
fn the_edge_id_is_made_once_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = tempfile::tempdir().expect("tempdir");
    let id = {
        let store = open_store(dir.path(), 1 << 20, 64 << 10);
        let id = store.edge_id().expect("id");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(store.edge_id().expect("again"), id, "asked twice: the same");
        id
    };
    let reopened = open_store(dir.path(), 1 << 20, 64 << 10);
    assert_eq!(reopened.edge_id().expect("after a restart"), id);
    let second = open_store(other.path(), 1 << 20, 64 << 10);
    assert_ne!(second.edge_id().expect("another box"), id);
}

#[test]
fn savings_are_kept_once_per_gain_and_survive_a_reopen() {
    use crate::metrics::Savings;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(StoreOptions::new(dir.path(), 1 << 20), metrics.clone())
            .expect("open store");
        metrics.count_saving("docker.io", "hit", 1000);
        metrics.count_saving("docker.io", "collapsed", 500);
        metrics.count_saving("ghcr.io", "stale", 7);
        metrics.count_saving("docker.io", "miss", 999);
        metrics.count_saving("docker.io", "denied", 0);
        let first = store.savings().expect("savings");
        // Read twice: the counters are kept once, not added again.
        let again = store.savings().expect("savings");
        assert_eq!(first, again);
        store.flush_access().expect("flush");
        assert_eq!(store.savings().expect("savings").totals, first.totals);
        metrics.count_saving("docker.io", "hit", 1);
        store.flush_access().expect("flush");
    }
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let kept = store.savings().expect("savings after a reopen");
    let expect = |bytes, requests, collapsed| Savings {
        bytes,
        requests,
        collapsed,
    };
    assert_eq!(kept.totals["docker.io"], expect(1501, 3, 1));
    assert_eq!(kept.totals["ghcr.io"], expect(7, 1, 0));
    assert_eq!(kept.totals.len(), 2, "a miss or a refusal saves nothing");
    let hour_sum: u64 = kept.hourly.values().map(|s| s.bytes).sum();
    assert_eq!(hour_sum, 1508, "the hours add up to the totals");
    assert!(kept.since.is_some());
}

#[test]
fn savings_history_keeps_30_days_and_sums_today_the_week_and_all() {
    use crate::metrics::Savings;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let day = 86_400u64;
    // Noon on some day, as unix seconds.
    let now = 20_000 * day + day / 2;
    let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let saved = |upstream: &str, bytes| {
        vec![(
            upstream.to_string(),
            Savings {
                bytes,
                requests: 1,
                collapsed: 0,
            },
        )]
    };
    store
        .add_savings(at(now - 40 * day), &saved("docker.io", 1))
        .expect("add");
    store
        .add_savings(at(now - 3 * day), &saved("docker.io", 10))
        .expect("add");
    store
        .add_savings(at(now - 3600), &saved("docker.io", 100))
        .expect("add");
    store
        .add_savings(at(now - 13 * 3600), &saved("ghcr.io", 1000))
        .expect("add");
    store
        .add_savings(at(now), &saved("docker.io", 10_000))
        .expect("add");
    let history = store.savings().expect("savings");
    assert_eq!(
        history.hourly.len(),
        4,
        "the hour 40 days ago is gone: {:?}",
        history.hourly
    );
    let s = history.summary(now);
    assert_eq!(
        s.today.bytes, 10_100,
        "since 00:00 UTC (13 h ago is yesterday)"
    );
    assert_eq!(s.last_7_days.bytes, 11_110);
    assert_eq!(
        s.total.bytes, 11_111,
        "the totals keep what aged out of the hours"
    );
    assert_eq!(s.daily.len(), 30);
    assert_eq!(s.daily.last().map(|d| d.1.bytes), Some(10_100));
    assert_eq!(s.daily[29 - 3].1.bytes, 10);
    let docker = s
        .upstreams
        .iter()
        .find(|u| u.upstream == "docker.io")
        .expect("docker.io row");
    assert_eq!(
        (
            docker.today.bytes,
            docker.last_7_days.bytes,
            docker.total.bytes
        ),
        (10_100, 10_110, 10_111)
    );
}

#[test]
fn a_held_manifest_outlives_eviction_and_expiry_until_its_hold_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = StoreOptions::new(dir.path(), 8 * CHUNK as u64);
    opts.chunk_size = CHUNK;
    opts.ttl = Some(Duration::from_secs(60));
    opts.ttl_from = TtlFrom::Fetch;
    let store = Store::open(opts, Arc::new(Metrics::new())).expect("open");
    let (held, loose) = (b"{\"held\":1}".as_slice(), b"{\"loose\":1}".as_slice());
    for body in [held, loose] {
        store
            .put_manifest(&Digest::of(body), "m", body, "u/r")
            .expect("manifest");
    }
    store.hold_manifest(
        &Digest::of(held),
        SystemTime::now() + Duration::from_secs(3600),
    );
    // Blobs past the budget evict the least recently used: the loose manifest goes.
    for i in 0..12u8 {
        put_blob(&store, &random_bytes(u64::from(i), CHUNK), "u/r");
    }
    assert!(store
        .manifest(&Digest::of(loose))
        .expect("lookup")
        .is_none());
    assert!(store.manifest(&Digest::of(held)).expect("lookup").is_some());
    // Past its TTL, the sweep keeps it while the hold lasts.
    let later = SystemTime::now() + Duration::from_secs(120);
    let report = store.sweep_expired(later).expect("sweep");
    assert_eq!(report.manifests, 0, "{report}");
    assert!(store.manifest(&Digest::of(held)).expect("lookup").is_some());
    // A hold that ended protects nothing.
    let brief = b"{\"brief\":1}".as_slice();
    store
        .put_manifest(&Digest::of(brief), "m", brief, "u/r")
        .expect("manifest");
    store.hold_manifest(
        &Digest::of(brief),
        SystemTime::now() + Duration::from_millis(20),
    );
    std::thread::sleep(Duration::from_millis(40));
    let report = store.sweep_expired(later).expect("sweep");
    assert_eq!(report.manifests, 1, "{report}");
    assert!(store
        .manifest(&Digest::of(brief))
        .expect("lookup")
        .is_none());
    assert!(store.manifest(&Digest::of(held)).expect("lookup").is_some());
}

#[test]
fn a_release_marks_the_digest_in_every_tag_of_the_repository_that_pointed_at_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path(), 1 << 20, CHUNK);
    let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
    let now = SystemTime::now();
    let seen = |d: Digest| SeenDigest {
        digest: d,
        first_seen: now,
        released: false,
    };
    let rec = |digest: Digest, seen: Vec<SeenDigest>| TagRecord {
        digest,
        media_type: "m".into(),
        fetched_at: now,
        validated_at: now,
        seen,
    };
    store
        .put_tag(
            &tag_key("u", "r", "latest"),
            &rec(b, vec![seen(a), seen(b)]),
        )
        .expect("tag");
    store
        .put_tag(&tag_key("u", "r", "v2"), &rec(b, Vec::new()))
        .expect("tag");
    store
        .put_tag(&tag_key("u", "r", "v1"), &rec(a, vec![seen(a)]))
        .expect("tag");
    store
        .put_tag(&tag_key("u", "other", "latest"), &rec(b, Vec::new()))
        .expect("tag");
    let repo: RepositoryName = "r".parse().expect("repo");
    assert_eq!(store.repo_tags("u", &repo).expect("tags").len(), 3);
    let released = store.release_digest("u", &repo, &b).expect("release");
    let names: Vec<&str> = released.iter().map(|t| t.as_str()).collect();
    assert_eq!(names, vec!["latest", "v2"]);
    let latest = store
        .tag(&tag_key("u", "r", "latest"))
        .expect("tag")
        .expect("present");
    assert_eq!(
        latest
            .seen
            .iter()
            .map(|s| (s.digest, s.released))
            .collect::<Vec<_>>(),
        vec![(a, false), (b, true)]
    );
    let v2 = store
        .tag(&tag_key("u", "r", "v2"))
        .expect("tag")
        .expect("present");
    assert_eq!(v2.seen.len(), 1, "a record without a history gains one");
    assert!(v2.seen[0].released);
    let other = store
        .tag(&tag_key("u", "other", "latest"))
        .expect("tag")
        .expect("present");
    assert!(other.seen.is_empty(), "another repository is left alone");
}
