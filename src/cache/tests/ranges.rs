//! Cold ranges: answered at once from the fill, streamed as the bytes arrive, and never
//! complete before the whole blob's digest matched (containerd 2.1+ splits a layer into
//! parallel `Range` requests and, from 2.3, gives up on a response without headers after
//! 30 s).

use super::*;
use crate::oci::ByteRangeSpec;

/// A paced fill of `LAYER` bytes: 19 frames, `every` apart.
fn paced(h: &Harness, seed: u8, every: Duration) -> (Vec<u8>, Digest) {
    let bytes = layer(LAYER, seed);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Paced { every }]);
    (bytes, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_ranges_get_headers_before_the_fill_ends_and_exact_bytes() {
    let h = Harness::new();
    // About 3.8 s for the whole blob.
    let (bytes, d) = paced(&h, 21, Duration::from_millis(200));
    let target = target_on(UP, "team/app");
    let size = bytes.len() as u64;
    let quarter = size / 4;
    // Four open-ended ranges and four bounded ones, as containerd's multipart fetch sends.
    let mut specs = Vec::new();
    for i in 0..4 {
        specs.push(ByteRangeSpec::From(i * quarter));
        specs.push(ByteRangeSpec::FromTo(i * quarter, (i + 1) * quarter - 1));
    }
    let mut answers = Vec::new();
    for spec in &specs {
        let answer = h
            .cache
            .blob(&target, &d, Some(*spec), false)
            .await
            .expect("a range of a blob being filled");
        // Headers while the fill is still under way: nobody waited for the whole blob.
        assert!(
            !h.cache.fills_in_progress().is_empty() && !stored(&h, &d),
            "the answer to {spec:?} waited for the end of the fill"
        );
        assert!(answer.partial);
        assert_eq!(answer.size, Some(size));
        answers.push(answer);
    }
    let reads: Vec<_> = answers
        .into_iter()
        .map(|a| tokio::spawn(read_all(a.body.expect("a GET has a body"))))
        .collect();
    for (spec, read) in specs.iter().zip(reads) {
        let (s, e) = spec.resolve(size).expect("satisfiable");
        let got = read.await.expect("reader task");
        assert_eq!(
            got.as_deref(),
            Ok(&bytes[s as usize..e as usize]),
            "{spec:?}"
        );
    }
    assert_eq!(
        h.fake().calls().blob_gets.len(),
        1,
        "one fetch for every range"
    );
    settle(&h).await;
    assert!(stored(&h, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_range_in_the_middle_of_a_corrupt_blob_never_completes() {
    let h = Harness::new();
    let bytes = layer(LAYER, 22);
    let d = h.fake().add_blob(&bytes, &["team/app"]);
    h.fake().script(&[Body::Corrupt {
        every: Duration::from_millis(10),
    }]);
    let target = target_on(UP, "team/app");
    // Every byte of this range arrives long before the blob's end and its digest check.
    let spec = ByteRangeSpec::FromTo(1000, 1999);
    let answer = h
        .cache
        .blob(&target, &d, Some(spec), false)
        .await
        .expect("a range of a blob being filled");
    let got = read_all(answer.body.expect("a GET has a body")).await;
    let got = got.expect_err("a range of a corrupt blob completed");
    assert!(got.contains("digest"), "{got}");
    settle(&h).await;
    assert!(!stored(&h, &d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_cold_range_sends_all_but_its_last_byte_before_the_blob_is_verified() {
    let h = Harness::new();
    let (bytes, d) = paced(&h, 23, Duration::from_millis(100));
    let target = target_on(UP, "team/app");
    let spec = ByteRangeSpec::FromTo(0, 999);
    let answer = h
        .cache
        .blob(&target, &d, Some(spec), false)
        .await
        .expect("a range of a blob being filled");
    let mut body = answer.body.expect("a GET has a body");
    let mut got = Vec::new();
    while got.len() < 999 {
        let frame = body.next().await.expect("more bytes").expect("a frame");
        got.extend_from_slice(&frame);
    }
    assert_eq!(&got[..], &bytes[..999], "bytes before the end of the fill");
    assert!(!stored(&h, &d), "the fill was still under way");
    let last = body.next().await.expect("the last byte").expect("a frame");
    assert_eq!(&last[..], &bytes[999..1000]);
    assert!(body.next().await.is_none());
    assert!(
        h.cache.store().blob(&d).expect("index").is_some() || {
            settle(&h).await;
            stored(&h, &d)
        }
    );
}
