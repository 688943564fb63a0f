//! The server and CLI on a bucket (SeaweedFS started per test on free
//! ports, `bunker_testdata::stores`): the bucket alone rebuilds a server,
//! a snapshot is acknowledged only once its manifest and packs are
//! objects, and a bucket that refuses us stops `bunker serve` at start
//! with a message naming endpoint and bucket. Skipped loudly when `weed`
//! is not installed, failed under CI.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_testdata::stores::Store;
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const BUCKET: &str = "bunker-e2e";

/// `bunker serve` flags for `s3://BUCKET/prefix` on `store`, unsigned.
fn s3_flags(store: &Store, bucket: &str, prefix: &str) -> Vec<String> {
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

fn start(data: &Path, flags: &[String]) -> Server {
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start(BIN, data, &extra)
}

fn bunker(server: &Server, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", &server.admin)
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

fn json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&bunker(server, &all).stdout).expect("JSON output")
}

/// A raw upload of `data` as `name`: the new snapshot's id.
fn raw_upload(server: &Server, name: &str, data: &[u8]) -> u64 {
    let v: serde_json::Value = ureq::put(format!("{}/v1/snapshots/{name}", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .send(data)
        .expect("raw upload")
        .into_body()
        .read_json()
        .unwrap();
    v["id"].as_u64().expect("an id")
}

/// Every key under `prefix/` in `bucket`, listed through the S3 API.
fn list_bucket(store: &Store, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut url = format!("{}/{bucket}?list-type=2&prefix={prefix}/", store.endpoint);
        if let Some(t) = &token {
            url.push_str(&format!("&continuation-token={t}"));
        }
        let body = ureq::get(&url)
            .call()
            .expect("list objects")
            .into_body()
            .read_to_string()
            .unwrap();
        keys.extend(tag_values(&body, "Key"));
        token = tag_values(&body, "NextContinuationToken").pop();
        if token.is_none() {
            return keys;
        }
    }
}

fn tag_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

fn image(spec: &ImageSpec, day: u32) -> Vec<u8> {
    let mut data = Vec::new();
    Image::new(spec, day).write_to(&mut data).unwrap();
    data
}

#[test]
fn a_new_server_on_the_bucket_alone_restores_every_snapshot_bit_exact() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = s3_flags(&store, BUCKET, "dr");
    let spec = ImageSpec::new(1414, 12 << 20);
    let days: Vec<Vec<u8>> = (0..3).map(|d| image(&spec, d)).collect();

    // Day 0 as a raw upload, days 1 and 2 through the chunk protocol.
    let server = start(&data, &flags);
    let info: serde_json::Value = ureq::get(format!("{}/v1/info", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap();
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
    let keys = list_bucket(&store, BUCKET, "dr");
    for id in &ids {
        let manifest = format!("dr/snapshots/vol/{id}.snap");
        assert!(keys.contains(&manifest), "{manifest} not in {keys:?}");
    }
    assert!(
        keys.iter()
            .any(|k| k.starts_with("dr/packs/") && k.ends_with(".pack")),
        "no pack objects: {keys:?}"
    );
    assert!(server.stop().success());

    // The server's disk is lost.
    std::fs::remove_dir_all(&data).unwrap();
    let started = Instant::now();
    let server = start(&data, &flags);
    eprintln!("rebuilt from the bucket in {:?}", started.elapsed());
    let list = json(&server, &["snapshots", "vol"]);
    let listed: Vec<u64> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed.len(), ids.len(), "{list}");
    for id in &ids {
        assert!(listed.contains(id), "snapshot {id} lost: {list}");
    }
    for (id, want) in ids.iter().zip(&days) {
        let out = dir.path().join(format!("restored-{id}.img"));
        bunker(
            &server,
            &["restore", &format!("vol@{id}"), out.to_str().unwrap()],
        );
        let got = std::fs::read(&out).unwrap();
        assert!(
            blake3::hash(&got) == blake3::hash(want) && got.len() == want.len(),
            "vol@{id} restored from the bucket differs"
        );
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
    let dir = tempfile::tempdir().unwrap();
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
fn a_bucket_refusing_puts_fails_the_upload_with_503_loses_nothing_and_the_next_backup_succeeds() {
    use bunker_testdata::stores::{Fault, Proxy};
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let proxy = Proxy::start(&store.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bunker.toml");
    std::fs::write(
        &config,
        "[storage]\nmax_retries = 1\nretry_timeout_ms = 2000\nbackoff_initial_ms = 10\n\
         backoff_max_ms = 50\nrequest_timeout_ms = 5000\n",
    )
    .unwrap();
    let mut flags = vec!["--config".to_string(), config.display().to_string()];
    flags.extend(s3_flags(&store, BUCKET, "faults"));
    let at = flags.iter().position(|f| f == "--s3-endpoint").unwrap();
    flags[at + 1] = proxy.endpoint.clone();
    let spec = ImageSpec::new(1415, 8 << 20);
    let day0 = image(&spec, 0);
    let day1 = image(&spec, 1);
    let server = start(&dir.path().join("data"), &flags);
    let id0 = raw_upload(&server, "vol", &day0);

    proxy.set_for("PUT", Fault::SlowDown);
    let started = Instant::now();
    let r = ureq::put(format!("{}/v1/snapshots/vol", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&day1[..])
        .expect("an answer");
    assert_eq!(r.status(), 503);
    let body = r.into_body().read_to_string().unwrap();
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
    let list = json(&server, &["snapshots", "vol"]);
    let listed: Vec<u64> = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![id0], "{list}");
    let out = dir.path().join("r0.img");
    bunker(
        &server,
        &["restore", &format!("vol@{id0}"), out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == day0, "vol@{id0} differs");

    // The store is back: the next backup succeeds on the same server (the
    // pack whose upload failed is uploaded first) and restores bit-exact.
    let id1 = raw_upload(&server, "vol", &day1);
    assert!(id1 > id0);
    let out = dir.path().join("r1.img");
    bunker(
        &server,
        &["restore", &format!("vol@{id1}"), out.to_str().unwrap()],
    );
    assert!(std::fs::read(&out).unwrap() == day1, "vol@{id1} differs");
    bunker(&server, &["drill", "--all"]);
    assert!(server.stop().success());
}
