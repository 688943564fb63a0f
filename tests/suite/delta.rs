//! `bunker restore --delta` against the real server: day 2 over day 1
//! fetches exactly the chunks whose bytes differ and writes exactly their
//! 4 KiB blocks that differ (within 10% of the changed blocks),
//! day 2 over itself writes nothing, a longer file is cut and a shorter one
//! extended, a block device longer than the image needs `--force`, and a
//! damaged chunk stops the restore there, leaving the snapshot's bytes
//! before it and the old bytes from it on.

use std::path::Path;
use std::process::Output;

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

use crate::restore::loop_device;

use crate::bunker;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        stderr(o)
    );
}

/// `bunker --json restore --delta SNAP TARGET [EXTRA]`: its report.
fn delta(server: &Server, snap: &str, target: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--json",
        "restore",
        "--delta",
        snap,
        target.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = bunker(server, &args);
    ok(&o);
    let report = stderr(&o);
    serde_json::from_str(report.trim()).unwrap_or_else(|e| panic!("{e}: {report}"))
}

fn image(spec: &ImageSpec, day: u32) -> Vec<u8> {
    let mut data = Vec::new();
    Image::new(spec, day).write_to(&mut data).unwrap();
    data
}

/// The manifest of `name@id` as (start, end, zero) per chunk.
fn manifest(server: &Server, name: &str, id: u64) -> Vec<(u64, u64, bool)> {
    let body = ureq::get(format!("{}/v1/snapshots/{name}/{id}/manifest", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    let mut start = 0;
    body.chunks(40)
        .map(|e| {
            let end = u64::from_le_bytes(e[..8].try_into().unwrap());
            let zero = e[8..].iter().all(|&b| b == 0);
            let chunk = (start, end, zero);
            start = end;
            chunk
        })
        .collect()
}

/// What a delta restore of `new` over `old` must fetch and write: it
/// fetches every data chunk whose bytes differ and writes the 4 KiB blocks
/// (aligned to the image, cut at chunk ends) whose bytes differ.
fn must_fetch_and_write(chunks: &[(u64, u64, bool)], old: &[u8], new: &[u8]) -> (u64, u64) {
    let old_at = |i: u64| old.get(i as usize).copied().unwrap_or(0);
    let differs = |from: u64, to: u64| (from..to).any(|i| old_at(i) != new[i as usize]);
    let (mut fetch, mut write) = (0, 0);
    for &(start, end, zero) in chunks {
        if !zero && differs(start, end) {
            fetch += end - start;
        }
        let mut at = start;
        while at < end {
            let block_end = end.min((at / 4096 + 1) * 4096);
            if differs(at, block_end) {
                write += block_end - at;
            }
            at = block_end;
        }
    }
    (fetch, write)
}

#[test]
fn a_delta_restore_writes_what_differs_and_resizes_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = Server::start(BIN, &root.join("data"), &[]);
    let spec = ImageSpec::new(160, 24 << 20);
    let day1 = image(&spec, 0);
    let day2 = image(&spec, 1);
    for (day, bytes) in [("day1", &day1), ("day2", &day2)] {
        let path = root.join(day);
        std::fs::write(&path, bytes).unwrap();
        ok(&bunker(&server, &["backup", "vol", path.to_str().unwrap()]));
    }
    let target = root.join("target");
    std::fs::write(&target, &day1).unwrap();

    let r = delta(&server, "vol@2", &target, &[]);
    assert!(
        std::fs::read(&target).unwrap() == day2,
        "target is not day 2"
    );
    let written = r["bytes_written"].as_u64().unwrap();
    let (fetch, write) = must_fetch_and_write(&manifest(&server, "vol", 2), &day1, &day2);
    assert_eq!(r["bytes_fetched"].as_u64().unwrap(), fetch, "{r}");
    assert_eq!(written, write, "{r}");
    // What changed that day: the 4 KiB blocks (the generator rewrites
    // blocks; an insert moves the bytes after it) that differ. Position by
    // position fewer bytes differ: a rewritten log or database block keeps
    // many bytes where they were.
    let old_at = |i: usize| day1.get(i).copied().unwrap_or(0);
    let changed: u64 = day2
        .chunks(4096)
        .enumerate()
        .filter(|(b, block)| (0..block.len()).any(|i| old_at(b * 4096 + i) != block[i]))
        .map(|(_, block)| block.len() as u64)
        .sum();
    let changed_bytes = (0..day2.len()).filter(|&i| old_at(i) != day2[i]).count();
    println!(
        "day 1 -> day 2 ({} bytes): {changed} bytes in changed 4 KiB blocks ({changed_bytes} bytes differ), {written} written ({:.3}x), {fetch} fetched, {} read",
        day2.len(),
        written as f64 / changed as f64,
        r["bytes_read"]
    );
    assert!(
        written <= changed && written >= changed - changed / 10,
        "{r}"
    );
    assert_eq!(r["bytes_read"].as_u64().unwrap(), day2.len() as u64);
    assert_eq!(r["bytes"].as_u64().unwrap(), day2.len() as u64);
    assert!(r["chunks_same"].as_u64().unwrap() > r["chunks_differing"].as_u64().unwrap());

    // Over itself: nothing fetched or written.
    let r = delta(&server, "vol@2", &target, &[]);
    assert_eq!(r["bytes_written"], 0, "{r}");
    assert_eq!(r["bytes_fetched"], 0, "{r}");
    assert_eq!(r["chunks_differing"], 0, "{r}");

    // Longer: cut to the image. Shorter: extended.
    let mut longer = day2.clone();
    longer.extend_from_slice(&[0xAB; 3 << 20]);
    std::fs::write(&target, &longer).unwrap();
    let r = delta(&server, "vol@2", &target, &[]);
    assert_eq!(r["bytes_written"], 0, "{r}");
    assert!(std::fs::read(&target).unwrap() == day2, "longer target");
    std::fs::write(&target, &day2[..day2.len() / 2]).unwrap();
    delta(&server, "vol@2", &target, &[]);
    assert!(std::fs::read(&target).unwrap() == day2, "shorter target");
    // Back to day 1 over day 2.
    delta(&server, "vol@1", &target, &[]);
    assert!(std::fs::read(&target).unwrap() == day1, "back to day 1");

    // A target that does not exist, and stdout, are refused.
    let missing = root.join("missing");
    let o = bunker(
        &server,
        &["restore", "--delta", "vol", missing.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(!missing.exists());
    let o = bunker(&server, &["restore", "--delta", "vol", "-"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("not stdout"), "{}", stderr(&o));
}

#[test]
fn a_damaged_chunk_stops_a_delta_restore_there_and_a_longer_device_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let image = bunker_tests::noise(170, 4 << 20);
    let server = Server::start(BIN, &data, &[]);
    std::fs::write(root.join("image"), &image).unwrap();
    ok(&bunker(
        &server,
        &["backup", "vol", root.join("image").to_str().unwrap()],
    ));

    // A device longer than the image: refused without --force, untouched;
    // with it, the image and nothing past it.
    if let Some(dev) = loop_device(root, "dev", 6 << 20) {
        let path = dev.dev.to_str().unwrap();
        let o = bunker(&server, &["restore", "--delta", "vol", path]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
        assert!(std::fs::read(&dev.dev).unwrap().iter().all(|&b| b == 0xAB));
        let r = delta(&server, "vol", &dev.dev, &["--force"]);
        assert_eq!(r["bytes_written"], image.len() as u64, "{r}");
        let bytes = std::fs::read(&dev.dev).unwrap();
        assert!(bytes[..image.len()] == image[..]);
        assert!(bytes[image.len()..].iter().all(|&b| b == 0xAB));
    }
    server.stop();

    // Damage the middle of the biggest pack: one chunk of vol no longer reads.
    let mut packs: Vec<(u64, std::path::PathBuf)> = bunker_tests::pack_files(&data, "pack")
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    packs.sort();
    let (len, pack) = packs.pop().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let server = Server::start(BIN, &data, &[]);

    let target = root.join("target");
    let old = bunker_tests::noise(171, 4 << 20);
    std::fs::write(&target, &old).unwrap();
    let o = bunker(
        &server,
        &["restore", "--delta", "vol", target.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("damaged"), "{err}");
    // "(bytes A..B)": the damaged chunk. Before it the image, from it on
    // the old bytes.
    let range = err
        .split("(bytes ")
        .nth(1)
        .expect("a byte range")
        .split(')');
    let at: usize = range
        .clone()
        .next()
        .unwrap()
        .split("..")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::fs::read(&target).unwrap();
    assert_eq!(now.len(), old.len());
    assert!(now[..at] == image[..at], "bytes before the damage");
    assert!(now[at..] == old[at..], "bytes from the damage on");
}
