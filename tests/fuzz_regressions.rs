//! Replays the kept fuzz corpus: every file under `tests/fuzz_corpus/<target>/` goes
//! through the same check the fuzz target `<target>` runs (`fuzz/checks.rs`, included
//! here), so inputs that once found a bug, and the interesting ones the fuzzer reached,
//! stay covered by plain `cargo test`.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus");
    for (name, check) in checks::TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "fuzz check {name} failed on {} ({} bytes)",
                path.display(),
                data.len()
            );
            n += 1;
        }
        assert!(n > 0, "no corpus for fuzz target {name}");
    }
}
