//! GC races and clock skew: backups, deletes and GCs interleaved at every GC phase
//! boundary and inside a backup's commit, with the pauses held until every
//! backup stream has committed again (longer than any window a clock-based
//! design would rely on: there is none). Runs in a child process, because
//! the failpoint registry is process-wide.

use std::process::Command;

#[test]
fn gc_paused_at_every_phase_and_commit_loses_nothing_and_reclaims_within_two_runs() {
    let dir = bunker_tests::scratch();
    gc_race(
        dir.path(),
        None,
        crate::seed(0x6ACE),
        crate::scaled(100),
        "races::",
    );
}

/// Runs the crash child's `gc-race` on `repo` (on the bucket `s3` names,
/// when Some) and checks its summary: every pause point held on each of
/// its turns. `test` names the test filter in the reproduce line.
pub(crate) fn gc_race(
    repo: &std::path::Path,
    s3: Option<&str>,
    seed: u64,
    rounds: u64,
    test: &str,
) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"));
    if let Some(spec) = s3 {
        cmd.env(bunker_tests::bucket::ENV, spec);
    }
    let out = cmd
        .arg(repo)
        .args([&seed.to_string(), "gc-race", &rounds.to_string()])
        .output()
        .expect("run the race child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "race failed ({}): {}\n{}\nreproduce: BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite {test}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RACE "))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    println!("{line}");
    // Every pause point was held: on each of its turns, except the delete
    // and compaction points, which a GC only passes when it condemned
    // packs (each round's pruning usually provides some).
    let fields: Vec<(&str, u64)> = line
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .filter(|(p, _)| p.contains("::"))
        .map(|(p, n)| (p, n.parse().unwrap()))
        .collect();
    assert_eq!(fields.len(), 7, "{line}");
    for (i, (point, n)) in fields.into_iter().enumerate() {
        let turns = (0..rounds).filter(|r| *r as usize % 7 == i).count() as u64;
        if point == "gc::deleted" || point == "gc::compacted" {
            assert!(n >= 1 || turns == 0, "{point} never held: {line}");
        } else {
            assert_eq!(n, turns, "{point} not held on each of its turns: {line}");
        }
    }
}

/// Clock skew: backups under a clock 10 years ahead and 30 days behind,
/// and jumping between the two during backups and inside a GC. The last
/// backup committed is always the latest, retention never drops the newest
/// (by commit), and GC loses nothing and still reclaims.
#[test]
fn clock_jumps_never_reorder_snapshots_or_lose_data() {
    let seed = crate::seed(0xC10C);
    let dir = bunker_tests::scratch();
    let out = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"))
        .arg(dir.path())
        .args([&seed.to_string(), "clock"])
        .output()
        .expect("run the clock child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "clock skew run failed ({}): {stdout}\n{}\nreproduce: BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite races::clock",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CLOCK "))
        .unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    println!("{line}");
}
