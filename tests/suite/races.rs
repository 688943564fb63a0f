//! GC races: backups, deletes and GCs interleaved at every GC phase
//! boundary and inside a backup's commit, with the pauses held until every
//! backup stream has committed again (longer than any window a clock-based
//! design would rely on: there is none). Runs in a child process, because
//! the failpoint registry is process-wide.

use std::process::Command;

/// Rounds: `BUNKER_RACE_ROUNDS`, or 100 (the CI minimum; soak: 1,000).
fn rounds() -> u64 {
    std::env::var("BUNKER_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

#[test]
fn gc_paused_at_every_phase_and_commit_loses_nothing_and_reclaims_within_two_runs() {
    let seed = crate::seed(0x6ACE);
    let rounds = rounds();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"))
        .arg(dir.path())
        .args([&seed.to_string(), "gc-race", &rounds.to_string()])
        .output()
        .expect("run the race child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "race failed ({}): {}\n{}\nreproduce: BUNKER_SEED={seed} BUNKER_RACE_ROUNDS={rounds} cargo test --release -p bunker-tests --test suite races::",
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
