//! Scheduled pull jobs (`[[sync]]`): a target server copies from a real
//! second server on loopback, and its status shows in `GET /v1/sync`,
//! `bunker stats` and `/metrics`; a job whose token is refused or whose
//! source is down reports it and retries at its next interval without
//! harm; a replaced token file is read at the next run.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

fn get(server: &Server, path: &str) -> String {
    ureq::get(format!("{}{path}", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .into_body()
        .read_to_string()
        .unwrap()
}

fn jobs(server: &Server) -> Vec<Value> {
    let v: Value = serde_json::from_str(&get(server, "/v1/sync")).unwrap();
    v["jobs"].as_array().unwrap().clone()
}

/// Polls `/v1/sync` until job `name` satisfies `done` (a run ended the
/// way the test waits for); 60 s at most, far beyond a run of these
/// images.
fn wait_for(server: &Server, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = jobs(server)
            .into_iter()
            .find(|j| j["name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"));
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {name} never got there: {job:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn token(server: &Server, role: &str) -> String {
    let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    client
        .create_token(&bunker_api::TokenRequest {
            role: serde_json::from_value(Value::String(role.into())).unwrap(),
            scope: None,
            name: None,
        })
        .unwrap()
        .token
}

/// Backs up `count` small images of `name` on `server`; their BLAKE3s.
fn backups(server: &Server, name: &str, seed: u64, count: u32) -> Vec<String> {
    let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
    let spec = ImageSpec::new(seed, 3 << 20);
    (0..count)
        .map(|day| {
            let image = Image::new(&spec, day);
            client
                .backup(name, image.reader(), &Default::default(), &mut |_| {})
                .unwrap()
                .snapshot
                .blake3
        })
        .collect()
}

/// Every snapshot the target holds, read back whole: its BLAKE3 equals
/// the one it records, and the set of them is `want`.
fn restores_bit_exact(target: &Server, want: &[String]) {
    let list: Value = serde_json::from_str(&get(target, "/v1/snapshots")).unwrap();
    let mut got = Vec::new();
    for s in list["snapshots"].as_array().unwrap() {
        let path = format!(
            "/v1/snapshots/{}/{}/data",
            s["name"].as_str().unwrap(),
            s["id"]
        );
        let mut body = ureq::get(format!("{}{path}", target.url))
            .header("authorization", format!("Bearer {}", target.admin))
            .call()
            .unwrap()
            .into_body();
        let (hash, _) = bunker_tests::hash_reader(body.as_reader());
        let hex = blake3::Hash::from(hash).to_hex().to_string();
        assert_eq!(hex, s["blake3"].as_str().unwrap(), "{path}");
        assert!(s["origin"].is_object(), "{path} is a copy: {s}");
        got.push(hex);
    }
    got.sort();
    let mut want = want.to_vec();
    want.sort();
    assert_eq!(got, want);
}

fn config(dir: &Path, source: &str, good: &Path, bad: &Path) -> std::path::PathBuf {
    let path = dir.join("target.toml");
    std::fs::write(
        &path,
        format!(
            "[[sync]]\nname = \"site-a\"\nfrom = \"{source}\"\ntoken_file = \"{}\"\nnames = [\"db-\"]\ninterval = \"2s\"\n\n\
             [[sync]]\nname = \"wrong-token\"\nfrom = \"{source}\"\ntoken_file = \"{}\"\ninterval = \"1s\"\n",
            good.display(),
            bad.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_scheduled_job_copies_reports_and_survives_a_wrong_token_and_a_dead_source() {
    let started = Instant::now();
    let dir = bunker_tests::scratch();
    let source = Server::start(BIN, &dir.path().join("source"), &[]);
    let db = backups(&source, "db-1", 1, 2);
    let other = backups(&source, "mail", 2, 1);
    let good = dir.path().join("reader.token");
    std::fs::write(&good, token(&source, "reader")).unwrap();
    let bad = dir.path().join("wrong.token");
    std::fs::write(&bad, "not-a-token\n").unwrap();
    let conf = config(dir.path(), &source.url, &good, &bad);
    let target = Server::start(
        BIN,
        &dir.path().join("target"),
        &["--config", conf.to_str().unwrap()],
    );

    // The job of `db-` copies both db-1 snapshots and nothing else.
    let job = wait_for(&target, "site-a", |j| j["last_run"].is_object());
    let run = &job["last_run"];
    assert_eq!(run["ok"], true, "{job:#}");
    assert_eq!(run["snapshots_copied"], 2, "{job:#}");
    let db_bytes: u64 = (0..2)
        .map(|day| Image::new(&ImageSpec::new(1, 3 << 20), day).len())
        .sum();
    assert_eq!(run["logical_bytes"].as_u64(), Some(db_bytes), "{job:#}");
    let wire = run["wire_bytes"].as_u64().unwrap();
    assert!(wire > 0 && wire < 2 * (3 << 20), "{job:#}");
    assert_eq!(job["lag_seconds"], 0, "{job:#}");
    assert_eq!(job["target_snapshots"], 2, "{job:#}");
    assert_eq!(job["from"], source.url.as_str());
    assert!(!job
        .to_string()
        .contains(&std::fs::read_to_string(&good).unwrap()));
    restores_bit_exact(&target, &db);

    // The job with the wrong token fails, says why, and retries.
    let wrong = wait_for(&target, "wrong-token", |j| {
        j["last_run"]["ok"] == false && j["last_run"]["started_unix_ms"].as_i64() > Some(0)
    });
    let error = wrong["last_run"]["error"].as_str().unwrap();
    assert!(
        error.contains("refused the token in") && error.contains("wrong.token"),
        "{error}"
    );
    assert!(!error.contains("not-a-token"), "{error}");
    assert_eq!(wrong["lag_seconds"], Value::Null, "{wrong:#}");
    let first_failure = wrong["last_run"]["started_unix_ms"].as_i64().unwrap();
    wait_for(&target, "wrong-token", |j| {
        j["last_run"]["started_unix_ms"].as_i64() > Some(first_failure)
    });

    // A new snapshot on the source is copied at the next interval; the
    // second run of the same names sends only the new chunks.
    let day2 = {
        let client = bunker_client::Client::new(&source.url, Some(source.admin.clone()));
        let image = Image::new(&ImageSpec::new(1, 3 << 20), 2);
        client
            .backup("db-1", image.reader(), &Default::default(), &mut |_| {})
            .unwrap()
            .snapshot
            .blake3
    };
    let before = job["last_run"]["started_unix_ms"].as_i64().unwrap();
    let job = wait_for(&target, "site-a", |j| {
        j["last_run"]["started_unix_ms"].as_i64() > Some(before)
            && j["last_run"]["ok"] == true
            && j["target_snapshots"] == 3
    });
    assert_eq!(job["last_run"]["snapshots_copied"], 1, "{job:#}");
    assert!(
        job["last_run"]["wire_bytes"].as_u64().unwrap() < (3 << 20) / 4,
        "{job:#}"
    );
    let mut all_db = db.clone();
    all_db.push(day2);

    // Status in bunker stats (human and JSON) and /metrics.
    let admin_file = dir.path().join("target.admin");
    std::fs::write(&admin_file, &target.admin).unwrap();
    let stats = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(args)
            .arg("stats")
            .env("BUNKER_SERVER", &target.url)
            .env_remove("BUNKER_TOKEN")
            .arg("--token-file")
            .arg(&admin_file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let text = stats(&[]);
    assert!(text.contains("SYNC JOB"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("site-a"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        row.contains(&source.url) && row.contains(" 2s ") && row.contains("ok "),
        "{row}"
    );
    assert!(
        text.contains("wrong-token: the source refused the token"),
        "{text}"
    );
    let json: Value = serde_json::from_str(stats(&["--json"]).trim()).unwrap();
    assert_eq!(json["sync"][0]["name"], "site-a");
    assert!(json["snapshots"].as_u64() == Some(3), "{json:#}");
    let metrics = get(&target, "/metrics");
    for line in [
        "bunker_sync_lag_seconds{job=\"site-a\"} 0",
        "bunker_sync_last_run_ok{job=\"wrong-token\"} 0",
        "bunker_sync_snapshots_total{job=\"site-a\"} 3",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("bunker_sync_last_success_timestamp_seconds{job=\"site-a\"} "));
    assert!(!metrics.contains("bunker_sync_last_success_timestamp_seconds{job=\"wrong-token\"}"));
    assert!(metrics.contains("bunker_sync_runs_total{job=\"wrong-token\",result=\"error\"} "));

    // The wrong token replaced on disk: the next run reads it and copies
    // everything (all names) that is not here yet: `mail`.
    std::fs::copy(&good, &bad).unwrap();
    let fixed = wait_for(&target, "wrong-token", |j| j["last_run"]["ok"] == true);
    assert_eq!(fixed["last_run"]["snapshots_copied"], 1, "{fixed:#}");
    assert_eq!(fixed["lag_seconds"], 0, "{fixed:#}");
    let mut everything = all_db.clone();
    everything.extend(other);
    restores_bit_exact(&target, &everything);

    // The source gone: runs fail naming it, the copies stay whole.
    drop(source);
    let last = jobs(&target)
        .into_iter()
        .find(|j| j["name"] == "site-a")
        .unwrap()["last_run"]["started_unix_ms"]
        .as_i64()
        .unwrap();
    let down = wait_for(&target, "site-a", |j| {
        j["last_run"]["started_unix_ms"].as_i64() > Some(last) && j["last_run"]["ok"] == false
    });
    let error = down["last_run"]["error"].as_str().unwrap();
    assert!(error.contains("cannot reach the source"), "{error}");
    assert_eq!(down["lag_seconds"], 0, "what was known stays: {down:#}");
    assert_eq!(down["target_snapshots"], 3, "{down:#}");
    restores_bit_exact(&target, &everything);
    eprintln!("sync jobs test: {:.1} s", started.elapsed().as_secs_f64());
}
