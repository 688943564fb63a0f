//! libFuzzer target: arbitrary bytes as the index state file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bunker_store::fuzz::index_state(data);
});
