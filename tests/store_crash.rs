//! Crash safety of the store: a child process (this test binary re-executed in "child
//! mode") fills random blobs in a loop and is SIGKILLed at random moments; after each kill
//! the parent reopens the store and checks that recovery left it consistent and durable.

use rand::{Rng, RngCore, SeedableRng};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::oci::Digest;
use sparkcr_edge::store::{ChunkId, Store, StoreOptions};
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set (to the store directory) in the child's environment.
const CHILD_STORE_ENV: &str = "SPARKCR_STORE_CRASH_CHILD_STORE";
/// The side file where the child records each digest whose `finish()` returned.
const CHILD_LOG_ENV: &str = "SPARKCR_STORE_CRASH_CHILD_LOG";
const CHILD_SEED_ENV: &str = "SPARKCR_STORE_CRASH_CHILD_SEED";

const ROUNDS: usize = 60;
const BUDGET: u64 = 8 << 30; // large: nothing is evicted, so every finished blob must stay

fn store_options(dir: &Path, chunk_size: usize) -> StoreOptions {
    let mut opts = StoreOptions::new(dir, BUDGET);
    opts.chunk_size = chunk_size;
    opts
}

/// Child mode: fill blobs forever (until killed). Does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Ok(dir), Ok(log)) = (std::env::var(CHILD_STORE_ENV), std::env::var(CHILD_LOG_ENV)) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let chunk_size = [64 << 10, 64 << 10, 128 << 10, 256 << 10][rng.random_range(0..4)];
    let store = Store::open(
        store_options(Path::new(&dir), chunk_size),
        Arc::new(Metrics::new()),
    )
    .expect("child opens the store");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("child opens its log");
    loop {
        let len = match rng.random_range(0..10) {
            0 => 0,
            1 => rng.random_range(1..100),
            _ => rng.random_range(1..(1536 << 10)),
        };
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        if len > 0 && rng.random_bool(0.2) {
            // Repeated content: exercises shared chunks.
            let half = len / 2;
            let (a, b) = bytes.split_at_mut(half);
            let n = a.len().min(b.len());
            b[..n].copy_from_slice(&a[..n]);
        }
        let mode = rng.random_range(0..20);
        let digest = if mode == 0 {
            Digest::of(b"not the content") // a mismatching fill
        } else {
            Digest::of(&bytes)
        };
        let expected = rng.random_bool(0.5).then_some(len as u64);
        let mut fill = store.begin_fill(digest, expected).expect("begin fill");
        let mut rest = &bytes[..];
        let abort_at = (mode == 1).then_some(len / 2);
        while !rest.is_empty() {
            let n = rng.random_range(1..=(256 << 10)).min(rest.len());
            fill.write(&rest[..n]).expect("write");
            rest = &rest[n..];
            if abort_at.is_some_and(|at| len - rest.len() >= at) {
                break;
            }
        }
        if abort_at.is_some() {
            drop(fill);
            continue;
        }
        match fill.finish("docker.io/library/crash") {
            Ok(info) => {
                writeln!(log, "{}", info.digest).expect("log");
            }
            Err(e) => assert!(mode == 0, "unexpected fill failure: {e}"),
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn sha256_via_reader(store: &Store, d: &Digest, size: u64) -> Digest {
    let reader = store
        .read_blob(d, 0, size)
        .expect("read_blob")
        .expect("visible blob can be read");
    let mut verifier = sparkcr_edge::oci::Sha256Verifier::new();
    for frame in reader {
        verifier.update(&frame.expect("frame"));
    }
    assert_eq!(verifier.len(), size);
    verifier.finish()
}

/// Reopens the store after a kill and checks consistency; returns newly verified digests.
fn check_after_crash(dir: &Path, log: &Path, verified: &mut HashSet<Digest>, round: usize) {
    let store = Store::open(store_options(dir, 64 << 10), Arc::new(Metrics::new()))
        .unwrap_or_else(|e| panic!("round {round}: reopen after kill failed: {e}"));

    // Every visible blob hashes to its digest (each blob once; they are immutable).
    let blobs = store.list_blobs().expect("list blobs");
    let mut referenced: HashSet<ChunkId> = HashSet::new();
    let visible: HashSet<Digest> = blobs.iter().map(|b| b.digest).collect();
    for b in &blobs {
        for c in store.blob_chunks(&b.digest).expect("chunks").expect("blob") {
            referenced.insert(c.id);
        }
        if verified.insert(b.digest) {
            assert_eq!(
                sha256_via_reader(&store, &b.digest, b.size),
                b.digest,
                "round {round}: visible blob does not hash to its digest"
            );
        }
    }

    // No orphan chunk file; every referenced chunk present.
    let on_disk: HashSet<ChunkId> = files_under(&dir.join("chunks"))
        .iter()
        .map(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("round {round}: stray file {}", p.display()))
        })
        .collect();
    assert_eq!(
        on_disk, referenced,
        "round {round}: chunk files and references differ"
    );
    assert!(
        files_under(&dir.join("tmp")).is_empty(),
        "round {round}: tmp/ not empty"
    );

    // Durability: everything whose finish() returned before the kill is visible.
    let finished = fs::read_to_string(log).unwrap_or_default();
    for line in finished.lines() {
        // The last line may be torn by the kill.
        let Ok(d) = line.parse::<Digest>() else {
            continue;
        };
        assert!(
            visible.contains(&d),
            "round {round}: finished blob {d} lost after the kill"
        );
    }
    let stats = store.stats().expect("stats");
    assert_eq!(stats.blobs as usize, blobs.len());
    assert_eq!(stats.chunks as usize, on_disk.len());
}

#[test]
fn sigkill_during_fills_never_corrupts_or_loses_finished_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_dir = dir.path().join("store");
    let log = dir.path().join("finished.log");
    let exe = std::env::current_exe().expect("test binary path");
    let seed: u64 = std::env::var("STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("store crash test seed {seed} (set STORE_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut verified = HashSet::new();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_STORE_ENV, &store_dir)
            .env(CHILD_LOG_ENV, &log)
            .env(CHILD_SEED_ENV, rng.random::<u64>().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(rng.random_range(20..300)));
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use std::io::Read;
                let _ = stderr.read_to_string(&mut err);
            }
            panic!("round {round}: child exited on its own ({status}):\n{err}");
        }
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        check_after_crash(&store_dir, &log, &mut verified, round);
    }
    let finished = fs::read_to_string(&log).unwrap_or_default().lines().count();
    eprintln!(
        "{ROUNDS} kills in {:.1} s; {} blobs verified, {finished} finishes logged",
        started.elapsed().as_secs_f64(),
        verified.len()
    );
    assert!(finished > ROUNDS, "the child got work done between kills");
}
