//! NBD exports as backup sources (`bunker backup NAME nbd://...`), against
//! the real `qemu-nbd` over a qcow2 image: a full read equals the image,
//! and a day-N backup through the image's dirty bitmap (`qemu-img bitmap`,
//! `qemu-nbd -B`) reads only the dirty extents yet gives exactly the full
//! read's manifest and restores to what `qemu-img compare` calls
//! identical. A bitmap the export lacks is a usage error naming it, with
//! nothing committed.
//!
//! The tools come from tools/nbd/install; without them this test says so
//! loudly and skips, except under CI, where that is a failure.

use std::io::Read;
use std::path::{Path, PathBuf};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

use super::nbd::{have, ok, run};

use crate::{bunker, manifest, ok_json};

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// `qemu-nbd` serving an image read-only on 127.0.0.1, stopped by PID on
/// drop.
struct QemuNbd {
    pid: i32,
    url: String,
}

impl QemuNbd {
    /// Starts `qemu-nbd --fork`, which returns once it listens.
    fn start(dir: &Path, image: &Path, extra: &[&str]) -> QemuNbd {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let pid_file = dir.join("qemu-nbd.pid");
        let _ = std::fs::remove_file(&pid_file);
        let mut args = vec![
            "--fork",
            "--persistent",
            "--read-only",
            "--format=qcow2",
            "--bind=127.0.0.1",
            "--port",
            &port,
        ];
        let pid_arg = format!("--pid-file={}", pid_file.display());
        args.push(&pid_arg);
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        ok("qemu-nbd", &args);
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        QemuNbd {
            pid,
            url: format!("nbd://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = run("kill", &["-TERM", &self.pid.to_string()]);
        // qemu-nbd holds the image's write lock until it exits: wait for
        // it so that the next qemu-img can open the image.
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        for _ in 0..1000 {
            if !proc.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("qemu-nbd {} did not exit after SIGTERM", self.pid);
    }
}

#[test]
fn a_dirty_bitmap_backup_through_qemu_nbd_equals_a_full_read() {
    if !have(&["qemu-img", "qemu-io", "qemu-nbd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let server = Server::start(BIN, &root.join("data"), &[]);
    // Day 0: a SAN-like image (zero runs, text, random data) as qcow2.
    let size: u64 = 32 << 20;
    let mut raw = Vec::new();
    Image::new(&ImageSpec::new(0x0051_3c0f, size), 0)
        .reader()
        .read_to_end(&mut raw)
        .unwrap();
    std::fs::write(root.join("day0.raw"), &raw).unwrap();
    let img = root.join("disk.qcow2");
    let img_s = img.to_str().unwrap();
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            root.join("day0.raw").to_str().unwrap(),
            img_s,
        ],
    );
    let day0 = {
        let nbd = QemuNbd::start(root, &img, &[]);
        ok_json(&bunker(&server, &["--json", "backup", "vol", &nbd.url]))
    };
    let want0 = blake3::hash(&raw).to_hex().to_string();
    assert_eq!(day0["blake3"].as_str(), Some(want0.as_str()), "{day0}");
    let zeros = raw
        .chunks(65536)
        .filter(|c| c.iter().all(|&b| b == 0))
        .count() as u64;
    assert!(
        day0["read_bytes"].as_u64().unwrap() < size,
        "a full read transfers the zero runs qcow2 does not store: {day0}"
    );
    println!("full read of {size} bytes ({zeros} zero clusters): {day0}");

    // Day 1: a bitmap, then clustered writes (new data, a zeroed range,
    // random bytes across cluster boundaries).
    ok("qemu-img", &["bitmap", "--add", img_s, "b0"]);
    std::fs::write(root.join("random"), blake3_stream(300_000)).unwrap();
    let random_write = format!("write -s {} 9000000 300000", root.join("random").display());
    ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1048576 262144",
            "-c",
            "write -P 0xa5 1310720 65536",
            "-c",
            "write -z 20971520 524288",
            "-c",
            &random_write,
            "-c",
            "write -P 0x11 33488896 65536",
            img_s,
        ],
    );
    let nbd = QemuNbd::start(root, &img, &["--bitmap=b0"]);
    let base = format!("vol@{}", day0["id"]);
    let before = ok_json(&bunker(&server, &["--json", "snapshots", "vol"]));

    // A bitmap the export does not have: exit 2 naming it, nothing
    // committed.
    let missing = bunker(
        &server,
        &[
            "backup",
            "vol",
            &nbd.url,
            "--base",
            &base,
            "--dirty-bitmap",
            "nosuch",
        ],
    );
    let text = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{text}");
    assert!(text.contains("qemu:dirty-bitmap:nosuch"), "{text}");
    assert_eq!(
        ok_json(&bunker(&server, &["--json", "snapshots", "vol"])),
        before
    );

    let day1 = ok_json(&bunker(
        &server,
        &[
            "--json",
            "backup",
            "vol",
            &nbd.url,
            "--base",
            &base,
            "--dirty-bitmap",
            "b0",
        ],
    ));
    let full = ok_json(&bunker(&server, &["--json", "backup", "full", &nbd.url]));
    drop(nbd);
    assert_eq!(day1["blake3"], full["blake3"], "{day1}\n{full}");
    assert!(
        manifest(&server, "vol", &day1["id"]) == manifest(&server, "full", &full["id"]),
        "the dirty-bitmap manifest differs from the full read's"
    );
    // Dirty clusters (64 KiB): 1 MiB + 320 KiB, the 512 KiB zeroed (not
    // read), 9000000..9300000 (5 clusters), the last cluster.
    let dirty = 5 * 65536 + 8 * 65536 + 5 * 65536 + 65536;
    assert_eq!(day1["changed_bytes"].as_u64(), Some(dirty), "{day1}");
    let read = day1["read_bytes"].as_u64().unwrap();
    println!("dirty-bitmap backup: {day1}\nfull read: {full}");
    assert!(
        read < size / 2 && read < full["read_bytes"].as_u64().unwrap(),
        "read {read} of {size}: {day1}"
    );

    // It restores to what qemu-img calls the same image.
    let out = root.join("restored.raw");
    let r = bunker(
        &server,
        &[
            "restore",
            &format!("vol@{}", day1["id"]),
            out.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let cmp = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            out.to_str().unwrap(),
            img_s,
        ],
    );
    assert!(
        cmp.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&cmp.stdout),
        String::from_utf8_lossy(&cmp.stderr)
    );
}

/// `len` bytes that do not compress.
fn blake3_stream(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"nbdsrc")
        .finalize_xof()
        .fill(&mut out);
    out
}
