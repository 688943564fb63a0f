//! The `bunker` binary against a real server on loopback: backup, restore,
//! drill, and the errors a user meets, with their messages and exit codes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use bunker_testdata::image::{Image, ImageSpec};
use bunker_tests::server::Server;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

fn bunker(server: &Server, token_file: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BUNKER_SERVER", &server.url)
        .env_remove("BUNKER_TOKEN")
        .arg("--token-file")
        .arg(token_file)
        .output()
        .expect("run bunker")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(ok(o).trim()).expect("JSON output")
}

/// The server's `/metrics` text.
fn metrics(server: &Server) -> String {
    ureq::get(format!("{}/metrics", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap()
}

/// Per snapshot (`name@id`): its last verify (passed, detail) and whether
/// its last drill passed, from `bunker --json snapshots`.
type CheckRow = (String, Option<(bool, String)>, Option<bool>);

fn checks(server: &Server, token: &Path) -> Vec<CheckRow> {
    let list = json(&bunker(server, token, &["--json", "snapshots"]));
    list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let verify = s["last_verify"].as_object().map(|c| {
                (
                    c["ok"].as_bool().unwrap(),
                    c["detail"].as_str().unwrap().to_string(),
                )
            });
            (
                format!("{}@{}", s["name"].as_str().unwrap(), s["id"]),
                verify,
                s["last_drill"]["ok"].as_bool(),
            )
        })
        .collect()
}

fn write_image(path: &Path, spec: &ImageSpec, day: u32) -> Vec<u8> {
    let mut data = Vec::new();
    Image::new(spec, day).write_to(&mut data).unwrap();
    std::fs::write(path, &data).unwrap();
    data
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    server: Server,
    token: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = bunker_tests::scratch();
    let root = dir.path().to_path_buf();
    let server = Server::start(BIN, &root.join("data"), &[]);
    let token = root.join("data/admin.token");
    Setup {
        _dir: dir,
        root,
        server,
        token,
    }
}

#[test]
fn backup_restore_round_trips_and_a_changed_day_uploads_little() {
    let s = setup();
    let spec = ImageSpec::new(21, 48 << 20);
    let day0 = write_image(&s.root.join("day0.img"), &spec, 0);
    let day1 = write_image(&s.root.join("day1.img"), &spec, 1);
    let b0 = json(&bunker(
        &s.server,
        &s.token,
        &[
            "--json",
            "backup",
            "vol",
            s.root.join("day0.img").to_str().unwrap(),
        ],
    ));
    for key in [
        "name",
        "id",
        "size_bytes",
        "new_bytes",
        "chunks",
        "new_chunks",
        "seconds",
    ] {
        assert!(b0.get(key).is_some(), "backup --json lacks {key}: {b0}");
    }
    assert_eq!(b0["size_bytes"].as_u64(), Some(day0.len() as u64));
    let b1 = json(&bunker(
        &s.server,
        &s.token,
        &[
            "--json",
            "backup",
            "vol",
            s.root.join("day1.img").to_str().unwrap(),
        ],
    ));
    let new = b1["new_bytes"].as_u64().unwrap();
    let uploaded = b1["uploaded_bytes"].as_u64().unwrap();
    assert!(
        new < day1.len() as u64 / 8,
        "day 1 stored {new} of {}",
        day1.len()
    );
    assert!(
        uploaded < day1.len() as u64 / 8,
        "day 1 sent {uploaded} bytes"
    );
    // Restore both to files, bit-exact.
    let id0 = b0["id"].as_u64().unwrap();
    let r0 = s.root.join("r0.img");
    ok(&bunker(
        &s.server,
        &s.token,
        &["restore", &format!("vol@{id0}"), r0.to_str().unwrap()],
    ));
    assert!(std::fs::read(&r0).unwrap() == day0, "day 0 restore differs");
    let r1 = s.root.join("r1.img");
    ok(&bunker(
        &s.server,
        &s.token,
        &["restore", "vol", r1.to_str().unwrap()],
    ));
    assert!(
        std::fs::read(&r1).unwrap() == day1,
        "latest restore differs"
    );
    // Zero chunks were left as holes.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&r1).unwrap();
    assert!(
        m.blocks() * 512 < m.len(),
        "restore is not sparse: {} blocks for {} bytes",
        m.blocks(),
        m.len()
    );
    // Restore refuses to overwrite; --force overwrites.
    let o = bunker(
        &s.server,
        &s.token,
        &["restore", "vol", r1.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exists") && err.contains("--force"), "{err}");
    ok(&bunker(
        &s.server,
        &s.token,
        &[
            "restore",
            "--force",
            &format!("vol@{id0}"),
            r1.to_str().unwrap(),
        ],
    ));
    assert!(std::fs::read(&r1).unwrap() == day0);
    // Snapshots lists both; drill verifies.
    let list = json(&bunker(
        &s.server,
        &s.token,
        &["--json", "snapshots", "vol"],
    ));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
    let d = json(&bunker(&s.server, &s.token, &["--json", "drill", "vol"]));
    assert_eq!(d["verified"], true);
    assert_eq!(d["bytes"].as_u64(), Some(day1.len() as u64));
    let all = bunker(&s.server, &s.token, &["drill", "--all"]);
    assert!(ok(&all).contains("OK"));
}

#[test]
fn stdin_backup_and_stdout_restore_round_trip() {
    let s = setup();
    let spec = ImageSpec::new(22, 16 << 20);
    let data = write_image(&s.root.join("img"), &spec, 0);
    let mut child = Command::new(BIN)
        .args(["--json", "backup", "piped", "-"])
        .env("BUNKER_SERVER", &s.server.url)
        .arg("--token-file")
        .arg(&s.token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    let j: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(j["size_bytes"].as_u64(), Some(data.len() as u64));
    let o = bunker(&s.server, &s.token, &["restore", "piped", "-"]);
    assert!(o.status.success());
    assert!(o.stdout == data, "stdout restore differs");
}

#[test]
fn drill_fails_and_names_the_chunk_when_a_pack_byte_flips() {
    let dir = bunker_tests::scratch();
    let data_dir = dir.path().join("data");
    let spec = ImageSpec::new(23, 16 << 20);
    let img = dir.path().join("img");
    write_image(&img, &spec, 0);
    let token = data_dir.join("admin.token");
    {
        let server = Server::start(BIN, &data_dir, &[]);
        ok(&bunker(
            &server,
            &token,
            &["backup", "vol", img.to_str().unwrap()],
        ));
        server.stop();
    }
    // Flip a byte in the middle of the biggest pack (inside a record).
    let (len, pack) = biggest_pack(&data_dir);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let server = Server::start(BIN, &data_dir, &[]);
    let o = bunker(&server, &token, &["drill", "vol"]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "drill must exit 4 on damage: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("FAILED") && text.contains("chunk") && text.contains("damaged"),
        "{text}"
    );
    let r = bunker(
        &server,
        &token,
        &["restore", "vol", dir.path().join("out").to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(4));
}

/// The largest sealed pack of the data directory `data`, with its length.
fn biggest_pack(data: &Path) -> (u64, std::path::PathBuf) {
    let mut packs: Vec<(u64, std::path::PathBuf)> = bunker_tests::pack_files(data, "pack")
        .into_iter()
        .map(|p| (p.metadata().unwrap().len(), p))
        .collect();
    packs.sort();
    packs.pop().expect("a sealed pack")
}

/// The text a command printed, both streams.
fn said(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_alive(server: &mut Server, during: &str) {
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died during {during}"
    );
}

/// Regression (issue 12, item 12): packs were read through memory maps, so
/// a pack truncated underneath the running server (or a bad sector) was
/// SIGBUS on the next read: the server died, and restarted into the same
/// crash. Now restore, drill and verify fail naming the chunk or the
/// snapshot, and the server stays up; an I/O error (failpoint) is reported
/// unreadable and quarantines nothing.
#[test]
fn a_pack_truncated_or_failing_under_a_running_server_fails_requests_not_the_server() {
    let dir = bunker_tests::scratch();
    let img = dir.path().join("img");
    let out = dir.path().join("out");
    write_image(&img, &ImageSpec::new(29, 16 << 20), 0);
    // Truncated while serving.
    let data_dir = dir.path().join("data");
    let token = data_dir.join("admin.token");
    let mut server = Server::start(BIN, &data_dir, &[]);
    ok(&bunker(
        &server,
        &token,
        &["backup", "vol", img.to_str().unwrap()],
    ));
    // A drill first, so the server has the pack open (mapped, before).
    ok(&bunker(&server, &token, &["drill", "vol"]));
    let (len, pack) = biggest_pack(&data_dir);
    bunker_tests::truncate(&pack, len / 2);
    for args in [
        vec!["restore", "vol", out.to_str().unwrap()],
        vec!["drill", "vol"],
    ] {
        let o = bunker(&server, &token, &args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", said(&o));
        assert!(
            said(&o).contains("chunk"),
            "{args:?} names no chunk: {}",
            said(&o)
        );
        assert_alive(&mut server, &format!("{args:?}"));
    }
    let o = bunker(&server, &token, &["verify"]);
    assert_eq!(o.status.code(), Some(4), "verify: {}", said(&o));
    assert!(
        said(&o).contains("SNAPSHOT vol@"),
        "verify names no snapshot: {}",
        said(&o)
    );
    assert_alive(&mut server, "verify");
    ok(&bunker(
        &server,
        &token,
        &["backup", "other", img.to_str().unwrap()],
    ));
    server.stop();

    // Every pack read fails with EIO.
    let data_dir = dir.path().join("data-eio");
    let token = data_dir.join("admin.token");
    let server = Server::start(BIN, &data_dir, &[]);
    ok(&bunker(
        &server,
        &token,
        &["backup", "vol", img.to_str().unwrap()],
    ));
    server.stop();
    let mut server =
        Server::start_with_env(BIN, &data_dir, &[], &[("FAILPOINTS", "pack::read=return")]);
    let o = bunker(&server, &token, &["drill", "vol"]);
    assert_ne!(
        o.status.code(),
        Some(0),
        "drill passed on EIO: {}",
        said(&o)
    );
    assert!(
        said(&o).contains("chunk"),
        "drill names no chunk: {}",
        said(&o)
    );
    let o = bunker(&server, &token, &["verify"]);
    assert_eq!(o.status.code(), Some(4), "verify: {}", said(&o));
    assert!(
        said(&o).contains("UNREADABLE") && !said(&o).contains("quarantined "),
        "verify on EIO: {}",
        said(&o)
    );
    assert_alive(&mut server, "EIO");
    server.stop();
    // Nothing was quarantined: once reads work, the drill passes.
    let server = Server::start(BIN, &data_dir, &[]);
    ok(&bunker(&server, &token, &["drill", "vol"]));
    server.stop();
}

#[test]
fn user_errors_have_clear_messages_and_exit_codes() {
    let s = setup();
    let bad_token = s.root.join("bad.token");
    std::fs::write(&bad_token, "bkr_0000000000000000_nope\n").unwrap();
    let bad_ca = s.root.join("bad-ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").unwrap();
    // (args, token file, server override, exit code, message fragment)
    type Case<'a> = (Vec<String>, Option<&'a Path>, Option<&'a str>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec!["snapshots".into()],
            Some(&s.token),
            Some("http://127.0.0.1:1"),
            1,
            "cannot reach the bunker server",
        ),
        (
            vec!["snapshots".into()],
            Some(&bad_token),
            None,
            1,
            "refused the token",
        ),
        (vec!["snapshots".into()], None, None, 1, "missing token"),
        (
            vec![
                "restore".into(),
                "nothing-here".into(),
                s.root.join("x").display().to_string(),
            ],
            Some(&s.token),
            None,
            3,
            "nothing-here",
        ),
        (
            vec!["drill".into(), "vol@99".into()],
            Some(&s.token),
            None,
            3,
            "not found",
        ),
        (
            vec![
                "backup".into(),
                "vol".into(),
                s.root.join("no-such-file").display().to_string(),
            ],
            Some(&s.token),
            None,
            1,
            "cannot read the backup source",
        ),
        (
            vec!["backup".into(), "../etc".into(), "/dev/null".into()],
            Some(&s.token),
            None,
            1,
            "must not start with a dot",
        ),
        (
            vec!["backup".into(), "bad name".into(), "/dev/null".into()],
            Some(&s.token),
            None,
            1,
            "server error 400 (invalid_name): ",
        ),
        (
            vec![
                "--ca-cert".into(),
                bad_ca.display().to_string(),
                "snapshots".into(),
            ],
            Some(&s.token),
            None,
            1,
            "no certificate in the CA file",
        ),
        (
            vec!["restore".into(), "vol@x".into(), "-".into()],
            Some(&s.token),
            None,
            2,
            "snapshot id",
        ),
        (
            vec!["frobnicate".into()],
            Some(&s.token),
            None,
            2,
            "unrecognized subcommand",
        ),
    ];
    for (args, token, server, code, fragment) in cases {
        let mut c = Command::new(BIN);
        c.args(&args)
            .env("BUNKER_SERVER", server.unwrap_or(&s.server.url))
            .env_remove("BUNKER_TOKEN");
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.contains(fragment),
            "{args:?}: expected {fragment:?} in {err:?}"
        );
        if code != 2 {
            assert_eq!(
                err.trim().lines().count(),
                1,
                "{args:?}: one line expected: {err}"
            );
        }
    }
}

#[test]
fn disk_full_on_restore_is_named() {
    let s = setup();
    let img = s.root.join("img");
    write_image(&img, &ImageSpec::new(24, 8 << 20), 0);
    ok(&bunker(
        &s.server,
        &s.token,
        &["backup", "vol", img.to_str().unwrap()],
    ));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let o = Command::new(BIN)
        .args(["restore", "vol", "-"])
        .env("BUNKER_SERVER", &s.server.url)
        .arg("--token-file")
        .arg(&s.token)
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the disk is full"), "{err}");
}

#[test]
fn token_commands_print_the_secret_alone_on_the_last_line() {
    let s = setup();
    let out = ok(&bunker(
        &s.server,
        &s.token,
        &[
            "token",
            "create",
            "--role",
            "reader",
            "--scope",
            "db-",
            "--name",
            "monitoring",
        ],
    ));
    let secret = out.trim().lines().last().unwrap();
    assert!(secret.starts_with("bkr_"), "{out}");
    let secret_file = s.root.join("reader.token");
    std::fs::write(&secret_file, secret).unwrap();
    // The reader can list but not create tokens.
    ok(&bunker(&s.server, &secret_file, &["snapshots"]));
    let o = bunker(&s.server, &secret_file, &["token", "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not allowed"));
    let list = ok(&bunker(&s.server, &s.token, &["token", "list"]));
    let id = list
        .lines()
        .find(|l| l.contains("monitoring"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    ok(&bunker(&s.server, &s.token, &["token", "revoke", &id]));
    let o = bunker(&s.server, &secret_file, &["snapshots"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the token"));
}

#[test]
fn demo_runs_to_the_end() {
    let o = Command::new(BIN)
        .args(["demo", "--size", "64M"])
        .output()
        .unwrap();
    let out = ok(&o);
    for fragment in [
        "backup day 0",
        "backup day 1",
        "restore latest",
        "drill",
        "dedup ratio",
        "verification             OK",
    ] {
        assert!(
            out.contains(fragment),
            "demo output lacks {fragment:?}:\n{out}"
        );
    }
}

#[test]
fn serve_works_with_a_relative_data_directory() {
    // Regression: the parent of "data" is "", which durable mkdir once tried
    // to create.
    use std::io::{BufRead, BufReader};
    let dir = bunker_tests::scratch();
    let mut child = Command::new(BIN)
        .args(["serve", "--data", "data", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("bunker listening on http://127.0.0.1:"),
        "{line:?}"
    );
    assert!(
        dir.path().join("data/config").exists() && dir.path().join("data/admin.token").exists()
    );
}

#[test]
fn the_last_admin_cannot_be_revoked_and_scoped_admins_stay_in_scope() {
    let s = setup();
    let list = ok(&bunker(&s.server, &s.token, &["token", "list"]));
    let admin_id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let o = bunker(&s.server, &s.token, &["token", "revoke", &admin_id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("last unscoped admin"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = ok(&bunker(
        &s.server,
        &s.token,
        &["token", "create", "--role", "admin", "--scope", "db-"],
    ));
    let scoped = s.root.join("scoped.token");
    std::fs::write(&scoped, out.trim().lines().last().unwrap()).unwrap();
    let o = bunker(&s.server, &scoped, &["token", "create", "--role", "writer"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("scoped inside it"));
    ok(&bunker(
        &s.server,
        &scoped,
        &["token", "create", "--role", "writer", "--scope", "db-east-"],
    ));
    // --token-file wins over BUNKER_TOKEN.
    let o = Command::new(BIN)
        .args(["snapshots"])
        .env("BUNKER_SERVER", &s.server.url)
        .env("BUNKER_TOKEN", "bkr_0_bad")
        .arg("--token-file")
        .arg(&s.token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_backup_cut_by_a_dying_server_fails_cleanly() {
    let dir = bunker_tests::scratch();
    let data_dir = dir.path().join("data");
    let server = Server::start(BIN, &data_dir, &[]);
    let token = data_dir.join("admin.token");
    let mut child = Command::new(BIN)
        .args(["backup", "cut", "-"])
        .env("BUNKER_SERVER", &server.url)
        .arg("--token-file")
        .arg(&token)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let block = bunker_tests::noise(31, 20 << 20);
    stdin.write_all(&block).unwrap();
    // The first block has been sent (or is being sent); the server dies.
    drop(server);
    let _ = stdin.write_all(&bunker_tests::noise(32, 20 << 20));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") || err.contains("cannot reach the bunker server"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Nothing was committed: a restarted server has no snapshot "cut".
    let server = Server::start(BIN, &data_dir, &[]);
    let o = bunker(&server, &token, &["snapshots", "cut"]);
    assert!(!ok(&o).contains("cut "), "a cut backup must not be listed");
}

#[test]
fn prune_keeps_what_the_policy_says_and_only_admins_prune() {
    let s = setup();
    let img = s.root.join("img");
    std::fs::write(&img, bunker_tests::noise(40, 1 << 20)).unwrap();
    for _ in 0..5 {
        ok(&bunker(
            &s.server,
            &s.token,
            &["backup", "vol", img.to_str().unwrap()],
        ));
    }
    let dry = json(&bunker(
        &s.server,
        &s.token,
        &["--json", "prune", "vol", "--keep-last", "2", "--dry-run"],
    ));
    assert_eq!(dry["dry_run"], true);
    let snaps = dry["names"][0]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 5);
    assert_eq!(snaps.iter().filter(|s| s["keep"] == true).count(), 2);
    assert_eq!(snaps[0]["reasons"][0], "last");
    let listed = json(&bunker(
        &s.server,
        &s.token,
        &["--json", "snapshots", "vol"],
    ));
    assert_eq!(
        listed["snapshots"].as_array().unwrap().len(),
        5,
        "a dry run deletes nothing"
    );
    let out = ok(&bunker(
        &s.server,
        &s.token,
        &["prune", "vol", "--keep-last", "2"],
    ));
    assert!(out.contains("removed 3"), "{out}");
    let listed = json(&bunker(
        &s.server,
        &s.token,
        &["--json", "snapshots", "vol"],
    ));
    let ids: Vec<u64> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![4, 5], "the two newest stay");
    // A policy that keeps nothing is refused; writers may not prune.
    let o = bunker(&s.server, &s.token, &["prune", "vol"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("keeps nothing"));
    let out = ok(&bunker(
        &s.server,
        &s.token,
        &["token", "create", "--role", "writer"],
    ));
    let w = s.root.join("w.token");
    std::fs::write(&w, out.trim().lines().last().unwrap()).unwrap();
    let o = bunker(&s.server, &w, &["prune", "vol", "--keep-last", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not allowed"));
    assert_eq!(
        json(&bunker(
            &s.server,
            &s.token,
            &["--json", "snapshots", "vol"]
        ))["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn verify_names_damage_and_repair_rebuilds_a_lost_index() {
    let dir = bunker_tests::scratch();
    let data_dir = dir.path().join("data");
    let token = data_dir.join("admin.token");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    let a_data = write_image(&a, &ImageSpec::new(50, 8 << 20), 0);
    std::fs::write(&b, bunker_tests::noise(51, 4 << 20)).unwrap();
    {
        let server = Server::start(BIN, &data_dir, &[]);
        ok(&bunker(
            &server,
            &token,
            &["backup", "a", a.to_str().unwrap()],
        ));
        ok(&bunker(
            &server,
            &token,
            &["backup", "b", b.to_str().unwrap()],
        ));
        assert_eq!(
            checks(&server, &token),
            vec![("a@1".into(), None, None), ("b@2".into(), None, None)]
        );
        let clean = json(&bunker(&server, &token, &["--json", "verify"]));
        assert_eq!(clean["clean"], true, "{clean}");
        assert!(clean["chunks"].as_u64().unwrap() > 10);
        ok(&bunker(&server, &token, &["drill", "b"]));
        let v = Some((true, "full verify: clean".to_string()));
        assert_eq!(
            checks(&server, &token),
            vec![
                ("a@1".into(), v.clone(), None),
                ("b@2".into(), v.clone(), Some(true)),
            ]
        );
        let table = ok(&bunker(&server, &token, &["snapshots"]));
        assert!(
            table.contains("VERIFIED") && table.contains("never") && table.contains(" ago"),
            "{table}"
        );
        // Repair needs the server stopped: the repository is locked.
        let o = Command::new(BIN)
            .args(["repair", "--rebuild-index", "--data"])
            .arg(&data_dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("stop the server first"));
        server.stop();
    }
    // Lose the index entirely; repair rebuilds it from the packs.
    std::fs::remove_dir_all(data_dir.join("index")).unwrap();
    let o = Command::new(BIN)
        .args(["repair", "--rebuild-index", "--data"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("rebuilt the index"));
    // Damage snapshot a's data: the pack holding its first chunk.
    let packs = bunker_tests::pack_files(&data_dir, "pack");
    let first = &packs[0];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[200] ^= 0x20;
    std::fs::write(first, &bytes).unwrap();
    let server = Server::start(BIN, &data_dir, &[]);
    // b's chunks alone are intact; a sample reads part of the packs.
    let only_b = json(&bunker(
        &server,
        &token,
        &["--json", "verify", "--snapshot", "b"],
    ));
    assert_eq!(only_b["clean"], true, "{only_b}");
    let o = bunker(&server, &token, &["--json", "verify", "--sample", "100"]);
    assert_eq!(o.status.code(), Some(4));
    let sample: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(sample["sample_percent"], 100.0);
    assert_eq!(sample["newly_quarantined"], 1, "{sample}");
    let o = bunker(&server, &token, &["verify", "--sample", "0"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad percentage is a usage error"
    );
    let o = bunker(&server, &token, &["verify"]);
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("1 record(s) quarantined earlier") && out.contains("SNAPSHOT a@1"),
        "{out}"
    );
    assert!(!out.contains("SNAPSHOT b@"), "b is intact: {out}");
    // Each snapshot's last check is what the last verify said of it; the
    // history survived the restart.
    let after = checks(&server, &token);
    assert_eq!(after[0].1.as_ref().map(|c| c.0), Some(false), "{after:?}");
    assert!(
        after[0].1.as_ref().unwrap().1.contains("damaged"),
        "{after:?}"
    );
    assert_eq!(after[1].1.as_ref().map(|c| c.0), Some(true), "{after:?}");
    assert_eq!(after[1].2, Some(true), "b's drill before the restart");
    let o = bunker(&server, &token, &["drill", "a"]);
    assert_eq!(o.status.code(), Some(4));
    assert_eq!(
        checks(&server, &token)[0].2,
        Some(false),
        "a's failed drill"
    );
    let metrics = metrics(&server);
    for series in [
        "bunker_last_verify_ok{name=\"a\"} 0",
        "bunker_last_verify_ok{name=\"b\"} 1",
        "bunker_last_drill_ok{name=\"a\"} 0",
        "bunker_last_drill_ok{name=\"b\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    // b still restores; a is refused loudly.
    let rb = dir.path().join("rb");
    ok(&bunker(
        &server,
        &token,
        &["restore", "b", rb.to_str().unwrap()],
    ));
    assert!(std::fs::read(&rb).unwrap() == std::fs::read(&b).unwrap());
    let ra = dir.path().join("ra");
    let o = bunker(&server, &token, &["restore", "a", ra.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4));
    assert!(!ra.exists(), "a failed restore leaves no file");
    // Backing up the same image again stores the quarantined chunk anew
    // and heals a@1.
    ok(&bunker(
        &server,
        &token,
        &["backup", "a", a.to_str().unwrap()],
    ));
    let healed = json(&bunker(&server, &token, &["--json", "verify"]));
    assert_eq!(healed["clean"], true, "{healed}");
    assert!(
        checks(&server, &token)
            .iter()
            .all(|(_, v, _)| v.as_ref().is_some_and(|v| v.0)),
        "every snapshot verified clean after the heal"
    );
    ok(&bunker(
        &server,
        &token,
        &["restore", "a@1", ra.to_str().unwrap()],
    ));
    assert!(std::fs::read(&ra).unwrap() == a_data);
}

#[test]
fn gc_frees_what_pruned_snapshots_held_and_only_admins_run_it() {
    let s = setup();
    let img = s.root.join("img");
    let old = bunker_tests::noise(50, 3 << 20);
    let new = bunker_tests::noise(51, 3 << 20);
    std::fs::write(&img, &old).unwrap();
    ok(&bunker(
        &s.server,
        &s.token,
        &["backup", "vol", img.to_str().unwrap()],
    ));
    std::fs::write(&img, &new).unwrap();
    ok(&bunker(
        &s.server,
        &s.token,
        &["backup", "vol", img.to_str().unwrap()],
    ));
    ok(&bunker(
        &s.server,
        &s.token,
        &["prune", "vol", "--keep-last", "1"],
    ));
    let before = json(&bunker(&s.server, &s.token, &["--json", "stats"]));

    let dry = json(&bunker(&s.server, &s.token, &["--json", "gc", "--dry-run"]));
    assert_eq!(dry["dry_run"], true);
    // The old image is random: its 3 MiB do not compress.
    let would = dry["bytes_reclaimed"].as_u64().unwrap();
    assert!(would >= 3 << 20, "{dry}");
    assert_eq!(
        json(&bunker(&s.server, &s.token, &["--json", "stats"]))["stored_bytes"],
        before["stored_bytes"],
        "a dry run frees nothing"
    );
    let done = json(&bunker(&s.server, &s.token, &["--json", "gc"]));
    assert_eq!(done["bytes_reclaimed"].as_u64().unwrap(), would, "{done}");
    let after = json(&bunker(&s.server, &s.token, &["--json", "stats"]));
    assert_eq!(
        before["stored_bytes"].as_u64().unwrap() - after["stored_bytes"].as_u64().unwrap(),
        would
    );
    // Space per name, measured by the GC: the kept image's 3 MiB are vol's
    // alone (what deleting it would free).
    assert!(before["accounted_unix_ms"].is_null(), "{before}");
    assert!(after["accounted_unix_ms"].as_i64().unwrap() > 0, "{after}");
    let vol = &after["names"][0];
    assert_eq!(
        (&vol["name"], &vol["snapshots"], &vol["unique_bytes"]),
        (&"vol".into(), &1.into(), &(3u64 << 20).into()),
        "{after}"
    );
    assert_eq!(after["unique_bytes"], 3u64 << 20);
    let table = ok(&bunker(&s.server, &s.token, &["stats"]));
    assert!(
        table.contains("FREES (STORED)") && table.contains("3.00 MiB"),
        "{table}"
    );
    let out = s.root.join("out");
    ok(&bunker(
        &s.server,
        &s.token,
        &["restore", "vol", out.to_str().unwrap()],
    ));
    assert!(std::fs::read(&out).unwrap() == new);
    let text = ok(&bunker(&s.server, &s.token, &["gc"]));
    assert!(text.starts_with("freed 0 B"), "{text}");
    let metrics = metrics(&s.server);
    assert!(metrics.contains("bunker_gc_runs_total 2"), "{metrics}");
    assert!(
        metrics.contains(&format!("bunker_gc_reclaimed_bytes_total {would}")),
        "{metrics}"
    );

    let o = bunker(&s.server, &s.token, &["gc", "--rewrite-below", "2"]);
    assert_eq!(o.status.code(), Some(2), "a bad fraction is a usage error");
    let w = s.root.join("w.token");
    let out = ok(&bunker(
        &s.server,
        &s.token,
        &["token", "create", "--role", "writer"],
    ));
    std::fs::write(&w, out.trim().lines().last().unwrap()).unwrap();
    let o = bunker(&s.server, &w, &["gc"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not allowed"));
}
