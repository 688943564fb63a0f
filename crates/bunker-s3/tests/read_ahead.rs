//! Read-ahead against a real store: what `will_need` costs in requests,
//! and that a failed read-ahead leaves reads to the store's own answer.

use bunker_s3::{Bucket, S3Config, S3Packs};
use bunker_store::backend::PackBackend;
use bunker_store::{Error, PackId};
use bunker_testdata::stores::{Fault, Proxy, Store};

/// Announced records come from one coalesced GET (no HEAD either); a
/// read-ahead GET that fails leaves the reads to the store's own
/// answer, without waiting forever.
#[test]
fn announced_records_are_read_with_one_get_and_a_failed_one_falls_back() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let config = store.config("readahead", "");
    let writer = S3Packs::open(&Bucket::connect(&config).unwrap(), data.path()).unwrap();
    let pack = PackId(0x77);
    let contents: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i * 31 + i / 997) as u8)
        .collect();
    let staged = writer.staging_path(pack);
    std::fs::write(&staged, &contents).unwrap();
    writer.store_sealed(pack, &staged).unwrap();

    // A second server, through a counting proxy, with no disk cache.
    let proxy = Proxy::start(&store.endpoint);
    let cold = tempfile::tempdir().unwrap();
    let config = S3Config {
        endpoint: Some(proxy.endpoint.clone()),
        cache_bytes: Some(0),
        ..config
    };
    let reader = S3Packs::open(&Bucket::connect(&config).unwrap(), cold.path()).unwrap();
    let records: Vec<(PackId, u64, usize)> =
        (0..60).map(|i| (pack, i * 100_000, 100_000)).collect();
    let before = proxy.counts();
    reader.will_need(&records);
    for &(pack, offset, len) in &records {
        let mut head = [0u8; 24];
        let got = reader
            .read_record(pack, offset, &mut head, len - 24)
            .unwrap();
        let at = offset as usize;
        assert_eq!(head[..], contents[at..at + 24]);
        assert!(got[..] == contents[at + 24..at + len]);
    }
    let after = proxy.counts();
    let n = |c: &std::collections::BTreeMap<String, u64>, m: &str| c.get(m).copied().unwrap_or(0);
    assert_eq!(n(&after, "GET") - n(&before, "GET"), 1, "{after:?}");
    assert_eq!(n(&after, "HEAD"), n(&before, "HEAD"), "{after:?}");

    proxy.set_for("GET", Fault::SlowDown);
    reader.will_need(&records[..3]);
    let mut head = [0u8; 24];
    let r = reader.read_record(pack, 0, &mut head, 100_000 - 24);
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
    proxy.set_for("GET", Fault::Pass);
    let got = reader
        .read_record(pack, 0, &mut head, 100_000 - 24)
        .unwrap();
    assert!(got[..] == contents[24..100_000]);
}
