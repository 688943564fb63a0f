//! Tokens and scopes end to end: a scope covers a name and what continues
//! it after a separator, never a longer name; a scoped admin reaches no
//! token, session or snapshot outside its scope; the first start writes the
//! admin secret safely; a drill records who reported it, and the server's
//! own drill finds damage that no client report can paper over.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use super::*;

fn upload_status(c: &Client, name: &str) -> u16 {
    c.put(&format!("/v1/snapshots/{name}"), &noise(90, 4096))
        .status
}

fn token_request(role: &str, scope: &str) -> Vec<u8> {
    format!(r#"{{"role":"{role}","scope":"{scope}"}}"#).into_bytes()
}

#[test]
fn a_scope_covers_its_name_and_names_continuing_it_not_longer_names() {
    let dir = bunker_tests::scratch();
    let (server, admin) = start(dir.path(), &[]);
    let writer = admin.create_token("writer", Some("db"));
    let w = admin.with_token(Some(&writer.token));
    for name in ["db", "db-1", "db.x", "db_x"] {
        assert_eq!(upload_status(&w, name), 201, "scope db uploads {name}");
    }
    for name in ["db2", "dbadmin", "d"] {
        w.put(&format!("/v1/snapshots/{name}"), &noise(91, 4096))
            .expect_error(ErrorCode::Forbidden, &format!("scope db uploads {name}"));
        w.post("/v1/sessions", format!(r#"{{"name":"{name}"}}"#).as_bytes())
            .expect_error(ErrorCode::Forbidden, &format!("scope db opens {name}"));
    }
    // A scope that already ends in a separator keeps covering what it did.
    let old_style = admin.create_token("writer", Some("db-"));
    let ow = admin.with_token(Some(&old_style.token));
    assert_eq!(upload_status(&ow, "db-2"), 201);
    ow.put("/v1/snapshots/db", &noise(92, 4096))
        .expect_error(ErrorCode::Forbidden, "scope db- uploads db");

    // Reads: a reader scoped to db sees db and db-*, not db2.
    admin.upload("db2", &noise(93, 4096));
    admin.upload("dbadmin", &noise(94, 4096));
    let reader = admin.create_token("reader", Some("db"));
    let r = admin.with_token(Some(&reader.token));
    let listed: BTreeSet<String> = r
        .get("/v1/snapshots")
        .expect(200, "scoped list")
        .snapshots()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["db", "db-1", "db-2", "db.x", "db_x"].map(String::from))
    );
    for path in [
        "/v1/snapshots/db2",
        "/v1/snapshots/db2/latest",
        "/v1/snapshots/db2/latest/data",
        "/v1/snapshots/dbadmin/latest/manifest",
    ] {
        r.get(path)
            .expect_error(ErrorCode::Forbidden, &format!("scope db reads {path}"));
    }
    assert!(r.restore("db-1", "latest") == noise(90, 4096));
    let stat_names: Vec<String> = r.stats().names.into_iter().map(|n| n.name).collect();
    assert_eq!(stat_names, ["db", "db-1", "db-2", "db.x", "db_x"]);

    // Tokens a scoped admin may create: inside its scope only.
    let db_admin = admin.create_token("admin", Some("db"));
    let da = admin.with_token(Some(&db_admin.token));
    for scope in ["db2", "dbadmin", "d"] {
        da.post("/v1/tokens", &token_request("reader", scope))
            .expect_error(ErrorCode::Forbidden, &format!("scope db creates {scope}"));
    }
    for scope in ["db", "db-", "db-1", "db.x"] {
        da.post("/v1/tokens", &token_request("reader", scope))
            .expect(201, &format!("scope db creates {scope}"));
    }
    stop(server);
}

#[test]
fn a_scoped_admin_reaches_no_token_session_or_snapshot_outside_its_scope() {
    let dir = bunker_tests::scratch();
    let (server, root) = start(dir.path(), &[]);
    let db_admin = root.create_token("admin", Some("db"));
    let da = root.with_token(Some(&db_admin.token));
    let db_writer = root.create_token("writer", Some("db-"));
    let web_writer = root.create_token("writer", Some("web-"));
    let db2_writer = root.create_token("writer", Some("db2"));
    let any_writer = root.create_token("writer", None);

    // Listing: its own token and the tokens inside db, nothing else.
    let listed = |c: &Client| -> BTreeSet<String> {
        let r = c.get("/v1/tokens");
        r.expect(200, "list tokens");
        serde_json::from_slice::<bunker_api::TokenList>(&r.body)
            .expect("token list")
            .tokens
            .into_iter()
            .map(|t| t.id)
            .collect()
    };
    assert_eq!(
        listed(&da),
        BTreeSet::from([&db_admin, &db_writer].map(|t| t.info.id.clone()))
    );
    assert_eq!(listed(&root).len(), 6);

    // Revoking: only what it can list; the rest is not found and keeps
    // working.
    let first_admin = listed(&root)
        .into_iter()
        .find(|id| {
            ![&db_admin, &db_writer, &web_writer, &db2_writer, &any_writer]
                .iter()
                .any(|t| &t.info.id == id)
        })
        .expect("the first admin's id");
    for id in [
        &web_writer.info.id,
        &db2_writer.info.id,
        &any_writer.info.id,
        &first_admin,
    ] {
        da.delete(&format!("/v1/tokens/{id}"))
            .expect_error(ErrorCode::NotFound, &format!("scope db revokes {id}"));
    }
    assert_eq!(listed(&root).len(), 6, "nothing was revoked");
    let web = root.with_token(Some(&web_writer.token));
    assert_eq!(upload_status(&web, "web-1"), 201);

    // Sessions: those of tokens it can see, for names in its scope.
    let web_session = open_session(&web, "web-2");
    let any = root.with_token(Some(&any_writer.token));
    let any_session = open_session(&any, "db-7");
    for sid in [&web_session.id, &any_session.id] {
        da.post(&format!("/v1/sessions/{sid}/missing"), &[])
            .expect_error(ErrorCode::Forbidden, "scope db uses another's session");
        da.delete(&format!("/v1/sessions/{sid}"))
            .expect_error(ErrorCode::Forbidden, "scope db aborts another's session");
    }
    web.post(&format!("/v1/sessions/{}/missing", web_session.id), &[])
        .expect(200, "the owner still has its session");
    root.post(&format!("/v1/sessions/{}/missing", any_session.id), &[])
        .expect(200, "an unscoped admin uses any session");
    let dbw = root.with_token(Some(&db_writer.token));
    let db_session = open_session(&dbw, "db-8");
    da.post(&format!("/v1/sessions/{}/missing", db_session.id), &[])
        .expect(200, "scope db uses the session of a db- writer");
    da.delete(&format!("/v1/sessions/{}", db_session.id))
        .expect(204, "scope db aborts the session of a db- writer");

    // Verify: one snapshot in its scope; the whole repository needs an
    // unscoped admin. GC too.
    assert_eq!(upload_status(&dbw, "db-1"), 201);
    da.post("/v1/verify", b"")
        .expect_error(ErrorCode::Forbidden, "scope db verifies everything");
    da.post("/v1/verify", br#"{"sample_percent":10}"#)
        .expect_error(ErrorCode::Forbidden, "scope db verifies a sample");
    da.post("/v1/verify", br#"{"snapshot":"web-1"}"#)
        .expect_error(ErrorCode::Forbidden, "scope db verifies web-1");
    let r = da.post("/v1/verify", br#"{"snapshot":"db-1"}"#);
    r.expect(200, "scope db verifies db-1");
    let report: bunker_api::VerifyReport = serde_json::from_slice(&r.body).unwrap();
    assert!(report.clean);
    assert_eq!(
        root.get("/v1/snapshots/web-1/latest")
            .expect(200, "web-1")
            .snapshot()
            .last_verify,
        None,
        "web-1 was not verified"
    );
    da.post("/v1/gc", b"")
        .expect_error(ErrorCode::Forbidden, "scope db runs GC");
    root.post("/v1/verify", b"")
        .expect(200, "the unscoped admin verifies everything");
    root.post("/v1/gc", b"")
        .expect(200, "the unscoped admin runs GC");

    da.delete(&format!("/v1/tokens/{}", db_writer.info.id))
        .expect(204, "scope db revokes a db- writer");
    dbw.get("/v1/snapshots")
        .expect_error(ErrorCode::Unauthorized, "revoked");
    stop(server);
}

/// Runs `serve` on `data`, expecting it to refuse to start: returns its
/// stderr. Fails if it starts listening or runs past [`DEADLINE`].
fn refused_start(data: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bunker serve");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started (or hung) instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "exit status {status}; stdout {out:?}");
    assert!(!out.contains("listening"), "{out}");
    err
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn first_start_refuses_a_link_at_admin_token_and_replaces_a_stale_secret() {
    let outer = bunker_tests::scratch();
    let data = outer.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let token_file = data.join("admin.token");

    // A link is refused, its target untouched, no token created.
    let victim = outer.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&victim, &token_file).unwrap();
    let err = refused_start(&data);
    assert!(err.contains("admin.token is a symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    assert_eq!(mode(&victim), 0o644);
    assert!(!data.join("server/tokens.json").exists());

    // The state a crash leaves between the secret and its hash (here with
    // loose permissions since): the next start writes a new secret, 0600.
    std::fs::remove_file(&token_file).unwrap();
    let stale =
        "bkr_00000000000000aa_00000000000000000000000000000000000000000000000000000000000000bb";
    std::fs::write(&token_file, format!("{stale}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (server, admin) = start(&data, &[]);
    assert_eq!(mode(&token_file), 0o600);
    assert_ne!(server.admin, stale);
    admin.get("/v1/tokens").expect(200, "the new admin token");
    admin
        .with_token(Some(stale))
        .get("/v1/tokens")
        .expect_error(ErrorCode::Unauthorized, "the stale secret");
    let first = server.admin.clone();
    stop(server);

    // tokens.json without admin.token (moved away, as docs/OPERATIONS.md advises):
    // the server starts, creates no other admin, and the secret works.
    std::fs::remove_file(&token_file).unwrap();
    let server = Server::start_as(BIN, &data, &[], Some(&first));
    assert!(!token_file.exists());
    let admin = Client::new(&server.url, Some(&first));
    let r = admin.get("/v1/tokens");
    r.expect(200, "the first admin after a restart");
    let tokens = serde_json::from_slice::<bunker_api::TokenList>(&r.body)
        .unwrap()
        .tokens;
    assert_eq!(tokens.len(), 1, "no second admin was created");
    stop(server);
}

/// `bunker-e2e ARGS` against `server` with `token`: exit code and stdout.
fn cli(server: &Server, token: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(BIN)
        .args(args)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", token)
        .output()
        .expect("run bunker");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_drill_records_who_reported_it_and_the_servers_own_drill_finds_damage() {
    let dir = bunker_tests::scratch();
    let (server, admin) = start(dir.path(), &[]);
    // Random data is stored raw, so a byte in the middle of its pack is
    // chunk data; zeros make the image sparse.
    let mut data = noise(crate::seed(96), 6 * MIB);
    data[MIB..2 * MIB].fill(0);
    let damaged = admin.upload("vol-1", &data);
    // The same chunks under a name outside the scope used below.
    let sharing = admin.upload("web-1", &data);
    stop(server);
    let pack = bunker_tests::pack_files(dir.path(), "pack")
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a sealed pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();

    let (server, admin) = start(dir.path(), &[]);
    let intact_data = noise(97, 3 * MIB);
    let intact = admin.upload("vol-2", &intact_data);
    let r = admin.post(
        "/v1/tokens",
        br#"{"role":"reader","scope":"vol","name":"monitoring"}"#,
    );
    r.expect(201, "create the reader");
    let reader: TokenCreated = serde_json::from_slice(&r.body).unwrap();
    let rc = admin.with_token(Some(&reader.token));
    let drill_path = |s: &Snapshot| format!("/v1/snapshots/{}/{}/drill", s.name, s.id);
    let recorded = |s: &Snapshot| {
        admin
            .get(&format!("/v1/snapshots/{}/{}", s.name, s.id))
            .expect(200, "metadata")
            .snapshot()
    };

    // A reader's claim is recorded as its claim: by whom, not verified.
    let claim = format!(r#"{{"ok":true,"bytes":{},"seconds":0.5}}"#, data.len());
    rc.post(&drill_path(&damaged), claim.as_bytes())
        .expect(200, "a reader reports a passed drill");
    let d = recorded(&damaged).last_drill.expect("a drill");
    assert!(d.ok);
    assert_eq!(d.verified_by, bunker_api::Verifier::Client);
    assert_eq!(d.token.as_deref(), Some(reader.info.id.as_str()));
    assert_eq!(d.token_name.as_deref(), Some("monitoring"));
    assert_eq!(recorded(&damaged).last_server_drill, None);

    // The server's own drill reads the data and finds the damage.
    rc.post(&drill_path(&damaged), br#"{"verify":"bogus"}"#)
        .expect_error(ErrorCode::BadRequest, "an unknown verifier");
    let r = rc.post(&drill_path(&damaged), br#"{"verify":"server"}"#);
    r.expect(200, "a server drill of the damaged snapshot");
    let sd: bunker_api::ServerDrill = serde_json::from_slice(&r.body).unwrap();
    assert!(!sd.ok && !sd.check.ok, "{sd:?}");
    let why = sd.error.clone().expect("why it failed");
    assert!(why.contains("pack"), "the error names the damage: {why}");
    assert!(sd.bytes < data.len() as u64);
    assert_eq!(sd.check.verified_by, bunker_api::Verifier::Server);
    assert_eq!(sd.check.token.as_deref(), Some(reader.info.id.as_str()));
    let after = recorded(&damaged);
    assert_eq!(after.last_drill.as_ref(), Some(&sd.check));
    assert_eq!(after.last_server_drill.as_ref(), Some(&sd.check));

    // A later claim is the last drill, but never replaces the server's.
    rc.post(&drill_path(&damaged), claim.as_bytes())
        .expect(200, "the reader claims success again");
    let after = recorded(&damaged);
    assert!(after
        .last_drill
        .as_ref()
        .is_some_and(|d| d.ok && d.verified_by == bunker_api::Verifier::Client));
    assert_eq!(after.last_server_drill.as_ref(), Some(&sd.check));
    let m = admin.metrics();
    assert_eq!(
        metric(&m, "bunker_last_drill_ok{name=\"vol-1\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "bunker_last_server_drill_ok{name=\"vol-1\"}"),
        Some(0.0)
    );

    // An intact snapshot passes the server's drill, zeros and all.
    let r = rc.post(
        "/v1/snapshots/vol-2/latest/drill",
        br#"{"verify":"server"}"#,
    );
    r.expect(200, "a server drill of the intact snapshot");
    let sd: bunker_api::ServerDrill = serde_json::from_slice(&r.body).unwrap();
    assert!(sd.ok && sd.check.ok && sd.error.is_none(), "{sd:?}");
    assert_eq!((sd.name.as_str(), sd.id), ("vol-2", intact.id));
    assert_eq!(sd.bytes, intact_data.len() as u64);
    assert_eq!(recorded(&intact).last_server_drill, Some(sd.check));

    // Not a way around scopes and roles.
    let other = root_scoped_reader(&admin, "web");
    admin
        .with_token(Some(&other))
        .post(&drill_path(&intact), br#"{"verify":"server"}"#)
        .expect_error(ErrorCode::Forbidden, "a reader out of scope");

    // The CLI: `drill --server-side`, and the kind in `snapshots`.
    let (code, out, err) = cli(&server, &reader.token, &["drill", "--server-side", "vol-2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("drill vol-2@") && out.contains("read and verified by the server"),
        "{out}"
    );
    let (code, out, err) = cli(&server, &reader.token, &["drill", "--server-side", "vol-1"]);
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(out.contains("(server): FAILED"), "{out}");
    let (code, out, err) = cli(
        &server,
        &reader.token,
        &["--json", "drill", "--server-side", "vol-2"],
    );
    assert_eq!(code, Some(0), "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["verified_by"], "server");
    assert_eq!(j["verified"], true);
    assert_eq!(j["bytes"], intact_data.len() as u64);
    let (code, out, _) = cli(&server, &reader.token, &["drill", "vol-2"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, table, _) = cli(&server, &reader.token, &["snapshots"]);
    assert_eq!(code, Some(0));
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{table}"))
            .to_string()
    };
    assert!(
        row("vol-1").contains("FAILED") && row("vol-1").ends_with("(server)"),
        "{table}"
    );
    assert!(
        row("vol-2").contains(" ok ") && row("vol-2").ends_with("(client)"),
        "{table}"
    );

    // A scoped admin's verify of the damaged snapshot names and records
    // only what is in its scope, though web-1 shares the damage.
    let vol_admin = admin.create_token("admin", Some("vol"));
    let r = admin
        .with_token(Some(&vol_admin.token))
        .post("/v1/verify", br#"{"snapshot":"vol-1"}"#);
    r.expect(200, "scope vol verifies vol-1");
    let report: bunker_api::VerifyReport = serde_json::from_slice(&r.body).unwrap();
    assert!(!report.clean);
    let named: Vec<&str> = report
        .damaged_snapshots
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(named, ["vol-1"]);
    assert!(recorded(&damaged).last_verify.is_some_and(|v| !v.ok));
    assert_eq!(recorded(&sharing).last_verify, None);
    stop(server);
}

/// A reader token scoped to `scope`.
fn root_scoped_reader(admin: &Client, scope: &str) -> String {
    admin.create_token("reader", Some(scope)).token
}
