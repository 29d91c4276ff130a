//! The cache driven in-process, without sockets: a fake upstream behind the source seams
//! (`fake`), a real [`Store`] in a temporary directory. Each test counts the fake's calls,
//! as registry:2's proxy tests count local and remote ones.

mod fake;
mod pieces;
mod ranges;
mod tags;

use super::{BlobStream, Cache, CacheError, CacheSettings, PieceRule, Requester};
use crate::metrics::Metrics;
use crate::oci::{BlobSpan, Digest, Reference, RepoTarget};
use crate::store::{Store, StoreOptions};
use fake::{Body, FakeUpstream};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

const UP: &str = "fake.test";

type Client = tokio::task::JoinHandle<Result<Vec<u8>, String>>;

/// Every client got exactly `bytes`.
async fn all_got(clients: Vec<Client>, bytes: &[u8]) {
    for c in clients {
        assert_eq!(c.await.expect("client task").as_deref(), Ok(bytes));
    }
}

fn with_stall(follower_stall: Duration) -> Harness {
    Setup {
        follower_stall,
        ..Setup::default()
    }
    .build()
}

struct Harness {
    cache: Arc<Cache>,
    fakes: HashMap<&'static str, Arc<FakeUpstream>>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

struct Setup {
    tag_ttl: Duration,
    follower_stall: Duration,
    upstreams: Vec<&'static str>,
    private: Vec<&'static str>,
    pieces: PieceRule,
    unread_grace: Duration,
    /// The store's byte budget.
    budget: u64,
    quota_reserves: HashMap<String, u64>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tag_ttl: Duration::from_secs(3600),
            follower_stall: CacheSettings::DEFAULT_FOLLOWER_STALL,
            upstreams: vec![UP],
            private: Vec::new(),
            pieces: PieceRule::default(),
            unread_grace: CacheSettings::DEFAULT_UNREAD_GRACE,
            budget: 1 << 30,
            quota_reserves: HashMap::new(),
        }
    }
}

impl Setup {
    fn build(self) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(StoreOptions::new(dir.path(), self.budget), metrics.clone())
            .expect("store");
        let fakes: HashMap<&'static str, Arc<FakeUpstream>> = self
            .upstreams
            .iter()
            .map(|u| (*u, Arc::new(FakeUpstream::default())))
            .collect();
        let origins = fakes
            .iter()
            .map(|(name, f)| (name.to_string(), f.origin()))
            .collect();
        let settings = CacheSettings {
            tag_ttl: self.tag_ttl,
            private_upstreams: self
                .private
                .iter()
                .map(|p| p.to_string())
                .collect::<HashSet<_>>(),
            hold_commit: Duration::ZERO,
            follower_stall: self.follower_stall,
            pieces: self.pieces,
            unread_grace: self.unread_grace,
            quota_reserves: self.quota_reserves,
        };
        Harness {
            cache: Arc::new(Cache::from_origins(
                store,
                origins,
                settings,
                metrics.clone(),
            )),
            fakes,
            metrics,
            _dir: dir,
        }
    }
}

impl Harness {
    fn new() -> Harness {
        Setup::default().build()
    }

    fn fake(&self) -> &FakeUpstream {
        &self.fakes[UP]
    }

    async fn get_blob(&self, repo: &str, d: &Digest) -> Result<Vec<u8>, String> {
        get_blob(&self.cache, &target_on(UP, repo), d).await
    }

    /// A client's GET of blob `d` of `repo`: the answer, its body not read yet.
    async fn blob_answer(&self, repo: &str, d: &Digest, what: &str) -> super::BlobAnswer {
        self.cache
            .blob_for(&target_on(UP, repo), d, None, false, Requester::Client)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// `n` clients GETting blob `d` of `repo` at once.
    fn clients(&self, n: usize, repo: &'static str, d: Digest) -> Vec<Client> {
        (0..n)
            .map(|_| {
                let cache = self.cache.clone();
                tokio::spawn(async move { get_blob(&cache, &target_on(UP, repo), &d).await })
            })
            .collect()
    }

    /// Waits until a blob fill shows on the status page.
    async fn fill_under_way(&self) {
        while self.cache.fills_in_progress().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn manifest(&self, repo: &str, tag: &str) -> Result<super::ManifestAnswer, CacheError> {
        let reference: Reference = tag.parse().expect("reference");
        self.cache
            .manifest(&target_on(UP, repo), &reference, &[], false)
            .await
    }
}

fn target_on(upstream: &str, repo: &str) -> RepoTarget {
    RepoTarget {
        upstream: upstream.into(),
        repo: repo.parse().expect("repository name"),
    }
}

async fn read_all(mut body: BlobStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(frame) = body.next().await {
        out.extend_from_slice(&frame.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// A client's whole GET of a blob: its bytes, or why the request or the body failed (or
/// that it took more than 20 s: a client left waiting).
async fn get_blob(cache: &Cache, target: &RepoTarget, d: &Digest) -> Result<Vec<u8>, String> {
    let get = async {
        let answer = cache
            .blob_for(target, d, None, false, Requester::Client)
            .await
            .map_err(|e| e.to_string())?;
        read_all(answer.body.ok_or("a GET without a body")?).await
    };
    tokio::time::timeout(Duration::from_secs(20), get)
        .await
        .unwrap_or_else(|_| Err("the client was left waiting".into()))
}

fn layer(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn stored(h: &Harness, d: &Digest) -> bool {
    h.cache.store().blob(d).expect("index").is_some()
}

async fn settle(h: &Harness) {
    assert!(
        h.cache.fills_settled(Duration::from_secs(10)).await,
        "fills settle"
    );
}

const LAYER: usize = 300 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_within_its_ttl_is_answered_without_the_source() {
    let h = Harness::new();
    let d = h.fake().set_tag("team/app", "v1", "{\"schemaVersion\":2}");
    let first = h.manifest("team/app", "v1").await.expect("first");
    assert!(!first.from_cache);
    assert_eq!(first.digest, d);
    let second = h.manifest("team/app", "v1").await.expect("second");
    assert!(second.from_cache && !second.stale);
    let calls = h.fake().calls();
    assert_eq!((calls.manifest_gets, calls.manifest_heads), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_past_its_ttl_is_revalidated_with_a_head_and_fetched_only_when_it_moved() {
    let h = Setup {
        tag_ttl: Duration::ZERO,
        ..Setup::default()
    }
    .build();
    h.fake().set_tag("team/app", "v1", "{\"schemaVersion\":2}");
    h.manifest("team/app", "v1").await.expect("first");
    let again = h.manifest("team/app", "v1").await.expect("unchanged");
    assert!(again.from_cache);
    assert_eq!(
        (
            h.fake().calls().manifest_gets,
            h.fake().calls().manifest_heads
        ),
        (1, 1),
        "unchanged: one HEAD, no second GET"
    );
    let moved = h
        .fake()
        .set_tag("team/app", "v1", "{\"schemaVersion\":2,\"moved\":1}");
    let after = h.manifest("team/app", "v1").await.expect("moved");
    assert_eq!(after.digest, moved);
    assert!(!after.from_cache);
    assert_eq!(
        (
            h.fake().calls().manifest_gets,
            h.fake().calls().manifest_heads
        ),
        (2, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_tag_is_served_stale_while_the_source_is_down_and_nothing_else_is() {
    let h = Setup {
        tag_ttl: Duration::ZERO,
        ..Setup::default()
    }
    .build();
    let d = h.fake().set_tag("team/app", "v1", "{\"schemaVersion\":2}");
    h.manifest("team/app", "v1").await.expect("first");
    h.fake().set_down(true);
    let stale = h.manifest("team/app", "v1").await.expect("stale answer");
    assert!(stale.stale && stale.from_cache);
    assert_eq!(stale.digest, d);
    assert_eq!(
        h.metrics
            .stale_served
            .with_label_values(&["manifest"])
            .get(),
        1
    );
    // Never cached: unavailable, not unknown.
    match h.manifest("team/app", "v2").await {
        Err(CacheError::Unavailable { .. }) => {}
        other => panic!("expected unavailable, got {:?}", other.map(|a| a.digest)),
    }
}

/// #26: a public upstream's tag list is asked once per tag_ttl however many clients list
/// the repository (at once or one after another), not once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_is_asked_once_per_ttl_and_once_for_concurrent_clients() {
    let h = Harness::new();
    h.fake().set_tag_list("team/app", &["v2", "v1"]);
    let target = target_on(UP, "team/app");
    let lists: Vec<_> = (0..8)
        .map(|_| {
            let (cache, target) = (h.cache.clone(), target.clone());
            tokio::spawn(async move { cache.tags_list(&target).await })
        })
        .collect();
    for l in lists {
        let list = l.await.expect("task").expect("list");
        assert_eq!(list.tags, vec!["v1".to_string(), "v2".to_string()]);
    }
    for _ in 0..3 {
        assert!(h.cache.tags_list(&target).await.is_ok());
    }
    assert_eq!(
        h.fake().calls().tag_pages,
        1,
        "one upstream walk for all of them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_list_is_asked_every_time_and_served_stale_when_the_source_is_down() {
    // tag_ttl 0: nothing is answered from memory.
    let h = Setup {
        tag_ttl: Duration::ZERO,
        ..Setup::default()
    }
    .build();
    h.fake().set_tag_list("team/app", &["v2", "v1"]);
    let target = target_on(UP, "team/app");
    let fresh = h.cache.tags_list(&target).await.expect("fresh");
    assert_eq!(
        (fresh.tags.clone(), fresh.stale),
        (vec!["v1".into(), "v2".into()], false)
    );
    h.fake().set_down(true);
    let stale = h.cache.tags_list(&target).await.expect("stale");
    assert_eq!((stale.tags, stale.stale), (fresh.tags, true));
    assert_eq!(h.fake().calls().tag_pages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_fetched_through_a_private_upstream_is_no_hit_through_another() {
    let h = Setup {
        upstreams: vec!["private.test", "public.test"],
        private: vec!["private.test"],
        ..Setup::default()
    }
    .build();
    let bytes = layer(LAYER, 1);
    let d = h.fakes["private.test"].add_blob(&bytes, &["team/secret"]);
    let private = target_on("private.test", "team/secret");
    assert_eq!(
        get_blob(&h.cache, &private, &d).await.as_deref(),
        Ok(&bytes[..])
    );
    settle(&h).await;
    assert!(stored(&h, &d));
    // The public upstream does not have it: asked, it says 404, and the stored copy stays
    // invisible.
    let public = target_on("public.test", "team/secret");
    let err = get_blob(&h.cache, &public, &d)
        .await
        .expect_err("not visible");
    assert!(err.contains("unknown"), "{err}");
    assert_eq!(h.fakes["public.test"].calls().blob_gets.len(), 1);
    assert_eq!(h.metrics.private_content_refusals.get(), 1);
    // Through the private upstream again: a hit.
    assert_eq!(
        get_blob(&h.cache, &private, &d).await.as_deref(),
        Ok(&bytes[..])
    );
    assert_eq!(h.fakes["private.test"].calls().blob_gets.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_for_another_repository_is_joined_once_the_source_confirms_it() {
    let h = Harness::new();
    let bytes = layer(LAYER, 2);
    let d = h.fake().add_blob(&bytes, &["team/a", "team/b"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(10),
    }]);
    let first = h.clients(1, "team/a", d);
    h.fill_under_way().await;
    let second = h.get_blob("team/b", &d).await;
    assert_eq!(second.as_deref(), Ok(&bytes[..]));
    all_got(first, &bytes).await;
    let calls = h.fake().calls();
    assert_eq!(calls.blob_gets.len(), 1, "one fill for both repositories");
    assert_eq!(
        calls.blob_heads,
        vec!["team/b".to_string()],
        "team/b confirmed first"
    );
    assert_eq!(h.metrics.singleflight_joins.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_the_source_denies_does_not_join_the_fill() {
    let h = Harness::new();
    let bytes = layer(LAYER, 3);
    let d = h.fake().add_blob(&bytes, &["team/a"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(10),
    }]);
    let first = h.clients(1, "team/a", d);
    h.fill_under_way().await;
    let denied = h.get_blob("team/other", &d).await.expect_err("denied");
    assert!(denied.contains("unknown"), "{denied}");
    all_got(first, &bytes).await;
    let calls = h.fake().calls();
    assert_eq!(calls.blob_gets.len(), 1);
    assert_eq!(calls.blob_heads, vec!["team/other".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_is_resumed_from_the_byte_reached() {
    let h = Harness::new();
    let bytes = layer(LAYER, 4);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    let cut = 5 * fake::FRAME + 100;
    h.fake().script(&[Body::BreakAfter(cut)]);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    let gets = h.fake().calls().blob_gets;
    assert_eq!(
        gets,
        vec![
            // The first piece's range (the blob is smaller: it is the whole blob).
            (
                "team/app".to_string(),
                BlobSpan::between(0, super::pieces::FIRST_PIECE).expect("span")
            ),
            ("team/app".to_string(), BlobSpan::starting_at(cut as u64))
        ]
    );
    assert_eq!(h.metrics.fill_resumes.get(), 1);
    settle(&h).await;
    assert!(stored(&h, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_mismatch_completes_no_response_and_stores_nothing() {
    let h = Harness::new();
    let bytes = layer(LAYER, 5);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Corrupt {
        every: Duration::from_millis(10),
    }]);
    let clients = h.clients(3, "team/app", d);
    for c in clients {
        let got = c.await.expect("task");
        assert!(got.is_err(), "a client got a complete response");
    }
    settle(&h).await;
    assert!(!stored(&h, &d));
    assert_eq!(h.metrics.digest_mismatches.get(), 1);
    assert_eq!(h.fake().calls().blob_gets.len(), 1);
}

/// A store of 256 KiB (larger blobs pass through, not stored) whose fills stop after
/// `grace` with no reader.
fn passing_through(grace: Duration) -> Harness {
    Setup {
        budget: 256 << 10,
        unread_grace: grace,
        ..Setup::default()
    }
    .build()
}

/// #25 item 5: a blob larger than the budget is passed through, not stored; once every
/// client has gone, its fill stops instead of fetching the rest for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_fill_nobody_reads_stops() {
    let h = passing_through(Duration::from_millis(300));
    let bytes = layer(4 << 20, 9);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // 16 KiB every 5 ms: about 1.3 s for the whole blob.
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(5),
    }]);
    let answer = h.blob_answer("team/app", &d, "miss").await;
    let mut body = answer.body.expect("body");
    body.next().await.expect("a first frame").expect("bytes");
    drop(body); // the only client goes away
    settle(&h).await;
    let abandoned = h
        .metrics
        .fills_ended
        .with_label_values(&["abandoned"])
        .get();
    assert_eq!(abandoned, 1, "the fill stopped");
    let served = h.fake().served_bytes();
    assert!(
        served < (bytes.len() as u64) / 2,
        "stopped early: {served} bytes fetched"
    );
    assert!(!stored(&h, &d));
    // A later client gets the whole blob from a new fill.
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
}

/// The same blob with a client that reads it to the end: nothing stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_fill_with_a_reader_runs_to_the_end() {
    let h = passing_through(Duration::from_millis(100));
    let bytes = layer(2 << 20, 10);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(2),
    }]);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert_eq!(
        h.metrics
            .fills_ended
            .with_label_values(&["abandoned"])
            .get(),
        0
    );
    assert_eq!(
        h.metrics.fills_ended.with_label_values(&["spooled"]).get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_joins_a_running_fill_is_marked_collapsed() {
    let h = Harness::new();
    let bytes = layer(LAYER, 11);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(10),
    }]);
    let lead = h.blob_answer("team/app", &d, "miss").await;
    assert!(
        !lead.from_cache && !lead.collapsed,
        "the first request leads"
    );
    let join = h.blob_answer("team/app", &d, "joins").await;
    assert!(
        !join.from_cache && join.collapsed,
        "the second joins the first's fill"
    );
    for answer in [lead, join] {
        let got = read_all(answer.body.expect("body")).await;
        assert_eq!(got.as_deref(), Ok(&bytes[..]));
    }
    settle(&h).await;
    let hit = h.blob_answer("team/app", &d, "hit").await;
    assert!(hit.from_cache && !hit.collapsed);
    assert_eq!(h.fake().calls().blob_gets.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_every_client_abandoned_still_completes_and_is_a_hit() {
    let h = Harness::new();
    let bytes = layer(LAYER, 6);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(20),
    }]);
    for _ in 0..2 {
        let answer = h.blob_answer("team/app", &d, "miss").await;
        let mut body = answer.body.expect("body");
        body.next().await.expect("a first frame").expect("bytes");
        drop(body); // the client goes away
    }
    assert_eq!(h.cache.fills_running(), 1);
    settle(&h).await;
    assert!(stored(&h, &d));
    let hit = h.blob_answer("team/app", &d, "hit").await;
    assert!(hit.from_cache);
    assert_eq!(
        read_all(hit.body.expect("body")).await.as_deref(),
        Ok(&bytes[..])
    );
    assert_eq!(h.fake().calls().blob_gets.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_source_fetch() {
    let h = Harness::new();
    let bytes = Arc::new(layer(LAYER, 7));
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(10),
    }]);
    let clients = h.clients(8, "team/app", d);
    all_got(clients, &bytes).await;
    assert_eq!(h.fake().calls().blob_gets.len(), 1);
    assert_eq!(h.metrics.singleflight_joins.get(), 7);
    settle(&h).await;
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    assert_eq!(h.fake().calls().blob_gets.len(), 1, "then a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_fill_is_taken_over_by_a_waiting_client() {
    let h = with_stall(Duration::from_millis(300));
    let bytes = layer(LAYER, 8);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::StallAfter(4 * fake::FRAME)]);
    let clients = h.clients(2, "team/app", d);
    all_got(clients, &bytes).await;
    assert_eq!(
        h.fake().calls().blob_gets.len(),
        2,
        "the stalled fill and one new one for both clients"
    );
    assert_eq!(h.metrics.fill_takeovers.get(), 1);
    // The new fill stored the blob (the stalled one still waits for bytes).
    for _ in 0..200 {
        if stored(&h, &d) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored(&h, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_waiting_on_a_stalled_fill_is_answered_by_the_fill_that_takes_over() {
    let h = with_stall(Duration::from_millis(300));
    let bytes = layer(LAYER, 12);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::StallAfter(2 * fake::FRAME)]);
    let (range, target) = (
        crate::oci::ByteRangeSpec::FromTo(1000, 1999),
        target_on(UP, "team/app"),
    );
    let get = h.cache.blob(&target, &d, Some(range), false);
    let answer = tokio::time::timeout(Duration::from_secs(20), get)
        .await
        .expect("not left waiting")
        .expect("range");
    assert!(answer.partial);
    let got = read_all(answer.body.expect("body")).await;
    assert_eq!(got.as_deref(), Ok(&bytes[1000..2000]));
    assert_eq!(h.fake().calls().blob_gets.len(), 2);
    assert_eq!(h.metrics.fill_takeovers.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_fill_that_keeps_delivering_is_not_taken_over() {
    let h = with_stall(Duration::from_millis(200));
    let bytes = layer(LAYER, 9);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // 19 frames, 60 ms apart: over a second in all, never 200 ms without a byte.
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(60),
    }]);
    let clients = h.clients(2, "team/app", d);
    all_got(clients, &bytes).await;
    assert_eq!(h.fake().calls().blob_gets.len(), 1);
    assert_eq!(h.metrics.fill_takeovers.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_running_fill_and_its_joins_until_it_ends() {
    let h = Harness::new();
    let bytes = layer(LAYER, 10);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // 19 frames, 100 ms apart: the fill runs for about two seconds.
    h.fake().script(&[Body::Paced {
        every: Duration::from_millis(100),
    }]);
    // One client starts the fill; a second joins once bytes are flowing (two clients
    // spawned at once raced: on a loaded machine the second could arrive late enough to
    // find the blob complete, or the poll below could run out before it joined).
    let mut clients = h.clients(1, "team/app", d);
    let shown = shown_until(&h, |f| f.received > 0).await;
    assert_eq!(shown.len(), 1, "one fill under way: {shown:?}");
    assert_eq!((shown[0].joined, shown[0].repo.as_str()), (0, "team/app"));
    clients.extend(h.clients(1, "team/app", d));
    let shown = shown_until(&h, |f| f.joined == 1).await;
    assert_eq!(shown.len(), 1, "still one fill, now joined: {shown:?}");
    assert_eq!(shown[0].joined, 1, "{shown:?}");
    assert_eq!(shown[0].size, Some(LAYER as u64));
    assert_eq!(h.cache.fills_running(), 1);
    all_got(clients, &bytes).await;
    settle(&h).await;
    assert!(h.cache.fills_in_progress().is_empty());
}

/// The status page's fills once the first one satisfies `done` (or after 10 s, whatever
/// they are then).
async fn shown_until(
    h: &Harness,
    done: impl Fn(&super::FillProgress) -> bool,
) -> Vec<super::FillProgress> {
    let mut shown = Vec::new();
    for _ in 0..2000 {
        shown = h.cache.fills_in_progress();
        if shown.first().is_some_and(&done) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shown
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_a_miss_asks_the_source_for_the_size_and_fetches_nothing() {
    let h = Harness::new();
    let bytes = layer(LAYER, 11);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    let answer = h
        .cache
        .blob(&target_on(UP, "team/app"), &d, None, true)
        .await
        .expect("head");
    assert_eq!(answer.size, Some(LAYER as u64));
    assert!(answer.body.is_none() && !answer.from_cache);
    let calls = h.fake().calls();
    assert_eq!((calls.blob_heads.len(), calls.blob_gets.len()), (1, 0));
    assert!(!stored(&h, &d));
}
