//! Large blobs fetched as parallel ranged pieces (`cache::pieces`), with a small piece rule
//! so that a 1 MiB blob has several: the pieces partition the blob, a cut piece is asked
//! for again alone, a source that ignores `Range` is one stream, a wrong answer to a piece
//! (another byte, another total, a `200`) fails the fill, a corrupt piece completes no
//! response and stores nothing, pieces ahead of the prefix spill to the spool file, and
//! readers anywhere get exact bytes.

use super::*;
use crate::oci::ByteRangeSpec;
use fake::Misanswer;

const PIECE: u64 = 128 << 10;
const BIG: usize = 1 << 20;

/// The test rule: pieces of `PIECE` bytes, `in_flight` at once, `reorder_memory` bytes
/// ahead of the prefix in memory.
fn rule(in_flight: usize, reorder_memory: u64) -> PieceRule {
    PieceRule {
        in_flight,
        start: in_flight,
        first: PIECE,
        min_len: PIECE,
        min_len_long: PIECE,
        max_len: PIECE,
        per_blob: 64,
        reorder_memory,
        slow_path: Duration::ZERO,
    }
}

fn pieced_with(pieces: PieceRule) -> Harness {
    Setup {
        pieces,
        ..Setup::default()
    }
    .build()
}

fn pieced() -> Harness {
    pieced_with(rule(4, (1 << 20) + (256 << 10)))
}

/// The spans of the blob GETs, in the order they were asked.
fn spans(h: &Harness) -> Vec<BlobSpan> {
    h.fake()
        .calls()
        .blob_gets
        .into_iter()
        .map(|(_, s)| s)
        .collect()
}

/// [`spans`] sorted by where they start.
fn spans_sorted(h: &Harness) -> Vec<BlobSpan> {
    let mut asked = spans(h);
    asked.sort_by_key(|s| s.start());
    asked
}

/// `[0, size)` cut at every `PIECE`.
fn partition(size: u64) -> Vec<BlobSpan> {
    (0..size.div_ceil(PIECE))
        .filter_map(|i| BlobSpan::between(i * PIECE, ((i + 1) * PIECE).min(size)))
        .collect()
}

fn pieces_ended(h: &Harness, result: &str) -> u64 {
    h.metrics.fill_pieces.with_label_values(&[result]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_ignores_range_fills_with_one_get() {
    let h = pieced();
    let bytes = layer(BIG, 40);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().ignore_range(true);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(
        spans(&h),
        vec![BlobSpan::between(0, PIECE).expect("span")],
        "one GET (it asked for the first piece and got the whole blob)"
    );
    assert_eq!(h.fake().served_bytes(), BIG as u64);
    assert_eq!(pieces_ended(&h, "ok") + pieces_ended(&h, "retried"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_is_fetched_as_pieces_that_partition_it() {
    let h = pieced();
    let bytes = layer(BIG, 41);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // The first piece is slow: the others run meanwhile and wait, ahead of the prefix.
    h.fake().script_at(
        0,
        Body::Paced {
            every: Duration::from_millis(40),
        },
    );
    let clients = h.clients(3, "team/app", d);
    h.fill_under_way().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while spans(&h).len() < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        spans(&h).len() >= 4 && !stored(&h, &d),
        "four pieces in flight while the first is still arriving: {:?}",
        spans(&h)
    );
    all_got(clients, &bytes).await;
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(
        spans_sorted(&h),
        partition(BIG as u64),
        "the pieces partition the blob"
    );
    assert_eq!(h.fake().served_bytes(), BIG as u64, "no byte fetched twice");
    assert_eq!(pieces_ended(&h, "ok"), partition(BIG as u64).len() as u64);
    assert_eq!(pieces_ended(&h, "retried") + pieces_ended(&h, "failed"), 0);
    assert_eq!(h.metrics.fill_pieces_in_flight.get(), 0);
    // A late client reads the stored blob.
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    assert_eq!(spans(&h).len(), partition(BIG as u64).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_cut_mid_way_is_asked_for_again_alone_from_where_it_stopped() {
    let h = pieced();
    let bytes = layer(BIG, 42);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    let piece = 3 * PIECE;
    let cut = fake::FRAME + 100;
    h.fake().script_at(piece, Body::BreakAfter(cut));
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    let mut expected = partition(BIG as u64);
    expected.push(BlobSpan::between(piece + cut as u64, piece + PIECE).expect("span"));
    expected.sort_by_key(|s| s.start());
    let mut asked = spans(&h);
    asked.sort_by_key(|s| s.start());
    assert_eq!(asked, expected, "only the cut piece's rest was asked again");
    assert_eq!(h.fake().served_bytes(), BIG as u64, "no byte fetched twice");
    assert_eq!(pieces_ended(&h, "retried"), 1);
    assert_eq!(
        pieces_ended(&h, "ok"),
        partition(BIG as u64).len() as u64 - 1
    );
    assert_eq!(h.metrics.fill_resumes.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_piece_completes_no_response_and_stores_nothing() {
    let h = pieced();
    let bytes = layer(BIG, 43);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script_at(
        5 * PIECE,
        Body::Corrupt {
            every: Duration::from_millis(1),
        },
    );
    let clients = h.clients(3, "team/app", d);
    let target = target_on(UP, "team/app");
    let range = h
        .cache
        .blob(
            &target,
            &d,
            Some(ByteRangeSpec::From(BIG as u64 - 1000)),
            false,
        )
        .await
        .expect("a range of a blob being filled");
    for c in clients {
        let got = c.await.expect("task");
        assert!(got.is_err(), "a client got a complete response");
    }
    let got = read_all(range.body.expect("a GET has a body")).await;
    assert!(got.is_err(), "a range of a corrupt blob completed");
    settle(&h).await;
    assert!(!stored(&h, &d));
    assert_eq!(h.metrics.digest_mismatches.get(), 1);
    assert_eq!(h.metrics.fill_pieces_in_flight.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_far_ahead_and_far_behind_get_exact_bytes() {
    let h = pieced();
    let bytes = layer(BIG, 44);
    let size = BIG as u64;
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // The first piece arrives last: every other piece waits in the reorder buffer.
    h.fake().script_at(
        0,
        Body::Paced {
            every: Duration::from_millis(30),
        },
    );
    let target = target_on(UP, "team/app");
    let ahead = [
        ByteRangeSpec::From(size - 1000),
        ByteRangeSpec::FromTo(6 * PIECE + 5, 7 * PIECE + 77),
        ByteRangeSpec::Suffix(1),
    ];
    let mut answers = Vec::new();
    for spec in ahead {
        let answer = h
            .cache
            .blob(&target, &d, Some(spec), false)
            .await
            .expect("a range of a blob being filled");
        answers.push((spec, tokio::spawn(read_all(answer.body.expect("a body")))));
    }
    // A whole GET that starts now but reads nothing until the fill has ended.
    let behind = h
        .cache
        .blob(&target, &d, None, false)
        .await
        .expect("a GET of a blob being filled");
    for (spec, read) in answers {
        let (s, e) = spec.resolve(size).expect("satisfiable");
        let got = read.await.expect("reader task");
        assert_eq!(
            got.as_deref(),
            Ok(&bytes[s as usize..e as usize]),
            "{spec:?}"
        );
    }
    settle(&h).await;
    let got = read_all(behind.body.expect("a body")).await;
    assert_eq!(got.as_deref(), Ok(&bytes[..]), "the reader far behind");
    assert!(stored(&h, &d));
    assert_eq!(h.fake().served_bytes(), size);
}

/// A reader waiting past the prefix (a lazy puller, or containerd's last part) gets the
/// piece it needs started next, out of order, and reads its bytes as they land: long
/// before the first piece (here the slow one) lets the prefix get there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_past_the_prefix_gets_its_piece_next_and_its_bytes_as_they_land() {
    // Two pieces at once: without the reader, the last piece would wait until the
    // prefix (held back by the slow first piece) came within reach.
    let h = pieced_with(rule(2, 1 << 20));
    let bytes = layer(BIG, 52);
    let size = BIG as u64;
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // 8 frames, one every 150 ms: the prefix stays at 0 for over a second.
    h.fake().script_at(
        0,
        Body::Paced {
            every: Duration::from_millis(150),
        },
    );
    let target = target_on(UP, "team/app");
    let from = 7 * PIECE + 10;
    let answer = h
        .cache
        .blob(&target, &d, Some(ByteRangeSpec::From(from)), false)
        .await
        .expect("a range of a blob being filled");
    let mut body = answer.body.expect("a body");
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("bytes within 10 s")
        .expect("a frame")
        .expect("not an error");
    assert!(
        h.fake().served_bytes() < size,
        "the reader's first bytes came before the slow first piece ended"
    );
    assert!(!first.is_empty());
    assert_eq!(
        &first[..],
        &bytes[from as usize..from as usize + first.len()]
    );
    assert!(h.metrics.fill_pieces_wanted.get() >= 1);
    let mut got = first.to_vec();
    got.extend(read_all(body).await.expect("the rest of the range"));
    assert!(got == bytes[from as usize..], "the range is byte-exact");
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(spans_sorted(&h), partition(size), "still a partition");
    assert_eq!(h.fake().served_bytes(), size, "no byte fetched twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_blob_refused_as_a_range_is_asked_for_whole() {
    let h = pieced();
    let d = h.fake().add_blob(b"", &["team/app"]);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&b""[..]));
    assert_eq!(
        spans(&h),
        vec![BlobSpan::between(0, PIECE).expect("span"), BlobSpan::WHOLE]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_no_larger_than_the_first_piece_is_one_request() {
    let h = pieced();
    for (seed, len) in [(50u8, PIECE as usize), (51, PIECE as usize - 1), (52, 1000)] {
        let bytes = layer(len, seed);
        let d = h.fake().add_blob(&bytes, &["team/app"]);
        let before = spans(&h).len();
        assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
        settle(&h).await;
        assert!(stored(&h, &d), "{len}");
        assert_eq!(
            spans(&h)[before..],
            [BlobSpan::between(0, PIECE).expect("span")],
            "{len} bytes: one request"
        );
    }
    assert_eq!(pieces_ended(&h, "ok") + pieces_ended(&h, "retried"), 0);
    // One byte more is two pieces: the first and a one-byte rest.
    let bytes = layer(PIECE as usize + 1, 53);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    let before = spans(&h).len();
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    let mut asked = spans(&h)[before..].to_vec();
    asked.sort_by_key(|s| s.start());
    assert_eq!(asked, partition(PIECE + 1));
    assert_eq!(pieces_ended(&h, "ok"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_piece_in_flight_turns_pieces_off() {
    let h = pieced_with(rule(1, 1 << 20));
    let bytes = layer(BIG, 45);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(spans(&h), vec![BlobSpan::WHOLE], "one GET without Range");
    assert_eq!(h.fake().served_bytes(), BIG as u64);
    assert_eq!(pieces_ended(&h, "ok") + pieces_ended(&h, "retried"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_ahead_of_the_prefix_spill_to_the_spool_file_and_come_back_exact() {
    // No room in memory: everything ahead of the prefix goes to the spool file.
    let h = pieced_with(rule(4, 0));
    let bytes = layer(BIG, 46);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script_at(
        0,
        Body::Paced {
            every: Duration::from_millis(60),
        },
    );
    let clients = h.clients(2, "team/app", d);
    let target = target_on(UP, "team/app");
    let spec = ByteRangeSpec::FromTo(2 * PIECE - 10, 5 * PIECE + 9);
    let range = h
        .cache
        .blob(&target, &d, Some(spec), false)
        .await
        .expect("a range of a blob being filled");
    let got = read_all(range.body.expect("a body")).await;
    assert_eq!(
        got.as_deref(),
        Ok(&bytes[(2 * PIECE - 10) as usize..=(5 * PIECE + 9) as usize])
    );
    all_got(clients, &bytes).await;
    settle(&h).await;
    assert!(stored(&h, &d));
    assert!(
        h.metrics.fill_pieces_spooled_bytes.get() >= PIECE,
        "{} bytes spooled",
        h.metrics.fill_pieces_spooled_bytes.get()
    );
    assert_eq!(h.fake().served_bytes(), BIG as u64);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
}

/// A fill whose piece at `at` is answered `wrong`: it fails, nothing is stored, its client
/// gets no complete response, and the piece is not asked for again; the next request
/// tries again (with a fill of its own).
async fn a_wrong_answer_fails_the_fill(at: u64, wrong: Misanswer, seed: u8) {
    let h = pieced();
    let bytes = layer(BIG, seed);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().misanswer_at(at, wrong);
    let got = h.get_blob("team/app", &d).await;
    assert!(
        got.is_err(),
        "{wrong:?}: the client got a complete response"
    );
    settle(&h).await;
    assert!(!stored(&h, &d), "{wrong:?}");
    assert_eq!(
        h.metrics.fills_ended.with_label_values(&["failed"]).get(),
        1,
        "{wrong:?}"
    );
    assert_eq!(pieces_ended(&h, "failed"), 1, "{wrong:?}");
    assert_eq!(
        h.metrics.digest_mismatches.get(),
        0,
        "{wrong:?}: not a digest mismatch"
    );
    assert_eq!(h.metrics.fill_resumes.get(), 0, "{wrong:?}: never a guess");
    assert_eq!(h.metrics.fill_pieces_in_flight.get(), 0);
    let asked_there = spans(&h).iter().filter(|s| s.start() == at).count();
    assert_eq!(asked_there, 1, "{wrong:?}: asked once");
    // The source answers right again: the next request fills the blob.
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d), "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_answered_from_another_byte_fails_the_fill() {
    a_wrong_answer_fails_the_fill(3 * PIECE, Misanswer::FromByte(3 * PIECE + 10), 47).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_answered_with_another_total_fails_the_fill() {
    a_wrong_answer_fails_the_fill(2 * PIECE, Misanswer::Total(BIG as u64 + PIECE), 48).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_answered_with_the_whole_blob_fails_the_fill() {
    a_wrong_answer_fails_the_fill(4 * PIECE, Misanswer::Whole, 49).await;
}

/// The production rule's path test with the test's piece sizes.
fn adaptive() -> PieceRule {
    PieceRule {
        slow_path: Duration::from_millis(30),
        ..rule(4, 1 << 20)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_source_is_read_as_one_stream_after_the_first_piece() {
    let h = pieced_with(adaptive());
    let bytes = layer(BIG, 47);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(
        spans(&h),
        vec![
            BlobSpan::between(0, PIECE).expect("span"),
            BlobSpan::between(PIECE, BIG as u64).expect("span"),
        ],
        "the first piece, then the rest in one request"
    );
    assert_eq!(h.fake().served_bytes(), BIG as u64);
    assert_eq!(pieces_ended(&h, "ok"), 2);
    assert_eq!(
        h.metrics.fill_pieces_spooled_bytes.get(),
        0,
        "nothing waited ahead of the prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_is_read_as_parallel_pieces() {
    let h = pieced_with(adaptive());
    let bytes = layer(BIG, 48);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    // Every answer comes after 40 ms: a long path.
    h.fake().set_latency(Duration::from_millis(40));
    assert_eq!(h.get_blob("team/app", &d).await.as_deref(), Ok(&bytes[..]));
    settle(&h).await;
    assert!(stored(&h, &d));
    assert_eq!(
        spans_sorted(&h),
        partition(BIG as u64),
        "pieces that partition the blob"
    );
    assert_eq!(h.fake().served_bytes(), BIG as u64);
}
