//! What a server on a bucket keeps beside the repository: its tokens and
//! check history survive the loss of its disk, a token change the bucket
//! refuses is not made, and the lease keeps a second server off the
//! bucket (refused with the holder named; taken over once the lease
//! expires or is broken; the same data directory restarts at once after
//! SIGKILL; the loser of a broken lease stops acknowledging writes). Also
//! the `[storage]` table's unknown keys, and GC's requests on a bucket.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bunker_testdata::stores::{Fault, Proxy, Store};
use bunker_tests::noise;
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const BUCKET: &str = "bunker-e2e";

/// `--config FILE` with `storage` as its `[storage]` table (plus retries
/// kept short), then the flags of `s3://BUCKET/prefix` at `endpoint`.
fn flags(dir: &Path, name: &str, storage: &str, endpoint: &str, prefix: &str) -> Vec<String> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[storage]\nmax_retries = 1\nretry_timeout_ms = 2000\nbackoff_initial_ms = 10\n\
             backoff_max_ms = 50\nrequest_timeout_ms = 5000\n{storage}"
        ),
    )
    .unwrap();
    [
        "--config",
        config.to_str().unwrap(),
        "--s3",
        &format!("s3://{BUCKET}/{prefix}"),
        "--s3-endpoint",
        endpoint,
        "--s3-allow-http",
        "--s3-anonymous",
    ]
    .map(String::from)
    .to_vec()
}

fn start(data: &Path, flags: &[String], admin: Option<&str>) -> Server {
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_as(BIN, data, &extra, admin)
}

/// `bunker ARGS` against `server` as `token`.
fn bunker(server: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", token)
        .output()
        .expect("run bunker")
}

/// A request's status and body, whatever the status.
fn call(method: &str, url: &str, token: &str, body: Option<&[u8]>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!("Bearer {token}");
    let r = match (method, body) {
        ("GET", _) => agent.get(url).header("authorization", &auth).call(),
        ("DELETE", _) => agent.delete(url).header("authorization", &auth).call(),
        ("POST", Some(b)) => agent
            .post(url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .send(b),
        ("PUT", Some(b)) => agent.put(url).header("authorization", &auth).send(b),
        _ => unreachable!("{method}"),
    }
    .expect("an answer");
    let status = r.status().as_u16();
    (status, r.into_body().read_to_string().unwrap())
}

/// A new token of `role`: (secret, id).
fn create_token(server: &Server, role: &str) -> (String, String) {
    let (status, body) = call(
        "POST",
        &format!("{}/v1/tokens", server.url),
        &server.admin,
        Some(format!(r#"{{"role":"{role}"}}"#).as_bytes()),
    );
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["token"].as_str().unwrap().to_string(),
        v["info"]["id"].as_str().unwrap().to_string(),
    )
}

fn upload(server: &Server, token: &str, name: &str, data: &[u8]) -> (u16, String) {
    call(
        "PUT",
        &format!("{}/v1/snapshots/{name}", server.url),
        token,
        Some(data),
    )
}

/// Runs `bunker ARGS` expected to fail: its stderr.
fn fails(args: &[&str], flags: &[String]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(flags)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "bunker {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn serve_fails(data: &Path, flags: &[String]) -> String {
    let data = data.to_str().unwrap();
    fails(&["serve", "--data", data, "--listen", "127.0.0.1:0"], flags)
}

/// Both token tests on one store: starting and stopping one costs more
/// than either test.
#[test]
fn tokens_on_a_bucket_survive_the_server_and_change_only_once_the_bucket_has_them() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    tokens_and_check_history_survive_the_loss_of_the_server(&store);
    let proxy = Proxy::start(&store.endpoint);
    a_token_change_the_bucket_refuses_is_not_made(&proxy);
}

fn tokens_and_check_history_survive_the_loss_of_the_server(store: &Store) {
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let flags = flags(dir.path(), "dr", "", &store.endpoint, "tokens");
    let server = start(&data, &flags, None);
    let admin = server.admin.clone();
    let (writer, _) = create_token(&server, "writer");
    let (reader, _) = create_token(&server, "reader");
    let (revoked, revoked_id) = create_token(&server, "writer");
    let (status, body) = call(
        "DELETE",
        &format!("{}/v1/tokens/{revoked_id}", server.url),
        &admin,
        None,
    );
    assert_eq!(status, 204, "{body}");
    let (status, body) = upload(&server, &writer, "vol", &[7u8; 100_000]);
    assert_eq!(status, 201, "{body}");
    let out = bunker(&server, &admin, &["verify"]);
    assert!(out.status.success(), "{out:?}");
    let checks = std::fs::read(data.join("server/checks.json")).unwrap();
    assert!(server.stop().success());

    // The disk is lost; a new server on the bucket keeps every token.
    std::fs::remove_dir_all(&data).unwrap();
    let server = start(&data, &flags, Some(&admin));
    assert!(
        !data.join("admin.token").exists(),
        "a new admin token was made although the bucket had tokens"
    );
    assert_eq!(
        std::fs::read(data.join("server/checks.json")).unwrap(),
        checks,
        "the check history was not restored"
    );
    let (status, body) = upload(&server, &writer, "vol", &[8u8; 100_000]);
    assert_eq!(status, 201, "the old writer token: {body}");
    let (status, body) = call(
        "GET",
        &format!("{}/v1/snapshots/vol", server.url),
        &reader,
        None,
    );
    assert_eq!(status, 200, "the old reader token: {body}");
    let (status, body) = upload(&server, &revoked, "vol", &[9u8; 1000]);
    assert_eq!(status, 401, "the revoked token: {body}");
    let out = bunker(&server, &admin, &["--json", "token", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 3, "{list}");
    assert!(server.stop().success());
}

fn a_token_change_the_bucket_refuses_is_not_made(proxy: &Proxy) {
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let flags = flags(dir.path(), "refuse", "", &proxy.endpoint, "refuse");
    let server = start(&data, &flags, None);
    let (writer, writer_id) = create_token(&server, "writer");
    let file = data.join("server/tokens.json");
    let before = std::fs::read(&file).unwrap();

    proxy.set_for("PUT", Fault::SlowDown);
    let (status, body) = call(
        "POST",
        &format!("{}/v1/tokens", server.url),
        &server.admin,
        Some(br#"{"role":"reader"}"#),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("store_unavailable") && body.contains("server/tokens.json"),
        "{body}"
    );
    let (status, body) = call(
        "DELETE",
        &format!("{}/v1/tokens/{writer_id}", server.url),
        &server.admin,
        None,
    );
    assert_eq!(status, 503, "{body}");
    // Rolled back: the file is as it was, and so are the tokens.
    assert_eq!(std::fs::read(&file).unwrap(), before);
    let (status, _) = upload(&server, &writer, "vol", &[1u8; 1000]);
    assert_ne!(status, 401, "the revoke that failed was made");

    proxy.set(Fault::Pass);
    let (_, reader_id) = create_token(&server, "reader");
    let out = bunker(&server, &server.admin, &["--json", "token", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    assert!(ids.contains(&writer_id.as_str()) && ids.contains(&reader_id.as_str()));
    assert!(server.stop().success());
}

#[test]
fn one_server_per_bucket_the_lease() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let dir = bunker_tests::scratch();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let long = flags(dir.path(), "long", "", &store.endpoint, "lease");
    let ttl = Duration::from_secs(2);
    let short = flags(
        dir.path(),
        "short",
        "lease_ttl_secs = 2\n",
        &store.endpoint,
        "lease",
    );

    // A second server, and a repair, are refused naming bucket and holder.
    let server = start(&a, &long, None);
    let admin = server.admin.clone();
    let pid = server.child.id();
    let err = serve_fails(&b, &long);
    for want in [
        format!("s3://{BUCKET}/lease"),
        format!("pid {pid}"),
        "holds the lease on this bucket until".into(),
        "--s3-break-lease".into(),
    ] {
        assert!(err.contains(&want), "{want:?} not in {err}");
    }
    let mut repair = vec!["repair", "--rebuild-index", "--data", b.to_str().unwrap()];
    repair.extend(long.iter().map(String::as_str));
    let err = fails(&repair, &[]);
    assert!(err.contains(&format!("pid {pid}")), "{err}");

    // SIGKILL: the same data directory takes its lease back at once
    // (60 s from expiring), now with a short ttl.
    drop(server);
    let started = Instant::now();
    let server = start(&a, &short, Some(&admin));
    let (status, body) = upload(&server, &admin, "vol", &[1u8; 10_000]);
    assert_eq!(status, 201, "{body}");
    eprintln!("restarted after SIGKILL in {:?}", started.elapsed());

    // Dead for longer than its ttl: another data directory takes over.
    drop(server);
    let killed = Instant::now();
    std::thread::sleep((ttl + Duration::from_millis(200)).saturating_sub(killed.elapsed()));
    let server = start(&b, &short, Some(&admin));
    let (status, body) = upload(&server, &admin, "vol", &[2u8; 10_000]);
    assert_eq!(status, 201, "{body}");

    // Broken by an operator: the loser's next renewal (every ttl/4)
    // fences it; it answers 503 naming the new holder. Polled with token
    // creations, not uploads: a pack the loser uploaded in the meantime
    // would take an id the taker hands out too (create-only uploads make
    // that a conflict, never an overwrite).
    let taker = {
        let mut f = short.clone();
        f.push("--s3-break-lease".into());
        start(&c, &f, Some(&admin))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, body) = call(
            "POST",
            &format!("{}/v1/tokens", server.url),
            &admin,
            Some(br#"{"role":"reader"}"#),
        );
        if status == 503 {
            break body;
        }
        assert_eq!(status, 201, "{body}");
        assert!(Instant::now() < deadline, "the old holder still writes");
        std::thread::sleep(Duration::from_millis(100));
    };
    let taker_pid = format!("pid {}", taker.child.id());
    assert!(
        body.contains("took over the lease") && body.contains(&taker_pid),
        "{body}"
    );
    let (status, body) = upload(&server, &admin, "old", &[3u8; 1000]);
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("store_unavailable") && body.contains(&taker_pid),
        "{body}"
    );
    let (status, body) = upload(&taker, &admin, "vol", &[4u8; 10_000]);
    assert_eq!(status, 201, "{body}");
    assert!(server.stop().success());
    assert!(taker.stop().success());
    // Released on a clean stop: a third data directory starts at once.
    let server = start(&a, &long, Some(&admin));
    assert!(server.stop().success());
}

#[test]
fn an_unknown_storage_key_is_refused_naming_key_and_file() {
    let dir = bunker_tests::scratch();
    let config = dir.path().join("bunker.toml");
    std::fs::write(
        &config,
        "[storage]\nkind = \"s3\"\nbucket = \"b\"\nend_point = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let flags = ["--config".to_string(), config.display().to_string()];
    let err = serve_fails(&dir.path().join("data"), &flags);
    assert!(
        err.contains("unknown key `end_point` in [storage]") && err.contains("bunker.toml"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "{err}");
}

#[test]
fn gc_on_a_bucket_takes_pack_lengths_from_the_listing_not_a_head_each() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    store.create_bucket(BUCKET);
    let proxy = Proxy::start(&store.endpoint);
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let flags = flags(dir.path(), "gc", "", &proxy.endpoint, "gc");
    let server = start(&data, &flags, None);
    let admin = server.admin.clone();
    // A pack per commit; all but the last snapshot deleted.
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = upload(&server, &admin, "vol", &noise(i, 300_000));
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        ids.push(v["id"].as_u64().unwrap());
    }
    for id in &ids[..4] {
        let (status, body) = call(
            "DELETE",
            &format!("{}/v1/snapshots/vol/{id}", server.url),
            &admin,
            None,
        );
        assert_eq!(status, 204, "{body}");
    }
    // A new process knows no pack's length.
    assert!(server.stop().success());
    let server = start(&data, &flags, Some(&admin));
    let before = proxy.counts();
    let out = bunker(&server, &admin, &["--json", "gc"]);
    assert!(out.status.success(), "{out:?}");
    let after = proxy.counts();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted = report["packs_deleted"].as_u64().unwrap();
    assert!(deleted >= 4, "{report}");
    let delta = |m: &str| after.get(m).copied().unwrap_or(0) - before.get(m).copied().unwrap_or(0);
    assert_eq!(delta("HEAD"), 0, "HEADs during GC: {before:?} -> {after:?}");
    // Deleted one by one (DELETE) or in bulk (POST ?delete).
    assert!(
        delta("DELETE") + delta("POST") >= deleted,
        "{before:?} -> {after:?}"
    );
    // What is kept still restores.
    let out = bunker(
        &server,
        &admin,
        &[
            "restore",
            &format!("vol@{}", ids[4]),
            dir.path().join("r").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read(dir.path().join("r")).unwrap() == noise(4, 300_000));
    assert!(server.stop().success());
}
