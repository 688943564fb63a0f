//! Child process for the crash and fault tests.
//!
//! `bunker-crash-child REPO SEED`: backs up deterministic snapshots one after
//! another, printing `ACK <name> <id>` after each commit returns, until it is
//! killed.
//!
//! `bunker-crash-child REPO SEED once`: one backup with the failpoints of
//! the FAILPOINTS environment variable active; prints `ACK <name> <id>` or
//! `ERR <message>`.
//!
//! `bunker-crash-child REPO SEED staging`: one backup (`ACK ...`), then a
//! backup in progress: a few new chunks written to the staging pack, no
//! commit. Prints `OPEN` and waits to be killed, so the kill always finds
//! a staging pack with records.
//!
//! `bunker-crash-child REPO SEED gc`: the backup loop, deleting all but the
//! newest two of its snapshots (`DEL <name> <id>` before each delete), with
//! GC running in a loop on a second thread (`GC start` / `GC end`).
//!
//! `bunker-crash-child REPO SEED gc-race ROUNDS`: 4 backup streams of
//! overlapping, changing images (each keeping its newest 2 snapshots)
//! while GC is paused at each phase boundary in turn (or one stream is
//! paused inside its commit while whole GCs run), until every stream has
//! committed again; then checks that every kept snapshot restores exactly,
//! and at the end that two GCs leave nothing to reclaim. Prints `RACE ...`
//! with the figures, or panics.
//!
//! `bunker-crash-child REPO SEED power N OUT`: backups (keeping the newest
//! 3) and a GC every third, until the Nth durability step (fsync of a file
//! or a directory); then writes to OUT what a power cut at that instant
//! could leave (see `PowerModel`), prints `CUT`, and exits.
//!
//! With `BUNKER_CHILD_ENCRYPTED` set (`bunker_tests::KEY_ENV`), the
//! repository is encrypted with `bunker_tests::test_key`.
//!
//! With `BUNKER_CHILD_S3=ENDPOINT BUCKET PREFIX` in the environment, REPO
//! is the local directory of a repository whose packs and objects live in
//! that bucket (`bunker_tests::bucket`): the same modes against an object
//! store.
//!
//! `bunker-crash-child REPO SEED clock`: backups, retention and GC with this
//! process's clock set 10 years ahead, 30 days behind, and jumping between
//! the two during backups and inside a GC. Prints `CLOCK ...` or panics.

use std::io::Write;

use anyhow::Context;
use bunker_store::{ChunkerParams, CreateOptions, GcOptions, IngestOptions, Repository};
use bunker_tests::power::PowerModel;
use bunker_tests::snapshot_data;

fn open(path: &str) -> anyhow::Result<Repository> {
    let opts = CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
        zstd_level: 1,
        pack_target_len: 1 << 20,
        key: bunker_tests::key_from_env(),
    };
    match bunker_tests::bucket::from_env() {
        Some(config) => bunker_tests::bucket::open(path.as_ref(), &config, opts)
            .context("opening the repository on its bucket"),
        None => Repository::open_or_create(path.as_ref(), opts).context("opening the repository"),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn gc_loop(path: &str, seed: &str) -> anyhow::Result<()> {
    let repo = open(path)?;
    let gc_repo = repo.clone();
    std::thread::spawn(move || loop {
        say("GC start");
        match gc_repo.gc(&GcOptions::default()) {
            Ok(_) => say("GC end"),
            Err(e) => say(&format!("GC ERR {e}")),
        }
    });
    for k in 0.. {
        let name = format!("g{seed}-{k}");
        let data = snapshot_data(&name);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        say(&format!("ACK {name} {}", info.id));
        if k >= 2 {
            let old = format!("g{seed}-{}", k - 2);
            for s in repo.list(Some(&old))? {
                say(&format!("DEL {old} {}", s.id));
                repo.delete(&old, s.id)?;
            }
        }
    }
    Ok(())
}

fn staging(path: &str, seed: u64) -> anyhow::Result<()> {
    let repo = open(path)?;
    let name = format!("s{seed}");
    let data = snapshot_data(&name);
    let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
    say(&format!("ACK {name} {}", info.id));
    // Less than a pack, so nothing is sealed behind the test's back.
    let pins = repo.pins();
    for i in 0..1 + seed % 5 {
        let raw = bunker_tests::noise(seed << 8 | i, (48 << 10) + i as usize * 1000);
        repo.store_chunk(&bunker_store::ChunkId::of(&raw), &raw, &pins)?;
    }
    say("OPEN");
    loop {
        std::thread::park();
    }
}

/// One GC (rewriting packs under 90% live) with the FAILPOINTS active;
/// prints `GC OK` or `GC ERR <message>`, then exits without a clean close.
fn gc_once(path: &str) -> anyhow::Result<()> {
    let repo = open(path)?;
    let scenario = fail::FailScenario::setup();
    match repo.gc(&GcOptions {
        rewrite_below: 0.9,
        dry_run: false,
    }) {
        Ok(_) => say("GC OK"),
        Err(e) => say(&format!("GC ERR {e}")),
    }
    scenario.teardown();
    std::process::exit(0);
}

/// Failpoints the GC race pauses at, in turn: GC's phase boundaries, and
/// a backup's commit after its chunks are sealed but before its manifest.
const PAUSE_POINTS: [&str; 7] = [
    "gc::marked",
    "gc::mark",
    "gc::rewritten",
    "gc::condemned",
    "gc::deleted",
    "gc::compacted",
    "commit::sealed",
];

/// Stream `s`, backup `k`: a base shared by all streams with a 256 KiB
/// window that moves every backup.
fn race_data(stream: u64, k: u64) -> Vec<u8> {
    let mut data = snapshot_data("race-base");
    let at = ((stream * 7 + k) as usize * (192 << 10)) % (data.len() - (256 << 10));
    data[at..at + (256 << 10)].copy_from_slice(&bunker_tests::noise(stream << 32 | k, 256 << 10));
    data
}

/// (name, id) of each kept snapshot -> BLAKE3 of the data sent.
type Kept = std::collections::HashMap<(String, u64), [u8; 32]>;

/// A pause at one failpoint: the first thread to reach it says so and
/// waits until released.
struct Pause {
    reached: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    armed: std::sync::atomic::AtomicBool,
}

fn gc_race(path: &str, seed: u64, rounds: u64) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{mpsc, Arc, Mutex};
    use std::time::{Duration, Instant};

    let repo = open(path)?;
    let _scenario = fail::FailScenario::setup();
    let commits = Arc::new(AtomicU64::new(0));
    // (name, id) -> BLAKE3 of the data the stream sent.
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let deletes = Arc::new(AtomicU64::new(0));
    // Each stream backs up once per grant (so a round's work is bounded)
    // and stops when its grant channel closes.
    let (grants, streams): (Vec<mpsc::Sender<()>>, Vec<_>) = (0..4u64)
        .map(|stream| {
            let (grant, granted) = mpsc::channel::<()>();
            let (repo, commits, kept, deletes) =
                (repo.clone(), commits.clone(), kept.clone(), deletes.clone());
            let handle = std::thread::spawn(move || {
                let name = format!("race{seed}-{stream}");
                let mut k = 0;
                while granted.recv().is_ok() {
                    let data = race_data(stream + seed * 4, k);
                    let info = repo
                        .ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})
                        .unwrap_or_else(|e| panic!("backup {name} #{k}: {e}"));
                    kept.lock()
                        .unwrap()
                        .insert((name.clone(), info.id.0), *blake3::hash(&data).as_bytes());
                    let list = repo.list(Some(&name)).unwrap();
                    for s in &list[..list.len().saturating_sub(2)] {
                        kept.lock().unwrap().remove(&(name.clone(), s.id.0));
                        repo.delete(&name, s.id).unwrap();
                        deletes.fetch_add(1, Ordering::Relaxed);
                    }
                    commits.fetch_add(1, Ordering::SeqCst);
                    k += 1;
                }
            });
            (grant, handle)
        })
        .unzip();
    let grant_all = || {
        for g in &grants {
            g.send(()).expect("stream alive");
        }
    };
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let check = |repo: &Repository, round: u64| {
        let kept = kept.lock().unwrap().clone();
        for ((name, id), hash) in &kept {
            let mut r = match repo.reader(name, Some(bunker_store::SnapshotId(*id)), None) {
                Ok(r) => r,
                // Deleted by its stream after the copy of the map was taken.
                Err(bunker_store::Error::NotFound { .. }) => continue,
                Err(e) => panic!("round {round}: {name}@{id}: {e}"),
            };
            let mut h = blake3::Hasher::new();
            std::io::copy(&mut r, &mut h)
                .unwrap_or_else(|e| panic!("round {round}: {name}@{id} does not restore: {e}"));
            assert_eq!(
                h.finalize().as_bytes(),
                hash,
                "round {round}: {name}@{id} wrong bytes"
            );
        }
    };
    let mut paused = [0u64; PAUSE_POINTS.len()];
    let mut gcs = 0u64;
    for round in 0..rounds {
        let i = (round as usize) % PAUSE_POINTS.len();
        let point = PAUSE_POINTS[i];
        let (reached_tx, reached_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let pause = Arc::new(Pause {
            reached: Mutex::new(reached_tx),
            release: Mutex::new(release_rx),
            armed: AtomicBool::new(true),
        });
        let p = pause.clone();
        fail::cfg_callback(point, move || {
            if p.armed.swap(false, Ordering::SeqCst) {
                let _ = p.reached.lock().unwrap().send(());
                let _ = p.release.lock().unwrap().recv();
            }
        })
        .map_err(anyhow::Error::msg)?;
        let before = commits.load(Ordering::SeqCst);
        let all_committed = || commits.load(Ordering::SeqCst) >= before + 4;
        if point == "commit::sealed" {
            // A stream stops between sealing its chunks and publishing its
            // manifest; whole GCs run meanwhile and must keep its chunks.
            grant_all();
            reached_rx.recv_timeout(Duration::from_secs(120))?;
            for _ in 0..2 {
                repo.gc(&GcOptions::default())?;
                gcs += 1;
            }
            paused[i] += 1;
            fail::remove(point);
            release_tx.send(())?;
            wait_for("4 commits", &all_committed);
        } else {
            let gc_repo = repo.clone();
            let gc = std::thread::spawn(move || gc_repo.gc(&GcOptions::default()));
            // Some points are only on the way when there is something to
            // delete: the GC may finish without reaching this one.
            let hit = loop {
                match reached_rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(()) => break true,
                    Err(_) if gc.is_finished() => break false,
                    Err(_) => {}
                }
            };
            // Every stream commits (and prunes) while the GC waits.
            grant_all();
            if hit {
                wait_for("4 commits during a paused GC", &all_committed);
                paused[i] += 1;
            }
            fail::remove(point);
            let _ = release_tx.send(());
            gc.join().expect("GC thread")?;
            gcs += 1;
            wait_for("4 commits", &all_committed);
        }
        check(&repo, round);
        if round % 10 == 9 {
            let v = repo.verify()?;
            assert!(v.is_clean(), "round {round}: verify {v:?}");
        }
    }
    drop(grants);
    for s in streams {
        s.join().expect("backup stream");
    }
    check(&repo, rounds);
    // Garbage is gone within two GCs: a dry run then finds nothing.
    for _ in 0..2 {
        repo.gc(&GcOptions::default())?;
        gcs += 1;
    }
    let dry = repo.gc(&GcOptions {
        dry_run: true,
        ..GcOptions::default()
    })?;
    assert_eq!(
        (dry.packs_deleted, dry.packs_rewritten),
        (0, 0),
        "garbage left after two GCs: {dry:?}"
    );
    let v = repo.verify()?;
    assert!(v.is_clean(), "final verify {v:?}");
    let paused: Vec<String> = PAUSE_POINTS
        .iter()
        .zip(paused)
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    say(&format!(
        "RACE rounds={rounds} commits={} deletes={} gcs={gcs} kept={} paused {}",
        commits.load(Ordering::SeqCst),
        deletes.load(Ordering::Relaxed),
        kept.lock().unwrap().len(),
        paused.join(" ")
    ));
    Ok(())
}

fn clock_skew(path: &str, seed: u64) -> anyhow::Result<()> {
    use bunker_store::clock::set_offset_ms;
    use bunker_store::retention::Policy;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const DAY: i64 = 86_400_000;
    const AHEAD: i64 = 3653 * DAY;
    const BEHIND: i64 = -30 * DAY;
    let repo = open(path)?;
    let _scenario = fail::FailScenario::setup();
    let name = format!("clk{seed}");
    let backup = |k: u64| -> anyhow::Result<(bunker_store::SnapshotInfo, [u8; 32])> {
        let data = race_data(seed, k);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        // The backup just committed is the latest, whatever its date.
        let latest = repo.snapshot(&name, None)?;
        assert_eq!(latest.id, info.id, "backup #{k} is not the latest");
        Ok((info, *blake3::hash(&data).as_bytes()))
    };
    let mut kept = Vec::new();
    for (k, offset) in [(0, 0), (1, AHEAD), (2, BEHIND)] {
        set_offset_ms(offset);
        kept.push(backup(k)?);
    }
    assert!(kept[1].0.created_unix_ms > kept[0].0.created_unix_ms + 3000 * DAY);
    assert!(kept[2].0.created_unix_ms < kept[0].0.created_unix_ms - 29 * DAY);
    // Every rule keeps the newest (by commit): the one dated 30 days back.
    let newest = kept[2].0.id;
    let mut policies = 0;
    for policy in [
        Policy {
            last: 1,
            ..Policy::default()
        },
        Policy {
            hourly: 1,
            ..Policy::default()
        },
        Policy {
            daily: 1,
            ..Policy::default()
        },
        Policy {
            yearly: 1,
            ..Policy::default()
        },
        Policy {
            within_ms: Some(3_600_000),
            ..Policy::default()
        },
    ] {
        for offset in [0, AHEAD, BEHIND] {
            set_offset_ms(offset);
            let d = repo.prune(&name, &policy, true)?;
            assert!(
                d.iter().any(|d| d.id == newest && d.keep),
                "{policy:?} at offset {offset} drops the newest: {d:?}"
            );
            policies += 1;
        }
    }
    // Clock jumps during backups: a thread swings it back and forth.
    let stop = Arc::new(AtomicBool::new(false));
    let jumps = Arc::new(AtomicU64::new(0));
    let jumper = {
        let (stop, jumps) = (stop.clone(), jumps.clone());
        std::thread::spawn(move || {
            let mut ahead = true;
            while !stop.load(Ordering::Relaxed) {
                set_offset_ms(if ahead { AHEAD } else { BEHIND });
                ahead = !ahead;
                jumps.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
            }
        })
    };
    for k in 3..23 {
        kept.push(backup(k)?);
    }
    stop.store(true, Ordering::Relaxed);
    jumper.join().expect("clock thread");
    // Clock jumps inside a GC, after pruning to the newest 3 (by commit).
    fail::cfg_callback("gc::mark", || set_offset_ms(AHEAD)).map_err(anyhow::Error::msg)?;
    fail::cfg_callback("gc::condemned", || set_offset_ms(BEHIND)).map_err(anyhow::Error::msg)?;
    let d = repo.prune(
        &name,
        &Policy {
            last: 3,
            ..Policy::default()
        },
        false,
    )?;
    assert_eq!(d.iter().filter(|d| d.keep).count(), 3);
    let kept: Vec<_> = kept[kept.len() - 3..].to_vec();
    let gc = repo.gc(&GcOptions::default())?;
    assert!(gc.packs_deleted + gc.packs_rewritten > 0, "{gc:?}");
    fail::remove("gc::mark");
    fail::remove("gc::condemned");
    set_offset_ms(0);
    repo.gc(&GcOptions::default())?;
    let dry = repo.gc(&GcOptions {
        dry_run: true,
        ..GcOptions::default()
    })?;
    assert_eq!((dry.packs_deleted, dry.packs_rewritten), (0, 0), "{dry:?}");
    for (info, hash) in &kept {
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut repo.reader(&name, Some(info.id), None)?, &mut h)?;
        assert_eq!(
            h.finalize().as_bytes(),
            hash,
            "{name}@{} wrong bytes",
            info.id
        );
    }
    let v = repo.verify()?;
    assert!(v.is_clean(), "{v:?}");
    say(&format!(
        "CLOCK backups=23 clock_jumps={} retention_checks={policies} gc_reclaimed={} kept={}",
        jumps.load(Ordering::Relaxed),
        gc.bytes_reclaimed(),
        kept.len()
    ));
    Ok(())
}

/// Small images for the power-cut runs: a shared base and a changing tail.
fn power_data(seed: u64, k: u64) -> Vec<u8> {
    let mut data = bunker_tests::noise(0xBA5E, 256 << 10);
    data.extend_from_slice(&bunker_tests::noise(
        seed << 32 | k,
        48 << 10 | (k as usize % 7) << 12,
    ));
    data
}

fn power_cut(path: &str, seed: u64, n: u64, out: &str) -> anyhow::Result<()> {
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    let repo = open(path)?;
    let model = Mutex::new(PowerModel::default());
    model
        .lock()
        .unwrap()
        .snapshot_all(std::path::Path::new(path));
    let steps = AtomicU64::new(0);
    let root = std::path::PathBuf::from(path);
    let out = std::path::PathBuf::from(out);
    let rng = Mutex::new(rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ n));
    bunker_store::observe::set(move |step| {
        let mut m = model.lock().unwrap();
        if steps.fetch_add(1, Ordering::SeqCst) + 1 == n {
            m.cut(&root, &out, &mut *rng.lock().unwrap(), 0.5);
            say("CUT");
            std::process::exit(0);
        }
        m.step(step);
    });
    // A few names, so deletes keep the repository small across runs.
    let name = format!("pw{}", seed % 4);
    for k in 0.. {
        let data = power_data(seed, k);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        say(&format!("ACK {name} {}", info.id));
        let list = repo.list(Some(&name))?;
        for s in &list[..list.len().saturating_sub(3)] {
            say(&format!("DEL {name} {}", s.id));
            repo.delete(&name, s.id)?;
        }
        if k % 3 == 2 {
            repo.gc(&GcOptions::default())?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (repo, seed, once) = match &args[..] {
        [_, repo, seed] => (repo, seed, false),
        [_, repo, seed, mode] if mode == "once" => (repo, seed, true),
        [_, repo, seed, mode] if mode == "gc" => return gc_loop(repo, seed),
        [_, repo, _, mode] if mode == "gc-once" => return gc_once(repo),
        [_, repo, seed, mode] if mode == "staging" => return staging(repo, seed.parse()?),
        [_, repo, seed, mode] if mode == "clock" => return clock_skew(repo, seed.parse()?),
        [_, repo, seed, mode, n, out] if mode == "power" => {
            return power_cut(repo, seed.parse()?, n.parse()?, out)
        }
        [_, repo, seed, mode, rounds] if mode == "gc-race" => {
            return gc_race(repo, seed.parse()?, rounds.parse()?)
        }
        _ => anyhow::bail!(
            "usage: bunker-crash-child REPO SEED [once|gc|gc-once|staging|clock|gc-race ROUNDS|power N OUT]"
        ),
    };
    let seed: u64 = seed.parse().context("SEED must be a number")?;
    let repo = open(repo)?;
    let mut out = std::io::stdout().lock();
    if once {
        let scenario = fail::FailScenario::setup();
        let name = format!("f{seed}");
        let data = snapshot_data(&name);
        match repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {}) {
            Ok(info) => writeln!(out, "ACK {name} {}", info.id)?,
            Err(e) => writeln!(out, "ERR {e}")?,
        }
        out.flush()?;
        scenario.teardown();
        // Like a crash: no clean close (the repository's Drop would seal and
        // flush, which a real failure may not get to do).
        std::process::exit(0);
    }
    for k in 0.. {
        let name = format!("s{seed}-{k}");
        let data = snapshot_data(&name);
        let info = repo.ingest(&name, &data[..], &IngestOptions::default(), &mut |_| {})?;
        writeln!(out, "ACK {name} {}", info.id)?;
        out.flush()?;
    }
    Ok(())
}
