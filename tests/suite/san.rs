//! Round trips of SAN-like images (tools' generator): day 0, then day 1
//! stores only a small fraction of its size, both read back bit-exactly.

use bunker_store::{CreateOptions, IngestOptions, Repository};
use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::hash_reader;

#[test]
fn day0_then_day1_round_trip_and_day1_costs_little() {
    let seed = crate::seed(11);
    let spec = ImageSpec::new(seed, 128 << 20);
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::create(dir.path(), CreateOptions::default()).unwrap();
    let mut infos = Vec::new();
    for day in 0..3 {
        let image = Image::new(&spec, day);
        let info = repo
            .ingest(
                "vol",
                image.reader(),
                &IngestOptions::default(),
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(info.size, image.len());
        assert_eq!(
            info.stream_hash,
            hash_reader(image.reader()).0,
            "day {day} stream hash (seed {seed})"
        );
        infos.push(info);
    }
    // Day 0: zeros are free and text compresses, so well under its size.
    assert!(
        infos[0].new_bytes < infos[0].size * 3 / 4,
        "day 0 stored {} of {}",
        infos[0].new_bytes,
        infos[0].size
    );
    for (day, info) in infos.iter().enumerate().skip(1) {
        let f = info.new_bytes as f64 / info.size as f64;
        assert!(
            f < 0.15,
            "day {day} stored {:.1}% of its size (seed {seed})",
            f * 100.0
        );
    }
    for (day, info) in infos.iter().enumerate() {
        let (hash, len) = hash_reader(repo.reader("vol", Some(info.id), None).unwrap());
        assert_eq!(
            (hash, len),
            hash_reader(Image::new(&spec, day as u32).reader()),
            "day {day} restore (seed {seed})"
        );
    }
    assert!(repo.verify().unwrap().is_clean());
}
