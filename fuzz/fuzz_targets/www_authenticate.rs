//! Fuzz target `www_authenticate`: see `checks::www_authenticate` in `fuzz/checks.rs`.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::www_authenticate(data));
