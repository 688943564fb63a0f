//! Failed writes, syncs and renames on the commit path (failpoints of the
//! `fail` crate in bunker-store): for every failpoint and every N, one
//! backup in a child process whose Nth call fails. Afterwards: a backup that
//! was acknowledged reads back bit-exactly; one that was not is either
//! absent or complete (never partial); the repository opens without a
//! manual step and verifies; and the next backup succeeds.

use std::io::Read;
use std::process::Command;

use bunker_store::{Repository, SnapshotId};
use bunker_tests::snapshot_data;

const FAILPOINTS: [&str; 4] = [
    "durable::sync_data",
    "durable::sync_dir",
    "durable::rename",
    "pack::write",
];

fn child(repo: &std::path::Path, seed: u64, failpoints: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"))
        .arg(repo)
        .arg(seed.to_string())
        .arg("once")
        .env("FAILPOINTS", failpoints)
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_failed_write_sync_or_rename_never_acknowledges_lost_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let mut seed = 0u64;
    let mut failures = 0;
    for fp in FAILPOINTS {
        // N = 0.. until the failpoint is no longer reached in one backup.
        for n in 0..40 {
            seed += 1;
            let reproduce = format!("FAILPOINTS={fp}={n}*off->return (seed {seed}): cargo test --release -p bunker-tests --test suite faults");
            let answer = child(&repo_dir, seed, &format!("{fp}={n}*off->return"));
            let repo = Repository::open(&repo_dir)
                .unwrap_or_else(|e| panic!("reopen after {reproduce}: {e}"));
            let name = format!("f{seed}");
            let listed = repo.list(Some(&name)).unwrap();
            let acked = answer.starts_with("ACK ");
            if acked {
                assert_eq!(listed.len(), 1, "acknowledged {name} lost: {reproduce}");
            } else {
                assert!(
                    answer.starts_with("ERR ") && answer.contains("injected failure"),
                    "{answer}: {reproduce}"
                );
                failures += 1;
            }
            for s in &listed {
                let mut data = Vec::new();
                repo.reader(&s.name, Some(s.id), None)
                    .unwrap()
                    .read_to_end(&mut data)
                    .unwrap_or_else(|e| panic!("{} does not read back: {e}; {reproduce}", s.name));
                assert!(
                    data == snapshot_data(&name),
                    "{} reads wrong bytes: {reproduce}",
                    s.name
                );
            }
            drop(repo);
            if acked {
                // The failpoint was not reached in this backup: larger N
                // will not be either.
                break;
            }
        }
    }
    let repo = Repository::open(&repo_dir).unwrap();
    let report = repo.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(
        failures >= 8,
        "only {failures} injected failures: the failpoints are not on the commit path"
    );
    // The next backup succeeds.
    let info = repo
        .ingest(
            "after",
            &snapshot_data("after")[..],
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
    let mut back = Vec::new();
    repo.reader("after", Some(SnapshotId(info.id.0)), None)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == snapshot_data("after"));
}
