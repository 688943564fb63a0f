//! The HTTP server end to end: the real `bunker serve` program
//! (`bunker-e2e`) on 127.0.0.1, driven with ureq and, for cut, stalled or
//! malformed requests, over raw sockets. Uploads and restores must be
//! bit-exact (ranges too), the chunk protocol must build the same manifest
//! as a raw upload, concurrent uploads must dedup, nothing unfinished may
//! ever be committed (disconnects, SIGTERM, oversized bodies, hash
//! mismatches), roles and scopes must hold, hostile names must never touch
//! the filesystem, a damaged pack must never yield a complete restore, one
//! token must not hold every ingest slot, and a client that vanishes or
//! stops reading must leave no slot, session or gauge behind.

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use bunker_api::{
    ErrorBody, ErrorCode, Info, Session, Snapshot, SnapshotList, Stats, TokenCreated,
    COMMIT_ENTRY_LEN, HEADER_STREAM_HASH,
};
use bunker_chunk::{ChunkId, Chunker, ChunkerParams};
use bunker_store::{Repository, SnapshotId};
use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::noise;
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const MIB: usize = 1 << 20;
/// The longest anything is waited for (server exits, metrics settling).
const DEADLINE: Duration = Duration::from_secs(30);

mod auth;

// ---------------------------------------------------------------- helpers

/// A complete HTTP response.
struct Resp {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]).into_owned()
    }

    fn expect(&self, status: u16, what: &str) -> &Resp {
        assert_eq!(self.status, status, "{what}: body {}", self.text());
        self
    }

    fn error(&self) -> ErrorBody {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not a JSON error body ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts the status of `code` and a JSON error body naming it.
    fn expect_error(&self, code: ErrorCode, what: &str) {
        assert_eq!(
            self.status,
            code.status(),
            "{what}: expected {}, body {}",
            code.as_str(),
            self.text()
        );
        let e = self.error();
        assert_eq!(e.error.code, code, "{what}: body {}", self.text());
        assert!(!e.error.message.is_empty(), "{what}: empty message");
    }

    fn snapshot(&self) -> Snapshot {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a snapshot ({e}): {}", self.text()))
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        serde_json::from_slice::<SnapshotList>(&self.body)
            .unwrap_or_else(|e| panic!("not a snapshot list ({e}): {}", self.text()))
            .snapshots
    }
}

/// A ureq client that reports every status (no error for 4xx/5xx) and
/// opens a fresh connection per request.
#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
}

impl Client {
    fn new(url: &str, token: Option<&str>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client {
            agent,
            url: url.to_string(),
            token: token.map(str::to_string),
        }
    }

    fn with_token(&self, token: Option<&str>) -> Client {
        Client {
            token: token.map(str::to_string),
            ..self.clone()
        }
    }

    fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = match body {
            Some(body) => self.agent.run(b.body(body).expect("request")),
            None => self.agent.run(b.body(()).expect("request")),
        }
        .map_err(|e| format!("{method} {path}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let mut bytes = Vec::new();
        body.into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{method} {path}: reading the body: {e}"))?;
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: bytes,
        })
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None)
    }

    fn put(&self, path: &str, body: &[u8]) -> Resp {
        self.send("PUT", path, &[], Some(body))
    }

    fn post(&self, path: &str, body: &[u8]) -> Resp {
        self.send("POST", path, &[], Some(body))
    }

    fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], None)
    }

    /// Raw upload of `data` as `name`: 201 and its snapshot.
    fn upload(&self, name: &str, data: &[u8]) -> Snapshot {
        self.put(&format!("/v1/snapshots/{name}"), data)
            .expect(201, &format!("upload {name}"))
            .snapshot()
    }

    fn list(&self, name: &str) -> Vec<Snapshot> {
        self.get(&format!("/v1/snapshots/{name}"))
            .expect(200, &format!("list {name}"))
            .snapshots()
    }

    /// The restored bytes of `name@id` (`id` may be `latest`).
    fn restore(&self, name: &str, id: &str) -> Vec<u8> {
        let r = self.get(&format!("/v1/snapshots/{name}/{id}/data"));
        r.expect(200, &format!("restore {name}@{id}"));
        assert_eq!(
            r.header("content-length")
                .and_then(|v| v.parse::<usize>().ok()),
            Some(r.body.len()),
            "restore {name}@{id}: Content-Length"
        );
        r.body
    }

    fn stats(&self) -> Stats {
        let r = self.get("/v1/stats");
        r.expect(200, "stats");
        serde_json::from_slice(&r.body).expect("stats JSON")
    }

    fn metrics(&self) -> String {
        let r = self.get("/metrics");
        r.expect(200, "metrics");
        String::from_utf8(r.body).expect("metrics are text")
    }

    fn create_token(&self, role: &str, scope: Option<&str>) -> TokenCreated {
        let body = match scope {
            Some(s) => format!(r#"{{"role":"{role}","scope":"{s}"}}"#),
            None => format!(r#"{{"role":"{role}"}}"#),
        };
        let r = self.post("/v1/tokens", body.as_bytes());
        r.expect(201, "create token");
        serde_json::from_slice(&r.body).expect("token JSON")
    }
}

/// The value of one exact series (`name` or `name{labels}`) in `text`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sum of `bunker_requests_total` over all statuses of `route`.
fn requests(text: &str, route: &str) -> f64 {
    let prefix = format!("bunker_requests_total{{route=\"{route}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` until it holds; fails after [`DEADLINE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(data: &Path, extra: &[&str]) -> (Server, Client) {
    let server = Server::start(BIN, data, extra);
    let client = Client::new(&server.url, Some(&server.admin));
    (server, client)
}

/// SIGTERM, then waits (at most `limit`) for the exit; returns the status
/// and how long the exit took.
fn stop_within(mut server: Server, limit: Duration) -> (ExitStatus, Duration) {
    let started = Instant::now();
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(server.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    loop {
        if let Some(status) = server.child.try_wait().expect("try_wait") {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "the server did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(server: Server) {
    let (status, _) = stop_within(server, DEADLINE);
    assert!(status.success(), "server exit status {status}");
}

/// Day 0 of a SAN-like image (zeros, text, random, duplicates).
fn san_image(seed: u64, size: usize) -> Vec<u8> {
    let image = Image::new(&ImageSpec::new(seed, size as u64), 0);
    let mut data = Vec::with_capacity(image.len() as usize);
    image.reader().read_to_end(&mut data).unwrap();
    assert_eq!(data.len() as u64, image.len());
    data
}

fn hex_hash(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// `host:port` of a server.
fn addr(server: &Server) -> String {
    server
        .url
        .strip_prefix("http://")
        .expect("http url")
        .to_string()
}

fn connect(server: &Server) -> TcpStream {
    let s = TcpStream::connect(addr(server)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A response read off a raw socket.
struct RawResp {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResp {
    fn error_code(&self) -> Option<ErrorCode> {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .ok()
            .map(|e| e.error.code)
    }
}

/// Reads one response: the head, then `Content-Length` bytes or up to EOF.
/// `None` when the connection ends (or is reset) before a complete head.
fn read_response(s: &mut TcpStream) -> Option<RawResp> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
    let len = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    while len.is_none_or(|n| body.len() < n) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some(RawResp { status, head, body })
}

/// Sends `request` on a fresh connection (write errors ignored: the server
/// may answer and close early) and reads the answer.
fn raw_exchange(server: &Server, request: &[u8]) -> Option<RawResp> {
    let mut s = connect(server);
    let _ = s.write_all(request);
    read_response(&mut s)
}

/// `METHOD path` with the admin token and a small body, over a raw socket
/// (no client-side normalisation of the path).
fn raw_request(server: &Server, method: &str, path: &str, body: &[u8]) -> Option<RawResp> {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        addr(server),
        server.admin,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    raw_exchange(server, &req)
}

/// Opens a raw upload of `name` announcing `announced` bytes, sends
/// `data`, and returns the open socket (the upload is then stalled, or cut
/// when the socket is dropped).
fn start_raw_upload(server: &Server, name: &str, announced: usize, data: &[u8]) -> TcpStream {
    let mut s = connect(server);
    let head = format!(
        "PUT /v1/snapshots/{name} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {announced}\r\n\r\n",
        addr(server),
        server.admin
    );
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(data).expect("send body");
    s.flush().unwrap();
    s
}

fn active_streams(c: &Client) -> f64 {
    metric(&c.metrics(), "bunker_active_streams").expect("bunker_active_streams")
}

/// The chunks of `data` as the server's chunker cuts them: (range, id),
/// all-zero chunks as [`ChunkId::ZERO`].
fn chunk_list(data: &[u8], params: ChunkerParams) -> Vec<(std::ops::Range<usize>, ChunkId)> {
    let mut out = Vec::new();
    let mut at = 0;
    for cut in Chunker::new(params).cuts(data, true) {
        let id = if cut.zero {
            ChunkId::ZERO
        } else {
            ChunkId::of(&data[at..cut.end])
        };
        out.push((at..cut.end, id));
        at = cut.end;
    }
    assert_eq!(at, data.len(), "cuts cover the data");
    out
}

/// A chunk-protocol commit body: (u64 LE length, id) per chunk.
fn commit_body(entries: impl IntoIterator<Item = (u64, ChunkId)>) -> Vec<u8> {
    let mut body = Vec::new();
    for (len, id) in entries {
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(id.as_bytes());
    }
    assert_eq!(body.len() % COMMIT_ENTRY_LEN, 0);
    body
}

fn open_session(c: &Client, name: &str) -> Session {
    let r = c.post("/v1/sessions", format!(r#"{{"name":"{name}"}}"#).as_bytes());
    r.expect(201, &format!("open session {name}"));
    let s: Session = serde_json::from_slice(&r.body).expect("session JSON");
    assert_eq!(s.name, name);
    assert_eq!(s.id.len(), 32, "session id {:?}", s.id);
    s
}

/// Which of `ids` the server reports missing in session `sid`.
fn missing(c: &Client, sid: &str, ids: &[ChunkId]) -> Vec<bool> {
    let body: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
    let r = c.post(&format!("/v1/sessions/{sid}/missing"), &body);
    r.expect(200, "missing");
    assert_eq!(r.body.len(), ids.len().div_ceil(8), "bitmap length");
    (0..ids.len())
        .map(|i| r.body[i / 8] & (1 << (i % 8)) != 0)
        .collect()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn raw_upload_restores_bit_exactly_serves_ranges_and_dedups_a_reupload() {
    let seed = crate::seed(1);
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let data = san_image(seed, 64 * MIB);
    let size = data.len();
    let hash = hex_hash(&data);
    let chunks = chunk_list(&data, ChunkerParams::DEFAULT);
    let zero_chunks = chunks.iter().filter(|(_, id)| id.is_zero()).count();

    let s = c.upload("vol", &data);
    assert_eq!(s.name, "vol");
    assert_eq!(s.size_bytes, size as u64);
    assert_eq!(s.blake3, hash, "seed {seed}");
    assert_eq!(s.chunks, chunks.len() as u64, "chunk count, seed {seed}");
    assert_eq!(
        s.zero_chunks, zero_chunks as u64,
        "zero chunks, seed {seed}"
    );
    assert!(s.new_chunks > 0 && s.new_chunks <= s.chunks - s.zero_chunks);
    assert!(
        s.new_bytes > 0 && s.new_bytes < s.size_bytes,
        "new bytes {} of {}",
        s.new_bytes,
        s.size_bytes
    );
    assert!(s.seconds.is_finite() && s.seconds >= 0.0);
    assert_eq!(s.source, "http upload");
    let meta = c.get(&format!("/v1/snapshots/vol/{}", s.id));
    assert_eq!(meta.expect(200, "metadata").snapshot(), s);

    let full = c.get("/v1/snapshots/vol/latest/data");
    full.expect(200, "full restore");
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header(HEADER_STREAM_HASH), Some(hash.as_str()));
    assert_eq!(
        full.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(full.body == data, "restored bytes differ (seed {seed})");

    // A chunk boundary near the middle, to read across.
    let boundary = chunks
        .iter()
        .map(|(r, _)| r.end)
        .find(|&e| e > size / 2)
        .unwrap();
    let ranges: Vec<(String, usize, usize)> = vec![
        ("bytes=0-0".into(), 0, 1),
        ("bytes=0-99999".into(), 0, 100_000),
        (
            format!("bytes={}-{}", boundary - 1000, boundary + 999),
            boundary - 1000,
            boundary + 1000,
        ),
        ("bytes=10000000-13999999".into(), 10_000_000, 14_000_000),
        ("bytes=-1000".into(), size - 1000, size),
        (format!("bytes=-{}", size + 5), 0, size),
        (format!("bytes={}-", size - 12_345), size - 12_345, size),
        (
            format!("bytes={}-{}", size - 10, size + 100),
            size - 10,
            size,
        ),
    ];
    for (spec, start, end) in ranges {
        let r = c.send(
            "GET",
            "/v1/snapshots/vol/latest/data",
            &[("range", &spec)],
            None,
        );
        r.expect(206, &spec);
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{}/{size}", end - 1).as_str()),
            "{spec}"
        );
        assert_eq!(
            r.header("content-length"),
            Some((end - start).to_string().as_str()),
            "{spec}"
        );
        assert!(
            r.body == data[start..end],
            "{spec}: wrong bytes ({} received)",
            r.body.len()
        );
    }
    for spec in [
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 1, size + 10),
        "bytes=5-1".to_string(),
        "bytes=-0".to_string(),
    ] {
        let r = c.send(
            "GET",
            &format!("/v1/snapshots/vol/{}/data", s.id),
            &[("range", &spec)],
            None,
        );
        r.expect_error(ErrorCode::RangeNotSatisfiable, &spec);
    }

    // The same image again: a new id, nothing new stored.
    let again = c.upload("vol", &data);
    assert!(again.id > s.id, "ids increase: {} then {}", s.id, again.id);
    assert_eq!(again.blake3, hash);
    assert_eq!(again.size_bytes, s.size_bytes);
    assert_eq!(again.chunks, s.chunks);
    assert_eq!(
        (again.new_chunks, again.new_bytes),
        (0, 0),
        "a re-upload of identical bytes stored something"
    );
    let listed = c.list("vol");
    assert_eq!(
        listed.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![s.id, again.id]
    );
    let latest = c.get("/v1/snapshots/vol/latest");
    assert_eq!(latest.expect(200, "latest").snapshot().id, again.id);
    c.get("/v1/snapshots/vol/first")
        .expect_error(ErrorCode::BadRequest, "an id that is not a number");
    c.delete("/v1/snapshots/vol/latest")
        .expect_error(ErrorCode::BadRequest, "delete of 'latest'");
    stop(server);
}

#[test]
fn stream_hash_header_refuses_a_wrong_hash_and_commits_nothing() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let data = noise(crate::seed(2), 3 * MIB + 17);
    let hash = hex_hash(&data);

    let ok = c.send(
        "PUT",
        "/v1/snapshots/hashed",
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&data),
    );
    assert_eq!(ok.expect(201, "correct hash").snapshot().blake3, hash);

    let wrong = hex_hash(b"something else");
    let r = c.send(
        "PUT",
        "/v1/snapshots/mismatch",
        &[(HEADER_STREAM_HASH, &wrong)],
        Some(&data),
    );
    r.expect_error(ErrorCode::HashMismatch, "wrong hash");
    assert!(c.list("mismatch").is_empty(), "a refused upload is listed");
    c.get("/v1/snapshots/mismatch/latest")
        .expect_error(ErrorCode::NotFound, "latest of a refused upload");

    // A wrong hash for a name that has snapshots adds none.
    let r = c.send(
        "PUT",
        "/v1/snapshots/hashed",
        &[(HEADER_STREAM_HASH, &wrong)],
        Some(&data),
    );
    r.expect_error(ErrorCode::HashMismatch, "wrong hash, existing name");
    assert_eq!(c.list("hashed").len(), 1);

    // (A small body: the server answers before reading it.)
    let r = c.send(
        "PUT",
        "/v1/snapshots/malformed",
        &[(HEADER_STREAM_HASH, "not-a-hash")],
        Some(&data[..4096]),
    );
    r.expect_error(ErrorCode::BadRequest, "malformed hash header");
    assert!(c.list("malformed").is_empty());
    assert_eq!(c.stats().snapshots, 1);
    stop(server);
}

#[test]
fn chunk_protocol_builds_the_same_snapshot_as_a_raw_upload() {
    let seed = crate::seed(3);
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let info = c.get("/v1/info");
    info.expect(200, "info");
    let info: Info = serde_json::from_slice(&info.body).unwrap();
    let params = ChunkerParams::new(
        info.chunker.min_bytes,
        info.chunker.avg_bytes,
        info.chunker.max_bytes,
    )
    .unwrap();
    let data = san_image(seed, 32 * MIB);
    let hash = hex_hash(&data);
    let chunks = chunk_list(&data, params);
    assert!(
        chunks.iter().any(|(_, id)| id.is_zero()),
        "the image has no zero chunk to exercise (seed {seed})"
    );
    let stored_ids: Vec<ChunkId> = chunks
        .iter()
        .map(|(_, id)| *id)
        .filter(|id| !id.is_zero())
        .collect();

    let session = open_session(&c, "cp");
    let sid = session.id.as_str();

    // Bytes that do not hash to the id are refused, raw or compressed.
    let (range, id) = chunks.iter().find(|(_, id)| !id.is_zero()).unwrap().clone();
    let mut bad = data[range].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    c.put(&format!("/v1/sessions/{sid}/chunks/{}", id.to_hex()), &bad)
        .expect_error(ErrorCode::HashMismatch, "raw chunk with wrong bytes");
    let z = zstd::bulk::compress(&bad, 3).unwrap();
    c.send(
        "PUT",
        &format!("/v1/sessions/{sid}/chunks/{}", id.to_hex()),
        &[("content-encoding", "zstd")],
        Some(&z),
    )
    .expect_error(ErrorCode::HashMismatch, "zstd chunk with wrong bytes");

    // A fresh repository misses every stored chunk (the refused one too).
    let miss = missing(&c, sid, &stored_ids);
    assert!(miss.iter().all(|&m| m), "a fresh repository claims chunks");
    let mut uploaded = 0u64;
    let mut seen = HashSet::new();
    for (i, (range, id)) in chunks.iter().enumerate() {
        if id.is_zero() || !seen.insert(*id) {
            continue;
        }
        let raw = &data[range.clone()];
        let path = format!("/v1/sessions/{sid}/chunks/{}", id.to_hex());
        let r = if i % 2 == 0 {
            let z = zstd::bulk::compress(raw, 3).unwrap();
            c.send("PUT", &path, &[("content-encoding", "zstd")], Some(&z))
        } else {
            c.put(&path, raw)
        };
        r.expect(201, &format!("upload chunk {i}"));
        uploaded += 1;
    }
    // Uploading a stored chunk again stores nothing.
    let (range, id) = &chunks[chunks.iter().position(|(_, id)| !id.is_zero()).unwrap()];
    c.put(
        &format!("/v1/sessions/{sid}/chunks/{}", id.to_hex()),
        &data[range.clone()],
    )
    .expect(200, "re-upload of a stored chunk");

    let manifest: Vec<(u64, ChunkId)> = chunks
        .iter()
        .map(|(r, id)| ((r.end - r.start) as u64, *id))
        .collect();
    let body = commit_body(manifest.iter().copied());
    c.post(&format!("/v1/sessions/{sid}/commit"), &body)
        .expect_error(ErrorCode::BadRequest, "commit without a stream hash");
    let r = c.send(
        "POST",
        &format!("/v1/sessions/{sid}/commit"),
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&body),
    );
    let cp = r.expect(201, "commit").snapshot();
    assert_eq!(cp.name, "cp");
    assert_eq!(cp.size_bytes, data.len() as u64);
    assert_eq!(cp.blake3, hash);
    assert_eq!(cp.chunks, chunks.len() as u64);
    assert_eq!(cp.new_chunks, uploaded);
    assert!(cp.new_bytes > 0);
    // The session ended with its commit.
    c.send(
        "POST",
        &format!("/v1/sessions/{sid}/commit"),
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&body),
    )
    .expect_error(ErrorCode::NotFound, "commit of a committed session");

    // A commit naming a chunk that was never uploaded.
    let ghost = ChunkId::of(b"never uploaded");
    let s2 = open_session(&c, "cp-ghost");
    let body = commit_body(manifest[..3].iter().copied().chain([(14, ghost)]));
    c.send(
        "POST",
        &format!("/v1/sessions/{}/commit", s2.id),
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&body),
    )
    .expect_error(ErrorCode::MissingChunk, "commit of an unknown chunk");
    assert!(c.list("cp-ghost").is_empty());

    // A raw upload of the same image finds everything stored.
    let raw = c.upload("raw", &data);
    assert_eq!(raw.size_bytes, cp.size_bytes);
    assert_eq!(raw.blake3, cp.blake3);
    assert_eq!(raw.chunks, cp.chunks);
    assert_eq!(raw.zero_chunks, cp.zero_chunks);
    assert_eq!((raw.new_chunks, raw.new_bytes), (0, 0));

    // And so does a missing query for the stored image.
    let s3 = open_session(&c, "cp-again");
    let all: Vec<ChunkId> = chunks.iter().map(|(_, id)| *id).collect();
    assert!(
        missing(&c, &s3.id, &all).iter().all(|&m| !m),
        "a stored image has missing chunks"
    );
    c.delete(&format!("/v1/sessions/{}", s3.id))
        .expect(204, "abort session");
    c.post(&format!("/v1/sessions/{}/missing", s3.id), &[])
        .expect_error(ErrorCode::NotFound, "aborted session");

    assert!(c.restore("cp", "latest") == data, "chunk-protocol restore");
    assert!(c.restore("raw", "latest") == data, "raw restore");
    stop(server);

    let repo = Repository::open(dir.path()).unwrap();
    let entries = |name: &str, id: u64| -> Vec<(u64, ChunkId)> {
        repo.manifest_entries(name, SnapshotId(id))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.end - e.start, e.id)
            })
            .collect()
    };
    let cp_entries = entries("cp", cp.id);
    assert!(cp_entries == manifest, "chunk-protocol manifest");
    assert!(
        entries("raw", raw.id) == cp_entries,
        "raw and chunk-protocol manifests differ"
    );
}

#[test]
fn concurrent_uploads_of_overlapping_images_store_the_shared_base_once() {
    const STREAMS: usize = 8;
    const BASE: usize = 16 * MIB;
    const TAIL: usize = 2 * MIB;
    let seed = crate::seed(4);
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let base = noise(seed, BASE);
    let images: Vec<Vec<u8>> = (0..STREAMS)
        .map(|i| {
            let mut d = base.clone();
            d.extend_from_slice(&noise(seed + 1000 + i as u64, TAIL));
            d
        })
        .collect();
    let barrier = std::sync::Barrier::new(STREAMS);
    let snapshots: Vec<Snapshot> = std::thread::scope(|scope| {
        let handles: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                // A token per host, as deployed: one token may hold only
                // `max_streams_per_token` (4) of the 8 streams.
                let token = c.create_token("writer", None).token;
                let c = c.with_token(Some(&token));
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    c.upload(&format!("host-{i}"), img)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (s, img)) in snapshots.iter().zip(&images).enumerate() {
        assert_eq!(s.name, format!("host-{i}"));
        assert_eq!(s.size_bytes, img.len() as u64);
        assert_eq!(s.blake3, hex_hash(img));
    }
    let stats = c.stats();
    assert_eq!(stats.snapshots, STREAMS as u64);
    assert_eq!(stats.logical_bytes, (STREAMS * (BASE + TAIL)) as u64);
    // Random data: every stored byte is unique. The base once, each tail
    // once, plus at most one chunk (1 MiB) per stream straddling the seam.
    let floor = (BASE + STREAMS * TAIL) as u64;
    let ceiling = floor + (STREAMS * MIB) as u64;
    assert!(
        (floor..=ceiling).contains(&stats.unique_bytes),
        "unique bytes {} not within {floor}..={ceiling} (8 copies would be {}); seed {seed}",
        stats.unique_bytes,
        STREAMS * (BASE + TAIL)
    );
    // Each stored chunk was new to exactly one stream.
    let new_chunks: u64 = snapshots.iter().map(|s| s.new_chunks).sum();
    assert_eq!(
        new_chunks, stats.chunks,
        "chunks counted new by the streams vs chunks in the index"
    );
    for (i, img) in images.iter().enumerate().step_by(3) {
        assert!(
            c.restore(&format!("host-{i}"), "latest") == *img,
            "host-{i}"
        );
    }
    stop(server);
}

#[test]
fn a_disconnected_upload_commits_nothing() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    // Cut before the first ingest buffer fills, and after it (chunks stored).
    for (i, sent) in [8 * MIB, 20 * MIB].into_iter().enumerate() {
        let s = start_raw_upload(&server, "cut", 64 * MIB, &noise(50 + i as u64, sent));
        drop(s);
        wait_for("the cut upload to be answered", || {
            let m = c.metrics();
            requests(&m, "put_snapshot") == (i + 1) as f64
                && metric(&m, "bunker_active_streams") == Some(0.0)
        });
        assert!(
            c.list("cut").is_empty(),
            "an upload cut after {sent} bytes was committed"
        );
    }
    let health = Client::new(&server.url, None).get("/healthz");
    assert_eq!(health.expect(200, "healthz").body, b"ok\n");
    let data = noise(52, 16 * MIB);
    let s = c.upload("cut", &data);
    assert_eq!(s.size_bytes, data.len() as u64);
    assert_eq!(c.list("cut").len(), 1);
    assert!(c.restore("cut", "latest") == data);
    stop(server);
}

#[test]
fn sigterm_during_an_upload_commits_nothing_and_keeps_what_was_committed() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &["--grace-secs", "2"]);
    let fast = san_image(crate::seed(6), 8 * MIB);
    let committed = c.upload("fast", &fast);

    let mut stalled = start_raw_upload(&server, "slow", 32 * MIB, &noise(60, 4 * MIB));
    wait_for("the stalled upload to hold a stream", || {
        active_streams(&c) == 1.0
    });
    let (status, took) = stop_within(server, Duration::from_secs(20));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: the in-flight upload got no grace period"
    );
    // The stalled client is never told its upload succeeded.
    if let Some(r) = read_response(&mut stalled) {
        assert_ne!(r.status, 201, "a cut upload was acknowledged: {}", r.head);
    }
    drop(stalled);

    let (server, c) = start(dir.path(), &[]);
    assert!(c.list("slow").is_empty(), "the cut upload was committed");
    let listed = c.list("fast");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, committed.id);
    assert_eq!(listed[0].blake3, hex_hash(&fast));
    assert!(c.restore("fast", &committed.id.to_string()) == fast);
    stop(server);
}

#[test]
fn roles_and_scopes_are_enforced() {
    let dir = bunker_tests::scratch();
    let (server, admin) = start(dir.path(), &[]);
    let anon = admin.with_token(None);
    let small = noise(70, 4096);

    // Authentication.
    anon.get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "no token");
    anon.send("GET", "/v1/info", &[("authorization", "Basic YTpi")], None)
        .expect_error(ErrorCode::Unauthorized, "basic auth");
    admin
        .with_token(Some("garbage"))
        .get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "garbage token");
    let writer = admin.create_token("writer", Some("db-"));
    assert_eq!(writer.info.scope.as_deref(), Some("db-"));
    let mut forged = writer.token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    admin
        .with_token(Some(&forged))
        .get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "forged secret");
    let id_only = format!("bkr_{}_", writer.info.id);
    admin
        .with_token(Some(&id_only))
        .get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "id without secret");
    anon.put("/v1/snapshots/db-anon", &small)
        .expect_error(ErrorCode::Unauthorized, "upload without token");

    // Writer: uploads in scope, reads only its own, never deletes.
    let w = admin.with_token(Some(&writer.token));
    let own = w.upload("db-1", &small);
    assert_eq!(own.creator.as_deref(), Some(writer.info.id.as_str()));
    w.put("/v1/snapshots/web-1", &small)
        .expect_error(ErrorCode::Forbidden, "writer out of scope");
    w.delete(&format!("/v1/snapshots/db-1/{}", own.id))
        .expect_error(ErrorCode::Forbidden, "writer deletes its own");
    w.post("/v1/tokens", br#"{"role":"admin"}"#)
        .expect_error(ErrorCode::Forbidden, "writer creates a token");
    w.post("/v1/sessions", br#"{"name":"web-2"}"#)
        .expect_error(ErrorCode::Forbidden, "writer session out of scope");
    assert_eq!(
        w.get(&format!("/v1/snapshots/db-1/{}", own.id))
            .expect(200, "writer reads its own")
            .snapshot(),
        own
    );
    assert!(w.restore("db-1", "latest") == small);

    let other = admin.upload("db-2", &noise(71, 4096));
    let web = admin.upload("web-1", &noise(72, 4096));
    // A later snapshot of the same name by another token: the writer's
    // `latest` is still its own, and the other one is invisible to it.
    let later = admin.upload("db-1", &noise(73, 4096));
    assert_eq!(
        w.get("/v1/snapshots/db-1/latest")
            .expect(200, "writer's latest")
            .snapshot()
            .id,
        own.id
    );
    assert!(w.restore("db-1", "latest") == small);
    w.get(&format!("/v1/snapshots/db-1/{}/data", later.id))
        .expect_error(ErrorCode::NotFound, "writer reads another token's db-1");
    assert_eq!(
        w.list("db-1").iter().map(|s| s.id).collect::<Vec<_>>(),
        [own.id]
    );
    for path in [
        format!("/v1/snapshots/db-2/{}", other.id),
        format!("/v1/snapshots/db-2/{}/data", other.id),
        "/v1/snapshots/db-2/latest".to_string(),
        "/v1/snapshots/db-2/latest/data".to_string(),
    ] {
        w.get(&path)
            .expect_error(ErrorCode::NotFound, &format!("writer reads {path}"));
    }
    let names = |c: &Client| -> Vec<String> {
        let r = c.get("/v1/snapshots");
        r.expect(200, "list all");
        r.snapshots().into_iter().map(|s| s.name).collect()
    };
    assert_eq!(names(&w), ["db-1"], "a writer lists only what it created");
    assert!(w.list("db-2").is_empty());

    // Reader: lists and restores, nothing else.
    let reader = admin.create_token("reader", None);
    let r = admin.with_token(Some(&reader.token));
    assert_eq!(names(&r), ["db-1", "db-1", "db-2", "web-1"]);
    assert!(r.restore("db-1", &own.id.to_string()) == small);
    assert_eq!(
        r.get(&format!("/v1/snapshots/web-1/{}", web.id))
            .expect(200, "reader metadata")
            .snapshot(),
        web
    );
    // Drill reports: from whoever may read the snapshot, consistent with it.
    let drill = |c: &Client, name: &str, id: u64, body: String| {
        c.post(&format!("/v1/snapshots/{name}/{id}/drill"), body.as_bytes())
    };
    let passed = |bytes: usize| format!(r#"{{"ok":true,"bytes":{bytes},"seconds":0.5}}"#);
    drill(&w, "db-2", other.id, passed(4096)).expect_error(
        ErrorCode::NotFound,
        "writer reports a drill of another's snapshot",
    );
    drill(&r, "web-1", web.id, passed(100))
        .expect_error(ErrorCode::BadRequest, "a passed drill of too few bytes");
    drill(&r, "web-1", web.id, "{".into()).expect_error(ErrorCode::BadRequest, "bad JSON");
    drill(&r, "web-1", web.id, passed(4096)).expect(200, "reader reports a drill");
    drill(
        &w,
        "db-1",
        own.id,
        r#"{"ok":false,"bytes":0,"seconds":0,"error":"chunk 1f.. failed"}"#.into(),
    )
    .expect(200, "writer reports a failed drill of its own");
    let shown = |name: &str, id: u64| {
        admin
            .get(&format!("/v1/snapshots/{name}/{id}"))
            .expect(200, "metadata")
            .snapshot()
            .last_drill
            .map(|c| (c.ok, c.detail))
    };
    assert!(matches!(shown("web-1", web.id), Some((true, d)) if d.contains("4096 bytes")));
    assert_eq!(
        shown("db-1", own.id),
        Some((false, "chunk 1f.. failed".into()))
    );
    assert_eq!(shown("db-2", other.id), None);
    // Per-name figures: readers see names in scope, writers none.
    let stat_names =
        |c: &Client| -> Vec<String> { c.stats().names.into_iter().map(|n| n.name).collect() };
    assert_eq!(stat_names(&r), ["db-1", "db-2", "web-1"]);
    assert!(stat_names(&w).is_empty());
    assert!(!w.metrics().contains("name=\"web-1\""));
    assert!(r
        .metrics()
        .contains("bunker_last_drill_ok{name=\"web-1\"} 1"));
    r.put("/v1/snapshots/db-9", &small)
        .expect_error(ErrorCode::Forbidden, "reader uploads");
    r.post("/v1/sessions", br#"{"name":"db-9"}"#)
        .expect_error(ErrorCode::Forbidden, "reader opens a session");
    r.delete(&format!("/v1/snapshots/db-2/{}", other.id))
        .expect_error(ErrorCode::Forbidden, "reader deletes");
    r.post("/v1/tokens", br#"{"role":"reader"}"#)
        .expect_error(ErrorCode::Forbidden, "reader creates a token");
    r.get("/v1/tokens")
        .expect_error(ErrorCode::Forbidden, "reader lists tokens");
    assert_eq!(r.list("db-9").len(), 0);

    // Scoped reader: sees its names only.
    let web_reader = admin.create_token("reader", Some("web-"));
    let wr = admin.with_token(Some(&web_reader.token));
    assert_eq!(names(&wr), ["web-1"]);
    wr.get(&format!("/v1/snapshots/db-1/{}", own.id))
        .expect_error(ErrorCode::Forbidden, "scoped reader out of scope");
    wr.get("/v1/snapshots/db-1/latest/data")
        .expect_error(ErrorCode::Forbidden, "scoped reader restores out of scope");
    assert!(wr.restore("web-1", "latest") == noise(72, 4096));

    // Admin deletes; the snapshot is gone for everyone.
    admin
        .delete(&format!("/v1/snapshots/db-1/{}", own.id))
        .expect(204, "admin deletes");
    admin
        .get(&format!("/v1/snapshots/db-1/{}", own.id))
        .expect_error(ErrorCode::NotFound, "deleted snapshot");
    r.get(&format!("/v1/snapshots/db-1/{}/data", own.id))
        .expect_error(ErrorCode::NotFound, "restore of a deleted snapshot");
    assert_eq!(
        admin.list("db-1").iter().map(|s| s.id).collect::<Vec<_>>(),
        [later.id]
    );
    admin
        .delete(&format!("/v1/snapshots/db-1/{}", own.id))
        .expect_error(ErrorCode::NotFound, "second delete");

    // Upload sessions belong to the token that opened them.
    let writer2 = admin.create_token("writer", Some("db-"));
    let w2 = admin.with_token(Some(&writer2.token));
    let session = open_session(&w, "db-5");
    for (who, c) in [("another writer", &w2), ("a reader", &r)] {
        c.post(&format!("/v1/sessions/{}/missing", session.id), &[])
            .expect_error(ErrorCode::Forbidden, &format!("{who} uses a session"));
        c.delete(&format!("/v1/sessions/{}", session.id))
            .expect_error(ErrorCode::Forbidden, &format!("{who} aborts a session"));
    }
    w.post(&format!("/v1/sessions/{}/missing", session.id), &[])
        .expect(200, "the owner uses its session");

    // Revocation.
    admin
        .delete(&format!("/v1/tokens/{}", writer.info.id))
        .expect(204, "revoke");
    w.get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "revoked token lists");
    w.put("/v1/snapshots/db-3", &small)
        .expect_error(ErrorCode::Unauthorized, "revoked token uploads");
    admin
        .delete(&format!("/v1/tokens/{}", writer.info.id))
        .expect_error(ErrorCode::NotFound, "second revoke");
    assert!(admin.list("db-3").is_empty());
    stop(server);
}

#[test]
fn hostile_names_are_refused_and_touch_nothing() {
    let outer = bunker_tests::scratch();
    let data = outer.path().join("mid").join("data");
    std::fs::create_dir_all(&data).unwrap();
    let (server, c) = start(&data, &[]);
    let longest = "n".repeat(128);
    c.upload("ok", &noise(80, 1000));
    c.upload(&longest, &noise(81, 1000));
    let before = (
        names_in(outer.path()),
        names_in(&outer.path().join("mid")),
        names_in(&data),
        names_in(&data.join("snapshots")),
    );

    let too_long = "n".repeat(129);
    let bad_names = [
        "..",
        ".",
        ".hidden",
        "a%2Fb",
        "a%2fb",
        "%2e%2e",
        "%2E%2E",
        "..%2F..%2Foutside",
        "%2e%2e%2f%2e%2e%2foutside",
        too_long.as_str(),
        "a%20b",
        "caf%C3%A9",
        "%E2%80%AE%E2%80%AD",
        "a%00b",
        "a%5Cb",
        "~root",
        "a:b",
    ];
    let body = noise(82, 4096);
    for name in bad_names {
        for (method, path) in [
            ("PUT", format!("/v1/snapshots/{name}")),
            ("GET", format!("/v1/snapshots/{name}")),
            ("GET", format!("/v1/snapshots/{name}/latest")),
            ("GET", format!("/v1/snapshots/{name}/1/data")),
            ("DELETE", format!("/v1/snapshots/{name}/1")),
        ] {
            let body: &[u8] = if method == "PUT" { &body } else { &[] };
            let r = raw_request(&server, method, &path, body)
                .unwrap_or_else(|| panic!("{method} {path}: no answer"));
            assert_eq!(r.status, 400, "{method} {path}: {}", r.head);
            assert_eq!(
                r.error_code(),
                Some(ErrorCode::InvalidName),
                "{method} {path}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
        let session = format!(r#"{{"name":"{}"}}"#, name.replace('%', "\\u0025"));
        let r = raw_request(&server, "POST", "/v1/sessions", session.as_bytes()).unwrap();
        assert_eq!(r.status, 400, "session for {name}: {}", r.head);
    }
    // Names given as JSON are not percent-decoded either, but real
    // separators and unicode must be refused too.
    for name in ["../../outside", "a/b", "é", "\\u0000", ""] {
        let r = raw_request(
            &server,
            "POST",
            "/v1/sessions",
            format!(r#"{{"name":"{name}"}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::InvalidName),
            "session named {name:?}: {}",
            r.head
        );
    }
    // Paths that do not route anywhere.
    for (method, path) in [
        ("PUT", "/v1/snapshots/../../outside"),
        ("GET", "/v1/snapshots/../../../../etc/passwd"),
        ("PUT", "/v1/snapshots/a/b/c/d/e"),
        ("GET", "/v1/../v1/snapshots/x/y/z"),
    ] {
        let r = raw_request(&server, method, path, b"x").unwrap();
        assert!(
            r.status == 404 || (r.status == 400 && r.error_code() == Some(ErrorCode::InvalidName)),
            "{method} {path}: {}",
            r.head
        );
    }
    // Requests a parser must refuse (raw bytes that are not a URI).
    for path in [
        "/v1/snapshots/a b",
        "/v1/snapshots/\u{e9}",
        "/v1/snapshots/a\\..\\b",
    ] {
        if let Some(r) = raw_request(&server, "PUT", path, b"x") {
            assert!((400..500).contains(&r.status), "PUT {path:?}: {}", r.head);
        }
    }
    let health = Client::new(&server.url, None).get("/healthz");
    health.expect(200, "healthz after hostile names");
    let after = (
        names_in(outer.path()),
        names_in(&outer.path().join("mid")),
        names_in(&data),
        names_in(&data.join("snapshots")),
    );
    assert_eq!(before, after, "hostile requests changed the filesystem");
    assert_eq!(
        after.3,
        BTreeSet::from(["ok".to_string(), longest.clone()]),
        "entries under snapshots/"
    );
    let listed: BTreeSet<String> = c
        .get("/v1/snapshots")
        .expect(200, "list")
        .snapshots()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(listed, BTreeSet::from(["ok".to_string(), longest]));
    stop(server);
}

#[test]
fn bad_requests_get_clear_answers_and_never_crash_the_server() {
    const LIMIT: usize = 8 * MIB;
    let dir = bunker_tests::scratch();
    let limit = LIMIT.to_string();
    let (server, c) = start(
        dir.path(),
        &[
            "--max-streams",
            "1",
            "--max-body-bytes",
            &limit,
            "--idle-timeout-secs",
            "3",
        ],
    );
    let host = addr(&server);
    let auth = format!("Authorization: Bearer {}", server.admin);
    let healthy = |what: &str| {
        let r = Client::new(&server.url, None).get("/healthz");
        assert_eq!(r.expect(200, what).body, b"ok\n", "{what}");
    };

    // A declared length over the limit: refused before any byte is read.
    let head = format!(
        "PUT /v1/snapshots/big HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        LIMIT + 1
    );
    let r = raw_exchange(&server, head.as_bytes()).expect("an answer to a too-long body");
    assert_eq!(r.status, 413, "{}", r.head);
    assert_eq!(r.error_code(), Some(ErrorCode::PayloadTooLarge));

    // A chunked body that grows past the limit.
    let mut s = connect(&server);
    let head = format!(
        "PUT /v1/snapshots/chunky HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let piece = noise(90, 64 << 10);
    let mut sent = 0;
    while sent <= LIMIT + MIB {
        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
        frame.extend_from_slice(&piece);
        frame.extend_from_slice(b"\r\n");
        if s.write_all(&frame).is_err() {
            break;
        }
        sent += piece.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    if let Some(r) = read_response(&mut s) {
        assert_eq!(r.status, 413, "chunked over the limit: {}", r.head);
        assert_eq!(r.error_code(), Some(ErrorCode::PayloadTooLarge));
    }
    drop(s);
    wait_for("the chunked upload to end", || active_streams(&c) == 0.0);
    assert!(
        c.list("chunky").is_empty(),
        "an over-limit upload was committed"
    );
    healthy("after an over-limit chunked body");

    // Malformed requests: a 4xx or a closed connection, never a crash.
    let malformed: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/9.9\r\n\r\n".to_vec(),
        b"\x00\x01\x02\xff\xfe binary\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            .to_vec(),
        b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
        format!(
            "PUT /v1/snapshots/badchunks HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\
             Transfer-Encoding: chunked\r\n\r\nZZZ\r\nhello\r\n"
        )
        .into_bytes(),
    ];
    for req in &malformed {
        if let Some(r) = raw_exchange(&server, req) {
            assert!(
                (400..500).contains(&r.status),
                "{:?}: {}",
                String::from_utf8_lossy(req),
                r.head
            );
        }
        healthy(&format!("after {:?}", String::from_utf8_lossy(req)));
    }
    wait_for("the malformed upload to end", || active_streams(&c) == 0.0);
    assert!(c.list("badchunks").is_empty());

    // All streams busy: 503 with Retry-After.
    let mut stalled = start_raw_upload(&server, "stalled", 6 * MIB, &noise(91, MIB));
    wait_for("the stalled upload to hold the stream", || {
        active_streams(&c) == 1.0
    });
    let r = c.put("/v1/snapshots/second", &noise(92, 4096));
    r.expect_error(ErrorCode::TooManyStreams, "second stream");
    let retry = r.header("retry-after").expect("Retry-After on a 503");
    assert!(
        retry.parse::<u64>().is_ok_and(|s| s > 0),
        "Retry-After {retry:?}"
    );
    // The stalled upload is cut by the idle timeout, commits nothing, and
    // frees its stream.
    let r = read_response(&mut stalled).expect("an answer to the stalled upload");
    assert_eq!(r.status, 408, "stalled upload: {}", r.head);
    assert_eq!(r.error_code(), Some(ErrorCode::Timeout));
    drop(stalled);
    wait_for("the stalled upload to end", || active_streams(&c) == 0.0);
    assert!(c.list("stalled").is_empty());
    let data = noise(93, 2 * MIB);
    assert_eq!(c.upload("second", &data).size_bytes, data.len() as u64);
    assert!(c.restore("second", "latest") == data);
    stop(server);
}

#[test]
fn a_damaged_pack_never_yields_a_complete_restore() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    // Random data is stored raw: a byte in the middle of the pack is chunk
    // data, not a header.
    let data = noise(crate::seed(10), 8 * MIB);
    let s = c.upload("vol", &data);
    stop(server);

    let mut packs = Vec::new();
    let mut dirs = vec![dir.path().join("packs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "pack") {
                packs.push(p);
            }
        }
    }
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a sealed pack");
    let mut bytes = std::fs::read(pack).unwrap();
    assert!(
        bytes.len() > data.len() / 2,
        "the image's pack is too small"
    );
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(pack, &bytes).unwrap();

    let (server, c) = start(dir.path(), &[]);
    let url = format!("{}/v1/snapshots/vol/{}/data", server.url, s.id);
    let resp = c
        .agent
        .get(&url)
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .expect("the request itself");
    let status = resp.status().as_u16();
    let mut got = Vec::new();
    let read = resp.into_body().into_reader().read_to_end(&mut got);
    if status == 200 {
        assert!(
            read.is_err() || got.len() < data.len(),
            "a restore of a damaged snapshot completed ({} bytes)",
            got.len()
        );
        assert!(read.is_err(), "a cut restore did not report an error");
    } else {
        assert_eq!(status, 500, "restore of a damaged snapshot");
    }
    assert!(got.len() < data.len(), "all {} bytes were sent", got.len());
    if status == 200 {
        assert!(
            got == data[..got.len()],
            "wrong bytes were sent before the damage"
        );
    }
    // The first chunk precedes the damage and still reads.
    let r = c.send(
        "GET",
        &format!("/v1/snapshots/vol/{}/data", s.id),
        &[("range", "bytes=0-999")],
        None,
    );
    assert!(r.expect(206, "undamaged range").body == data[..1000]);
    wait_for("the damage to be counted", || {
        metric(&c.metrics(), "bunker_errors_total{code=\"corrupt_data\"}").is_some_and(|n| n >= 1.0)
    });
    stop(server);
}

#[test]
fn metrics_health_and_info() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let anon = c.with_token(None);
    let r = anon.get("/healthz");
    assert_eq!(r.expect(200, "healthz without token").body, b"ok\n");
    anon.get("/metrics")
        .expect_error(ErrorCode::Unauthorized, "metrics without token");
    anon.get("/v1/info")
        .expect_error(ErrorCode::Unauthorized, "info without token");

    let r = c.get("/v1/info");
    r.expect(200, "info");
    let info: Info = serde_json::from_slice(&r.body).unwrap();
    let d = ChunkerParams::DEFAULT;
    assert_eq!(
        (
            info.chunker.min_bytes,
            info.chunker.avg_bytes,
            info.chunker.max_bytes
        ),
        (d.min_len, d.avg_len, d.max_len)
    );
    assert!(!info.server_version.is_empty());
    assert_eq!(info.repository_id.len(), 32, "{:?}", info.repository_id);
    assert!(info.repository_id.bytes().all(|b| b.is_ascii_hexdigit()));

    let data = noise(110, 3 * MIB);
    c.upload("m", &data);
    c.upload("m", &data);
    c.get("/v1/snapshots/nope/latest")
        .expect_error(ErrorCode::NotFound, "absent");
    assert!(c.restore("m", "latest") == data);
    let r = c.get("/metrics");
    r.expect(200, "metrics");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        r.header("content-type")
    );
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(
        metric(&text, "bunker_ingest_bytes_total"),
        Some((2 * data.len()) as f64),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bunker_requests_total{route=\"put_snapshot\",status=\"201\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bunker_requests_total{route=\"snapshot\",status=\"404\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "bunker_requests_total{route=\"healthz\",status=\"200\"}"
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bunker_requests_total{route=\"auth\",status=\"401\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(
        metric(&text, "bunker_restore_bytes_total").is_some_and(|n| n >= data.len() as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "bunker_errors_total{code=\"not_found\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&text, "bunker_active_streams"), Some(0.0));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
    stop(server);
}

#[test]
fn a_range_in_an_unknown_unit_is_ignored() {
    // RFC 9110, section 14.2: "An origin server MUST ignore a Range header
    // field that contains a range unit it does not understand."
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let data = noise(130, 2 * MIB);
    c.upload("vol", &data);
    for spec in ["lines=0-1", "items=5-9"] {
        let r = c.send(
            "GET",
            "/v1/snapshots/vol/latest/data",
            &[("range", spec)],
            None,
        );
        r.expect(200, &format!("range {spec:?}"));
        assert!(r.header("content-range").is_none(), "{spec}");
        assert!(r.body == data, "range {spec:?}: wrong bytes");
    }
    stop(server);
}

#[test]
fn oversized_request_headers_get_431_however_they_arrive() {
    // The server limits request heads to 64 KiB; 100 KiB must be refused
    // whether it arrives in small writes or in one.
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let head = format!(
        "GET /v1/snapshots HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         X-Big: {}\r\nConnection: close\r\n\r\n",
        addr(&server),
        server.admin,
        "a".repeat(100 << 10)
    );
    let mut s = connect(&server);
    for piece in head.as_bytes().chunks(4096) {
        if s.write_all(piece).is_err() {
            break;
        }
    }
    let r = read_response(&mut s).expect("an answer to 100 KiB of headers in small writes");
    assert_eq!(
        r.status, 431,
        "100 KiB of headers in small writes: {}",
        r.head
    );
    drop(s);
    let r = raw_exchange(&server, head.as_bytes())
        .expect("an answer to 100 KiB of headers in one write");
    assert_eq!(r.status, 431, "100 KiB of headers in one write: {}", r.head);
    let health = c.with_token(None).get("/healthz");
    health.expect(200, "healthz after oversized headers");
    stop(server);
}

#[test]
fn an_open_upload_session_holds_a_stream_slot() {
    // config.rs: `max_streams` counts raw uploads and open chunk-protocol
    // sessions; beyond it, 503 with Retry-After.
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &["--max-streams", "1"]);
    let data = noise(150, 3 * MIB);
    let hash = hex_hash(&data);
    let chunks = chunk_list(&data, ChunkerParams::DEFAULT);
    let session = open_session(&c, "cp");
    // The session holds the only slot: a raw upload and a second session
    // wait. (A small body: the 503 comes before the body is read, and a
    // client still sending a large one sees the connection close instead;
    // curl avoids that with `Expect: 100-continue`.)
    let r = c.put("/v1/snapshots/raw", &noise(151, 4096));
    r.expect_error(
        ErrorCode::TooManyStreams,
        "raw upload while a session holds the slot",
    );
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    let r = c.post("/v1/sessions", br#"{"name":"cp2"}"#);
    r.expect_error(
        ErrorCode::TooManyStreams,
        "second session while the slot is taken",
    );
    for (range, id) in &chunks {
        let path = format!("/v1/sessions/{}/chunks/{}", session.id, id.to_hex());
        c.put(&path, &data[range.clone()])
            .expect(201, "chunk upload in the open session");
    }
    let body = commit_body(chunks.iter().map(|(r, id)| ((r.end - r.start) as u64, *id)));
    let commit_path = format!("/v1/sessions/{}/commit", session.id);
    let r = c.send(
        "POST",
        &commit_path,
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&body),
    );
    assert_eq!(
        r.expect(201, "commit").snapshot().size_bytes,
        data.len() as u64
    );
    // Committing freed the slot; so does aborting a session.
    c.put("/v1/snapshots/raw", &noise(151, MIB))
        .expect(201, "raw upload after the commit");
    let s2 = open_session(&c, "cp3");
    c.send("DELETE", &format!("/v1/sessions/{}", s2.id), &[], None)
        .expect(204, "abort session");
    c.put("/v1/snapshots/raw", &noise(152, MIB))
        .expect(201, "raw upload after the abort");
    stop(server);
}

#[test]
fn a_snapshot_may_be_named_like_the_stores_own_files() {
    // "deleted-hwm" is a valid snapshot name; the store also keeps a file
    // of that name in snapshots/ once anything has been deleted.
    let name = "deleted-hwm";
    assert!(bunker_store::validate_name(name).is_ok());
    let data = noise(140, 300_000);

    // The snapshot first, then a delete, then a restart.
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let first = c.upload(name, &data);
    let x = c.upload("x", &noise(141, 1000));
    c.delete(&format!("/v1/snapshots/x/{}", x.id))
        .expect(204, "a delete beside a snapshot named deleted-hwm");
    stop(server);
    // (Server::start panics if the server cannot open the repository.)
    let (server, c) = start(dir.path(), &[]);
    assert_eq!(c.list(name).len(), 1);
    assert!(c.restore(name, &first.id.to_string()) == data);
    let y = c.upload("y", &noise(142, 1000));
    assert!(y.id > x.id, "id {} reused after a delete", y.id);
    stop(server);

    // A delete first, then the snapshot.
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let a = c.upload("a", &noise(143, 1000));
    c.delete(&format!("/v1/snapshots/a/{}", a.id))
        .expect(204, "delete");
    let s = c.upload(name, &data);
    assert!(s.id > a.id);
    assert!(c.restore(name, "latest") == data);
    stop(server);
    let (server, c) = start(dir.path(), &[]);
    assert_eq!(c.list(name).len(), 1);
    let b = c.upload("b", &noise(144, 1000));
    assert!(b.id > s.id, "id {} reused", b.id);
    stop(server);
}

/// Regression: a crash while the server replaced `server/tokens.json` or
/// `server/checks.json` left the temp file (`NAME.PID.SEQ.tmp`) forever.
/// Starting removes exactly those and nothing else; the tokens still work.
#[test]
fn the_server_removes_the_temp_files_of_its_interrupted_replaces_on_start() {
    let dir = bunker_tests::scratch();
    let data = dir.path();
    let (server, c) = start(data, &[]);
    c.upload("vol", &noise(145, 1000));
    stop(server);
    let stale = [
        "server/tokens.json.4242.0.tmp",
        "server/checks.json.17.3.tmp",
    ];
    let kept = [
        "server/tokens.json.tmp",
        "server/tokens.json.1.2.tmp.bak",
        "server/tokens.json.x.2.tmp",
        "server/checks.json.1.2.3.tmp",
        "server/admin.token.1.2.tmp",
        "server/notes.1.2.tmp",
        "tokens.json.5.6.tmp",
        "admin.token.5.6.tmp",
    ];
    for (i, f) in stale.iter().chain(&kept).enumerate() {
        std::fs::write(data.join(f), format!("planted {i}")).unwrap();
    }
    let tokens = std::fs::read(data.join("server/tokens.json")).unwrap();
    let (server, c) = start(data, &[]);
    for f in stale {
        assert!(!data.join(f).exists(), "{f} is still there");
    }
    for (i, f) in kept.iter().enumerate() {
        let planted = format!("planted {}", i + stale.len());
        assert_eq!(
            std::fs::read_to_string(data.join(f)).ok().as_deref(),
            Some(planted.as_str()),
            "{f} was touched"
        );
    }
    assert!(std::fs::read(data.join("server/tokens.json")).unwrap() == tokens);
    assert_eq!(c.list("vol").len(), 1, "the admin token still works");
    stop(server);
}

/// A restore whose writer panics (here: the progress callback) must end,
/// with the panic, instead of leaving fetchers waiting for room in the
/// window forever; and a normal drill of the same snapshot still passes.
#[test]
fn a_panicking_restore_ends_instead_of_hanging() {
    let dir = bunker_tests::scratch();
    let (server, _) = start(&dir.path().join("data"), &[]);
    let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    // Random data: about 256 chunks in runs of up to 16, far more than the
    // 80-chunk window, so fetchers are waiting for room when it panics.
    let data = noise(77, 64 * MIB);
    client
        .backup("p", &data[..], &Default::default(), &mut |_| {})
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let url = server.url.clone();
    let admin = server.admin.clone();
    std::thread::spawn(move || {
        let client = bunker_client::Client::new(&url, Some(admin));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut calls = 0;
            client.restore("p", None, bunker_client::Target::Null, &mut |_| {
                calls += 1;
                assert!(calls < 3, "progress callback gives up");
            })
        }));
        let _ = tx.send(outcome.is_err());
    });
    let panicked = rx
        .recv_timeout(DEADLINE)
        .expect("the restore hung after its writer panicked");
    assert!(panicked, "the panic was not passed to the caller");
    let report = client
        .restore("p", None, bunker_client::Target::Null, &mut |_| {})
        .unwrap();
    assert_eq!(report.bytes, data.len() as u64);
    stop(server);
}

/// Regression (issue 12, item 5): zero-chunk lengths in a chunk-protocol
/// commit were unchecked and summed with a wrapping `+=`: two entries of
/// 2^63 bytes made a snapshot of 0 bytes whose manifest failed every later
/// GC, and one of 2^60 a 1 EiB "image". Both are refused with 400 before
/// anything is renamed into place, and GC still runs.
#[test]
fn wrapping_or_oversized_zero_entries_are_refused_and_gc_still_runs() {
    let dir = bunker_tests::scratch();
    let data_dir = dir.path().join("data");
    let (server, c) = start(&data_dir, &[]);
    let zero_hash = hex_hash(b"");
    let cases: [(&str, Vec<(u64, ChunkId)>); 3] = [
        (
            "wrap",
            vec![(1 << 63, ChunkId::ZERO), (1 << 63, ChunkId::ZERO)],
        ),
        ("huge", vec![(1 << 60, ChunkId::ZERO)]),
        (
            "edge",
            vec![
                (bunker_store::MAX_IMAGE_LEN, ChunkId::ZERO),
                (1, ChunkId::ZERO),
            ],
        ),
    ];
    for (name, entries) in cases {
        let s = open_session(&c, name);
        let r = c.send(
            "POST",
            &format!("/v1/sessions/{}/commit", s.id),
            &[(HEADER_STREAM_HASH, &zero_hash)],
            Some(&commit_body(entries)),
        );
        r.expect_error(ErrorCode::BadRequest, &format!("commit {name}"));
        assert!(
            r.error().error.message.contains("larger than"),
            "{name}: {}",
            r.error().error.message
        );
        assert!(c.list(name).is_empty(), "{name} was committed");
    }
    let left: Vec<_> = bunker_tests::files_under(&data_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    assert!(left.is_empty(), "refused commits left manifests: {left:?}");
    // A snapshot of exactly the limit is fine (a thin volume), and GC runs.
    let s = open_session(&c, "thin");
    let hash = {
        let mut h = blake3::Hasher::new();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..4 {
            h.update(&zeros);
        }
        h.finalize().to_hex().to_string()
    };
    c.send(
        "POST",
        &format!("/v1/sessions/{}/commit", s.id),
        &[(HEADER_STREAM_HASH, &hash)],
        Some(&commit_body([(4 << 20, ChunkId::ZERO)])),
    )
    .expect(201, "commit of a 4 MiB zero run");
    c.post("/v1/gc", b"{}")
        .expect(200, "GC after refused commits");
    stop(server);
}

/// Writes `toml` beside the data directory and starts the server with it
/// (`--config`), for the settings that have no flag.
fn start_configured(dir: &Path, toml: &str) -> (Server, Client) {
    let file = dir.join("bunker.toml");
    std::fs::write(&file, toml).unwrap();
    start(&dir.join("data"), &["--config", file.to_str().unwrap()])
}

/// Sends the head of `method path` with `token` and a body of `len` bytes,
/// plus `body` (all or the start of it); returns the open socket.
fn send_head(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    len: usize,
    body: &[u8],
) -> TcpStream {
    let mut s = connect(server);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {len}\r\n",
        addr(server)
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send head");
    s.write_all(body).expect("send body");
    s.flush().unwrap();
    s
}

/// One writer token may hold only `max_streams_per_token` ingest slots
/// (sessions and raw uploads alike), so others still get one; and a commit
/// body that trickles in steadily (never idle long enough for
/// `idle_timeout_secs`) is ended by `commit_timeout_secs` with 408 and
/// commits nothing, after which its session ends like any other.
#[test]
fn one_token_cannot_hold_every_ingest_slot_and_a_trickled_commit_ends() {
    let dir = bunker_tests::scratch();
    let (server, admin) = start_configured(
        dir.path(),
        "max_streams = 3\nmax_streams_per_token = 2\ncommit_timeout_secs = 3\n",
    );
    let a_token = admin.create_token("writer", None).token;
    let a = admin.with_token(Some(&a_token));
    let b = admin.with_token(Some(&admin.create_token("writer", None).token));
    let s1 = open_session(&a, "a1");
    let _s2 = open_session(&a, "a2");
    let r = a.post("/v1/sessions", br#"{"name":"a3"}"#);
    r.expect_error(ErrorCode::TooManyStreams, "a third session of one token");
    assert!(
        r.error().error.message.contains("max_streams_per_token"),
        "the refusal names the quota: {}",
        r.text()
    );
    assert!(r.header("retry-after").is_some(), "503 without Retry-After");
    a.put("/v1/snapshots/a4", &noise(160, 4096))
        .expect_error(ErrorCode::TooManyStreams, "a raw upload beyond the quota");
    let _s3 = open_session(&b, "b1");

    // One zero-chunk entry every 200 ms: 1,000 of them would take 200 s.
    let entries = 1000;
    let entry = commit_body([(4096, ChunkId::ZERO)]);
    let mut sock = send_head(
        &server,
        "POST",
        &format!("/v1/sessions/{}/commit", s1.id),
        &a_token,
        &[(HEADER_STREAM_HASH, &hex_hash(b"never reached"))],
        entries * COMMIT_ENTRY_LEN,
        &entry,
    );
    let stop_trickle = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let mut w = sock.try_clone().unwrap();
        let stop = stop_trickle.clone();
        std::thread::spawn(move || {
            for _ in 1..entries {
                std::thread::sleep(Duration::from_millis(200));
                if stop.load(std::sync::atomic::Ordering::Relaxed) || w.write_all(&entry).is_err() {
                    return;
                }
            }
        })
    };
    let started = Instant::now();
    let r = read_response(&mut sock);
    let took = started.elapsed();
    stop_trickle.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(sock);
    trickle.join().unwrap();
    let r = r.expect("an answer to the trickled commit within 20 s");
    assert_eq!(r.status, 408, "trickled commit: {}", r.head);
    assert_eq!(r.error_code(), Some(ErrorCode::Timeout));
    assert!(
        String::from_utf8_lossy(&r.body).contains("commit_timeout_secs"),
        "the 408 names the setting: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        took < Duration::from_secs(15),
        "the 3 s commit deadline answered after {took:?}"
    );
    assert!(a.list("a1").is_empty(), "a cut commit was committed");
    // The session is no longer committing: it can be aborted, and its slot
    // goes back to the token.
    a.delete(&format!("/v1/sessions/{}", s1.id))
        .expect(204, "abort the session of the cut commit");
    open_session(&a, "a5");
    stop(server);
}

/// A client that sends its whole upload and disconnects before the answer
/// drops the request future inside the server (hyper sees the close while
/// the ingest finishes). The stream gauge, the ingest slot and the session
/// must still be given back; what was committed restores exactly.
#[test]
fn a_client_gone_after_its_last_byte_leaves_no_stream_or_session_behind() {
    let dir = bunker_tests::scratch();
    let (server, c) = start_configured(dir.path(), "max_streams = 1\nsession_idle_secs = 2\n");
    assert_eq!(active_streams(&c), 0.0);
    // 48 MiB of random data: the ingest is still chunking and storing when
    // the close is seen.
    let data = noise(170, 48 * MIB);
    drop(start_raw_upload(&server, "gone", data.len(), &data));
    wait_for("the upload's stream gauge to fall back to 0", || {
        active_streams(&c) == 0.0
    });
    // The body was whole, so it may have committed (a race with the close).
    for s in c.list("gone") {
        assert!(c.restore("gone", &s.id.to_string()) == data);
    }

    let data = noise(171, 8 * MIB);
    let chunks = chunk_list(&data, ChunkerParams::DEFAULT);
    let session = open_session(&c, "gone-cp");
    for (range, id) in &chunks {
        c.put(
            &format!("/v1/sessions/{}/chunks/{}", session.id, id.to_hex()),
            &data[range.clone()],
        )
        .expect(201, "chunk upload");
    }
    // Then 100,000 one-byte zero chunks: a 4 MB body, still being read
    // (and the worker still busy) when the close is seen.
    let zeros = 100_000;
    let body = commit_body(
        chunks
            .iter()
            .map(|(r, id)| ((r.end - r.start) as u64, *id))
            .chain(std::iter::repeat_n((1, ChunkId::ZERO), zeros)),
    );
    let mut data = data;
    data.resize(data.len() + zeros, 0);
    let hash = hex_hash(&data);
    drop(send_head(
        &server,
        "POST",
        &format!("/v1/sessions/{}/commit", session.id),
        &server.admin,
        &[(HEADER_STREAM_HASH, &hash)],
        body.len(),
        &body,
    ));
    // Committed (the session ends) or cut (it expires 2 s later): either
    // way it is gone, never stuck committing.
    wait_for("the session to end", || {
        metric(&c.metrics(), "bunker_sessions") == Some(0.0)
    });
    for s in c.list("gone-cp") {
        assert!(c.restore("gone-cp", &s.id.to_string()) == data);
    }
    // The only ingest slot comes free again (the session's last holder may
    // be finishing its answer to the gone client).
    let after = noise(172, MIB);
    wait_for("the ingest slot to be free", || {
        c.put("/v1/snapshots/after", &after).status == 201
    });
    stop(server);
}

/// A restore whose client reads the head and then nothing: once it has
/// accepted no bytes for `write_timeout_secs` the server closes the
/// connection, and the restore gives back everything it held.
#[test]
fn a_reader_that_stops_reading_is_cut_after_the_write_timeout() {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let dir = bunker_tests::scratch();
    let (server, c) = start_configured(dir.path(), "write_timeout_secs = 2\n");
    let data = noise(180, 16 * MIB);
    let snap = c.upload("slow", &data);
    let restores = || metric(&c.metrics(), "bunker_active_restores");
    assert_eq!(restores(), Some(0.0));
    // The smallest receive buffer: the server is stalled after a few KiB.
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    let to: std::net::SocketAddr = addr(&server).parse().unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    let mut s = TcpStream::from(fd);
    let head = format!(
        "GET /v1/snapshots/slow/{}/data HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        snap.id,
        addr(&server),
        server.admin
    );
    s.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    wait_for("the restore to start", || restores() == Some(1.0));
    wait_for("the stalled restore to be cut", || restores() == Some(0.0));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "cut after {took:?}, before the 2 s write timeout"
    );
    // What the client gets is a cut response, never the whole image.
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.len() < data.len(),
        "a cut restore delivered {} bytes",
        got.len()
    );
    // The server is fine, and a reader that reads gets it all.
    assert!(c.restore("slow", &snap.id.to_string()) == data);
    stop(server);
}

/// Regression guard for the route table (issue 13): every known path
/// answers a method it does not take with 405 `method_not_allowed`, counted
/// under that path's own route; the token routes check the role first (403),
/// `/healthz` needs no token, and an unknown path is 404.
#[test]
fn a_known_path_refuses_other_methods_under_its_own_route() {
    let dir = bunker_tests::scratch();
    let (server, c) = start(dir.path(), &[]);
    let cases = [
        ("POST", "/metrics", "metrics"),
        ("PUT", "/v1/info", "info"),
        ("DELETE", "/v1/stats", "stats"),
        ("PUT", "/v1/status", "status"),
        ("POST", "/", "ui"),
        ("DELETE", "/ui/app.js", "ui"),
        ("PUT", "/v1/tokens", "tokens"),
        ("GET", "/v1/tokens/0123456789abcdef", "token"),
        ("POST", "/v1/snapshots", "list_snapshots"),
        ("DELETE", "/v1/snapshots/vol", "list_name"),
        ("PUT", "/v1/snapshots/vol/1", "snapshot"),
        ("POST", "/v1/snapshots/vol/1/data", "get_data"),
        ("GET", "/v1/snapshots/vol/1/drill", "post_drill"),
        ("PUT", "/v1/snapshots/vol/1/manifest", "get_manifest"),
        ("DELETE", "/v1/snapshots/vol/1/chunks/00", "get_chunk"),
        ("GET", "/v1/verify", "verify"),
        ("GET", "/v1/prune", "prune"),
        ("GET", "/v1/gc", "gc"),
        ("GET", "/v1/sessions", "open_session"),
        ("GET", "/v1/sessions/abc", "session"),
        ("GET", "/v1/sessions/abc/missing", "missing"),
        ("GET", "/v1/sessions/abc/chunks/00", "put_chunk"),
        ("GET", "/v1/sessions/abc/commit", "commit"),
    ];
    for (method, path, route) in cases {
        let what = format!("{method} {path}");
        let before = requests(&c.metrics(), route);
        let r = c.send(method, path, &[], None);
        r.expect_error(ErrorCode::MethodNotAllowed, &what);
        assert_eq!(
            r.error().error.message,
            "method not allowed on this route",
            "{what}"
        );
        // Reading /metrics counts under "metrics" too.
        let own = if route == "metrics" { 2.0 } else { 1.0 };
        assert_eq!(requests(&c.metrics(), route), before + own, "{what}");
    }
    c.with_token(None)
        .send("POST", "/healthz", &[], None)
        .expect_error(ErrorCode::MethodNotAllowed, "POST /healthz without a token");
    let writer = c.with_token(Some(&c.create_token("writer", None).token));
    writer
        .send("PUT", "/v1/tokens", &[], None)
        .expect_error(ErrorCode::Forbidden, "a writer's PUT /v1/tokens");
    writer
        .send("GET", "/v1/tokens/0123456789abcdef", &[], None)
        .expect_error(ErrorCode::Forbidden, "a writer's GET /v1/tokens/{id}");
    c.get("/v1/nothing")
        .expect_error(ErrorCode::NotFound, "an unknown path");
    stop(server);
}

/// `pack_bytes` decides the pack size of a new repository (one object
/// each on a bucket); a value outside 1 MiB..=4 GiB stops the start with
/// the reason and creates nothing.
#[test]
fn pack_bytes_sets_a_new_repositorys_pack_size_and_is_checked() {
    let dir = bunker_tests::scratch();
    let (server, c) = start_configured(dir.path(), "pack_bytes = 1048576\n");
    c.put("/v1/snapshots/vol", &noise(7, 6 * MIB))
        .expect(201, "upload of 6 MiB of noise");
    stop(server);
    let packs = bunker_tests::pack_files(&dir.path().join("data"), "pack");
    assert!(packs.len() >= 5, "6 MiB in 1 MiB packs: {packs:?}");
    for p in &packs {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len < 3 * MIB as u64, "{} is {len} bytes", p.display());
    }

    let bad = bunker_tests::scratch();
    let file = bad.path().join("bunker.toml");
    std::fs::write(&file, "pack_bytes = 1000\n").unwrap();
    let data = bad.path().join("data");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("pack target length 1000 is outside 1 MiB..=4 GiB"),
        "{err}"
    );
    assert!(
        !data.join("config").exists(),
        "a repository was created: {err}"
    );
}
