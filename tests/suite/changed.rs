//! Changed-extent backups (`bunker backup --base NAME@ID --changed MAP`)
//! through the real binary and server: the snapshot equals a full read's
//! (manifest and whole-image BLAKE3) while SOURCE is read only around the
//! changes; a map that hides a change fails the backup when sampled; a
//! malformed map is a usage error naming the line.

use std::path::Path;
use std::process::Command;

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

use crate::{bunker, manifest, ok_json};

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// Writes `map` as `rbd diff` plain output.
fn write_map(path: &Path, map: &[(u64, u64, bool)]) {
    let mut text = String::from("Offset Length Type\n");
    for (offset, len, zero) in map {
        text.push_str(&format!(
            "{offset} {len} {}\n",
            if *zero { "zero" } else { "data" }
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_changed_extent_backup_equals_a_full_read_and_reads_little() {
    let dir = bunker_tests::scratch();
    let root = dir.path();
    let server = Server::start(BIN, &root.join("data"), &[]);
    let spec = ImageSpec {
        change_percent: 0.5,
        ..ImageSpec::new(31, 64 << 20)
    };
    let (day0, day1) = (Image::new(&spec, 0), Image::new(&spec, 1));
    let changes = day1.changes_since(&day0);
    for (day, image) in [("day0", &day0), ("day1", &day1)] {
        let mut f = std::fs::File::create(root.join(format!("{day}.img"))).unwrap();
        image.write_to(&mut f).unwrap();
    }
    write_map(&root.join("day1.diff"), &changes);
    let day1_path = root.join("day1.img");
    let (day1_path, map) = (day1_path.to_str().unwrap(), root.join("day1.diff"));
    let b0 = ok_json(&bunker(
        &server,
        &[
            "--json",
            "backup",
            "vol",
            root.join("day0.img").to_str().unwrap(),
        ],
    ));
    let base = format!("vol@{}", b0["id"]);
    let b1 = ok_json(&bunker(
        &server,
        &[
            "--json",
            "backup",
            "vol",
            day1_path,
            "--base",
            &base,
            "--changed",
            map.to_str().unwrap(),
        ],
    ));
    let full = ok_json(&bunker(&server, &["--json", "backup", "full", day1_path]));
    let want = blake3::hash(&std::fs::read(day1_path).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(b1["blake3"].as_str(), Some(want.as_str()), "{b1}");
    assert_eq!(full["blake3"], b1["blake3"]);
    assert!(
        manifest(&server, "vol", b1["id"].as_u64().unwrap())
            == manifest(&server, "full", full["id"].as_u64().unwrap()),
        "the changed-extent manifest differs from the full read's"
    );
    let (size, read) = (day1.len(), b1["read_bytes"].as_u64().unwrap());
    let changed: u64 = changes.iter().map(|c| c.1).sum();
    assert_eq!(b1["changed_bytes"].as_u64(), Some(changed));
    // What must be read: the 1 MiB blocks a change touches (their hashes
    // for the image digest), and around each change up to the next shared
    // chunk boundary (a few chunks of at most 1 MiB), plus the 1% sample.
    let mib = 1u64 << 20;
    let mut touched: Vec<u64> = changes
        .iter()
        .flat_map(|&(o, l, _)| o / mib..(o + l).div_ceil(mib))
        .collect();
    touched.dedup();
    let bound =
        touched.len() as u64 * mib + 2 * changed + changes.len() as u64 * 2 * mib + size / 50;
    println!(
        "changed-extent backup: read {read} of {size} bytes ({} blocks of 1 MiB touched by \
         {} extents, {changed} bytes changed), {} chunks reused, {} read",
        touched.len(),
        changes.len(),
        b1["reused_chunks"],
        b1["read_chunks"]
    );
    assert!(
        read <= bound && read < size,
        "read {read} of {size} ({} blocks touched, {changed} bytes changed): {b1}",
        touched.len()
    );
    assert!(b1["sampled_bytes"].as_u64().unwrap() > 0, "{b1}");
    // And it restores to day 1, verified.
    let out = root.join("restored.img");
    let r = bunker(
        &server,
        &[
            "restore",
            &format!("vol@{}", b1["id"]),
            out.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(day1_path).unwrap());

    // A map that hides the largest change: a full sample catches it,
    // exit 4, nothing committed.
    let biggest = changes
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| c.1)
        .unwrap()
        .0;
    let hidden: Vec<_> = changes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != biggest)
        .map(|(_, c)| *c)
        .collect();
    write_map(&root.join("wrong.diff"), &hidden);
    let before = ok_json(&bunker(&server, &["--json", "snapshots", "vol"]));
    let wrong = bunker(
        &server,
        &[
            "backup",
            "vol",
            day1_path,
            "--base",
            &base,
            "--changed",
            root.join("wrong.diff").to_str().unwrap(),
            "--verify-unchanged",
            "100",
        ],
    );
    assert_eq!(
        wrong.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("map is wrong"));
    assert_eq!(
        ok_json(&bunker(&server, &["--json", "snapshots", "vol"])),
        before
    );

    // A malformed map: exit 2, naming the line.
    std::fs::write(root.join("bad.diff"), "0 4096 data\n8192 x data\n").unwrap();
    let bad = bunker(
        &server,
        &[
            "backup",
            "vol",
            day1_path,
            "--base",
            &base,
            "--changed",
            root.join("bad.diff").to_str().unwrap(),
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        text.contains("line 2") && text.contains("length \"x\""),
        "{text}"
    );
}

/// A repository created with `--chunk-size 64KiB` announces it, backs up,
/// deduplicates the next day, restores and verifies, and takes a
/// changed-extent backup equal to a full read; restarted with another
/// chunk size it refuses to start, naming both.
#[test]
fn a_repository_with_64_kib_chunks_dedups_restores_and_takes_changed_extents() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data");
    let server = Server::start(BIN, &data, &["--chunk-size", "64KiB"]);
    let info = crate::info(&server);
    assert_eq!(info["chunker"]["avg_bytes"], 65_536, "{info}");
    let spec = ImageSpec {
        change_percent: 0.5,
        ..ImageSpec::new(37, 24 << 20)
    };
    let (day0, day1) = (Image::new(&spec, 0), Image::new(&spec, 1));
    for (day, image) in [("day0", &day0), ("day1", &day1)] {
        let mut f = std::fs::File::create(root.join(format!("{day}.img"))).unwrap();
        image.write_to(&mut f).unwrap();
    }
    write_map(&root.join("day1.diff"), &day1.changes_since(&day0));
    let path = |f: &str| root.join(f).to_str().unwrap().to_string();
    let b0 = ok_json(&bunker(
        &server,
        &["--json", "backup", "vol", &path("day0.img")],
    ));
    let b1 = ok_json(&bunker(
        &server,
        &["--json", "backup", "vol", &path("day1.img")],
    ));
    let (chunks, new) = (
        b1["chunks"].as_u64().unwrap(),
        b1["new_chunks"].as_u64().unwrap(),
    );
    assert!(
        chunks > (24 << 20) / (128 << 10) && new * 10 < chunks,
        "64 KiB chunks, day 1 mostly known: {b1}"
    );
    let restored = root.join("restored.img");
    let r = bunker(
        &server,
        &[
            "restore",
            &format!("vol@{}", b1["id"]),
            restored.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(path("day1.img")).unwrap());
    let v = bunker(&server, &["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let changed = ok_json(&bunker(
        &server,
        &[
            "--json",
            "backup",
            "changed",
            &path("day1.img"),
            "--base",
            &format!("vol@{}", b0["id"]),
            "--changed",
            &path("day1.diff"),
        ],
    ));
    assert_eq!(changed["blake3"], b1["blake3"]);
    assert!(
        manifest(&server, "changed", changed["id"].as_u64().unwrap())
            == manifest(&server, "vol", b1["id"].as_u64().unwrap()),
        "the changed-extent manifest differs from the full read's"
    );
    server.stop();
    let refused = Command::new(BIN)
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--chunk-size", "128KiB"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        text.contains("chunk_size") && text.contains("64 KiB") && text.contains("131072"),
        "{text}"
    );
    let bad = Command::new(BIN)
        .args(["serve", "--data", root.join("new").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--chunk-size", "100000"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && text.contains("power of two"),
        "{text}"
    );
    assert!(!root.join("new").join("config").exists());
}
