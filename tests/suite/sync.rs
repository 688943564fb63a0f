//! `bunker sync` between two real servers on loopback, the real binary:
//! every copy restores bit-exact with the source's BLAKE3, origin and
//! creation time; a rerun sends almost nothing and a new day about its new
//! bytes (counted by a TCP proxy in front of the target); the tokens it
//! needs cannot delete on the target and a scoped writer cannot copy other
//! names; deletes and prunes on the source never reach the target; a
//! hostile source cannot make the target store a wrong chunk or a torn
//! snapshot; and a repository on the object store syncs to local disk and
//! back.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bunker_client::{BackupOptions, Client};
use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// A TCP relay in front of a server that counts the bytes sent to it.
struct Counter {
    url: String,
    sent: Arc<AtomicU64>,
}

impl Counter {
    fn start(upstream: &str) -> Counter {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let count = sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(up) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_in, mut up_out) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                let (mut up_in, mut c_out) = (up, conn);
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || up_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = up_out.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Counter { url, sent }
    }

    fn take(&self) -> u64 {
        self.sent.swap(0, Ordering::Relaxed)
    }
}

fn client(url: &str, token: &str) -> Client {
    Client::new(url, Some(token.to_string()))
}

/// A new token on `server`: its secret, written to `dir/<file>` too.
pub(crate) fn token(
    server: &Server,
    role: &str,
    scope: Option<&str>,
    dir: &Path,
    file: &str,
) -> String {
    let c = client(&server.url, &server.admin);
    let t = c
        .create_token(&bunker_api::TokenRequest {
            role: bunker_api::Role::parse(role).unwrap(),
            scope: scope.map(str::to_string),
            name: None,
        })
        .unwrap()
        .token;
    std::fs::write(dir.join(file), &t).unwrap();
    t
}

/// `bunker sync --from SOURCE --from-token-file F --to TARGET
/// --to-token-file G --json NAMES...`.
pub(crate) fn sync(
    from: &str,
    from_token: &Path,
    to: &str,
    to_token: &Path,
    names: &[&str],
) -> Output {
    Command::new(BIN)
        .args(["sync", "--json", "--from", from, "--from-token-file"])
        .arg(from_token)
        .args(["--to", to, "--to-token-file"])
        .arg(to_token)
        .args(names)
        .env_remove("BUNKER_SERVER")
        .env_remove("BUNKER_TOKEN")
        .output()
        .expect("run bunker sync")
}

pub(crate) fn report(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON report")
}

fn image(name: &str, day: u32) -> Vec<u8> {
    let seed = u64::from(blake3::hash(name.as_bytes()).as_bytes()[0]);
    // 1 to 8 MiB by name.
    let size = (1 + seed % 8) << 20;
    let mut data = Vec::new();
    Image::new(&ImageSpec::new(seed, size), day)
        .write_to(&mut data)
        .unwrap();
    data
}

fn backup(c: &Client, name: &str, data: &[u8]) -> bunker_api::Snapshot {
    c.backup(name, data, &BackupOptions::default(), &mut |_| {})
        .unwrap()
        .snapshot
}

fn restore(c: &Client, name: &str, id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    c.restore(
        name,
        Some(id),
        bunker_client::Target::Stream(&mut out),
        &mut |_| {},
    )
    .unwrap();
    out
}

/// The target's snapshots by origin snapshot id.
fn copies(c: &Client) -> HashMap<u64, bunker_api::Snapshot> {
    c.list(None)
        .unwrap()
        .into_iter()
        .map(|s| {
            (
                s.origin.as_ref().expect("a copy has an origin").snapshot_id,
                s,
            )
        })
        .collect()
}

const NAMES: [&str; 4] = ["db-1", "db-2", "web", "mail"];

#[test]
fn sync_copies_bit_exact_then_sends_only_what_is_new_and_never_deletes() {
    let dir = bunker_tests::scratch();
    let a = Server::start(BIN, &dir.path().join("a"), &[]);
    let b = Server::start(BIN, &dir.path().join("b"), &[]);
    let src = client(&a.url, &a.admin);
    let mut images = HashMap::new();
    for day in 0..5 {
        for name in NAMES {
            let data = image(name, day);
            let s = backup(&src, name, &data);
            images.insert(s.id, data);
        }
    }
    token(&a, "reader", None, dir.path(), "a.reader");
    token(&b, "writer", None, dir.path(), "b.writer");
    let (ra, wb) = (dir.path().join("a.reader"), dir.path().join("b.writer"));
    let proxy = Counter::start(&b.url);

    let r = report(&sync(&a.url, &ra, &proxy.url, &wb, &[]));
    assert_eq!(
        (r["copied"].as_u64(), r["skipped"].as_u64()),
        (Some(20), Some(0))
    );
    assert_eq!(r["target_snapshots"], 20);
    proxy.take();
    let dst = client(&b.url, &b.admin);
    let held = copies(&dst);
    assert_eq!(held.len(), 20);
    let source_repo = src.info().unwrap().repository_id;
    for s in src.list(None).unwrap() {
        let copy = &held[&s.id];
        let origin = copy.origin.as_ref().unwrap();
        assert_eq!(origin.repository_id, source_repo);
        assert_eq!(
            (origin.name.as_str(), origin.created_unix_ms),
            (s.name.as_str(), s.created_unix_ms)
        );
        assert_eq!(copy.name, s.name);
        assert_eq!(copy.created_unix_ms, s.created_unix_ms);
        assert_eq!(
            (copy.size_bytes, &copy.blake3, &copy.source),
            (s.size_bytes, &s.blake3, &s.source)
        );
        let back = restore(&dst, &copy.name, copy.id);
        assert!(
            back == images[&s.id],
            "{}@{} differs from its source",
            copy.name,
            copy.id
        );
    }

    // Unchanged: nothing copied, under 1 MiB on the wire (headers included).
    let r = report(&sync(&a.url, &ra, &proxy.url, &wb, &[]));
    assert_eq!(
        (r["copied"].as_u64(), r["skipped"].as_u64()),
        (Some(0), Some(20))
    );
    let sent = proxy.take();
    assert!(
        sent < 1 << 20,
        "a sync of unchanged snapshots sent {sent} bytes"
    );

    // One new day of db-1: about its new stored bytes cross the wire.
    let day5 = image("db-1", 5);
    let new = backup(&src, "db-1", &day5);
    let r = report(&sync(&a.url, &ra, &proxy.url, &wb, &["db-"]));
    assert_eq!(r["copied"], 1);
    let sent = proxy.take();
    assert!(
        sent as f64 <= new.new_bytes as f64 * 1.05 && sent >= new.new_bytes,
        "day 5 stored {} new bytes on the source, the sync sent {sent}",
        new.new_bytes
    );
    let copy = &copies(&dst)[&new.id];
    assert!(restore(&dst, "db-1", copy.id) == day5);

    // The writer token cannot delete or prune on the target; deletes and
    // prunes on the source leave the target's copies alone.
    let writer = client(&b.url, &std::fs::read_to_string(&wb).unwrap());
    let e = writer.delete_snapshot("db-1", copy.id).unwrap_err();
    assert!(matches!(e, bunker_client::Error::Forbidden { .. }), "{e}");
    let e = writer
        .prune(&bunker_api::PruneRequest {
            all: true,
            keep_last: 1,
            ..Default::default()
        })
        .unwrap_err();
    assert!(matches!(e, bunker_client::Error::Forbidden { .. }), "{e}");
    src.delete_snapshot("web", src.snapshot("web", None).unwrap().id)
        .unwrap();
    src.prune(&bunker_api::PruneRequest {
        all: true,
        keep_last: 1,
        ..Default::default()
    })
    .unwrap();
    let r = report(&sync(&a.url, &ra, &proxy.url, &wb, &[]));
    assert_eq!(r["copied"], 0);
    assert_eq!(dst.list(None).unwrap().len(), 21);
}

#[test]
fn a_scoped_writer_copies_only_its_names() {
    let dir = bunker_tests::scratch();
    let a = Server::start(BIN, &dir.path().join("a"), &[]);
    let b = Server::start(BIN, &dir.path().join("b"), &[]);
    let src = client(&a.url, &a.admin);
    backup(&src, "db-1", &image("db-1", 0));
    backup(&src, "web", &image("web", 0));
    token(&a, "reader", None, dir.path(), "a.reader");
    token(&b, "writer", Some("db"), dir.path(), "b.db");
    let (ra, wb) = (dir.path().join("a.reader"), dir.path().join("b.db"));
    let out = sync(&a.url, &ra, &b.url, &wb, &["web"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("web") && err.contains("scope"), "{err}");
    let r = report(&sync(&a.url, &ra, &b.url, &wb, &["db-"]));
    assert_eq!(r["copied"], 1);
    let names: Vec<String> = client(&b.url, &b.admin)
        .list(None)
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["db-1"]);
    // Another writer does not see that copy in its listing; its commit of
    // the same origin answers the existing copy (200) and makes no second.
    token(&b, "writer", None, dir.path(), "b.other");
    let r = report(&sync(
        &a.url,
        &ra,
        &b.url,
        &dir.path().join("b.other"),
        &["db-"],
    ));
    assert_eq!(
        (r["copied"].as_u64(), r["skipped"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(client(&b.url, &b.admin).list(None).unwrap().len(), 1);
}

/// A target created with smaller chunks than the source cuts would refuse
/// every larger chunk mid-copy: the sync says so before copying anything.
#[test]
fn a_target_with_smaller_chunks_is_refused_before_anything_is_copied() {
    let dir = bunker_tests::scratch();
    let a = Server::start(BIN, &dir.path().join("a"), &[]);
    let b = Server::start(BIN, &dir.path().join("b"), &["--chunk-size", "64KiB"]);
    backup(&client(&a.url, &a.admin), "db", &image("db", 0));
    token(&a, "reader", None, dir.path(), "a.reader");
    token(&b, "writer", None, dir.path(), "b.writer");
    let (ra, wb) = (dir.path().join("a.reader"), dir.path().join("b.writer"));
    let out = sync(&a.url, &ra, &b.url, &wb, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("at most 262144 bytes")
            && err.contains("1048576")
            && err.contains("--chunk-size"),
        "{err}"
    );
    assert!(client(&b.url, &b.admin).list(None).unwrap().is_empty());
}

/// What the fake source serves: `/v1/info`, `/v1/snapshots`, manifests and
/// chunks by path; anything else is 404.
fn fake_source(routes: HashMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let routes = routes.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = match routes.get(&path) {
                    Some(body) => ("200 OK", body.clone()),
                    None => (
                        "404 Not Found",
                        br#"{"error":{"code":"not_found","message":"no such chunk"}}"#.to_vec(),
                    ),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            });
        }
    });
    url
}

/// A source snapshot as the fake lists it.
fn fake_snapshot(
    name: &str,
    id: u64,
    size: u64,
    chunks: u64,
    blake3: &str,
) -> bunker_api::Snapshot {
    bunker_api::Snapshot {
        name: name.into(),
        id,
        created_unix_ms: 1_700_000_000_000 + id as i64,
        size_bytes: size,
        chunks,
        zero_chunks: 0,
        new_chunks: 0,
        new_bytes: 0,
        seconds: 0.0,
        blake3: blake3.into(),
        source: "fake".into(),
        creator: None,
        last_verify: None,
        last_drill: None,
        last_server_drill: None,
        origin: None,
    }
}

fn entry(end: u64, id: &blake3::Hash) -> Vec<u8> {
    let mut e = end.to_le_bytes().to_vec();
    e.extend_from_slice(id.as_bytes());
    e
}

#[test]
fn a_hostile_source_cannot_make_the_target_store_a_wrong_chunk_or_a_torn_snapshot() {
    let dir = bunker_tests::scratch();
    let b = Server::start(BIN, &dir.path().join("b"), &[]);
    token(&b, "writer", None, dir.path(), "b.writer");
    let wb = dir.path().join("b.writer");
    std::fs::write(dir.path().join("fake.token"), "anything").unwrap();
    let ft = dir.path().join("fake.token");
    let dst = client(&b.url, &b.admin);
    let mut info = dst.info().unwrap();
    info.repository_id = "ab".repeat(16);
    let chunk = |seed| bunker_tests::noise(seed, 100_000);
    let (d1, d2, d3, d4) = (chunk(1), chunk(2), chunk(3), chunk(4));
    let (h1, h3, h4) = (blake3::hash(&d1), blake3::hash(&d3), blake3::hash(&d4));
    let unserved = blake3::hash(b"never served");
    let snaps = vec![
        // Wrong bytes for an id.
        fake_snapshot("wrong", 1, 100_000, 1, &h1.to_hex()),
        // A manifest entry naming a chunk the source does not serve.
        fake_snapshot("unserved", 2, 100_000, 1, &unserved.to_hex()),
        // An entry 50 000 bytes longer than its chunk (the size agrees).
        fake_snapshot("size", 3, 150_000, 1, &h3.to_hex()),
        // A whole-image hash that is not the image's.
        fake_snapshot("hash", 4, 100_000, 1, &blake3::hash(b"lie").to_hex()),
    ];
    let mut routes = HashMap::new();
    routes.insert("/v1/info".to_string(), serde_json::to_vec(&info).unwrap());
    routes.insert(
        "/v1/snapshots".to_string(),
        serde_json::to_vec(&bunker_api::SnapshotList { snapshots: snaps }).unwrap(),
    );
    for (name, id, manifest) in [
        ("wrong", 1, entry(100_000, &h1)),
        ("unserved", 2, entry(100_000, &unserved)),
        ("size", 3, entry(150_000, &h3)),
        ("hash", 4, entry(100_000, &h4)),
    ] {
        routes.insert(format!("/v1/snapshots/{name}/{id}/manifest"), manifest);
    }
    routes.insert(
        format!("/v1/snapshots/wrong/1/chunks/{}", h1.to_hex()),
        d2.clone(),
    );
    routes.insert(format!("/v1/snapshots/size/3/chunks/{}", h3.to_hex()), d3);
    routes.insert(format!("/v1/snapshots/hash/4/chunks/{}", h4.to_hex()), d4);
    let fake = fake_source(routes);

    for (name, says) in [
        ("wrong", "hash"),
        ("unserved", "does not serve"),
        ("size", "not 150000"),
    ] {
        let out = sync(&fake, &ft, &b.url, &wb, &[name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{name}: {err}");
        assert!(
            err.contains("bad data") && err.contains(says),
            "{name}: {err}"
        );
        assert!(dst.list(None).unwrap().is_empty(), "{name} left a snapshot");
    }
    // Neither the claimed chunk nor the bytes sent for it were stored.
    let s = dst
        .start_session(&bunker_api::SessionRequest {
            name: "probe".into(),
            source: None,
            origin: None,
        })
        .unwrap();
    let ids = [
        bunker_chunk::ChunkId(*h1.as_bytes()),
        bunker_chunk::ChunkId(*blake3::hash(&d2).as_bytes()),
    ];
    assert_eq!(dst.missing(&s.id, &ids).unwrap(), [true, true]);
    dst.abort_session(&s.id).unwrap();

    // A lying whole-image hash is recorded as sent (it cannot be checked
    // without reading the image) and the copy's first drill fails it.
    report(&sync(&fake, &ft, &b.url, &wb, &["hash"]));
    let copy = dst.snapshot("hash", None).unwrap();
    let drill = dst.server_drill("hash", Some(copy.id)).unwrap();
    assert!(
        !drill.ok,
        "a drill passed a copy whose recorded hash is wrong"
    );
    assert_eq!(dst.list(None).unwrap().len(), 1);
}

#[test]
fn a_repository_on_the_object_store_syncs_to_local_disk_and_back() {
    let Some(store) = bunker_testdata::stores::Store::seaweedfs() else {
        return;
    };
    const BUCKET: &str = "bunker-sync";
    store.create_bucket(BUCKET);
    let s3 = |prefix: &str| {
        [
            "--s3".to_string(),
            format!("s3://{BUCKET}/{prefix}"),
            "--s3-endpoint".into(),
            store.endpoint.clone(),
            "--s3-allow-http".into(),
            "--s3-anonymous".into(),
        ]
    };
    let dir = bunker_tests::scratch();
    let fa = s3("a");
    let fc = s3("c");
    let args = |f: &[String; 6]| f.clone();
    let a = Server::start(
        BIN,
        &dir.path().join("a"),
        &args(&fa).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b = Server::start(BIN, &dir.path().join("b"), &[]);
    let c = Server::start(
        BIN,
        &dir.path().join("c"),
        &args(&fc).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let src = client(&a.url, &a.admin);
    let mut images = Vec::new();
    for day in 0..2 {
        let data = image("db-1", day);
        images.push((backup(&src, "db-1", &data), data));
    }
    for (s, name) in [(&a, "a.reader"), (&b, "b.reader")] {
        token(s, "reader", None, dir.path(), name);
    }
    for (s, name) in [(&b, "b.writer"), (&c, "c.writer")] {
        token(s, "writer", None, dir.path(), name);
    }
    let p = |f: &str| dir.path().join(f);
    let r = report(&sync(&a.url, &p("a.reader"), &b.url, &p("b.writer"), &[]));
    assert_eq!(r["copied"], 2);
    let r = report(&sync(&b.url, &p("b.reader"), &c.url, &p("c.writer"), &[]));
    assert_eq!(r["copied"], 2);
    let repo_a = src.info().unwrap().repository_id;
    for target in [&b, &c] {
        let t = client(&target.url, &target.admin);
        let held = copies(&t);
        for (s, data) in &images {
            let copy = &held[&s.id];
            assert_eq!(copy.origin.as_ref().unwrap().repository_id, repo_a);
            assert_eq!(
                (copy.created_unix_ms, &copy.blake3),
                (s.created_unix_ms, &s.blake3)
            );
            assert!(&restore(&t, "db-1", copy.id) == data);
        }
    }
    // A copy of a copy keeps the first origin: A straight to C copies nothing.
    let r = report(&sync(&a.url, &p("a.reader"), &c.url, &p("c.writer"), &[]));
    assert_eq!(
        (r["copied"].as_u64(), r["skipped"].as_u64()),
        (Some(0), Some(2))
    );
}
