//! An encrypted repository through the real server (`bunker serve
//! --key-file`): nothing under the data directory, nor in the bucket,
//! holds the image's text or its chunk ids; restore, verify and drill work;
//! a wrong or missing key stops the server at start, naming the key ids.

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
