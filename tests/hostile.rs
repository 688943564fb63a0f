//! Hostile HTTP: 20,000 requests (malformed request lines, bad lengths,
//! chunked-encoding abuse, oversized heads and bodies, path traversal and
//! encoding tricks, forged, revoked and out-of-scope tokens, a writer
//! deleting or overwriting, a chunk whose bytes do not match its id) while
//! 1,000 slow sockets dribble headers. The server never crashes, answers
//! nothing hostile with 2xx, writes nothing outside its data directory,
//! changes no stored pack, stays under 256 MiB and answers `/healthz` in
//! under a second throughout.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
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
    // The test holds 1,000 slow sockets and the flood's connections.
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut l = getrlimit(Resource::Nofile);
        l.current = l.maximum.or(Some(1 << 20));
        let _ = setrlimit(Resource::Nofile, l);
    }
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
