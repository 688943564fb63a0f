//! libFuzzer target: arbitrary bytes as the tombstones, space and config files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bunker_store::fuzz::small_files(data);
});
