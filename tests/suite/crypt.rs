//! Encryption at rest, the parts that exist so far: the key file through
//! the real `bunker key` commands (no server involved).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");

fn bunker(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run bunker")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn key_create_writes_a_private_key_file_and_never_overwrites_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("repo.key");
    let path = file.to_str().unwrap();
    let created = bunker(&["key", "create", "--out", path]);
    assert!(created.status.success(), "{created:?}");
    let id = stdout(&created);
    assert_eq!(id.len(), 32, "a key id is 32 hex digits: {id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 64);
    let before = std::fs::read(&file).unwrap();

    let shown = bunker(&["key", "id", path]);
    assert!(shown.status.success(), "{shown:?}");
    assert_eq!(stdout(&shown), id);

    let again = bunker(&["key", "create", "--out", path]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the key was kept");

    let json = bunker(&["--json", "key", "id", path]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["key_id"], id.as_str());
}

#[test]
fn key_id_names_a_file_that_is_not_a_key_or_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"not a key at all, just some text").unwrap();
    let o = bunker(&["key", "id", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a bunker key file") && err.contains("notes.txt"),
        "{err}"
    );

    let key = dir.path().join("k");
    assert!(bunker(&["key", "create", "--out", key.to_str().unwrap()])
        .status
        .success());
    let mut b = std::fs::read(&key).unwrap();
    b[40] ^= 0x10;
    std::fs::write(&key, &b).unwrap();
    let o = bunker(&["key", "id", key.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("key file is damaged"), "{err}");
}
