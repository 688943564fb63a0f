//! An encrypted repository through the real server (`bunker serve
//! --key-file`): nothing under the data directory, nor in the bucket,
//! holds the image's text or its chunk ids; restore, verify and drill work;
//! a wrong or missing key stops the server at start, naming the key ids.
//! A passphrase-wrapped copy of the key (`bunker key export`) imports back
//! and serves; without its passphrase, or with a wrong one, serve and
//! repair stop at start and change nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bunker_testdata::stores::Store;
use bunker_tests::server::Server;

use crate::{bunker, manifest, ok_json};

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

/// One line of the marker text: distinctive, and long enough that a chance
/// match in random bytes is impossible.
const MARKER: &[u8] = b"bunker encryption marker: this line must never be readable at rest\n";

/// 1 MiB of marker text (numbered lines, so the text does not collapse to
/// one repeated chunk) in the middle of 4 MiB of generated data.
fn marker_image() -> Vec<u8> {
    let mut img = bunker_testdata::noise(19, 4 << 20);
    let text: Vec<u8> = (0u32..)
        .flat_map(|i| {
            let mut l = format!("{i:08} ").into_bytes();
            l.extend_from_slice(MARKER);
            l
        })
        .take(1 << 20)
        .collect();
    img[1 << 20..2 << 20].copy_from_slice(&text);
    img
}

fn new_key(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("repo.key");
    let o = Command::new(BIN)
        .args(["key", "create", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    (path, String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The chunk ids of `name@id`, from the server's manifest (40-byte entries:
/// end offset, chunk id), the zero id left out.
fn chunk_ids(server: &Server, name: &str, id: u64) -> Vec<[u8; 32]> {
    let m = manifest(server, name, id);
    let mut ids: Vec<[u8; 32]> = m
        .chunks_exact(40)
        .map(|e| e[8..40].try_into().unwrap())
        .filter(|id| id != &[0u8; 32])
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What in `bytes` gives away the image: the marker, or a chunk id raw or
/// in hex (either case).
fn leaks(bytes: &[u8], ids: &[[u8; 32]]) -> Option<String> {
    if find(bytes, MARKER) {
        return Some("the marker text".into());
    }
    let lower = bytes.to_ascii_lowercase();
    for id in ids {
        if find(bytes, id) {
            return Some(format!("chunk id {} (raw)", hex(id)));
        }
        if find(&lower, hex(id).as_bytes()) {
            return Some(format!("chunk id {} (hex)", hex(id)));
        }
    }
    None
}

/// Every file under `dir` that gives the image away.
fn leaking_files(dir: &Path, ids: &[[u8; 32]]) -> Vec<String> {
    let mut out = Vec::new();
    for f in bunker_tests::files_under(dir) {
        let rel = f.strip_prefix(dir).unwrap();
        if let Some(what) = leaks(&std::fs::read(&f).unwrap(), ids) {
            out.push(format!("{}: {what}", rel.display()));
        }
    }
    out
}

/// Backs `img` up as `name`; returns the snapshot id.
fn backup(server: &Server, dir: &Path, name: &str, img: &[u8]) -> u64 {
    let path = dir.join(format!("{name}.img"));
    std::fs::write(&path, img).unwrap();
    let b = ok_json(&bunker(
        server,
        &["--json", "backup", name, path.to_str().unwrap()],
    ));
    b["id"].as_u64().unwrap()
}

fn restores_bit_exact(server: &Server, dir: &Path, name: &str, id: u64, want: &[u8]) {
    let out = dir.join(format!("{name}-{id}.restored"));
    let _ = std::fs::remove_file(&out);
    let r = bunker(
        server,
        &["restore", &format!("{name}@{id}"), out.to_str().unwrap()],
    );
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(std::fs::read(&out).unwrap() == want, "restore differs");
}

/// Starts `bunker serve` expecting it to fail; its exit code and stderr.
fn serve_fails(data: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let o: Output = Command::new(BIN)
        .args(["serve", "--data"])
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn an_encrypted_server_keeps_no_text_or_chunk_id_at_rest_and_restores_bit_exact() {
    let dir = bunker_tests::scratch();
    let (key, key_id) = new_key(dir.path());
    let data = dir.path().join("data");
    let img = marker_image();
    let server = Server::start(BIN, &data, &["--key-file", key.to_str().unwrap()]);
    let info = crate::info(&server);
    assert_eq!(info["encrypted"], true, "{info}");
    assert_eq!(info["key_id"], key_id.as_str(), "{info}");
    let sealed_id = backup(&server, dir.path(), "vol", &img);
    let id = sealed_id;
    let ids = chunk_ids(&server, "vol", id);
    assert!(ids.len() >= 8, "{} chunks", ids.len());
    restores_bit_exact(&server, dir.path(), "vol", id, &img);
    let v = bunker(&server, &["verify"]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let d = bunker(&server, &["drill", "vol"]);
    assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
    server.stop();
    let leaks = leaking_files(&data, &ids);
    assert!(leaks.is_empty(), "{leaks:#?}");

    // The scan can fail: a clear server's packs give the same image away.
    let clear = dir.path().join("clear");
    let server = Server::start(BIN, &clear, &[]);
    let id = backup(&server, dir.path(), "vol", &img);
    let clear_ids = chunk_ids(&server, "vol", id);
    assert_eq!(clear_ids, ids, "the same image, the same true chunk ids");
    server.stop();
    assert!(!leaking_files(&clear, &ids).is_empty());

    // Restarted with its key, the encrypted server still restores.
    let server = Server::start(BIN, &data, &["--key-file", key.to_str().unwrap()]);
    restores_bit_exact(&server, dir.path(), "vol", sealed_id, &img);
}

#[test]
fn serve_refuses_a_missing_or_wrong_key_and_a_key_for_a_clear_repository_naming_the_ids() {
    let dir = bunker_tests::scratch();
    let (key, key_id) = new_key(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other, other_id) = new_key(&other_dir);
    let data = dir.path().join("data");
    let server = Server::start(BIN, &data, &["--key-file", key.to_str().unwrap()]);
    server.stop();

    let (code, err) = serve_fails(&data, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&key_id) && err.contains("--key-file"), "{err}");
    let (code, err) = serve_fails(&data, &["--key-file", other.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&key_id) && err.contains(&other_id), "{err}");
    // Through the config file too.
    let toml = dir.path().join("bunker.toml");
    std::fs::write(
        &toml,
        format!("[encryption]\nkey_file = {:?}\n", other.to_str().unwrap()),
    )
    .unwrap();
    let (code, err) = serve_fails(&data, &["--config", toml.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&other_id), "{err}");

    let clear = dir.path().join("clear");
    let server = Server::start(BIN, &clear, &[]);
    server.stop();
    let (code, err) = serve_fails(&clear, &["--key-file", key.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not encrypted"), "{err}");
    // Both still serve as they were created.
    let server = Server::start(BIN, &data, &["--key-file", key.to_str().unwrap()]);
    server.stop();
    let server = Server::start(BIN, &clear, &[]);
    server.stop();
}

#[test]
fn an_encrypted_server_on_a_bucket_puts_no_text_or_chunk_id_in_it() {
    let Some(store) = Store::seaweedfs() else {
        return;
    };
    let bucket = crate::s3::BUCKET;
    store.create_bucket(bucket);
    let dir = bunker_tests::scratch();
    let (key, _) = new_key(dir.path());
    let data = dir.path().join("data");
    let mut flags = crate::s3::s3_flags(&store, bucket, "encrypted");
    flags.push("--key-file".into());
    flags.push(key.to_str().unwrap().into());
    let server = crate::s3::start(&data, &flags);
    let img = marker_image();
    let id = backup(&server, dir.path(), "vol", &img);
    let ids = chunk_ids(&server, "vol", id);
    restores_bit_exact(&server, dir.path(), "vol", id, &img);
    server.stop();
    let keys = store.keys(bucket, "encrypted/");
    assert!(keys.iter().any(|k| k.contains("packs/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("snapshots/")), "{keys:?}");
    let mut leaked = Vec::new();
    for k in &keys {
        let bytes = ureq::get(format!("{}/{bucket}/{k}", store.endpoint))
            .call()
            .unwrap()
            .into_body()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap();
        if let Some(what) = leaks(&bytes, &ids) {
            leaked.push(format!("{k}: {what}"));
        }
    }
    assert!(leaked.is_empty(), "{leaked:#?}");
}

/// `bunker sync` between a clear and an encrypted repository, both ways:
/// the copies restore bit-exact on the other side, and what the encrypted
/// side received from the clear one is sealed at rest like its own.
#[test]
fn sync_between_a_clear_and_an_encrypted_repository_works_both_ways() {
    use crate::sync::{report, sync, token};
    let dir = bunker_tests::scratch();
    let (key, _) = new_key(dir.path());
    let (clear_data, sealed_data) = (dir.path().join("clear"), dir.path().join("sealed"));
    let clear = Server::start(BIN, &clear_data, &[]);
    let sealed = Server::start(BIN, &sealed_data, &["--key-file", key.to_str().unwrap()]);
    let img = marker_image();
    let mut other = bunker_testdata::noise(23, 3 << 20);
    other[..img.len() / 4].copy_from_slice(&img[..img.len() / 4]);
    let from_clear = backup(&clear, dir.path(), "plain", &img);
    backup(&sealed, dir.path(), "secret", &other);
    for (s, side) in [(&clear, "clear"), (&sealed, "sealed")] {
        for role in ["reader", "writer"] {
            token(s, role, None, dir.path(), &format!("{side}.{role}"));
        }
    }
    let t = |f: &str| dir.path().join(f);

    let r = report(&sync(
        &clear.url,
        &t("clear.reader"),
        &sealed.url,
        &t("sealed.writer"),
        &["plain"],
    ));
    assert_eq!(r["copied"], 1, "{r}");
    let r = report(&sync(
        &sealed.url,
        &t("sealed.reader"),
        &clear.url,
        &t("clear.writer"),
        &["secret"],
    ));
    assert_eq!(r["copied"], 1, "{r}");

    let copy_id = |s: &Server, name: &str| {
        let l = ok_json(&bunker(s, &["--json", "snapshots", name]));
        l["snapshots"][0]["id"].as_u64().unwrap()
    };
    let ids = chunk_ids(&clear, "plain", from_clear);
    restores_bit_exact(
        &sealed,
        dir.path(),
        "plain",
        copy_id(&sealed, "plain"),
        &img,
    );
    restores_bit_exact(
        &clear,
        dir.path(),
        "secret",
        copy_id(&clear, "secret"),
        &other,
    );
    for s in [&clear, &sealed] {
        let v = bunker(s, &["verify"]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    sealed.stop();
    let leaks = leaking_files(&sealed_data, &ids);
    assert!(leaks.is_empty(), "{leaks:#?}");
}

const PASSPHRASE: &str = "escrow passphrase of five words";

/// Runs `bunker key ...` with no passphrase in the environment.
fn key_cmd(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("key")
        .args(args)
        .env_remove(bunker_crypt::wrap::PASSPHRASE_ENV)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Wraps `key` into `dir/escrow.wkey` with the passphrase in
/// `dir/passphrase`, at the cheapest KDF memory export allows (tests only).
fn export(dir: &Path, key: &Path) -> (PathBuf, PathBuf) {
    let pass = dir.join("passphrase");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let wrapped = dir.join("escrow.wkey");
    let o = key_cmd(&[
        "export",
        "--key-file",
        key.to_str().unwrap(),
        "--out",
        wrapped.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
        "--kdf-memory-kib",
        "8192",
    ]);
    assert!(o.status.success(), "{o:?}");
    (wrapped, pass)
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = bunker_tests::files_under(dir)
        .into_iter()
        .map(|f| {
            let b = std::fs::read(&f).unwrap();
            (f, b)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_wrapped_key_exports_imports_back_and_serves_bit_exact() {
    let dir = bunker_tests::scratch();
    let (key, key_id) = new_key(dir.path());
    let (wrapped, pass) = export(dir.path(), &key);
    let wrapped_s = wrapped.to_str().unwrap();
    let raw = std::fs::read(&wrapped).unwrap();
    assert_eq!(&raw[..8], b"BNKRKEYW");
    assert!(
        !find(&raw, &std::fs::read(&key).unwrap()[32..]),
        "the key shows"
    );
    for (file, kind) in [(&key, "plain"), (&wrapped, "wrapped")] {
        let o = Command::new(BIN)
            .args(["--json", "key", "id"])
            .arg(file)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["key_id"], key_id.as_str(), "{v}");
        assert_eq!(v["kind"], kind, "{v}");
    }

    let back = dir.path().join("imported.key");
    let o = key_cmd(&[
        "import",
        "--in",
        wrapped_s,
        "--out",
        back.to_str().unwrap(),
        "--passphrase-file",
        pass.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), key_id);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&key).unwrap());

    // Served from the wrapped file; restored through the imported copy.
    let data = dir.path().join("data");
    let img = bunker_testdata::noise(29, 2 << 20);
    let server = Server::start(
        BIN,
        &data,
        &[
            "--key-file",
            wrapped_s,
            "--key-passphrase-file",
            pass.to_str().unwrap(),
        ],
    );
    assert_eq!(crate::info(&server)["key_id"], key_id.as_str());
    let id = backup(&server, dir.path(), "vol", &img);
    restores_bit_exact(&server, dir.path(), "vol", id, &img);
    server.stop();
    let server = Server::start(BIN, &data, &["--key-file", back.to_str().unwrap()]);
    restores_bit_exact(&server, dir.path(), "vol", id, &img);
}

#[test]
fn a_wrapped_key_without_or_with_a_wrong_passphrase_stops_serve_and_repair_touching_nothing() {
    let dir = bunker_tests::scratch();
    let (key, key_id) = new_key(dir.path());
    let (wrapped, _) = export(dir.path(), &key);
    let wrapped_s = wrapped.to_str().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(BIN, &data, &["--key-file", key.to_str().unwrap()]);
    server.stop();
    let before = contents(&data);
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "escrow passphrase of five wordz\n").unwrap();
    let toml = dir.path().join("bunker.toml");
    std::fs::write(
        &toml,
        format!(
            "[encryption]\nkey_file = {wrapped_s:?}\npassphrase_file = {:?}\n",
            wrong.to_str().unwrap()
        ),
    )
    .unwrap();

    let run = |base: &[&str], extra: &[&str]| {
        let o = Command::new(BIN)
            .args(base)
            .args(extra)
            .env_remove(bunker_crypt::wrap::PASSPHRASE_ENV)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let d = data.to_str().unwrap();
    let serve = ["serve", "--data", d, "--listen", "127.0.0.1:0"];
    let repair = ["repair", "--rebuild-index", "--data", d];
    for base in [&serve[..], &repair[..]] {
        let (code, err) = run(base, &["--key-file", wrapped_s]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("escrow.wkey") && err.contains(&key_id),
            "{err}"
        );
        assert!(err.contains("no passphrase was given"), "{err}");
        assert!(err.contains("--key-passphrase-file"), "{err}");
        let wrong_s = wrong.to_str().unwrap();
        for extra in [
            &["--key-file", wrapped_s, "--key-passphrase-file", wrong_s][..],
            &["--config", toml.to_str().unwrap()],
        ] {
            let (code, err) = run(base, extra);
            assert_eq!(code, Some(1), "{err}");
            assert!(
                err.contains("escrow.wkey") && err.contains(&key_id),
                "{err}"
            );
            assert!(err.contains("wrong passphrase"), "{err}");
        }
        assert!(
            contents(&data) == before,
            "a failed start changed the data directory"
        );
    }

    // The right passphrase, from the environment this time, serves.
    let server = Server::start_with_env(
        BIN,
        &data,
        &["--key-file", wrapped_s],
        &[(bunker_crypt::wrap::PASSPHRASE_ENV, PASSPHRASE)],
    );
    assert_eq!(crate::info(&server)["key_id"], key_id.as_str());
    server.stop();
}
