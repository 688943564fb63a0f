//! `bunker restore` to files, links and block devices, against the real
//! server and against a fake one on 127.0.0.1 that lies about lengths or
//! stalls: a file appears under its name only complete and verified, the
//! old file survives every failure, links are not followed to files, a
//! block device needs `--force` and room for the image, and a lying or
//! stalled server fails the restore within the read timeout.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const PARTIAL: &str = ".bunker-partial";
/// What a CLI run against the fake server may take, at most: over 10x the
/// slowest run measured (1.1 s with `--timeout 1`).
const BOUND: Duration = Duration::from_secs(15);

/// Runs `bunker ARGS` against `url` with `token`; kills it and fails the
/// test if it has not ended within `BOUND`. Returns its output and time.
fn bunker(url: &str, token: &str, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(args)
        .env("BUNKER_SERVER", url)
        .env("BUNKER_TOKEN", token)
        .env_remove("BUNKER_TIMEOUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bunker");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BOUND) {
        Ok(out) => (out.expect("wait for bunker"), started.elapsed()),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("bunker {args:?} did not end within {BOUND:?}");
        }
    }
}

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

fn partial(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap().to_os_string();
    name.push(PARTIAL);
    target.with_file_name(name)
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A real server with one snapshot `vol` of `image`.
fn server_with(root: &Path, image: &[u8]) -> Server {
    let server = Server::start(BIN, &root.join("data"), &[]);
    let img = root.join("image");
    std::fs::write(&img, image).unwrap();
    let (o, _) = bunker(
        &server.url,
        &server.admin,
        &["backup", "vol", img.to_str().unwrap()],
    );
    ok(&o);
    server
}

#[test]
fn a_failed_restore_leaves_the_old_target_untouched_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let image = bunker_tests::noise(160, 4 << 20);
    server_with(dir.path(), &image).stop();
    // Damage the middle of the biggest pack: a chunk of vol no longer reads.
    let mut packs: Vec<(u64, PathBuf)> = bunker_tests::pack_files(&dir.path().join("data"), "pack")
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().len(), p))
        .collect();
    packs.sort();
    let (len, pack) = packs.pop().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let server = Server::start(BIN, &dir.path().join("data"), &[]);

    let old = dir.path().join("old.img");
    let old_bytes = bunker_tests::noise(161, 3 << 20);
    std::fs::write(&old, &old_bytes).unwrap();
    let (o, _) = bunker(
        &server.url,
        &server.admin,
        &["restore", "--force", "vol", old.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    assert!(
        std::fs::read(&old).unwrap() == old_bytes,
        "a failed --force restore changed the old file"
    );
    assert!(!exists(&partial(&old)), "the partial file was left behind");

    let new = dir.path().join("new.img");
    let (o, _) = bunker(
        &server.url,
        &server.admin,
        &["restore", "vol", new.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(!exists(&new), "a failed restore created its target");
    assert!(!exists(&partial(&new)), "the partial file was left behind");
}

#[test]
fn links_are_never_followed_to_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = bunker_tests::noise(170, 1 << 20);
    let server = server_with(root, &image);
    let run = |args: &[&str]| bunker(&server.url, &server.admin, args).0;
    let victim_bytes = b"not to be touched".to_vec();

    // A dangling link: neither creates nor truncates what it names.
    let dangling = root.join("dangling");
    let nowhere = root.join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    for force in [false, true] {
        let mut args = vec!["restore", "vol", dangling.to_str().unwrap()];
        if force {
            args.insert(1, "--force");
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
        assert!(!exists(&nowhere), "the restore created the link's target");
    }
    // A link to a file: refused, the file untouched.
    let victim = root.join("victim");
    std::fs::write(&victim, &victim_bytes).unwrap();
    let link = root.join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = run(&["restore", "--force", "vol", link.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("symbolic link"), "{}", stderr(&o));
    assert!(std::fs::read(&victim).unwrap() == victim_bytes);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // Links planted at the partial name are removed, never written
    // through, whether they lead to a file or nowhere.
    let out = root.join("out.img");
    std::os::unix::fs::symlink(&victim, partial(&out)).unwrap();
    ok(&run(&["restore", "vol", out.to_str().unwrap()]));
    assert!(std::fs::read(&out).unwrap() == image);
    assert!(std::fs::read(&victim).unwrap() == victim_bytes);
    assert!(!exists(&partial(&out)));
    let out2 = root.join("out2.img");
    let nowhere2 = root.join("nowhere2");
    std::os::unix::fs::symlink(&nowhere2, partial(&out2)).unwrap();
    ok(&run(&["restore", "vol", out2.to_str().unwrap()]));
    assert!(std::fs::read(&out2).unwrap() == image);
    assert!(
        !exists(&nowhere2),
        "the restore wrote through a planted link"
    );
    // A hard link there is a stale partial file like any other: removed,
    // not reused.
    let out3 = root.join("out3.img");
    std::fs::hard_link(&victim, partial(&out3)).unwrap();
    ok(&run(&["restore", "vol", out3.to_str().unwrap()]));
    assert!(std::fs::read(&out3).unwrap() == image);
    assert!(std::fs::read(&victim).unwrap() == victim_bytes);
}

/// A loop device over a file, detached when dropped.
pub(crate) struct LoopDevice {
    pub(crate) dev: PathBuf,
}

impl LoopDevice {
    fn attach(backing: &Path) -> Result<LoopDevice, String> {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(LoopDevice {
            dev: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A loop device over `len` bytes of 0xAB, or `None` (said loudly) where
/// loop devices are not available; in CI that fails the test.
pub(crate) fn loop_device(dir: &Path, name: &str, len: usize) -> Option<LoopDevice> {
    let backing = dir.join(name);
    std::fs::write(&backing, vec![0xABu8; len]).unwrap();
    match LoopDevice::attach(&backing) {
        Ok(d) => Some(d),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("block-device restore needs a loop device in CI: {why}")
        }
        Err(why) => {
            println!("block-device restore: NOT RUN, no loop device here: {why}");
            None
        }
    }
}

#[test]
fn a_block_device_needs_force_and_room_for_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Zeros in the middle: on a device they are written, not skipped.
    let mut image = bunker_tests::noise(180, 1 << 20);
    image.extend_from_slice(&vec![0u8; 1 << 20]);
    image.extend_from_slice(&bunker_tests::noise(181, 1 << 20));
    let Some(small) = loop_device(root, "small", 1 << 20) else {
        return;
    };
    let Some(big) = loop_device(root, "big", 4 << 20) else {
        return;
    };
    let server = server_with(root, &image);
    let run = |args: &[&str]| bunker(&server.url, &server.admin, args).0;
    let small_dev = small.dev.to_str().unwrap();
    let untouched = |dev: &LoopDevice| {
        assert!(
            std::fs::read(&dev.dev).unwrap().iter().all(|&b| b == 0xAB),
            "{} was written",
            dev.dev.display()
        )
    };

    let o = run(&["restore", "vol", small_dev]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("block device") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    untouched(&small);
    let o = run(&["restore", "--force", "vol", small_dev]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let expected = format!("holds {} bytes, the image is {}", 1 << 20, image.len());
    assert!(stderr(&o).contains(&expected), "{}", stderr(&o));
    untouched(&small);

    let big_dev = big.dev.to_str().unwrap();
    let o = run(&["restore", "vol", big_dev]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    untouched(&big);
    // Held exclusively (as a mounted filesystem holds its device): refused.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
            .open(&big.dev)
            .unwrap();
        let o = run(&["restore", "--force", "vol", big_dev]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains("is in use"), "{}", stderr(&o));
        untouched(&big);
    }
    ok(&run(&["restore", "--force", "vol", big_dev]));
    let written = std::fs::read(&big.dev).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "device content differs"
    );
    assert!(written[image.len()..].iter().all(|&b| b == 0xAB));
    assert!(!exists(&partial(&big.dev)));

    // A link to a device (as under /dev/disk/by-id) is followed.
    let other = bunker_tests::noise(182, 2 << 20);
    std::fs::write(root.join("other"), &other).unwrap();
    ok(&run(&[
        "backup",
        "other",
        root.join("other").to_str().unwrap(),
    ]));
    let link = root.join("by-id");
    std::os::unix::fs::symlink(&big.dev, &link).unwrap();
    ok(&run(&[
        "restore",
        "--force",
        "other",
        link.to_str().unwrap(),
    ]));
    let written = std::fs::read(&big.dev).unwrap();
    assert!(written[..other.len()] == other[..]);
    assert!(written[other.len()..image.len()] == image[other.len()..]);
}

/// How the fake server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The manifest lists a 2 MiB chunk; `/v1/info` says 1 MiB at most.
    ChunkLongerThanTheRepositoryAllows,
    /// Range reads fail (500); each chunk answer announces 1 TiB.
    ChunkAnnouncesATebibyte,
    /// Range reads fail (500); each chunk answer sends 64 MiB, no length.
    ChunkBodyNeverEnds,
    /// Range answers stop halfway and the connection stays open.
    StallMidBody,
    /// The manifest answer never starts.
    StallBeforeManifest,
}

/// An HTTP/1.1 server on 127.0.0.1 that serves one small snapshot `vol@1`
/// (a random chunk, a zero chunk, a random chunk) and misbehaves as told.
struct FakeServer {
    url: String,
    stop: Arc<AtomicBool>,
    /// Connections it stalls on, held open until it is dropped.
    held: Arc<Mutex<Vec<TcpStream>>>,
    /// Requests for image bytes (range or chunk).
    data_requests: Arc<AtomicU64>,
    /// A message each time a stall starts.
    stalls: mpsc::Receiver<()>,
    addr: std::net::SocketAddr,
}

struct Snapshot {
    chunks: Vec<(Vec<u8>, bool)>,
    image: Vec<u8>,
}

impl Snapshot {
    fn new(fault: Fault) -> Snapshot {
        let chunks = if fault == Fault::ChunkLongerThanTheRepositoryAllows {
            vec![(bunker_tests::noise(190, 2 << 20), false)]
        } else {
            vec![
                (bunker_tests::noise(191, 100_000), false),
                (vec![0u8; 60_000], true),
                (bunker_tests::noise(192, 100_000), false),
            ]
        };
        let image = chunks.iter().flat_map(|(c, _)| c.clone()).collect();
        Snapshot { chunks, image }
    }

    fn json(&self) -> String {
        serde_json::json!({
            "name": "vol",
            "id": 1,
            "created_unix_ms": 0,
            "size_bytes": self.image.len(),
            "chunks": self.chunks.len(),
            "zero_chunks": self.chunks.iter().filter(|c| c.1).count(),
            "new_chunks": 0,
            "new_bytes": 0,
            "seconds": 0.0,
            "blake3": blake3::hash(&self.image).to_hex().to_string(),
            "source": "fake",
            "creator": null,
        })
        .to_string()
    }

    fn manifest(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut end = 0u64;
        for (c, zero) in &self.chunks {
            end += c.len() as u64;
            out.extend_from_slice(&end.to_le_bytes());
            let id = if *zero {
                [0u8; 32]
            } else {
                *blake3::hash(c).as_bytes()
            };
            out.extend_from_slice(&id);
        }
        out
    }
}

impl FakeServer {
    fn start(fault: Fault) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let data_requests = Arc::new(AtomicU64::new(0));
        let (stall_tx, stalls) = mpsc::channel();
        let snap = Arc::new(Snapshot::new(fault));
        {
            let (stop, held, data_requests) = (stop.clone(), held.clone(), data_requests.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (held, data_requests, snap, stall_tx) = (
                        held.clone(),
                        data_requests.clone(),
                        snap.clone(),
                        stall_tx.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = answer(conn, fault, &snap, &held, &data_requests, &stall_tx);
                    });
                }
            });
        }
        FakeServer {
            url: format!("http://{addr}"),
            stop,
            held,
            data_requests,
            stalls,
            addr,
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.held.lock().unwrap().clear();
    }
}

/// Answers the requests of one connection until it closes.
fn answer(
    conn: TcpStream,
    fault: Fault,
    snap: &Snapshot,
    held: &Mutex<Vec<TcpStream>>,
    data_requests: &AtomicU64,
    stalled: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap() + 1));
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
        let stall = |out: &TcpStream| {
            held.lock().unwrap().push(out.try_clone().unwrap());
            let _ = stalled.send(());
        };
        let head = |status: &str, len: Option<u64>| {
            let mut h = format!("HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\n");
            if let Some(n) = len {
                h.push_str(&format!("content-length: {n}\r\n"));
            }
            h.push_str("\r\n");
            h
        };
        if path == "/v1/info" {
            let body = r#"{"server_version":"fake","repository_id":"00","chunker":{"min_bytes":65536,"avg_bytes":262144,"max_bytes":1048576},"zstd_level":1}"#;
            write!(out, "{}{body}", head("200 OK", Some(body.len() as u64)))?;
        } else if path == "/v1/snapshots/vol/latest" || path == "/v1/snapshots/vol/1" {
            let body = snap.json();
            write!(out, "{}{body}", head("200 OK", Some(body.len() as u64)))?;
        } else if path == "/v1/snapshots/vol/1/manifest" {
            if fault == Fault::StallBeforeManifest {
                stall(&out);
                return Ok(());
            }
            let body = snap.manifest();
            out.write_all(head("200 OK", Some(body.len() as u64)).as_bytes())?;
            out.write_all(&body)?;
        } else if path == "/v1/snapshots/vol/1/data" {
            data_requests.fetch_add(1, Ordering::SeqCst);
            let (a, b) = range.unwrap_or((0, snap.image.len()));
            if fault == Fault::StallMidBody {
                out.write_all(head("206 Partial Content", Some((b - a) as u64)).as_bytes())?;
                out.write_all(&snap.image[a..a + (b - a) / 2])?;
                out.flush()?;
                stall(&out);
                return Ok(());
            }
            let body = r#"{"error":{"code":"internal","message":"fake"}}"#;
            write!(
                out,
                "{}{body}",
                head("500 Internal Server Error", Some(body.len() as u64))
            )?;
        } else if path.starts_with("/v1/snapshots/vol/1/chunks/") {
            data_requests.fetch_add(1, Ordering::SeqCst);
            match fault {
                Fault::ChunkAnnouncesATebibyte => {
                    out.write_all(head("200 OK", Some(1 << 40)).as_bytes())?;
                    out.write_all(&snap.image)?;
                    out.flush()?;
                    stall(&out);
                    return Ok(());
                }
                Fault::ChunkBodyNeverEnds => {
                    // No length: the body runs to the end of the connection,
                    // which never comes. 64 MiB, then silence.
                    out.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")?;
                    let block = bunker_tests::noise(193, 1 << 20);
                    for _ in 0..64 {
                        out.write_all(&block)?;
                    }
                    out.flush()?;
                    stall(&out);
                    return Ok(());
                }
                _ => {
                    stall(&out);
                    return Ok(());
                }
            }
        } else {
            let body = r#"{"error":{"code":"not_found","message":"fake"}}"#;
            write!(
                out,
                "{}{body}",
                head("404 Not Found", Some(body.len() as u64))
            )?;
        }
        out.flush()?;
    }
}

#[test]
fn a_lying_or_stalled_server_fails_the_restore_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // (fault, exit code, what the message names)
    let cases = [
        (
            Fault::ChunkLongerThanTheRepositoryAllows,
            4,
            "is a chunk of 2097152 bytes (bytes 0..2097152); the repository's chunks are at most 1048576 bytes",
        ),
        (
            Fault::ChunkAnnouncesATebibyte,
            4,
            "the server announces 1099511627776 bytes for chunk",
        ),
        (
            Fault::ChunkBodyNeverEnds,
            4,
            "the server sends more than the 100000 bytes of chunk",
        ),
        (
            Fault::StallMidBody,
            1,
            "the server sent nothing for 1 s while sending bytes 0..100000 of vol@1",
        ),
        (
            Fault::StallBeforeManifest,
            1,
            "the server sent nothing for 1 s while sending the manifest",
        ),
    ];
    let mut worst = Duration::ZERO;
    for (fault, code, fragment) in cases {
        let fake = FakeServer::start(fault);
        let old = dir.path().join("old.img");
        let old_bytes = bunker_tests::noise(194, 300_000);
        std::fs::write(&old, &old_bytes).unwrap();
        let new = dir.path().join("new.img");
        for (args, target) in [
            (vec!["restore", "vol"], &new),
            (vec!["restore", "--force", "vol"], &old),
        ] {
            let mut args = args.clone();
            args.insert(0, "--timeout=1");
            args.push(target.to_str().unwrap());
            let (o, took) = bunker(&fake.url, "bkr_fake", &args);
            worst = worst.max(took);
            let err = stderr(&o);
            println!(
                "{fault:?}: exit {:?} in {took:.1?}: {}",
                o.status.code(),
                err.trim()
            );
            assert_eq!(o.status.code(), Some(code), "{fault:?}: {err}");
            assert!(
                err.contains(fragment),
                "{fault:?}: expected {fragment:?} in {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{fault:?}: {err}");
            assert!(
                !exists(&new),
                "{fault:?}: a failed restore created its target"
            );
            assert!(
                std::fs::read(&old).unwrap() == old_bytes,
                "{fault:?}: a failed restore changed the old file"
            );
            assert!(!exists(&partial(target)), "{fault:?}: partial file left");
        }
        if fault == Fault::ChunkLongerThanTheRepositoryAllows {
            assert_eq!(
                fake.data_requests.load(Ordering::SeqCst),
                0,
                "refused before fetching anything"
            );
        }
    }
    println!("a lying or stalled server: every restore failed within {worst:?} (bound {BOUND:?})");
}

#[test]
fn a_killed_restore_leaves_the_target_alone_and_the_next_replaces_its_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.img");
    let old_bytes = bunker_tests::noise(200, 200_000);
    std::fs::write(&target, &old_bytes).unwrap();
    // A restore caught mid-image: the fake server stalls halfway through
    // the first range, with no read timeout on the client.
    let fake = FakeServer::start(Fault::StallMidBody);
    let mut child = Command::new(BIN)
        .args(["--timeout=0", "restore", "--force", "vol"])
        .arg(&target)
        .env("BUNKER_SERVER", &fake.url)
        .env("BUNKER_TOKEN", "bkr_fake")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    fake.stalls
        .recv_timeout(BOUND)
        .expect("the restore never reached the image bytes");
    // A second restore to the same target meanwhile is refused.
    let (o, _) = bunker(
        &fake.url,
        "bkr_fake",
        &["restore", "--force", "vol", target.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is being written by another restore"),
        "{}",
        stderr(&o)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::read(&target).unwrap() == old_bytes,
        "a killed restore changed its target"
    );
    let stale = partial(&target);
    let size = Snapshot::new(Fault::StallMidBody).image.len() as u64;
    assert_eq!(
        std::fs::metadata(&stale).map(|m| m.len()).ok(),
        Some(size),
        "the killed restore's partial file, full size, beside the target"
    );
    drop(fake);
    // The next restore removes the stale partial file and starts afresh.
    let image = bunker_tests::noise(201, 3 << 20);
    let server = server_with(dir.path(), &image);
    let (o, _) = bunker(
        &server.url,
        &server.admin,
        &["restore", "--force", "vol", target.to_str().unwrap()],
    );
    ok(&o);
    assert!(std::fs::read(&target).unwrap() == image);
    assert!(!exists(&stale), "the stale partial file is gone");
}
