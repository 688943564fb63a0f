//! The server and CLI on a bucket (SeaweedFS started per test on free
//! ports, `bunker_testdata::stores`): the bucket alone rebuilds a server,
//! a snapshot is acknowledged only once its manifest and packs are
//! objects, a bucket that refuses us stops `bunker serve` at start with a
//! message naming endpoint and bucket, GC through the server deletes the
//! pack objects it condemns, and `bunker repair --rebuild-index` rebuilds
//! the index from the bucket. Skipped loudly when `weed` is not
//! installed, failed under CI. The helpers here (flags, CLI, uploads,
//! restores) serve `s3_faults` too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_testdata::stores::Store;
use bunker_tests::noise;
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
pub(crate) const BUCKET: &str = "bunker-e2e";

/// `bunker serve` flags for `s3://BUCKET/prefix` on `store`, unsigned.
pub(crate) fn s3_flags(store: &Store, bucket: &str, prefix: &str) -> Vec<String> {
    vec![
        "--s3".into(),
        format!("s3://{bucket}/{prefix}"),
        "--s3-endpoint".into(),
        store.endpoint.clone(),
        "--s3-allow-http".into(),
        "--s3-anonymous".into(),
        "--s3-cache-bytes".into(),
        (32u64 << 20).to_string(),
    ]
}

pub(crate) fn start(data: &Path, flags: &[String]) -> Server {
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(BIN, data, &extra)
}

/// A server rebuilt on the bucket from an empty data directory: it keeps
/// the bucket's tokens and writes no `admin.token`, so the old admin's
/// token is the one to use.
pub(crate) fn start_rebuilt(data: &Path, flags: &[String], admin: &str) -> Server {
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_as(BIN, data, &extra, Some(admin))
}

pub(crate) fn bunker(server: &Server, args: &[&str]) -> Output {
    cli(
        &[
            ("BUNKER_SERVER", &server.url),
            ("BUNKER_TOKEN", &server.admin),
        ],
        args,
    )
}

/// Runs the `bunker` binary with `args` and `env`, which must succeed.
fn cli(env: &[(&str, &str)], args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run bunker");
    assert!(
        out.status.success(),
        "bunker {args:?}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&bunker(server, &all).stdout).expect("JSON output")
}

/// A raw upload of `data` as `name`: the new snapshot's id.
pub(crate) fn raw_upload(server: &Server, name: &str, data: &[u8]) -> u64 {
    let (status, body) = try_raw_upload(server, name, data);
    assert_eq!(status, 201, "raw upload of {name}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"].as_u64().expect("an id")
}

/// A raw upload that may fail: the status and body of the answer.
pub(crate) fn try_raw_upload(server: &Server, name: &str, data: &[u8]) -> (u16, String) {
    let r = ureq::put(format!("{}/v1/snapshots/{name}", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .config()
        .http_status_as_error(false)
        .build()
        .send(data)
        .expect("an answer");
    (r.status().as_u16(), r.into_body().read_to_string().unwrap())
}

/// The ids of `name`'s snapshots the server lists, oldest first.
pub(crate) fn listed(server: &Server, name: &str) -> Vec<u64> {
    let list = json(server, &["snapshots", name]);
    let mut ids: Vec<u64> = list["snapshots"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    ids.sort();
    ids
}

/// `bunker restore name@id` into a file under `dir`, which must hold
/// exactly `want`.
pub(crate) fn assert_restores(server: &Server, dir: &Path, name: &str, id: u64, want: &[u8]) {
    let out = dir.join(format!("restored-{name}-{id}.img"));
    bunker(
        server,
        &["restore", &format!("{name}@{id}"), out.to_str().unwrap()],
    );
    let got = std::fs::read(&out).unwrap();
    assert!(
        got.len() == want.len() && blake3::hash(&got) == blake3::hash(want),
        "{name}@{id} restores {} bytes that differ from the {} backed up",
        got.len(),
        want.len()
    );
    std::fs::remove_file(&out).unwrap();
}

/// Flags for a server on `s3://BUCKET/prefix` reached at `endpoint` (a
/// fault proxy in front of `store`, or the store), with the `[storage]`
/// keys `storage` (retries, timeouts, parts) in a config file under `dir`.
pub(crate) fn flags_via(
    store: &Store,
    endpoint: &str,
    dir: &Path,
    prefix: &str,
    storage: &str,
) -> Vec<String> {
    let config = dir.join("bunker.toml");
    std::fs::write(&config, format!("[storage]\n{storage}")).unwrap();
    let mut flags = vec!["--config".to_string(), config.display().to_string()];
    flags.extend(s3_flags(store, BUCKET, prefix));
    let at = flags.iter().position(|f| f == "--s3-endpoint").unwrap();
    flags[at + 1] = endpoint.to_string();
    flags
}

fn image(spec: &ImageSpec, day: u32) -> Vec<u8> {
    let mut data = Vec::new();
    Image::new(spec, day).write_to(&mut data).unwrap();
    data
}

/// `n` days of a generated volume of `len` bytes.
fn days(seed: u64, len: u64, n: u32) -> Vec<Vec<u8>> {
    let spec = ImageSpec::new(seed, len);
    (0..n).map(|d| image(&spec, d)).collect()
}

/// SeaweedFS with the test bucket, a temporary directory, a data
/// directory in it, and the flags of a server on `s3://BUCKET/prefix`;
/// None when skipped.
fn on_weed(prefix: &str) -> Option<(Store, tempfile::TempDir, PathBuf, Vec<String>)> {
    let store = Store::seaweedfs()?;
    store.create_bucket(BUCKET);
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let flags = s3_flags(&store, BUCKET, prefix);
    Some((store, dir, data, flags))
}

#[test]
fn a_new_server_on_the_bucket_alone_restores_every_snapshot_bit_exact() {
    let Some((store, dir, data, flags)) = on_weed("dr") else {
        return;
    };
    let days = days(1414, 12 << 20, 3);

    // Day 0 as a raw upload, days 1 and 2 through the chunk protocol.
    let server = start(&data, &flags);
    let info = crate::info(&server);
    let storage = info["storage"].as_str().unwrap();
    assert!(
        storage.starts_with(&format!("s3://{BUCKET}/dr at {}", store.endpoint)),
        "{info}"
    );
    let mut ids = vec![raw_upload(&server, "vol", &days[0])];
    for (d, bytes) in days.iter().enumerate().skip(1) {
        let path = dir.path().join(format!("day{d}.img"));
        std::fs::write(&path, bytes).unwrap();
        let b = json(&server, &["backup", "vol", path.to_str().unwrap()]);
        ids.push(b["id"].as_u64().unwrap());
    }

    // Acknowledged means in the bucket: each manifest, and packs.
    let keys = store.keys(BUCKET, "dr/");
    for id in &ids {
        let manifest = format!("dr/snapshots/vol/{id}.snap");
        assert!(keys.contains(&manifest), "{manifest} not in {keys:?}");
    }
    assert!(
        keys.iter()
            .any(|k| k.starts_with("dr/packs/") && k.ends_with(".pack")),
        "no pack objects: {keys:?}"
    );
    let admin = server.admin.clone();
    assert!(server.stop().success());

    // The server's disk is lost.
    std::fs::remove_dir_all(&data).unwrap();
    let started = Instant::now();
    let server = start_rebuilt(&data, &flags, &admin);
    eprintln!("rebuilt from the bucket in {:?}", started.elapsed());
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed(&server, "vol"), want, "snapshots lost or added");
    for (id, bytes) in ids.iter().zip(&days) {
        assert_restores(&server, dir.path(), "vol", *id, bytes);
    }
    bunker(&server, &["drill", "--all"]);

    // A new backup dedups against the bucket's packs and gets a fresh id.
    let path = dir.path().join("day2-again.img");
    std::fs::write(&path, &days[2]).unwrap();
    let b = json(&server, &["backup", "vol", path.to_str().unwrap()]);
    let id = b["id"].as_u64().unwrap();
    assert!(ids.iter().all(|old| id > *old), "id {id} reused: {ids:?}");
    let uploaded = b["uploaded_bytes"].as_u64().unwrap();
    assert!(
        uploaded < days[2].len() as u64 / 8,
        "a known image sent {uploaded} bytes"
    );
    assert!(server.stop().success());
}

/// Runs `bunker serve` expected to fail at start: its stderr, and how
/// long it took.
fn serve_fails(data: &Path, flags: &[String], env: &[(&str, &str)]) -> (String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bound = Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(!status.success(), "bunker serve started");
            break;
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            panic!("bunker serve still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (err, started.elapsed())
}

#[test]
fn a_missing_bucket_or_wrong_credentials_stop_serve_at_start_naming_both() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let dir = bunker_tests::scratch();
    let (err, took) = serve_fails(
        &dir.path().join("a"),
        &s3_flags(&store, "no-such-bucket", "x"),
        &[],
    );
    assert!(
        err.contains("no-such-bucket") && err.contains(&store.endpoint),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");

    let mut flags = s3_flags(&store, BUCKET, "creds");
    flags.retain(|f| f != "--s3-anonymous");
    let (err, took) = serve_fails(
        &dir.path().join("b"),
        &flags,
        &[
            ("AWS_ACCESS_KEY_ID", "nobody"),
            ("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
        ],
    );
    assert!(
        err.contains(BUCKET) && err.contains(&store.endpoint),
        "{err}"
    );
    assert!(!err.contains("wrong-secret"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
}

#[test]
fn a_bucket_refusing_puts_fails_the_upload_with_503_loses_nothing_and_the_next_backup_succeeds_also_when_slow(
) {
    use bunker_testdata::stores::{Fault, Proxy};
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let proxy = Proxy::start(&store.endpoint);
    let dir = bunker_tests::scratch();
    let flags = flags_via(
        &store,
        &proxy.endpoint,
        dir.path(),
        "faults",
        "max_retries = 1\nretry_timeout_ms = 2000\nbackoff_initial_ms = 10\n\
         backoff_max_ms = 50\nrequest_timeout_ms = 5000\n",
    );
    let mut d = days(1415, 8 << 20, 2).into_iter();
    let (day0, day1) = (d.next().unwrap(), d.next().unwrap());
    let server = start(&dir.path().join("data"), &flags);
    let id0 = raw_upload(&server, "vol", &day0);

    proxy.set_for("PUT", Fault::SlowDown);
    let started = Instant::now();
    let (status, body) = try_raw_upload(&server, "vol", &day1);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let counts = proxy.counts();
    assert!(counts.get("PUT").copied().unwrap_or(0) >= 2, "{counts:?}");

    // Nothing acknowledged is lost; the failed upload is not listed.
    proxy.set(Fault::Pass);
    assert_eq!(listed(&server, "vol"), vec![id0]);
    assert_restores(&server, dir.path(), "vol", id0, &day0);

    // The store is back: the next backup succeeds on the same server (the
    // pack whose upload failed is uploaded first) and restores bit-exact.
    let id1 = raw_upload(&server, "vol", &day1);
    assert!(id1 > id0);
    assert_restores(&server, dir.path(), "vol", id1, &day1);
    bunker(&server, &["drill", "--all"]);

    // A slow store (every request delayed) still completes.
    proxy.set(Fault::DelayMs(20));
    let path = dir.path().join("day1.img");
    std::fs::write(&path, &day1).unwrap();
    let b = json(&server, &["backup", "slow", path.to_str().unwrap()]);
    assert_restores(
        &server,
        dir.path(),
        "slow",
        b["id"].as_u64().unwrap(),
        &day1,
    );
    assert!(server.stop().success());
}

/// The pack objects under `prefix/` in the test bucket.
fn pack_objects(store: &Store, prefix: &str) -> BTreeSet<String> {
    let packs = store.keys(BUCKET, &format!("{prefix}/packs/"));
    packs.into_iter().filter(|k| k.ends_with(".pack")).collect()
}

/// Deletes and prunes through the server, then `bunker gc`: the pack
/// objects holding only dead chunks are gone from the bucket (listed
/// through the S3 API), a pack kept for its live half is rewritten and
/// gone, what is kept restores bit-exact and verifies clean, and a new
/// server on the bucket alone (empty data directory) lists the same
/// snapshots, restores them and finds nothing more to collect.
#[test]
fn gc_through_the_server_deletes_the_condemned_pack_objects_and_a_new_server_agrees() {
    let Some((store, dir, data, flags)) = on_weed("gc") else {
        return;
    };
    let (a, b) = (noise(0x6C1, 4 << 20), noise(0x6C2, 4 << 20));
    let mut c = b[..2 << 20].to_vec();
    c.extend_from_slice(&noise(0x6C3, 2 << 20));
    let other = noise(0x6C4, 2 << 20);

    // Each commit seals its own pack: one per backup.
    let server = start(&data, &flags);
    let mut packs_of = Vec::new();
    let mut ids = Vec::new();
    for (name, bytes) in [("vol", &a), ("vol", &b), ("vol", &c), ("other", &other)] {
        let before = pack_objects(&store, "gc");
        ids.push(raw_upload(&server, name, bytes));
        let new: Vec<String> = pack_objects(&store, "gc")
            .difference(&before)
            .cloned()
            .collect();
        assert!(!new.is_empty(), "{name}: no new pack object");
        packs_of.push(new);
    }
    let r = ureq::delete(format!("{}/v1/snapshots/other/{}", server.url, ids[3]))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .expect("delete other");
    assert!(r.status().is_success());
    json(&server, &["prune", "vol", "--keep-last", "1"]);
    assert_eq!(listed(&server, "vol"), vec![ids[2]]);

    let before = pack_objects(&store, "gc");
    let gc = json(&server, &["gc", "--rewrite-below", "0.99"]);
    let after = pack_objects(&store, "gc");
    let gone: BTreeSet<&String> = before.difference(&after).collect();
    // vol@1 and other: only dead chunks; vol@2: half live, rewritten.
    for condemned in [&packs_of[0], &packs_of[1], &packs_of[3]] {
        for key in condemned {
            assert!(gone.contains(key), "{key} still in the bucket after {gc}");
        }
    }
    for key in &packs_of[2] {
        assert!(after.contains(key), "{key}, which vol@3 needs, went: {gc}");
    }
    let (deleted, rewritten) = (gc["packs_deleted"].as_u64(), gc["packs_rewritten"].as_u64());
    assert_eq!(
        deleted.unwrap() + rewritten.unwrap(),
        gone.len() as u64,
        "{gc}"
    );
    assert!(rewritten.unwrap() >= 1, "{gc}");
    assert_restores(&server, dir.path(), "vol", ids[2], &c);
    bunker(&server, &["verify"]);
    let admin = server.admin.clone();
    assert!(server.stop().success());

    let elsewhere = dir.path().join("new-server");
    let server = start_rebuilt(&elsewhere, &flags, &admin);
    assert_eq!(listed(&server, "vol"), vec![ids[2]]);
    assert!(listed(&server, "other").is_empty());
    assert_restores(&server, dir.path(), "vol", ids[2], &c);
    bunker(&server, &["verify"]);
    let again = json(&server, &["gc"]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert_eq!(again["packs_rewritten"], 0, "{again}");
    assert_eq!(pack_objects(&store, "gc"), after);
    assert!(server.stop().success());
}

/// The server stopped and its index deleted: `bunker repair
/// --rebuild-index` with the server's `--s3` flags rebuilds it from the
/// pack objects (as many entries as the server's index had), and the
/// restarted server restores every snapshot bit-exact and verifies clean.
#[test]
fn repair_rebuild_index_from_the_bucket_then_every_snapshot_restores() {
    let Some((_store, dir, data, flags)) = on_weed("repair") else {
        return;
    };
    let days = days(1416, 6 << 20, 2);
    let server = start(&data, &flags);
    let ids: Vec<u64> = days.iter().map(|d| raw_upload(&server, "vol", d)).collect();
    let chunks = json(&server, &["stats"])["chunks"].as_u64().unwrap();
    assert!(server.stop().success());

    std::fs::remove_dir_all(data.join("index")).unwrap();
    let mut args = vec!["--json", "repair", "--rebuild-index", "--data"];
    args.push(data.to_str().unwrap());
    args.extend(flags.iter().map(String::as_str));
    let out = cli(&[], &args);
    let repaired: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(repaired["entries"], chunks, "{repaired}");
    assert!(
        std::fs::read_dir(data.join("index"))
            .unwrap()
            .next()
            .is_some(),
        "no index after the repair"
    );

    let server = start(&data, &flags);
    assert_eq!(listed(&server, "vol"), ids);
    for (id, bytes) in ids.iter().zip(&days) {
        assert_restores(&server, dir.path(), "vol", *id, bytes);
    }
    bunker(&server, &["verify"]);
    assert!(server.stop().success());
}
