//! libFuzzer target: arbitrary bytes as a manifest file (see bunker_store::fuzz).
#![no_main]

use std::sync::OnceLock;

static SCRATCH: OnceLock<tempfile::TempDir> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = SCRATCH.get_or_init(|| tempfile::tempdir().expect("scratch directory"));
    let _ = bunker_store::fuzz::manifest_file(dir.path(), data);
});
