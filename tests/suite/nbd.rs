//! `bunker export` against real NBD clients (libnbd's nbdinfo, nbdcopy,
//! nbdfuse; qemu-img, qemu-io) and a small raw client for what the tools
//! cannot do (hang up mid-reply, flood bad requests): the export reads the
//! snapshot bit for bit, reports zero chunks as holes, writes through an
//! overlay that keeps exactly what was flushed, and answers bad input with
//! errors while it serves on.
//!
//! The tools come from tools/nbd/install; without them these tests say so
//! loudly and skip, except under CI, where that is a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// Whether every tool in `tools` is on PATH; if not, a loud skip, or under
/// CI a failure.
pub(crate) fn have(tools: &[&str]) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for t in tools {
        if !std::env::split_paths(&path).any(|d| d.join(t).is_file()) {
            let msg =
                format!("`{t}` is not installed: run tools/nbd/install. This NBD test is SKIPPED.");
            if std::env::var_os("CI").is_some() {
                panic!("{msg} CI must run it.");
            }
            eprintln!("\n{}\n!!! {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
            return false;
        }
    }
    true
}

/// A server with one backup of `image` as `name`.
struct Setup {
    dir: tempfile::TempDir,
    server: Server,
    source: PathBuf,
}

fn setup(name: &str, image: &[u8]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(BIN, &dir.path().join("data"), &[]);
    let source = dir.path().join("source.img");
    std::fs::write(&source, image).unwrap();
    let s = Setup {
        dir,
        server,
        source,
    };
    let o = s.bunker(
        &s.server.admin,
        &["backup", name, s.source.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    s
}

/// A SAN-like image (zero runs, text, random data) of `size` bytes.
fn san_image(size: u64) -> Vec<u8> {
    let mut data = Vec::new();
    Image::new(&ImageSpec::new(0x004e_4244, size), 0)
        .reader()
        .read_to_end(&mut data)
        .unwrap();
    data
}

impl Setup {
    fn bunker(&self, token: &str, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("BUNKER_SERVER", &self.server.url)
            .env("BUNKER_TOKEN", token)
            .output()
            .unwrap()
    }

    /// `bunker export ARGS --listen 127.0.0.1:0`, once it prints its URL.
    fn export(&self, args: &[&str]) -> Export {
        self.export_as(&self.server.admin, args)
            .unwrap_or_else(|e| panic!("bunker export {args:?}: {e}"))
    }

    /// The export, or what it printed on stderr when it ended instead.
    fn export_as(&self, token: &str, args: &[&str]) -> Result<Export, String> {
        let mut child = Command::new(BIN)
            .arg("export")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("BUNKER_SERVER", &self.server.url)
            .env("BUNKER_TOKEN", token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let status = child.wait().unwrap();
            return Err(format!("{status}: {err}"));
        }
        let url = line.trim().to_string();
        let addr = url
            .strip_prefix("nbd://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("not an nbd:// URL: {line:?}"))
            .to_string();
        Ok(Export { child, url, addr })
    }
}

struct Export {
    child: Child,
    /// `nbd://127.0.0.1:PORT/NAME@ID`
    url: String,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl Export {
    fn url_of(&self, name: &str) -> String {
        format!("nbd://{}/{name}", self.addr)
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub(crate) fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn nbd_clients_read_the_snapshot_exactly_and_see_zero_chunks_as_holes() {
    if !have(&["nbdinfo", "nbdcopy", "qemu-img"]) {
        return;
    }
    let image = san_image(24 << 20);
    let s = setup("vol1", &image);
    let e = s.export(&["vol1"]);
    let by_id = e.url_of("vol1@1");
    assert_eq!(e.url, by_id);
    // The map covers the image; every hole reads as zeros; there are some.
    let map = ok("nbdinfo", &["--map", &by_id]);
    let (mut at, mut holes) = (0u64, 0u64);
    for line in map.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (offset, len): (u64, u64) = (f[0].parse().unwrap(), f[1].parse().unwrap());
        assert_eq!(offset, at, "{map}");
        if f[2] == "3" {
            assert_eq!(f[3], "hole,zero", "{map}");
            let run = &image[offset as usize..(offset + len) as usize];
            assert!(run.iter().all(|&b| b == 0), "a hole at {offset} holds data");
            holes += len;
        }
        at += len;
    }
    assert_eq!(at, image.len() as u64);
    assert!(holes >= 1 << 20, "the image's zero runs are holes: {map}");
    let cmp = ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            s.source.to_str().unwrap(),
            &e.url_of("vol1"),
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
    let out = s.dir.path().join("copy.img");
    ok(
        "nbdcopy",
        &["--connections=4", &e.url_of(""), out.to_str().unwrap()],
    );
    assert!(
        std::fs::read(&out).unwrap() == image,
        "nbdcopy's copy differs"
    );
    // SIGTERM ends it cleanly.
    let mut e = e;
    let term = run("kill", &["-TERM", &e.child.id().to_string()]);
    assert!(term.status.success());
    let status = e.child.wait().unwrap();
    assert!(status.success(), "bunker export after SIGTERM: {status}");
}

#[test]
fn an_ext4_image_through_nbdfuse_and_a_loop_mount_shows_the_source_files() {
    if !have(&["nbdfuse", "mkfs.ext4", "fusermount3", "mount", "umount"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("etc/deep")).unwrap();
    std::fs::write(files.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let noise: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(files.join("etc/deep/blob.bin"), &noise).unwrap();
    std::fs::write(files.join("log.txt"), "a line\n".repeat(20_000)).unwrap();
    let fs = dir.path().join("fs.img");
    ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            files.to_str().unwrap(),
            fs.to_str().unwrap(),
            "16M",
        ],
    );
    let s = setup("fs", &std::fs::read(&fs).unwrap());
    let e = s.export(&["fs"]);
    let fuse = s.dir.path().join("fuse");
    let mnt = s.dir.path().join("mnt");
    std::fs::create_dir_all(&fuse).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let pidfile = s.dir.path().join("nbdfuse.pid");
    let mut nbdfuse = Command::new("nbdfuse")
        .args(["-r", "-P"])
        .arg(&pidfile)
        .arg(fuse.join("disk.img"))
        .arg(&e.url)
        .spawn()
        .unwrap();
    // nbdfuse writes its pid file once the file is there.
    let ready = std::time::Instant::now();
    while !pidfile.exists() {
        assert!(nbdfuse.try_wait().unwrap().is_none(), "nbdfuse ended");
        assert!(ready.elapsed().as_secs() < 30, "nbdfuse not ready in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mounted = run(
        "mount",
        &[
            "-o",
            "loop,ro",
            fuse.join("disk.img").to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
    );
    let diff = mounted.status.success().then(|| {
        run(
            "diff",
            &[
                "-r",
                "--exclude=lost+found",
                files.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ],
        )
    });
    let _ = run("umount", &[mnt.to_str().unwrap()]);
    let _ = run("fusermount3", &["-u", fuse.to_str().unwrap()]);
    let _ = nbdfuse.wait();
    if !mounted.status.success() {
        // A loop mount needs root (CAP_SYS_ADMIN): a loud skip, except
        // under CI, which must run it.
        let msg = format!(
            "cannot loop-mount the image through nbdfuse here: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("\n!!! {msg}: this NBD test is SKIPPED\n");
        return;
    }
    let diff = diff.unwrap();
    assert!(
        diff.status.success(),
        "diff -r: {}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

/// `qemu-io` commands on `url`, raw format (`-r`: read-only), writeback
/// cache (qemu-io's default, writethrough, would flush every write). The
/// `abort` command ends it at once: no flush, and no output (it is lost
/// with the process's buffers).
fn qemu_io(url: &str, cmds: &[&str]) -> Output {
    let writes = cmds.iter().any(|c| c.starts_with("write") || *c == "abort");
    let mut args = vec!["-f", "raw", "-t", "writeback"];
    if !writes {
        args.push("-r");
    }
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(url);
    run("qemu-io", &args)
}

#[test]
fn writes_go_to_the_overlay_and_a_kill_loses_only_unflushed_ones() {
    if !have(&["qemu-io", "nbdcopy"]) {
        return;
    }
    let image = san_image(16 << 20);
    let s = setup("vol1", &image);
    let overlay = s.dir.path().join("vm.overlay");
    let ov = overlay.to_str().unwrap();
    let mut e = s.export(&["vol1@1", "--overlay", ov]);
    let o = qemu_io(
        &e.url,
        &[
            "write -P 0xab 1000 70000",
            "read -P 0xab 1000 70000",
            "flush",
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("read 70000/70000"), "{text}");
    let o = qemu_io(&e.url, &["write -P 0xcd 8388608 4096", "abort"]);
    assert!(!o.status.success(), "qemu-io aborted");
    // The export as it is now: the snapshot with both writes.
    let mut want = image.clone();
    want[1000..71_000].fill(0xab);
    want[8 << 20..(8 << 20) + 4096].fill(0xcd);
    let copy = s.dir.path().join("copy.img");
    ok("nbdcopy", &[&e.url, copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy).unwrap() == want,
        "reads merge overlay and snapshot"
    );
    // Killed: the unflushed write is gone, the flushed one is there.
    let _ = e.child.kill();
    let _ = e.child.wait();
    let mut e = s.export(&["vol1", "--overlay", ov]);
    want[8 << 20..(8 << 20) + 4096].copy_from_slice(&image[8 << 20..(8 << 20) + 4096]);
    ok("nbdcopy", &[&e.url, copy.to_str().unwrap()]);
    assert!(
        std::fs::read(&copy).unwrap() == want,
        "only the flushed write survives"
    );
    // Another snapshot is refused, naming both.
    let o = s.bunker(
        &s.server.admin,
        &["backup", "vol1", s.source.to_str().unwrap()],
    );
    assert!(o.status.success());
    let err = s
        .export_as(&s.server.admin, &["vol1@2", "--overlay", ov])
        .err()
        .unwrap();
    assert!(err.contains("vol1@1") && err.contains("vol1@2"), "{err}");
    let _ = e.child.kill();
    let _ = e.child.wait();
    // The overlay kept as a snapshot: only its writes are read (and the
    // bytes around them up to chunk boundaries, from the snapshot), and
    // the result is the exported image, its true BLAKE3 recorded.
    let o = s.bunker(
        &s.server.admin,
        &[
            "--json",
            "backup",
            "kept",
            "--base",
            "vol1@1",
            "--overlay",
            ov,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kept: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        kept["blake3"].as_str(),
        Some(blake3::hash(&want).to_hex().as_str()),
        "{kept}"
    );
    let read = kept["read_bytes"].as_u64().unwrap();
    assert!(read < image.len() as u64 / 2, "read {read}: {kept}");
    let restored = s.dir.path().join("kept.img");
    let o = s.bunker(
        &s.server.admin,
        &["restore", "kept", restored.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&restored).unwrap() == want,
        "the kept overlay restores as exported"
    );
}

/// A raw NBD client: fixed newstyle, structured replies, `GO`.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(addr: &str, name: &str) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut raw = Raw { s };
        raw.option(8, &[]);
        let mut go = (name.len() as u32).to_be_bytes().to_vec();
        go.extend_from_slice(name.as_bytes());
        go.extend_from_slice(&0u16.to_be_bytes());
        raw.option(7, &go);
        raw
    }

    /// Sends an option and reads its replies up to the final one, which
    /// must be an ACK.
    fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = b"IHAVEOPT".to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
        loop {
            let mut head = [0u8; 20];
            self.s.read_exact(&mut head).unwrap();
            let kind = u32::from_be_bytes(head[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
            let mut d = vec![0u8; len as usize];
            self.s.read_exact(&mut d).unwrap();
            assert!(
                kind < 1 << 31,
                "option {option}: {}",
                String::from_utf8_lossy(&d)
            );
            if kind == 1 {
                return;
            }
        }
    }

    fn send_read(&mut self, cookie: u64, offset: u64, len: u32) {
        let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    /// One structured chunk: (type, payload).
    fn chunk(&mut self, cookie: u64) -> (u16, Vec<u8>) {
        let mut head = [0u8; 20];
        self.s.read_exact(&mut head).unwrap();
        assert_eq!(u64::from_be_bytes(head[8..16].try_into().unwrap()), cookie);
        let kind = u16::from_be_bytes(head[6..8].try_into().unwrap());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap());
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        (kind, d)
    }
}

#[test]
fn bad_input_gets_clear_errors_and_the_export_serves_on() {
    if !have(&["nbdinfo", "qemu-img"]) {
        return;
    }
    let image = san_image(16 << 20);
    let s = setup("vol1", &image);
    let e = s.export(&["vol1"]);
    // An unknown export name.
    let o = run("nbdinfo", &[&e.url_of("nosuch@7")]);
    assert!(!o.status.success());
    let o = run("nbdinfo", &[&e.url_of("vol1@99")]);
    assert!(!o.status.success());
    // A token that cannot read the snapshot: refused before listening.
    let o = s.bunker(
        &s.server.admin,
        &["token", "create", "--role", "reader", "--scope", "db-"],
    );
    assert!(o.status.success());
    let scoped = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let err = s.export_as(&scoped, &["vol1"]).err().unwrap();
    assert!(err.contains("not allowed"), "{err}");
    // A client that hangs up in the middle of a 16 MiB reply.
    let mut raw = Raw::connect(&e.addr, "");
    raw.send_read(1, 0, 16 << 20);
    let mut some = [0u8; 1000];
    raw.s.read_exact(&mut some).unwrap();
    drop(raw);
    // 1,000 reads beyond the end: EINVAL each, on one connection that
    // then reads fine.
    let mut raw = Raw::connect(&e.addr, "vol1");
    let size = image.len() as u64;
    for i in 0..1000u64 {
        raw.send_read(i, size - 100 + i, 4096);
    }
    for i in 0..1000u64 {
        let (kind, d) = raw.chunk(i);
        assert_eq!(kind, 0x8002 - 1, "request {i}: an error chunk");
        assert_eq!(u32::from_be_bytes(d[..4].try_into().unwrap()), 22, "EINVAL");
        assert!(String::from_utf8_lossy(&d[6..]).contains("beyond the end"));
    }
    let data_at = image
        .chunks(4096)
        .position(|b| b.iter().any(|&x| x != 0))
        .unwrap()
        * 4096;
    raw.send_read(5000, data_at as u64, 4096);
    let (kind, d) = raw.chunk(5000);
    assert_eq!(kind, 1, "data");
    assert_eq!(&d[8..], &image[data_at..data_at + 4096]);
    // And other clients were never disturbed.
    let cmp = ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            s.source.to_str().unwrap(),
            &e.url,
        ],
    );
    assert!(cmp.contains("Images are identical"), "{cmp}");
}

/// Flips one byte in the stored bytes of the record of `chunk` in the
/// packs under `data`.
fn damage(data: &Path, chunk: &bunker_chunk::ChunkId) {
    for ext in ["pack", "open"] {
        for pack in bunker_tests::pack_files(data, ext) {
            let mut bytes = std::fs::read(&pack).unwrap();
            let limit = if ext == "pack" {
                bunker_tests::trailer_offset(&bytes) as usize
            } else {
                bytes.len()
            };
            if let Some(r) = bunker_tests::pack_records(&bytes, limit)
                .into_iter()
                .find(|r| r.id == *chunk)
            {
                let at = ((r.start + 64 + r.end) / 2) as usize;
                bytes[at] ^= 0x40;
                std::fs::write(&pack, bytes).unwrap();
                return;
            }
        }
    }
    panic!("chunk {chunk} is in no pack");
}

#[test]
fn a_flipped_byte_in_a_pack_fails_reads_of_that_chunk_only() {
    if !have(&["qemu-io"]) {
        return;
    }
    let image = san_image(16 << 20);
    let s = setup("vol1", &image);
    // A data chunk that appears once in the image, from the manifest.
    let client = bunker_client::Client::new(&s.server.url, Some(s.server.admin.clone()));
    let snap = client.snapshot("vol1", None).unwrap();
    let mut manifest = Vec::new();
    client
        .manifest(&snap)
        .unwrap()
        .read_to_end(&mut manifest)
        .unwrap();
    let entries: Vec<(u64, u64, bunker_chunk::ChunkId)> = manifest
        .chunks(40)
        .scan(0u64, |start, e| {
            let end = u64::from_le_bytes(e[..8].try_into().unwrap());
            let id = bunker_chunk::ChunkId(e[8..].try_into().unwrap());
            let r = (*start, end, id);
            *start = end;
            Some(r)
        })
        .collect();
    let (start, end, id) = *entries
        .iter()
        .filter(|(_, _, id)| !id.is_zero())
        .find(|(_, _, id)| entries.iter().filter(|e| e.2 == *id).count() == 1)
        .expect("a unique data chunk");
    damage(&s.server.data, &id);
    let e = s.export(&["vol1"]);
    let inside = format!("read {} 4096", start + (end - start) / 2 / 4096 * 4096);
    let o = qemu_io(&e.url, &[&inside]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("Input/output error"), "{text}");
    // Everything else reads, and equals the source.
    for (a, b, cid) in &entries {
        if *cid == id {
            continue;
        }
        let o = qemu_io(
            &e.url,
            &[&format!("read -v {a} 16"), &format!("read {a} {}", b - a)],
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(!text.contains("error"), "chunk at {a}: {text}");
        let hex: String = image[*a as usize..*a as usize + 16]
            .iter()
            .map(|b| format!("{b:02x} "))
            .collect();
        assert!(
            text.contains(hex.trim()),
            "chunk at {a} reads other bytes: {text}"
        );
    }
}

/// The reader under the export (`bunker-image`), on the real server:
/// zero chunks are never fetched, a chunk that repeats is fetched once,
/// readers of one chunk at the same time share one fetch, and small reads
/// of cached chunks fetch nothing.
#[test]
fn the_image_reader_fetches_each_chunk_once_and_zero_chunks_never() {
    let image = san_image(16 << 20);
    let s = setup("vol1", &image);
    let client = bunker_client::Client::new(&s.server.url, Some(s.server.admin.clone()));
    let snap = client.snapshot("vol1", None).unwrap();
    let mut manifest = Vec::new();
    client
        .manifest(&snap)
        .unwrap()
        .read_to_end(&mut manifest)
        .unwrap();
    let distinct: std::collections::HashSet<&[u8]> = manifest
        .chunks(40)
        .map(|e| &e[8..])
        .filter(|id| id.iter().any(|&b| b != 0))
        .collect();
    let options = bunker_image::ImageOptions {
        read_ahead_chunks: 0,
        ..Default::default()
    };
    let img = std::sync::Arc::new(
        bunker_image::Image::open(client.clone(), "vol1", None, options).unwrap(),
    );
    assert_eq!(img.size(), image.len() as u64);
    // Eight threads read the whole image at once, each in its own order
    // of 1 MiB pieces.
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let (img, image) = (img.clone(), &image);
            scope.spawn(move || {
                let pieces = image.len() as u64 >> 20;
                let mut buf = vec![0u8; 1 << 20];
                for i in 0..pieces {
                    let at = ((i + t * 5) % pieces) << 20;
                    img.read_at(at, &mut buf).unwrap();
                    assert!(buf[..] == image[at as usize..at as usize + buf.len()]);
                }
            });
        }
    });
    let after_all = img.stats();
    assert_eq!(
        after_all.fetched_chunks,
        distinct.len() as u64,
        "{after_all:?}"
    );
    // 500 random small reads: all from the cache.
    let mut buf = [0u8; 4096];
    for i in 0..500u64 {
        let at = (i * 7919 * 4096) % (image.len() as u64 - 4096);
        img.read_at(at, &mut buf).unwrap();
        assert!(buf[..] == image[at as usize..at as usize + 4096]);
    }
    assert_eq!(img.stats().fetched_chunks, after_all.fetched_chunks);
    // Zero and data runs as the image has them; past the end is refused.
    let (mut at, mut zeros) = (0u64, 0u64);
    for e in img.extents(0, img.size()).unwrap() {
        assert_eq!(e.offset, at);
        let run = &image[e.offset as usize..(e.offset + e.len) as usize];
        if e.zero {
            assert!(run.iter().all(|&b| b == 0), "zero run at {at} holds data");
            zeros += e.len;
        }
        at += e.len;
    }
    assert_eq!(at, img.size());
    assert!(zeros > 0, "the image has zero chunks");
    let e = img.read_at(img.size() - 10, &mut buf).unwrap_err();
    assert!(e.to_string().contains("beyond the end"), "{e}");
}
