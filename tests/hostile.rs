//! Hostile HTTP: 20,000 requests (malformed request lines, bad lengths,
//! chunked-encoding abuse, oversized heads and bodies, path traversal and
//! encoding tricks, forged, revoked and out-of-scope tokens, a writer
//! deleting or overwriting, a chunk whose bytes do not match its id) while
//! 1,000 slow sockets dribble headers. The server never crashes, answers
//! nothing hostile with 2xx, writes nothing outside its data directory,
//! changes no stored pack, stays under 256 MiB and answers `/healthz` in
//! under a second throughout.
//!
//! Clients that hold on: 1,000 restores that never read, and 4,000 chunk
//! uploads and `missing` queries that stop sending. The server stays
//! within its memory budgets, answers what it cannot take with 503 and
//! `Retry-After`, and `/healthz`, listing and a new upload answer within a
//! second meanwhile.
//!
//! The tests take the machine one at a time ([`alone`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bunker_tests::server::Server;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const MAX_BODY: usize = 4 << 20;

fn host(server: &Server) -> String {
    server.url.trim_start_matches("http://").to_string()
}

/// Sends `request` on a new connection; the status of the first response,
/// or `None` when the server closes without one. `complete`: the request
/// is whole (else the write side is shut, so the server sees the end
/// instead of waiting for bytes that never come).
fn send(server: &Server, request: &[u8], complete: bool) -> Option<u16> {
    let mut s = TcpStream::connect(host(server)).expect("connect");
    // Closed with a reset: 20,000 connections in TIME_WAIT would make
    // finding a free local port the slowest part of the test.
    rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(request);
    if !complete {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

fn request(method: &str, path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: bunker\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Every file under `dir` with the BLAKE3 of its contents.
fn tree(dir: &Path) -> BTreeMap<String, [u8; 32]> {
    bunker_tests::files_under(dir)
        .into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).ok()?;
            Some((p.display().to_string(), *blake3::hash(&b).as_bytes()))
        })
        .collect()
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The tests of this binary measure latency and memory under load, so
/// they run one at a time, not on the harness's parallel threads.
fn alone() -> MutexGuard<'static, ()> {
    static ALONE: Mutex<()> = Mutex::new(());
    ALONE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tests hold thousands of sockets.
fn raise_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum.or(Some(1 << 20));
    let _ = setrlimit(Resource::Nofile, l);
}

/// One hostile request of kind `kind` (see the match), seeded by `rng`.
struct Hostile<'a> {
    admin: &'a str,
    writer: &'a str,
    reader: &'a str,
    revoked: &'a str,
    session: &'a str,
    base_id: u64,
}

impl Hostile<'_> {
    fn make(&self, kind: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<u8> {
        let junk = |rng: &mut Xoshiro256PlusPlus, n: usize| -> Vec<u8> {
            (0..n).map(|_| rng.random::<u8>()).collect()
        };
        let w = bearer(self.writer);
        let a = bearer(self.admin);
        match kind {
            // Malformed request lines.
            0 => match rng.random_range(0..8) {
                0 => {
                    let n = rng.random_range(1..512);
                    junk(rng, n)
                }
                1 => b"GET\r\n\r\n".to_vec(),
                2 => b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
                3 => format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(rng.random_range(1..200_000))).into_bytes(),
                4 => b"\r\n\r\n\r\n".to_vec(),
                5 => b"GET /v1/info HTTP/1.1\nHost: x\n\n".to_vec(),
                6 => {
                    let mut r = b"GET /v1/info HTTP/1.1\r\nHost: x\r\n".to_vec();
                    r.extend(junk(rng, 64));
                    r.extend_from_slice(b"\r\n\r\n");
                    r
                }
                _ => b"BREW /coffee HTCPCP/1.0\r\n\r\n".to_vec(),
            },
            // Bad Content-Length.
            1 => {
                let cl = ["-1", "abc", "1e9", "99999999999999999999999", "4, 5", " ", "0x10"][rng.random_range(0..7)];
                format!("PUT /v1/snapshots/w-cl HTTP/1.1\r\nHost: x\r\n{w}\r\nContent-Length: {cl}\r\n\r\nabcd").into_bytes()
            }
            // Conflicting lengths, and chunked-encoding abuse.
            2 => {
                let body = match rng.random_range(0..6) {
                    0 => "zz\r\nabc\r\n0\r\n\r\n".to_string(),
                    1 => "ffffffffffffffffff\r\nabc\r\n".to_string(),
                    2 => format!("4;{}\r\nabcd\r\n0\r\n\r\n", "x".repeat(100_000)),
                    3 => "4\r\nabcdEXTRA\r\n0\r\n\r\n".to_string(),
                    4 => "-4\r\nabcd\r\n0\r\n\r\n".to_string(),
                    _ => "4\r\nab".to_string(),
                };
                let te = if rng.random_bool(0.5) {
                    "Transfer-Encoding: chunked\r\nContent-Length: 3"
                } else {
                    "Transfer-Encoding: gzip, chunked"
                };
                format!("PUT /v1/snapshots/w-te HTTP/1.1\r\nHost: x\r\n{w}\r\n{te}\r\n\r\n{body}").into_bytes()
            }
            // Oversized headers, many headers, an oversized body.
            3 => match rng.random_range(0..3) {
                0 => request("GET", "/v1/info", &[a, format!("X-Big: {}", "b".repeat(200_000))], b""),
                1 => {
                    let many: Vec<String> = (0..5000).map(|i| format!("X-{i}: {i}")).collect();
                    request("GET", "/v1/info", &many, b"")
                }
                _ => format!(
                    "PUT /v1/snapshots/w-big HTTP/1.1\r\nHost: x\r\n{w}\r\nContent-Length: {}\r\n\r\nabc",
                    MAX_BODY + 1
                )
                .into_bytes(),
            },
            // Path traversal and encoding variants, with a valid token.
            4 => {
                let evil = [
                    "..", "../..", "..%2f..%2ftmp", "%2e%2e", "%2e%2e%2fetc%2fpasswd", "a/../../b",
                    "..\\..\\windows", "%00", "a%00b", ".", "...", "%c0%af", "~root", "$(id)",
                    "a b", "%20", "ä", "..;", "//", "%252e%252e", ".deleted-hwm", "-", ".hidden",
                ];
                let v = evil[rng.random_range(0..evil.len())];
                let path = match rng.random_range(0..6) {
                    0 => format!("/v1/snapshots/{v}"),
                    1 => format!("/v1/snapshots/{v}/latest/data"),
                    2 => format!("/v1/snapshots/w-x/{v}"),
                    3 => format!("/{v}/v1/info"),
                    4 => format!("/v1/snapshots/{v}/1/manifest"),
                    _ => format!("/v1/sessions/{v}/chunks/{v}"),
                };
                let method = ["GET", "PUT", "DELETE", "POST"][rng.random_range(0..4)];
                // A read of a valid odd name ("-", "...") may succeed.
                let token = if method == "GET" { a.clone() } else { w.clone() };
                request(method, &path, &[token], b"data")
            }
            // Authentication and authorization.
            _ => match rng.random_range(0..9) {
                0 => request("GET", "/v1/snapshots", &[], b""),
                1 => {
                    let mut forged = self.admin.to_string();
                    let i = rng.random_range(4..forged.len());
                    let c = if forged.as_bytes()[i] == b'a' { "b" } else { "a" };
                    forged.replace_range(i..=i, c);
                    request("DELETE", &format!("/v1/snapshots/w-base/{}", self.base_id), &[bearer(&forged)], b"")
                }
                2 => request("GET", "/v1/tokens", &[bearer(self.revoked)], b""),
                3 => request("PUT", "/v1/snapshots/db-out-of-scope", &[w], b"data"),
                4 => request("DELETE", &format!("/v1/snapshots/w-base/{}", self.base_id), &[w], b""),
                5 => request("POST", "/v1/tokens", &[w], br#"{"role":"admin"}"#),
                6 => request("PUT", "/v1/snapshots/w-reader", &[bearer(self.reader)], b"data"),
                7 => {
                    // A chunk whose bytes do not hash to the id it is sent as.
                    let id = blake3::hash(&junk(rng, 32)).to_hex().to_string();
                    request(
                        "PUT",
                        &format!("/v1/sessions/{}/chunks/{id}", self.session),
                        &[w],
                        &junk(rng, 1000),
                    )
                }
                _ => request("POST", "/v1/gc", &[bearer(self.reader)], b"{}"),
            },
        }
    }
}

#[test]
fn twenty_thousand_hostile_requests_and_a_thousand_slow_sockets_change_nothing() {
    let seed = bunker_tests::seed(0x0405_711E);
    let total = bunker_tests::scaled(20_000);
    let reproduce =
        format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test hostile");
    let _alone = alone();
    // The test holds 1,000 slow sockets and the flood's connections.
    raise_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let max_body = MAX_BODY.to_string();
    let server = Server::start(
        BIN,
        &data,
        &["--max-body-bytes", &max_body, "--idle-timeout-secs", "5"],
    );
    let admin_client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    let token = |role: bunker_api::Role, scope: Option<&str>| {
        admin_client
            .create_token(&bunker_api::TokenRequest {
                role,
                scope: scope.map(str::to_string),
                name: None,
            })
            .unwrap()
    };
    let writer = token(bunker_api::Role::Writer, Some("w-"));
    let reader = token(bunker_api::Role::Reader, Some("w-"));
    let revoked = token(bunker_api::Role::Admin, None);
    admin_client.revoke_token(&revoked.info.id).unwrap();
    let writer_client = bunker_client::Client::new(&server.url, Some(writer.token.clone()));
    let base = noise_image(seed);
    let base_id = writer_client
        .backup("w-base", &base[..], &Default::default(), &mut |_| {})
        .expect("writer uploads its base")
        .snapshot
        .id;
    let session = {
        let body = request(
            "POST",
            "/v1/sessions",
            &[bearer(&writer.token)],
            br#"{"name":"w-session"}"#,
        );
        let mut s = TcpStream::connect(host(&server)).unwrap();
        s.write_all(&body).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let json = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    let packs_before: BTreeMap<String, [u8; 32]> = tree(&data.join("packs"));
    assert!(!packs_before.is_empty());
    let outside_before: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed_before = admin_client.list(None).unwrap();

    // /healthz under load, from the first slow socket to the last request.
    let stop = Arc::new(AtomicBool::new(false));
    // (worst ms, when it started in ms from the first probe)
    let worst_health = Arc::new(Mutex::new((0u64, 0u64)));
    let probing = Instant::now();
    let health = {
        let (stop, worst, url) = (stop.clone(), worst_health.clone(), server.url.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut probes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = agent
                    .get(format!("{url}/healthz"))
                    .call()
                    .map(|r| r.status() == 200)
                    .unwrap_or(false);
                let ms = if ok {
                    t.elapsed().as_millis() as u64
                } else {
                    u64::MAX
                };
                let mut w = worst.lock().unwrap();
                if ms > w.0 {
                    *w = (ms, (t - probing).as_millis() as u64);
                }
                drop(w);
                probes += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            probes
        })
    };

    // 1,000 slow sockets: half a request head, a byte now and then.
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = TcpStream::connect(host(&server)).expect("slow socket");
            let _ =
                s.write_all(format!("GET /v1/snapshots/w-{i} HTTP/1.1\r\nHost: x\r\n").as_bytes());
            s
        })
        .collect();

    let connected_ms = probing.elapsed().as_millis();

    let statuses: Mutex<BTreeMap<(usize, Option<u16>), u64>> = Mutex::default();
    let finished = AtomicU64::new(0);
    let threads = 4;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (statuses, finished, server, writer, reader, revoked, session) = (
                &statuses, &finished, &server, &writer, &reader, &revoked, &session,
            );
            scope.spawn(move || {
                let h = Hostile {
                    admin: &server.admin,
                    writer: &writer.token,
                    reader: &reader.token,
                    revoked: &revoked.token,
                    session,
                    base_id,
                };
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ (t as u64 + 1));
                let mut local: BTreeMap<(usize, Option<u16>), u64> = BTreeMap::new();
                for i in (t as u64..total).step_by(threads) {
                    // Per 20,000: 500 traversal/encoding variants, 500 auth
                    // attempts, about 1,900 chunked-encoding abuses (each
                    // starts an upload: the costliest kind), the rest
                    // malformed lines, lengths and oversized heads.
                    let kind = match i % 40 {
                        0 => 4,
                        1 => 5,
                        n => [0, 1, 3, 0, 1, 3, 0, 1, 3, 2][n as usize % 10],
                    };
                    let req = h.make(kind, &mut rng);
                    let status = send(server, &req, kind >= 4);
                    // Reads with the admin token of names that are odd but
                    // valid may succeed; nothing else may.
                    let kind = if kind == 4 && req.starts_with(b"GET ") {
                        6
                    } else {
                        kind
                    };
                    *local.entry((kind, status)).or_default() += 1;
                }
                let mut all = statuses.lock().unwrap();
                for (k, n) in local {
                    *all.entry(k).or_default() += n;
                }
                finished.fetch_add(1, Ordering::SeqCst);
            });
        }
        // Keep the slow sockets dribbling while the flood runs.
        while finished.load(Ordering::SeqCst) < threads as u64 {
            for s in slow.iter_mut().step_by(7) {
                let _ = s.write_all(b"X");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let flood_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let probes = health.join().unwrap();
    drop(slow);

    let statuses = statuses.into_inner().unwrap();
    let mut by_status: BTreeMap<Option<u16>, u64> = BTreeMap::new();
    for ((_, s), n) in &statuses {
        *by_status.entry(*s).or_default() += n;
    }
    let sent: u64 = statuses.values().sum();
    assert_eq!(sent, total);
    let ok_2xx: u64 = statuses
        .iter()
        .filter(|((k, s), _)| *k != 6 && s.is_some_and(|s| (200..300).contains(&s)))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        ok_2xx, 0,
        "hostile requests answered 2xx: {statuses:?}; {reproduce}"
    );
    let server_errors: u64 = statuses
        .iter()
        .filter(|((_, s), _)| s.is_some_and(|s| s >= 500 && s != 503))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(server_errors, 0, "5xx answers: {statuses:?}; {reproduce}");
    // Alive, unchanged, and within its memory.
    let (worst, worst_at) = *worst_health.lock().unwrap();
    assert!(
        worst < 1000,
        "/healthz took {worst} ms at worst (u64::MAX: failed), starting {worst_at} ms after \
         the first probe (slow sockets connected by {connected_ms} ms); {reproduce}"
    );
    admin_client.health().expect("the server survived");
    let listed_after = admin_client.list(None).unwrap();
    assert_eq!(
        listed_after, listed_before,
        "snapshots changed; {reproduce}"
    );
    let packs_after = tree(&data.join("packs"));
    for (p, h) in &packs_before {
        assert_eq!(
            packs_after.get(p),
            Some(h),
            "stored pack {p} changed; {reproduce}"
        );
    }
    let outside_after: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        outside_after, outside_before,
        "files appeared beside the data directory"
    );
    assert!(
        !Path::new("/tmp/passwd").exists() && !Path::new("/etc/passwd.bunker").exists(),
        "a traversal wrote outside"
    );
    let rss_mib = peak_rss_kib(server.child.id()) / 1024;
    assert!(rss_mib < 256, "server peak RSS {rss_mib} MiB; {reproduce}");
    let restored = {
        let mut out = Vec::new();
        writer_client
            .restore(
                "w-base",
                Some(base_id),
                bunker_client::Target::Stream(&mut out),
                &mut |_| {},
            )
            .unwrap();
        out
    };
    assert!(restored == base, "w-base changed");
    println!(
        "hostile HTTP: {sent} requests in {flood_s:.1} s ({:.0}/s) with 1000 slow sockets; answers {by_status:?}; 0 unauthorized 2xx, 0 5xx; /healthz worst {worst} ms over {probes} probes; server peak RSS {rss_mib} MiB; packs and snapshots unchanged",
        sent as f64 / flood_s
    );
}

fn noise_image(seed: u64) -> Vec<u8> {
    bunker_tests::noise(seed, 1 << 20)
}

/// Starts the server with `toml` as its config file (beside the data
/// directory), for the settings that have no flag.
fn start_configured(dir: &Path, toml: &str) -> Server {
    let file = dir.join("bunker.toml");
    std::fs::write(&file, toml).unwrap();
    Server::start(
        BIN,
        &dir.join("data"),
        &["--config", file.to_str().unwrap()],
    )
}

/// An agent that reports every status and gives up after `secs`.
fn agent(secs: u64) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(secs)))
        .build()
        .into()
}

/// The value of the gauge `name` in the server's metrics.
fn gauge(server: &Server, name: &str) -> f64 {
    let text = agent(30)
        .get(format!("{}/metrics", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .expect("metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// Polls `cond` every 20 ms until it holds; fails after `limit`.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response head read off `s` (and whatever part of the body came with
/// it): the status and the head, or `None` if the connection ended first.
fn read_head(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, text))
}

/// The `Retry-After` seconds of a response head.
fn retry_after(head: &str) -> Option<u64> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().parse().ok())?
    })
}

/// How long each of `/healthz`, listing and a 1 MiB raw upload took, in
/// ms, or a panic naming what failed.
fn probe(server: &Server, round: u64) -> [u64; 3] {
    let a = agent(30);
    let auth = format!("Bearer {}", server.admin);
    let timed = |what: &str, f: &mut dyn FnMut() -> Result<u16, ureq::Error>| {
        let t = Instant::now();
        let status = f().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!((200..300).contains(&status), "{what}: status {status}");
        t.elapsed().as_millis() as u64
    };
    let health = timed("healthz", &mut || {
        a.get(format!("{}/healthz", server.url))
            .call()
            .map(|r| r.status().as_u16())
    });
    let list = timed("listing", &mut || {
        a.get(format!("{}/v1/snapshots", server.url))
            .header("authorization", &auth)
            .call()
            .map(|r| r.status().as_u16())
    });
    let image = bunker_tests::noise(0xB0B0 + round, 1 << 20);
    let upload = timed("upload", &mut || {
        a.put(format!("{}/v1/snapshots/probe-{round}", server.url))
            .header("authorization", &auth)
            .send(&image[..])
            .map(|r| r.status().as_u16())
    });
    [health, list, upload]
}

/// A connection with the smallest receive buffer the kernel allows, so a
/// client that does not read stalls the server after a few KiB.
fn small_window(server: &Server) -> TcpStream {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let addr: std::net::SocketAddr = host(server).parse().unwrap();
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
    rustix::net::connect(&fd, &addr).expect("connect");
    TcpStream::from(fd)
}

/// What a server did with stalled readers open.
struct Stalled {
    /// /healthz, listing, a 1 MiB upload: worst ms over 5 rounds.
    worst: [u64; 3],
    rss_idle_mib: u64,
    rss_open_mib: u64,
    rss_peak_mib: u64,
    opened_s: f64,
}

/// Starts a server with `toml`, opens `readers` restores of an
/// `image_mib` MiB random image that read the response head and nothing
/// more (16 per token, the default quota), probes the rest of the server,
/// checks the quota's 503, measures the server's memory, then lets them go
/// and restores the image whole.
fn hold_stalled_readers(toml: &str, readers: usize, image_mib: usize) -> Stalled {
    let per_token = 16; // max_restores_per_token's default
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), toml);
    let pid = server.child.id();
    let admin = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    let image = bunker_tests::noise(0x57A11, image_mib << 20);
    let id = admin
        .backup("r", &image[..], &Default::default(), &mut |_| {})
        .expect("upload the image")
        .snapshot
        .id;
    let tokens: Vec<String> = (0..readers.div_ceil(per_token))
        .map(|_| {
            admin
                .create_token(&bunker_api::TokenRequest {
                    role: bunker_api::Role::Reader,
                    scope: None,
                    name: None,
                })
                .unwrap()
                .token
        })
        .collect();
    let rss_idle_mib = rss_kib(pid) / 1024;
    let get = |token: &str| {
        format!(
            "GET /v1/snapshots/r/{id}/data HTTP/1.1\r\nHost: bunker\r\n{}\r\n\r\n",
            bearer(token)
        )
    };

    let opening = Instant::now();
    let mut stalled = Vec::with_capacity(readers);
    for i in 0..readers {
        let mut s = small_window(&server);
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(get(&tokens[i / per_token]).as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert!(
            head.as_ref().is_some_and(|(status, _)| *status == 200),
            "reader {i}: {head:?}"
        );
        stalled.push(s);
    }
    let opened_s = opening.elapsed().as_secs_f64();

    // The rest of the server answers, round after round.
    let mut worst = [0u64; 3];
    for round in 0..5 {
        let took = probe(&server, round);
        for (w, t) in worst.iter_mut().zip(took) {
            *w = (*w).max(t);
        }
    }
    // The token's quota is full: 503 with Retry-After, before any work.
    let mut extra = small_window(&server);
    extra.write_all(get(&tokens[0]).as_bytes()).unwrap();
    let (status, head) = read_head(&mut extra).expect("an answer beyond the quota");
    assert_eq!(status, 503, "a 17th restore of one token: {head}");
    assert!(
        retry_after(&head).is_some_and(|s| s > 0),
        "503 without Retry-After: {head}"
    );
    drop(extra);
    // And every reader is still open, streaming: none was cut.
    wait_for(
        "every reader to be streaming",
        Duration::from_secs(60),
        || gauge(&server, "bunker_active_restores") == readers as f64,
    );
    let rss_open_mib = rss_kib(pid) / 1024;
    let rss_peak_mib = peak_rss_kib(pid) / 1024;

    // Gone readers give everything back; a whole restore still works.
    drop(stalled);
    wait_for("the readers to be gone", Duration::from_secs(60), || {
        gauge(&server, "bunker_active_restores") == 0.0
    });
    let mut out = Vec::new();
    admin
        .restore(
            "r",
            Some(id),
            bunker_client::Target::Stream(&mut out),
            &mut |_| {},
        )
        .unwrap();
    assert!(out == image, "the image restored differently");
    Stalled {
        worst,
        rss_idle_mib,
        rss_open_mib,
        rss_peak_mib,
        opened_s,
    }
}

/// 1,000 restores of random data whose clients read the response head and
/// nothing more. Before: each held a blocking thread (the pool's 512 ran
/// out and every route that reads the repository hung) and about 30 MiB of
/// decoded chunks. Now each holds no thread and at most a few MiB (shown
/// with a memory budget too large to bind), all of them together at most
/// `restore_memory_bytes` (the default); a token beyond
/// `max_restores_per_token` gets 503 with Retry-After.
#[test]
fn a_thousand_stalled_readers_hold_bounded_memory_and_block_nothing() {
    let _alone = alone();
    raise_file_limit();
    let readers: usize = std::env::var("BUNKER_STALLED_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let image_mib: usize = std::env::var("BUNKER_STALLED_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // A long write timeout: the readers must stay open however long the
    // test takes (by default a client that reads nothing for 60 s is cut).
    let capped = hold_stalled_readers("write_timeout_secs = 600\n", readers, image_mib);
    let uncapped = hold_stalled_readers(
        "write_timeout_secs = 600\nrestore_memory_bytes = 17179869184\n",
        readers,
        image_mib,
    );
    for (run, f) in [("256 MiB budget", &capped), ("16 GiB budget", &uncapped)] {
        println!(
            "{readers} stalled readers of a {image_mib} MiB random image, {run} (opened in \
             {:.1} s): /healthz {} ms, listing {} ms, 1 MiB upload {} ms at worst over 5 \
             rounds; server RSS {} MiB idle, {} MiB with them open, peak {} MiB",
            f.opened_s,
            f.worst[0],
            f.worst[1],
            f.worst[2],
            f.rss_idle_mib,
            f.rss_open_mib,
            f.rss_peak_mib
        );
        // A new upload also waits for its commit's fsyncs, which are the
        // disk's time, not the server's: it was 676 ms at worst in a CI
        // run (1.5x from a one-second bound), so it gets 5 s; /healthz
        // and listing (128 and 170 ms at worst) keep the one second.
        let bounds = [1000, 1000, 5000];
        for ((what, ms), bound) in ["/healthz", "listing", "a new upload"]
            .iter()
            .zip(f.worst)
            .zip(bounds)
        {
            assert!(
                ms < bound,
                "{run}: {what} took {ms} ms with {readers} stalled readers (bound {bound} ms)"
            );
        }
    }
    // restore_memory_bytes (256 MiB) plus the server's own: a generous
    // bound. Before, each reader held about 30 MiB.
    assert!(
        capped.rss_peak_mib < 1024,
        "server peak RSS {} MiB with {readers} stalled readers",
        capped.rss_peak_mib
    );
    // Unbounded by the budget, a reader that does not read holds a chunk
    // or two and its first read-ahead (1 MiB) for a second, not more.
    let per_reader_kib = (uncapped.rss_peak_mib - uncapped.rss_idle_mib) * 1024 / readers as u64;
    println!("without the budget binding: {per_reader_kib} KiB per stalled reader at peak");
    assert!(
        per_reader_kib < 4096,
        "{per_reader_kib} KiB per stalled reader at peak"
    );
}

/// 4,000 connections each start a chunk upload (1 MiB announced) or a
/// `missing` query (2 MiB of ids announced), send a little and stop. Before,
/// every one of them buffered its body with no overall bound. Now they share
/// `body_memory_bytes` (256 MiB): the rest wait a moment, then get 503
/// `overloaded` with Retry-After, `/healthz` answers within a second, and
/// the memory comes back when the stalled clients go.
#[test]
fn four_thousand_stalled_chunk_uploads_stay_within_the_body_budget() {
    let _alone = alone();
    raise_file_limit();
    let conns = 4000;
    let dir = tempfile::tempdir().unwrap();
    let server = start_configured(dir.path(), "");
    let pid = server.child.id();
    let a = agent(30);
    let auth = format!("Bearer {}", server.admin);
    let session: serde_json::Value = a
        .post(format!("{}/v1/sessions", server.url))
        .header("authorization", &auth)
        .send(br#"{"name":"held"}"#.as_slice())
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let sid = session["id"].as_str().unwrap().to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let worst_health = Arc::new(AtomicU64::new(0));
    let health = {
        let (stop, worst, url) = (stop.clone(), worst_health.clone(), server.url.clone());
        std::thread::spawn(move || {
            let a = agent(10);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = a
                    .get(format!("{url}/healthz"))
                    .call()
                    .is_ok_and(|r| r.status() == 200);
                let ms = if ok {
                    t.elapsed().as_millis() as u64
                } else {
                    u64::MAX
                };
                worst.fetch_max(ms, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let some_body = bunker_tests::noise(0xB0D1, 64 << 10);
    let mut open: Vec<TcpStream> = (0..conns)
        .map(|i| {
            let mut s = TcpStream::connect(host(&server)).expect("connect");
            let head = if i % 4 == 3 {
                format!(
                    "POST /v1/sessions/{sid}/missing HTTP/1.1\r\nHost: bunker\r\n{}\r\n\
                     Content-Length: {}\r\n\r\n",
                    bearer(&server.admin),
                    2 << 20
                )
            } else {
                let id = blake3::hash(&(i as u64).to_le_bytes()).to_hex();
                format!(
                    "PUT /v1/sessions/{sid}/chunks/{id} HTTP/1.1\r\nHost: bunker\r\n{}\r\n\
                     Content-Length: {}\r\n\r\n",
                    bearer(&server.admin),
                    1 << 20
                )
            };
            s.write_all(head.as_bytes()).unwrap();
            // As much of the body as the socket takes now, without waiting.
            s.set_nonblocking(true).unwrap();
            let _ = s.write(&some_body);
            s
        })
        .collect();

    // Each waits for body memory a moment; those that do not get it are
    // answered 503, the others keep waiting for their bodies.
    let mut answers: Vec<Option<(u16, String)>> = vec![None; conns];
    let mut heads: Vec<Vec<u8>> = vec![Vec::new(); conns];
    let budget_slots = 256; // 256 MiB of 1 MiB uploads at most
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut buf = [0u8; 4096];
    loop {
        for (i, s) in open.iter_mut().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            match s.read(&mut buf) {
                Ok(0) => answers[i] = Some((0, "closed without an answer".into())),
                Ok(n) => {
                    heads[i].extend_from_slice(&buf[..n]);
                    if heads[i].windows(4).any(|w| w == b"\r\n\r\n") {
                        let text = String::from_utf8_lossy(&heads[i]).into_owned();
                        let status = text
                            .strip_prefix("HTTP/1.1 ")
                            .and_then(|r| r.get(..3))
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(0);
                        answers[i] = Some((status, text));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => answers[i] = Some((0, format!("read failed: {e}"))),
            }
        }
        let answered = answers.iter().filter(|a| a.is_some()).count();
        if answered >= conns - budget_slots {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {answered} of {conns} stalled uploads were answered within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_peak = peak_rss_kib(pid) / 1024;
    let answered: Vec<&(u16, String)> = answers.iter().flatten().collect();
    for (status, head) in &answered {
        assert_eq!(*status, 503, "a stalled upload was answered: {head}");
        assert!(
            head.contains("overloaded"),
            "503 not for body memory: {head}"
        );
        assert!(
            retry_after(head).is_some_and(|s| s > 0),
            "503 without Retry-After: {head}"
        );
    }
    let held = conns - answered.len();
    // A newcomer waits its moment, then is refused too.
    let chunk = bunker_tests::noise(0xC0FFEE, 100 << 10);
    let chunk_id = blake3::hash(&chunk).to_hex();
    let put_chunk = || {
        a.put(format!(
            "{}/v1/sessions/{sid}/chunks/{chunk_id}",
            server.url
        ))
        .header("authorization", &auth)
        .send(&chunk[..])
        .expect("a chunk upload")
    };
    let t = Instant::now();
    let r = put_chunk();
    let waited = t.elapsed();
    assert_eq!(r.status(), 503, "a chunk upload while the budget is held");
    assert!(
        r.headers().get("retry-after").is_some(),
        "503 without Retry-After"
    );
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(20),
        "refused after {waited:?} (the server waits 2 s for body memory)"
    );
    stop.store(true, Ordering::Relaxed);
    health.join().unwrap();
    let worst = worst_health.load(Ordering::Relaxed);
    println!(
        "{conns} stalled chunk uploads and missing queries: {held} hold body memory, {} got 503 \
         overloaded; a newcomer refused after {} ms; /healthz worst {worst} ms; server peak RSS \
         {rss_peak} MiB",
        answered.len(),
        waited.as_millis()
    );
    assert!(
        (1..=budget_slots).contains(&held),
        "{held} uploads hold body memory"
    );
    assert!(
        worst < 1000,
        "/healthz took {worst} ms at worst (u64::MAX: failed)"
    );
    assert!(rss_peak < 512, "server peak RSS {rss_peak} MiB");

    // The stalled clients go; their memory comes back.
    drop(open.drain(..));
    wait_for("body memory to come back", Duration::from_secs(60), || {
        put_chunk().status() == 201
    });
}
