//! Crash recovery: a child process ingesting is killed with SIGKILL at
//! seeded random moments; after each kill the repository is reopened and
//! every acknowledged snapshot must read back bit-exactly, no partial
//! snapshot may be listed, and the repository must verify. Then torn tails
//! are made by truncating the newest packs at random offsets; the server is
//! SIGKILLed under load; power is cut at a random sync (a model of what the
//! disk holds then); and the newest pack, index and manifest files are
//! truncated at random.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bunker_store::{Repository, SnapshotId};
use bunker_tests::{copy_tree, pack_files, pack_records, snapshot_data, trailer_offset, truncate};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub(crate) fn read_all(repo: &Repository, name: &str, id: SnapshotId) -> Vec<u8> {
    let mut out = Vec::new();
    repo.reader(name, Some(id), None)
        .unwrap_or_else(|e| panic!("{name}@{id}: {e}"))
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("{name}@{id}: {e}"));
    out
}

/// Every acknowledged snapshot is listed, and every listed snapshot not in
/// `checked` holds exactly its data (those in it were read back before).
pub(crate) fn check(
    repo: &Repository,
    acked: &[(String, u64)],
    checked: &mut HashSet<(String, u64)>,
    reproduce: &str,
) {
    let listed = repo.list(None).unwrap();
    for (name, id) in acked {
        assert!(
            listed.iter().any(|s| &s.name == name && s.id.0 == *id),
            "acknowledged snapshot {name}@{id} lost; reproduce: {reproduce}"
        );
    }
    for s in &listed {
        if !checked.insert((s.name.clone(), s.id.0)) {
            continue;
        }
        let data = read_all(repo, &s.name, s.id);
        assert!(
            data == snapshot_data(&s.name),
            "{}@{} reads back wrong bytes; reproduce: {reproduce}",
            s.name,
            s.id
        );
    }
}

/// When a child is killed: `delay` after it starts, or `delay` after it
/// first prints a line starting with `after` (so a kill point that needs a
/// state, such as an open staging pack, does not depend on machine speed).
#[derive(Clone, Copy)]
pub(crate) struct KillAt<'a> {
    pub(crate) after: Option<&'a str>,
    pub(crate) delay: Duration,
}

fn kill_child_after(repo: &Path, child_seed: u64, at: KillAt<'_>) -> Vec<(String, u64)> {
    acks(&child_lines_until_killed(
        repo,
        &[&child_seed.to_string()],
        at,
    ))
}

/// The snapshots a child acknowledged (`ACK <name> <id>` lines).
pub(crate) fn acks(lines: &[String]) -> Vec<(String, u64)> {
    let mut acked = Vec::new();
    for line in lines {
        if let ["ACK", name, id] = line.split_whitespace().collect::<Vec<_>>()[..] {
            acked.push((name.to_string(), id.parse().expect("id")));
        }
    }
    acked
}

/// Runs the crash child with `args` after REPO, SIGKILLs it at `at`, and
/// returns everything it printed.
fn child_lines_until_killed(repo: &Path, args: &[&str], at: KillAt<'_>) -> Vec<String> {
    child_lines_until_killed_on(repo, None, args, at)
}

/// The same, for a repository on the bucket `s3` names (the child's
/// `bunker_tests::bucket::ENV`) when it is Some.
pub(crate) fn child_lines_until_killed_on(
    repo: &Path,
    s3: Option<&str>,
    args: &[&str],
    at: KillAt<'_>,
) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"));
    if let Some(spec) = s3 {
        cmd.env(bunker_tests::bucket::ENV, spec);
    }
    let mut child = cmd
        .arg(repo)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.expect("utf-8")).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    if let Some(prefix) = at.after {
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    let armed = line.starts_with(prefix);
                    lines.push(line);
                    if armed {
                        break;
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("child {args:?} never printed {prefix:?} ({e}); it printed {lines:?}");
                }
            }
        }
    }
    std::thread::sleep(at.delay);
    child.kill().expect("SIGKILL");
    child.wait().expect("reap child");
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    lines
}

/// GC killed at seeded random points while a backup loop commits and
/// deletes beside it: the repository reopens and verifies, every
/// acknowledged snapshot not deleted reads back exactly, and the next GC
/// completes.
#[test]
fn kill_during_gc_leaves_a_repository_that_verifies() {
    let gc_trials = crate::scaled(20);
    let seed = crate::seed(0x6C_0DE);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite crash::kill_during_gc"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let mut live: Vec<(String, u64)> = Vec::new();
    let mut checked = HashSet::new();
    let (mut in_gc, mut gcs_finished) = (0, 0);
    for trial in 0..gc_trials {
        // Armed at the first GC start: the child runs GCs back to back.
        let at = KillAt {
            after: Some("GC start"),
            delay: Duration::from_millis(rng.random_range(0..500)),
        };
        let lines = child_lines_until_killed(dir.path(), &[&trial.to_string(), "gc"], at);
        let mut gc_running = false;
        for line in &lines {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ACK", name, id] => live.push((name.to_string(), id.parse().unwrap())),
                // The delete may or may not have happened: no longer owed.
                ["DEL", name, id] => live.retain(|(n, i)| !(n == name && i.to_string() == id)),
                ["GC", "start"] => gc_running = true,
                ["GC", "end"] => {
                    gc_running = false;
                    gcs_finished += 1;
                }
                _ => panic!("child {trial} said {line:?}; reproduce: {reproduce}"),
            }
        }
        in_gc += u64::from(gc_running);
        let repo = Repository::open(dir.path())
            .unwrap_or_else(|e| panic!("reopen after kill {trial}: {e}; reproduce: {reproduce}"));
        check(&repo, &live, &mut checked, &reproduce);
        let report = repo.verify().unwrap();
        assert!(
            report.is_clean(),
            "verify after kill {trial}: {report:?}; reproduce: {reproduce}"
        );
        repo.gc(&bunker_store::GcOptions::default())
            .unwrap_or_else(|e| panic!("GC after kill {trial}: {e}; reproduce: {reproduce}"));
    }
    let repo = Repository::open(dir.path()).unwrap();
    assert!(repo.verify().unwrap().is_clean());
    println!("GC kill trials: {gc_trials}, killed inside a GC: {in_gc}, GCs finished in children: {gcs_finished}");
    assert!(
        in_gc >= gc_trials / 4,
        "only {in_gc} of {gc_trials} kills landed inside a GC; reproduce: {reproduce}"
    );
}

#[test]
fn kill_during_ingest_loses_nothing_acknowledged() {
    let seed = crate::seed(0xC0FFEE);
    let reproduce = format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite crash::kill_during_ingest");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut checked = HashSet::new();
    let trials = crate::scaled(50);
    for trial in 0..trials {
        // Kill points spread over opening/recovery (even trials count from
        // the start), chunk appends, pack seals and manifest commits (odd
        // trials count from the first commit): a snapshot takes a few ms.
        let at = KillAt {
            after: (trial % 2 == 1).then_some("ACK"),
            delay: Duration::from_millis(rng.random_range(5..250)),
        };
        acked.extend(kill_child_after(dir.path(), trial, at));
        let repo = Repository::open(dir.path())
            .unwrap_or_else(|e| panic!("reopen after kill {trial}: {e}; reproduce: {reproduce}"));
        check(&repo, &acked, &mut checked, &reproduce);
        if trial % 10 == 9 || trial == trials - 1 {
            let report = repo.verify().unwrap();
            assert!(
                report.is_clean(),
                "verify after kill {trial}: {report:?}; reproduce: {reproduce}"
            );
        }
    }
    assert!(
        acked.len() as u64 >= trials / 2,
        "too few commits ({}) to test anything",
        acked.len()
    );
}

#[test]
fn torn_staging_pack_tails_are_cut_on_open() {
    let seed = crate::seed(0x70A4);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite crash::torn_staging"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let mut acked = Vec::new();
    let mut checked = HashSet::new();
    let mut torn = 0;
    let kills = crate::scaled(20);
    for trial in 0..kills {
        // The child stops with a backup in progress: its staging pack holds
        // records and no commit sealed it.
        let at = KillAt {
            after: Some("OPEN"),
            delay: Duration::ZERO,
        };
        let seed_arg = (1000 + trial).to_string();
        acked.extend(acks(&child_lines_until_killed(
            dir.path(),
            &[&seed_arg, "staging"],
            at,
        )));
        for open in pack_files(dir.path(), "open") {
            let len = std::fs::metadata(&open).unwrap().len();
            truncate(&open, rng.random_range(0..=len));
            torn += 1;
        }
        let repo = Repository::open(dir.path())
            .unwrap_or_else(|e| panic!("reopen {trial}: {e}; reproduce: {reproduce}"));
        assert!(
            pack_files(dir.path(), "open").is_empty(),
            "staging packs must be recovered on open"
        );
        check(&repo, &acked, &mut checked, &reproduce);
    }
    let repo = Repository::open(dir.path()).unwrap();
    assert!(repo.verify().unwrap().is_clean());
    println!("torn staging packs cut on open: {torn} in {kills} kills");
    assert_eq!(
        torn, kills,
        "each kill leaves one staging pack; reproduce: {reproduce}"
    );
}

#[test]
fn truncated_sealed_pack_is_named_and_spares_other_snapshots() {
    let seed = crate::seed(0x5EA1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for trial in 0..10 {
        let dir = bunker_tests::scratch();
        let names: Vec<String> = (0..4).map(|i| format!("t{trial}-{i}")).collect();
        {
            let repo = Repository::create(
                dir.path(),
                bunker_store::CreateOptions {
                    chunker: bunker_store::ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)
                        .unwrap(),
                    zstd_level: 1,
                    pack_target_len: 1 << 20,
                    key: None,
                },
            )
            .unwrap();
            for n in &names {
                repo.ingest(n, &snapshot_data(n)[..], &Default::default(), &mut |_| {})
                    .unwrap();
            }
        }
        let newest = pack_files(dir.path(), "pack").pop().unwrap();
        let len = std::fs::metadata(&newest).unwrap().len();
        truncate(&newest, rng.random_range(0..len));
        let repo = Repository::open(dir.path())
            .expect("a damaged pack must not stop the repository from opening");
        let report = repo.verify().unwrap();
        assert!(
            !report.is_clean(),
            "trial {trial}: truncation not detected (seed {seed})"
        );
        assert!(
            report.damage.iter().any(|d| d
                .file
                .contains(newest.file_name().unwrap().to_str().unwrap())),
            "{report:?}"
        );
        // Exactly the snapshots that cannot be read are named.
        for n in &names {
            let info = repo.snapshot(n, None).unwrap();
            let mut out = Vec::new();
            let readable = repo
                .reader(n, None, None)
                .unwrap()
                .read_to_end(&mut out)
                .is_ok()
                && out == snapshot_data(n);
            let named = report
                .damaged_snapshots
                .iter()
                .any(|d| &d.name == n && d.id == info.id);
            assert_eq!(
                readable, !named,
                "trial {trial} {n}: readable {readable}, named {named} (seed {seed})"
            );
        }
    }
}

/// One backup stream's data: small images sharing a base, changing a
/// window per backup.
fn stream_data(stream: u64, k: u64) -> Vec<u8> {
    let mut data = bunker_tests::noise(0x5EED, 512 << 10);
    let at = ((stream * 5 + k) as usize * (48 << 10)) % (data.len() - (64 << 10));
    data[at..at + (64 << 10)].copy_from_slice(&bunker_tests::noise(stream << 32 | k, 64 << 10));
    data
}

/// What the backup streams were told, shared with the checker.
#[derive(Default)]
struct Owed {
    /// (name, id) -> BLAKE3 of the image, for every acknowledged snapshot
    /// not (possibly) pruned since.
    snapshots: std::collections::HashMap<(String, u64), [u8; 32]>,
    acked: u64,
    prunes: u64,
    gcs: u64,
}

/// SIGKILL of the real server at seeded moments while 4 streams back up
/// (2 raw uploads, 2 through the chunk protocol, each pruning its own name)
/// and GC runs in a loop; after each kill the server restarts on the same
/// data with no manual step, every acknowledged snapshot is listed and
/// restores exactly, and verify is clean.
#[test]
fn server_sigkill_under_four_backups_prune_and_gc_loses_nothing_acknowledged() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let seed = crate::seed(0x5E4_7E4);
    let kills = crate::scaled(200);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite crash::server_sigkill"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let data = dir.path().join("data");
    let owed: Arc<Mutex<Owed>> = Arc::default();
    let mut checked: HashSet<(String, u64)> = HashSet::new();
    let mut next = [0u64; 4];
    let mut restarts_ms = Vec::new();
    for trial in 0..kills {
        let started = std::time::Instant::now();
        let server =
            bunker_tests::server::Server::start(env!("CARGO_BIN_EXE_bunker-e2e"), &data, &[]);
        restarts_ms.push(started.elapsed().as_millis() as u64);
        // After the restart: everything owed is there and reads back.
        let admin = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
        let listed: HashSet<(String, u64)> = admin
            .list(None)
            .unwrap_or_else(|e| panic!("list after kill {trial}: {e}; {reproduce}"))
            .into_iter()
            .map(|s| (s.name, s.id))
            .collect();
        let owed_now = owed.lock().unwrap().snapshots.clone();
        for ((name, id), hash) in &owed_now {
            assert!(
                listed.contains(&(name.clone(), *id)),
                "acknowledged {name}@{id} lost after kill {trial}; {reproduce}"
            );
            if checked.insert((name.clone(), *id)) {
                let mut h = blake3::Hasher::new();
                admin
                    .restore(
                        name,
                        Some(*id),
                        bunker_client::Target::Stream(&mut h),
                        &mut |_| {},
                    )
                    .unwrap_or_else(|e| panic!("{name}@{id} after kill {trial}: {e}; {reproduce}"));
                assert_eq!(
                    h.finalize().as_bytes(),
                    hash,
                    "{name}@{id} wrong bytes; {reproduce}"
                );
            }
        }
        if trial % 20 == 19 || trial + 1 == kills {
            let v = admin.verify(&Default::default()).unwrap();
            assert!(v.clean, "verify after kill {trial}: {v:?}; {reproduce}");
        }
        // Backups, prunes and GCs until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for stream in 0..4u64 {
            let (owed, stop, url, token) = (
                owed.clone(),
                stop.clone(),
                server.url.clone(),
                server.admin.clone(),
            );
            let first = next[stream as usize];
            workers.push(std::thread::spawn(move || {
                let client = bunker_client::Client::new(&url, Some(token.clone()));
                let name = format!("srv-{stream}");
                let mut k = first;
                while !stop.load(Ordering::Relaxed) {
                    let image = stream_data(stream, k);
                    k += 1;
                    let hash = *blake3::hash(&image).as_bytes();
                    let id = if stream < 2 {
                        ureq::put(format!("{url}/v1/snapshots/{name}"))
                            .header("authorization", format!("Bearer {token}"))
                            .send(&image[..])
                            .ok()
                            .and_then(|mut r| r.body_mut().read_json::<bunker_api::Snapshot>().ok())
                            .map(|s| s.id)
                    } else {
                        client
                            .backup(&name, &image[..], &Default::default(), &mut |_| {})
                            .ok()
                            .map(|r| r.snapshot.id)
                    };
                    let Some(id) = id else { break };
                    let mut o = owed.lock().unwrap();
                    o.snapshots.insert((name.clone(), id), hash);
                    o.acked += 1;
                    drop(o);
                    if k % 3 == 0 {
                        // Everything but the server's newest 2 (a backup
                        // committed whose answer was lost counts too) may
                        // go from here on.
                        let Ok(list) = client.list(Some(&name)) else {
                            break;
                        };
                        let mut o = owed.lock().unwrap();
                        for s in &list[..list.len().saturating_sub(2)] {
                            o.snapshots.remove(&(name.clone(), s.id));
                        }
                        o.prunes += 1;
                        drop(o);
                        let req = bunker_api::PruneRequest {
                            name: Some(name.clone()),
                            keep_last: 2,
                            ..Default::default()
                        };
                        if client.prune(&req).is_err() {
                            break;
                        }
                    }
                }
                k
            }));
        }
        let gc = {
            let (owed, stop, url, token) = (
                owed.clone(),
                stop.clone(),
                server.url.clone(),
                server.admin.clone(),
            );
            std::thread::spawn(move || {
                let client = bunker_client::Client::new(&url, Some(token));
                while !stop.load(Ordering::Relaxed) {
                    match client.gc(&Default::default()) {
                        Ok(_) => owed.lock().unwrap().gcs += 1,
                        Err(e) if e.to_string().contains("busy") => {}
                        Err(_) => break,
                    }
                }
            })
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..400)));
        let mut server = server;
        server.child.kill().expect("SIGKILL the server");
        server.child.wait().expect("reap the server");
        stop.store(true, Ordering::Relaxed);
        for (i, w) in workers.into_iter().enumerate() {
            next[i] = w.join().expect("backup stream");
        }
        gc.join().expect("gc loop");
    }
    let o = owed.lock().unwrap();
    restarts_ms.sort_unstable();
    println!(
        "server SIGKILLs: {kills} under 4 backup streams, prunes and GC; {} backups acknowledged, {} prunes, {} GCs finished; all acknowledged snapshots restored exactly; restart median {} ms, max {} ms",
        o.acked,
        o.prunes,
        o.gcs,
        restarts_ms[restarts_ms.len() / 2],
        restarts_ms.last().unwrap()
    );
    assert!(
        o.acked >= kills,
        "too few backups ({}) to test anything",
        o.acked
    );
}

/// Power loss: 500 seeded cuts at the Nth durability step of a child that
/// backs up, deletes and collects garbage. Each cut leaves only what was
/// synced (directory entries as of their directory's last sync, file bytes
/// as of their last sync) plus, at random, unsynced entries and torn
/// prefixes of unsynced writes. Every image opens with no manual step (torn
/// tails cut), every acknowledged snapshot not deleted reads back exactly,
/// and the repository verifies. Each run continues from the last image.
#[test]
fn power_cut_at_any_sync_loses_nothing_acknowledged() {
    let runs = crate::scaled(350);
    let (cuts, acks) = power_cuts(
        None,
        false,
        crate::seed(0x0070_CE11),
        runs,
        "crash::power_cut_at",
    );
    assert_eq!(cuts, runs, "a run ended before its cut");
    println!("power cuts: {cuts} of {runs} runs cut at a random sync (1..60); {acks} backups acknowledged; every image opened, every acknowledged snapshot not deleted restored exactly after every cut, verify clean every 25 cuts");
}

/// The same power cuts on an encrypted repository (sealed records,
/// trailers and manifests, keyed ids): what a cut leaves opens with the
/// key, loses nothing acknowledged and verifies.
#[test]
fn power_cut_of_an_encrypted_repository_loses_nothing_acknowledged() {
    let runs = crate::scaled(150);
    let (cuts, acks) = power_cuts(
        None,
        true,
        crate::seed(0x0E0C_CE11),
        runs,
        "crash::power_cut_of_an_encrypted",
    );
    assert_eq!(cuts, runs, "a run ended before its cut");
    println!("power cuts, encrypted repository: {cuts} of {runs} runs cut; {acks} backups acknowledged; every acknowledged snapshot not deleted restored exactly after every cut");
}

/// `runs` power cuts (the crash child's `power` mode, each run continuing
/// from the last image) of a local repository, or of the data directory of
/// one on the bucket `s3` names (`bunker_tests::bucket::spec`): after each
/// cut the image opens and every acknowledged snapshot not deleted reads
/// back exactly; it verifies clean every 25 cuts and after the last. How
/// many runs were cut, and how many backups acknowledged. `test` names the
/// test in the reproduce command.
pub(crate) fn power_cuts(
    s3: Option<&str>,
    encrypted: bool,
    seed: u64,
    runs: u64,
    test: &str,
) -> (u64, u64) {
    let reproduce =
        format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite {test}");
    let key = encrypted.then(bunker_tests::test_key);
    let open = |path: &Path| match s3 {
        None => Repository::open_with(
            path,
            bunker_store::OpenOptions {
                key: key.clone(),
                ..Default::default()
            },
        ),
        Some(spec) => bunker_tests::bucket::open(
            path,
            &bunker_tests::bucket::config(spec),
            bunker_store::CreateOptions {
                key: key.clone(),
                ..Default::default()
            },
        ),
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let mut repo_dir = dir.path().join("img-0");
    let mut live: Vec<(String, u64)> = Vec::new();
    let (mut cuts, mut acks) = (0, 0);
    for run in 0..runs {
        let n: u64 = rng.random_range(1..60);
        let out = dir.path().join(format!("img-{}", run + 1));
        let mut child = Command::new(env!("CARGO_BIN_EXE_bunker-crash-child"));
        if let Some(spec) = s3 {
            child.env(bunker_tests::bucket::ENV, spec);
        }
        if encrypted {
            child.env(bunker_tests::KEY_ENV, "1");
        }
        let o = child
            .arg(&repo_dir)
            .args([&(run + 1).to_string(), "power", &n.to_string()])
            .arg(&out)
            .stderr(Stdio::piped())
            .output()
            .expect("run the power child");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "run {run}: child failed ({}): {stdout}\n{}; {reproduce}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        for line in stdout.lines() {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["ACK", name, id] => {
                    live.push((name.to_string(), id.parse().unwrap()));
                    acks += 1;
                }
                ["DEL", name, id] => live.retain(|(n, i)| !(n == name && i.to_string() == id)),
                ["CUT"] => cuts += 1,
                _ => panic!("run {run}: child said {line:?}; {reproduce}"),
            }
        }
        let _ = std::fs::remove_dir_all(&repo_dir);
        repo_dir = out;
        let repo = open(&repo_dir)
            .unwrap_or_else(|e| panic!("open after cut {run} (step {n}): {e}; {reproduce}"));
        let listed = repo.list(None).unwrap();
        for (name, id) in &live {
            let s = listed
                .iter()
                .find(|s| &s.name == name && s.id.0 == *id)
                .unwrap_or_else(|| {
                    panic!("acknowledged {name}@{id} lost at cut {run} (step {n}); {reproduce}")
                });
            // Every cut, every one: a later cut (a GC rewriting its pack)
            // must not damage what an earlier one left intact.
            let mut h = blake3::Hasher::new();
            std::io::copy(&mut repo.reader(name, Some(s.id), None).unwrap(), &mut h)
                .unwrap_or_else(|e| panic!("{name}@{id} after cut {run}: {e}; {reproduce}"));
            assert_eq!(
                h.finalize().as_bytes(),
                &s.stream_hash,
                "{name}@{id} wrong bytes after cut {run}; {reproduce}"
            );
        }
        if run % 25 == 24 || run + 1 == runs {
            let v = repo.verify().unwrap();
            assert!(
                v.is_clean(),
                "verify after cut {run} (step {n}): {v:?}; {reproduce}"
            );
        }
    }
    (cuts, acks)
}

/// The newest file of each kind a crash or bad disk could leave torn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Newest {
    StagingPack,
    SealedPack,
    IndexFile,
    Manifest,
}

/// 1,000 seeded truncations of the newest staging pack, sealed pack, index
/// file (state or newest run) and manifest of a repository caught with a
/// backup in progress. A staging pack's torn tail is cut on open at exactly
/// the last whole record and reported; a torn index is rebuilt on open,
/// equal to the original; a torn sealed pack or manifest is named by verify
/// with exactly the snapshots it breaks, which fail to read (never wrong
/// bytes), and every other snapshot restores exactly.
#[test]
fn truncations_of_the_newest_files_are_detected_cut_or_named() {
    use bunker_store::{ChunkId, ChunkerParams, CreateOptions};
    let seed = crate::seed(0x7E4A_2C07);
    let trials = crate::scaled(1000);
    let reproduce = format!(
        "BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite crash::truncations"
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = bunker_tests::scratch();
    let (live, base) = (dir.path().join("live"), dir.path().join("base"));
    let mut acked: Vec<(String, SnapshotId, [u8; 32])> = Vec::new();
    {
        let repo = Repository::create(
            &live,
            CreateOptions {
                chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10).unwrap(),
                zstd_level: 1,
                pack_target_len: 1 << 20,
                key: None,
            },
        )
        .unwrap();
        for k in 0..6u64 {
            let mut data = bunker_tests::noise(0xBA5E, 256 << 10);
            data.extend_from_slice(&bunker_tests::noise(
                0x700 + k,
                (384 + 32 * k as usize) << 10,
            ));
            let name = format!("tr-{}", k % 3);
            let s = repo
                .ingest(&name, &data[..], &Default::default(), &mut |_| {})
                .unwrap();
            acked.push((name, s.id, s.stream_hash));
            if k == 2 {
                // Two index flushes: a state and more than one run.
                repo.close().unwrap();
            }
        }
        repo.close().unwrap();
        drop(repo);
        let repo = Repository::open(&live).unwrap();
        // A backup in progress: chunks in the staging pack, no commit (and
        // less than a pack, so no seal runs while the tree is copied).
        let pins = repo.pins();
        for i in 0..4 {
            let raw = bunker_tests::noise(0x57A6 + i, 40 << 10);
            repo.store_chunk(&ChunkId::of(&raw), &raw, &pins).unwrap();
        }
        copy_tree(&live, &base);
    }
    let staging = pack_files(&base, "open");
    assert_eq!(staging.len(), 1, "{staging:?}");
    let staging = staging[0].strip_prefix(&base).unwrap().to_path_buf();
    let staging_bytes = std::fs::read(base.join(&staging)).unwrap();
    let boundaries: Vec<u64> = std::iter::once(64)
        .chain(
            pack_records(&staging_bytes, staging_bytes.len())
                .iter()
                .map(|r| r.end),
        )
        .collect();
    assert_eq!(*boundaries.last().unwrap(), staging_bytes.len() as u64);
    let sealed = pack_files(&base, "pack")
        .into_iter()
        .max_by_key(|p| u64::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap())
        .unwrap();
    let sealed_bytes = std::fs::read(&sealed).unwrap();
    let sealed_records = pack_records(&sealed_bytes, trailer_offset(&sealed_bytes) as usize);
    let sealed = sealed.strip_prefix(&base).unwrap().to_path_buf();
    let newest_run = std::fs::read_dir(base.join("index"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".run"))
        .max_by_key(|n| u64::from_str_radix(&n[n.find('-').unwrap() + 1..n.len() - 4], 16).unwrap())
        .unwrap();
    let (newest_name, newest_id, _) = acked.iter().max_by_key(|a| a.1).unwrap().clone();
    let manifest = Path::new("snapshots")
        .join(&newest_name)
        .join(format!("{}.snap", newest_id.0));
    // What a clean open of the copy gives: the index, and who owns what.
    let (digest, owners) = {
        let pristine = dir.path().join("pristine");
        copy_tree(&base, &pristine);
        let repo = Repository::open(&pristine).unwrap();
        assert!(
            repo.recovery().torn_tails.is_empty(),
            "{:?}",
            repo.recovery()
        );
        assert!(repo.verify().unwrap().is_clean());
        let mut owners: std::collections::HashMap<ChunkId, HashSet<(String, u64)>> =
            Default::default();
        for (name, id, _) in &acked {
            for e in repo.manifest_entries(name, *id).unwrap() {
                owners
                    .entry(e.unwrap().id)
                    .or_default()
                    .insert((name.clone(), id.0));
            }
        }
        (repo.index_digest(), owners)
    };
    let mut counts = [0u64; 4];
    let (mut tails_cut, mut cut_bytes) = (0, 0);
    let work = dir.path().join("work");
    for trial in 0..trials {
        let kind = [
            Newest::StagingPack,
            Newest::SealedPack,
            Newest::IndexFile,
            Newest::Manifest,
        ][rng.random_range(0..4)];
        counts[kind as usize] += 1;
        let _ = std::fs::remove_dir_all(&work);
        copy_tree(&base, &work);
        let file = match kind {
            Newest::StagingPack => staging.clone(),
            Newest::SealedPack => sealed.clone(),
            Newest::IndexFile if rng.random_bool(0.5) => Path::new("index").join("state"),
            Newest::IndexFile => Path::new("index").join(&newest_run),
            Newest::Manifest => manifest.clone(),
        };
        let len = std::fs::metadata(work.join(&file)).unwrap().len();
        let cut = rng.random_range(0..len);
        truncate(&work.join(&file), cut);
        let what = format!(
            "trial {trial}: {} cut to {cut} of {len} bytes; {reproduce}",
            file.display()
        );
        let repo = Repository::open(&work).unwrap_or_else(|e| panic!("{what}: open: {e}"));
        let recovery = repo.recovery().clone();
        // What cannot be restored any more, by the path restores take.
        let broken: HashSet<(String, u64)> = match kind {
            Newest::SealedPack => owners
                .iter()
                .filter(|(id, _)| repo.read_chunk(id).is_err())
                .flat_map(|(_, s)| s.iter().cloned())
                .collect(),
            Newest::Manifest => HashSet::from([(newest_name.clone(), newest_id.0)]),
            _ => HashSet::new(),
        };
        match kind {
            Newest::StagingPack => {
                let whole = *boundaries.iter().rev().find(|b| **b <= cut).unwrap_or(&0);
                let at = if cut < 64 { 0 } else { whole };
                let expect = (at != cut || cut < 64).then_some((at, cut - at));
                let got: Vec<(u64, u64)> = recovery
                    .torn_tails
                    .iter()
                    .map(|t| (t.offset, t.cut_bytes))
                    .collect();
                assert_eq!(got, Vec::from_iter(expect), "{what}: {recovery:?}");
                if let Some((_, b)) = expect {
                    tails_cut += 1;
                    cut_bytes += b;
                }
                assert!(pack_files(&work, "open").is_empty(), "{what}");
                assert!(recovery.index_rebuilt.is_none(), "{what}");
            }
            Newest::IndexFile => {
                assert!(
                    recovery.index_rebuilt.is_some(),
                    "{what}: torn index not found on open"
                );
                assert_eq!(repo.index_digest(), digest, "{what}: rebuilt index differs");
            }
            Newest::SealedPack => {
                // Every record the cut reached is lost, and no other.
                for r in &sealed_records {
                    if let (Some(o), true) = (owners.get(&r.id), r.end > cut) {
                        assert!(o.is_subset(&broken), "{what}: {r:?} owned by {o:?}");
                    }
                    assert_eq!(
                        repo.read_chunk(&r.id).is_ok(),
                        r.end <= cut,
                        "{what}: {r:?}"
                    );
                }
            }
            Newest::Manifest => {}
        }
        for (name, id, hash) in &acked {
            let read = repo.reader(name, Some(*id), None).ok().and_then(|mut r| {
                let mut h = blake3::Hasher::new();
                std::io::copy(&mut r, &mut h).ok()?;
                Some(*h.finalize().as_bytes())
            });
            if broken.contains(&(name.clone(), id.0)) {
                assert!(
                    read.as_ref() != Some(hash),
                    "{what}: {name}@{id} is broken yet read back"
                );
            } else {
                assert_eq!(
                    read.as_ref(),
                    Some(hash),
                    "{what}: {name}@{id} must restore exactly"
                );
            }
        }
        let report = repo.verify().unwrap();
        let named: HashSet<(String, u64)> = report
            .damaged_snapshots
            .iter()
            .map(|d| (d.name.clone(), d.id.0))
            .collect();
        assert_eq!(named, broken, "{what}: {report:?}");
        assert_eq!(
            report.is_clean(),
            matches!(kind, Newest::StagingPack | Newest::IndexFile),
            "{what}: {report:?}"
        );
    }
    println!(
        "truncations: {trials} (staging pack {}, sealed pack {}, index {}, manifest {}); {tails_cut} torn staging tails cut on open at the last whole record ({cut_bytes} bytes), every torn index rebuilt on open equal to the original, every torn sealed pack and manifest named by verify with exactly the snapshots it breaks, all others restored exactly",
        counts[0], counts[1], counts[2], counts[3]
    );
}
