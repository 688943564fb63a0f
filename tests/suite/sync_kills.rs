//! Replication under SIGKILL: the source server, the target server (a
//! scheduled pull job inside it) and the `bunker sync` process are each
//! killed at 30 seeded points of a copy, counted in requests the source
//! answered (through a counting proxy in front of it, so a point does not
//! depend on machine speed); then the copy is resumed. After each resume:
//! the target lists exactly the source's snapshots, each once (by
//! origin), no partial one, every one restores bit-exact, and the
//! requests sent to the source by the killed run and the resume together
//! exceed those of an uninterrupted copy by at most [`RESENT_BOUND`]
//! ([`RESENT_BOUND_SOURCE_KILLED`] when the source died). A
//! GC on the target between a kill and the resume keeps what the killed
//! run uploaded (its session's pins), so the bound holds across it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_testdata::stores::Proxy;
use bunker_tests::server::Server;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// Requests to the source a killed run and its resume may add to an
/// uninterrupted copy's: the chunk fetches in flight at the kill (the
/// engine's 8 parallel fetches, answered by the source but not stored on
/// the target), plus a second run's `info`, listing and the manifest of
/// each snapshot still to copy (3 here). Every chunk the target stored
/// before the kill is not asked for again.
const RESENT_BOUND: u64 = 8 + 2 + 3;

/// With the source killed, the killed run's fetching threads also send
/// a request each that the dead source never answers.
const RESENT_BOUND_SOURCE_KILLED: u64 = RESENT_BOUND + 8;

fn get(url: &str, token: &str, path: &str) -> ureq::http::Response<ureq::Body> {
    ureq::get(format!("{url}{path}"))
        .header("authorization", format!("Bearer {token}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn json(url: &str, token: &str, path: &str) -> Value {
    serde_json::from_str(&get(url, token, path).into_body().read_to_string().unwrap()).unwrap()
}

struct Source {
    server: Server,
    reader_file: PathBuf,
    /// name, id -> BLAKE3, from its listing.
    snapshots: BTreeMap<(String, u64), String>,
}

/// A source of three small snapshots of two names, and a reader token.
fn source(dir: &Path) -> Source {
    let server = Server::start(BIN, &dir.join("source"), &[]);
    let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    for (name, seed, day) in [("db-a", 1, 0), ("db-a", 1, 1), ("db-b", 2, 0)] {
        let image = Image::new(&ImageSpec::new(seed, 4 << 20), day);
        client
            .backup(name, image.reader(), &Default::default(), &mut |_| {})
            .unwrap();
    }
    let reader = client
        .create_token(&bunker_api::TokenRequest {
            role: bunker_api::Role::Reader,
            scope: None,
            name: None,
        })
        .unwrap()
        .token;
    let reader_file = dir.join("source-reader.token");
    std::fs::write(&reader_file, reader).unwrap();
    let snapshots = client
        .list(None)
        .unwrap()
        .into_iter()
        .map(|s| ((s.name, s.id), s.blake3))
        .collect();
    Source {
        server,
        reader_file,
        snapshots,
    }
}

/// The target holds each source snapshot exactly once (by origin), and
/// nothing else; each reads back whole to the source's BLAKE3.
fn check_target(target: &Server, source: &Source, what: &str) {
    let list = json(&target.url, &target.admin, "/v1/snapshots");
    let mut seen = BTreeMap::new();
    for s in list["snapshots"].as_array().unwrap() {
        let origin = &s["origin"];
        let key = (
            origin["name"].as_str().unwrap().to_string(),
            origin["snapshot_id"].as_u64().unwrap(),
        );
        let want = source
            .snapshots
            .get(&key)
            .unwrap_or_else(|| panic!("{what}: the target holds {s} of no source snapshot"));
        assert_eq!(s["blake3"].as_str(), Some(want.as_str()), "{what}: {s}");
        assert!(
            seen.insert(key.clone(), ()).is_none(),
            "{what}: {key:?} copied twice"
        );
        let path = format!(
            "/v1/snapshots/{}/{}/data",
            s["name"].as_str().unwrap(),
            s["id"]
        );
        let (hash, _) = bunker_tests::hash_reader(
            get(&target.url, &target.admin, &path)
                .into_body()
                .as_reader(),
        );
        assert_eq!(
            &blake3::Hash::from(hash).to_hex().to_string(),
            want,
            "{what}: {path}"
        );
    }
    assert_eq!(seen.len(), source.snapshots.len(), "{what}: {list:#}");
}

/// A target server with a writer token in a file.
fn target(dir: &Path, extra: &[&str]) -> (Server, PathBuf) {
    let server = Server::start(BIN, &dir.join("target"), extra);
    let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    let writer = client
        .create_token(&bunker_api::TokenRequest {
            role: bunker_api::Role::Writer,
            scope: None,
            name: None,
        })
        .unwrap()
        .token;
    let file = dir.join("target-writer.token");
    std::fs::write(&file, writer).unwrap();
    (server, file)
}

/// `bunker sync` from `from` (the proxy) to `target`, started.
fn sync_process(from: &str, source: &Source, target: &Server, writer: &Path) -> Child {
    Command::new(BIN)
        .args(["--json", "sync", "--from", from, "--from-token-file"])
        .arg(&source.reader_file)
        .args(["--to", &target.url, "--to-token-file"])
        .arg(writer)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bunker sync")
}

fn sync_to_end(from: &str, source: &Source, target: &Server, writer: &Path) {
    let out = sync_process(from, source, target, writer)
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "bunker sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gets(proxy: &Proxy) -> u64 {
    proxy.counts().get("GET").copied().unwrap_or(0)
}

/// Waits until the source has answered `k` GETs through `proxy`, or
/// `done` says the copy ended first (then the point was past its end).
fn wait_for_gets(proxy: &Proxy, k: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gets(proxy) < k {
        if done() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the copy stalled before {k} GETs"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

#[derive(Clone, Copy, Debug)]
enum Victim {
    SyncProcess,
    Source,
    Target,
}

#[test]
fn kills_of_either_server_or_the_sync_process_resume_without_partial_or_duplicate_copies() {
    let started = Instant::now();
    let seed = crate::seed(15);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite sync_kills::"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let mut src = source(dir.path());

    // An uninterrupted copy: how many requests it makes of the source.
    let baseline = {
        let cycle = dir.path().join("baseline");
        let (t, writer) = target(&cycle, &[]);
        let proxy = Proxy::start(&src.server.url);
        sync_to_end(&proxy.endpoint, &src, &t, &writer);
        check_target(&t, &src, "uninterrupted copy");
        drop(t);
        let _ = std::fs::remove_dir_all(&cycle);
        gets(&proxy)
    };

    let trials = crate::scaled(30);
    let mut killed = BTreeMap::<String, u64>::new();
    let mut worst = BTreeMap::<String, u64>::new();
    let mut gcs = 0;
    for victim in [Victim::SyncProcess, Victim::Source, Victim::Target] {
        for trial in 0..trials {
            let what = format!("{victim:?} killed, trial {trial}; reproduce: {reproduce}");
            let k = rng.random_range(1..=baseline);
            let cycle = dir.path().join(format!("{victim:?}-{trial}"));
            let proxy = Proxy::start(&src.server.url);
            let (mut t, writer);
            let interrupted = match victim {
                Victim::SyncProcess | Victim::Source => {
                    // Packs of 1 MiB, so the killed run's chunks sit in
                    // sealed packs that a GC could take.
                    std::fs::create_dir_all(&cycle).unwrap();
                    let conf = cycle.join("small-packs.toml");
                    std::fs::write(&conf, "pack_bytes = 1048576\n").unwrap();
                    (t, writer) = target(&cycle, &["--config", conf.to_str().unwrap()]);
                    let mut child = sync_process(&proxy.endpoint, &src, &t, &writer);
                    let hit = wait_for_gets(&proxy, k, || child.try_wait().unwrap().is_some());
                    if hit {
                        match victim {
                            Victim::SyncProcess => child.kill().unwrap(),
                            _ => {
                                let _ = src.server.child.kill();
                                let _ = src.server.child.wait();
                            }
                        }
                    }
                    let _ = child.wait();
                    hit
                }
                Victim::Target => {
                    let conf = cycle.join("pull.toml");
                    std::fs::create_dir_all(&cycle).unwrap();
                    std::fs::write(
                        &conf,
                        format!(
                            "[[sync]]\nname = \"pull\"\nfrom = \"{}\"\ntoken_file = \"{}\"\ninterval = \"1h\"\n",
                            proxy.endpoint,
                            src.reader_file.display()
                        ),
                    )
                    .unwrap();
                    let args = ["--config", conf.to_str().unwrap()];
                    (t, writer) = target(&cycle, &args);
                    let url = t.url.clone();
                    let admin = t.admin.clone();
                    let hit = wait_for_gets(&proxy, k, || {
                        json(&url, &admin, "/v1/sync")["jobs"][0]["last_run"].is_object()
                    });
                    let _ = t.child.kill();
                    let _ = t.child.wait();
                    hit
                }
            };
            if interrupted {
                *killed.entry(format!("{victim:?}")).or_default() += 1;
            }
            // Resume: the source back (on its data, a new port), the copy
            // run again to its end.
            let before_resume = gets(&proxy);
            let resumed = match victim {
                Victim::Source => {
                    if src.server.child.try_wait().unwrap().is_some() {
                        src.server = Server::start(BIN, &dir.path().join("source"), &[]);
                    }
                    let again = Proxy::start(&src.server.url);
                    sync_to_end(&again.endpoint, &src, &t, &writer);
                    gets(&again)
                }
                Victim::SyncProcess => {
                    if trial % 2 == 1 {
                        // The killed run's session still pins its chunks.
                        let gc = ureq::post(format!("{}/v1/gc", t.url))
                            .header("authorization", format!("Bearer {}", t.admin))
                            .send_empty()
                            .unwrap_or_else(|e| panic!("{what}: GC: {e}"));
                        assert_eq!(gc.status(), 200, "{what}");
                        gcs += 1;
                    }
                    sync_to_end(&proxy.endpoint, &src, &t, &writer);
                    gets(&proxy) - before_resume
                }
                Victim::Target => {
                    t = Server::start(
                        BIN,
                        &cycle.join("target"),
                        &["--config", cycle.join("pull.toml").to_str().unwrap()],
                    );
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let job = &json(&t.url, &t.admin, "/v1/sync")["jobs"][0];
                        if job["last_run"].is_object() {
                            assert_eq!(job["last_run"]["ok"], true, "{what}: {job:#}");
                            break;
                        }
                        assert!(Instant::now() < deadline, "{what}: the job never ran");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    gets(&proxy) - before_resume
                }
            };
            check_target(&t, &src, &what);
            let extra = (before_resume + resumed).saturating_sub(baseline);
            let w = worst.entry(format!("{victim:?}")).or_default();
            *w = (*w).max(extra);
            let bound = match victim {
                Victim::Source => RESENT_BOUND_SOURCE_KILLED,
                _ => RESENT_BOUND,
            };
            assert!(
                extra <= bound,
                "{what}: the killed run and its resume asked the source {} requests, an uninterrupted copy {baseline} (bound +{bound})",
                before_resume + resumed
            );
            drop(t);
            let _ = std::fs::remove_dir_all(&cycle);
        }
    }
    println!(
        "sync kills: seed {seed}, {trials} points per victim, interrupted {killed:?}, GCs between a kill and its resume {gcs}, worst extra requests {worst:?} (bound {RESENT_BOUND}, {RESENT_BOUND_SOURCE_KILLED} with the source killed), baseline {baseline} requests, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
