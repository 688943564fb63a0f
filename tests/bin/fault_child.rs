//! Child process for read-fault scenarios that need the store's failpoints
//! (process-wide, so each scenario runs alone in its own process).
//!
//! `bunker-fault-child MODE REPO` runs one scenario on a new repository at
//! REPO, panics when an invariant breaks, and prints `OK <figures>`:
//!
//! - `verify-eio`: every pack read fails with an I/O error during a
//!   verify; nothing may be quarantined, GC must keep every chunk, and the
//!   snapshot restores once reads work again.
//! - `verify-flaky`: one read comes back with a flipped bit, the next is
//!   intact; that record is reported unreadable, not quarantined. A real
//!   flip on disk is still quarantined.
//! - `gc-markers`: `pack_len` fails with EIO during GC's last step; the
//!   quarantine marker of a damaged record in a pack that still exists
//!   must survive.
//! - `sealing-read`: a chunk in a pack being sealed in the background is
//!   read while the seal is held before its rename.
//! - `first-commits`: two first commits to one new name; the first is held
//!   just before it syncs `snapshots/` (the new name's entry), the second
//!   commits, and the power is cut (the power-cut model, every unsynced
//!   directory entry lost): the acknowledged second snapshot must be in
//!   the image.

use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, ensure, Context};
use bunker_store::{
    ChunkId, ChunkerParams, CreateOptions, GcOptions, IngestOptions, Repository, VerifyReport,
};
use bunker_tests::{noise, pack_files, pack_records, snapshot_data};

fn create(path: &str) -> anyhow::Result<Repository> {
    let opts = CreateOptions {
        chunker: ChunkerParams::new(16 << 10, 64 << 10, 256 << 10)?,
        zstd_level: 1,
        pack_target_len: 1 << 20,
        key: None,
    };
    Repository::create(path.as_ref(), opts).context("creating the repository")
}

fn restore(repo: &Repository, name: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    repo.reader(name, None, None)?.read_to_end(&mut out)?;
    Ok(out)
}

fn ingest(repo: &Repository, name: &str) -> anyhow::Result<Vec<u8>> {
    let data = snapshot_data(name);
    repo.ingest(name, &data[..], &IngestOptions::default(), &mut |_| {})?;
    Ok(data)
}

fn verify_eio(path: &str) -> anyhow::Result<String> {
    let repo = create(path)?;
    let data = ingest(&repo, "v")?;
    fail::cfg("pack::read", "return").map_err(anyhow::Error::msg)?;
    let r = repo.verify()?;
    fail::remove("pack::read");
    ensure!(r.newly_quarantined == 0, "quarantined on I/O errors: {r:?}");
    ensure!(r.damage.is_empty(), "I/O errors reported as damage: {r:?}");
    ensure!(!r.unreadable.is_empty() && !r.is_clean(), "{r:?}");
    ensure!(
        r.unreadable
            .iter()
            .all(|d| d.pack.is_some() && d.offset.is_some() && d.reason.contains("injected")),
        "unreadable records name no pack and offset: {:?}",
        r.unreadable
    );
    ensure!(
        r.damaged_snapshots.len() == 1 && r.damaged_snapshots[0].name == "v",
        "{:?}",
        r.damaged_snapshots
    );
    let gc = repo.gc(&GcOptions {
        rewrite_below: 0.9,
        dry_run: false,
    })?;
    ensure!(gc.packs_deleted == 0, "GC deleted live packs: {gc:?}");
    ensure!(restore(&repo, "v")? == data, "v restores wrong bytes");
    let clean = repo.verify()?;
    ensure!(clean.is_clean(), "{clean:?}");
    Ok(format!(
        "unreadable={} quarantined=0 gc_deleted=0",
        r.unreadable.len()
    ))
}

/// Flips one bit of the stored bytes of the first record of the first
/// sealed pack on disk; returns its chunk id.
fn flip_on_disk(repo_dir: &str) -> anyhow::Result<ChunkId> {
    let pack = pack_files(repo_dir.as_ref(), "pack")
        .into_iter()
        .next()
        .context("no sealed pack")?;
    let mut bytes = std::fs::read(&pack)?;
    let limit = bunker_tests::trailer_offset(&bytes) as usize;
    let rec = *pack_records(&bytes, limit).first().context("no record")?;
    bytes[rec.start as usize + 64] ^= 0x10;
    std::fs::write(&pack, bytes)?;
    Ok(rec.id)
}

fn verify_flaky(path: &str) -> anyhow::Result<String> {
    let repo = create(path)?;
    let data = ingest(&repo, "v")?;
    fail::cfg("pack::read_flip", "1*return").map_err(anyhow::Error::msg)?;
    let r: VerifyReport = repo.verify()?;
    fail::remove("pack::read_flip");
    ensure!(
        r.newly_quarantined == 0 && r.damage.is_empty(),
        "a mismatch seen once was quarantined: {r:?}"
    );
    ensure!(
        r.unreadable.len() == 1 && r.unreadable[0].reason.contains("second read"),
        "{:?}",
        r.unreadable
    );
    repo.gc(&GcOptions::default())?;
    ensure!(restore(&repo, "v")? == data, "v restores wrong bytes");
    ensure!(repo.verify()?.is_clean(), "not clean after a flaky read");
    // Damage at rest is seen on both reads: quarantined as before.
    drop(repo);
    let flipped = flip_on_disk(path)?;
    let repo = Repository::open(path.as_ref())?;
    let r = repo.verify()?;
    ensure!(
        r.newly_quarantined == 1 && r.damage.len() == 1 && r.damage[0].chunk == Some(flipped),
        "real damage not quarantined: {r:?}"
    );
    Ok(format!(
        "unreadable=1 then quarantined={}",
        r.newly_quarantined
    ))
}

fn gc_markers(path: &str) -> anyhow::Result<String> {
    let repo = create(path)?;
    // Incompressible: the first pack is full, and stays mostly live.
    let a = noise(98, 3 << 20);
    repo.ingest("a", &a[..], &IngestOptions::default(), &mut |_| {})?;
    drop(repo);
    let flipped = flip_on_disk(path)?;
    let repo = Repository::open(path.as_ref())?;
    let r = repo.verify()?;
    ensure!(r.newly_quarantined == 1, "{r:?}");
    // A second name whose packs GC will condemn, so it reaches its last
    // step (compaction and the markers of packs that are gone).
    let b = noise(99, 3 << 20);
    repo.ingest("b", &b[..], &IngestOptions::default(), &mut |_| {})?;
    for s in repo.list(Some("b"))? {
        repo.delete("b", s.id)?;
    }
    fail::cfg_callback("gc::compacted", || {
        let _ = fail::cfg("pack::len", "return");
    })
    .map_err(anyhow::Error::msg)?;
    let gc = repo.gc(&GcOptions::default())?;
    fail::remove("gc::compacted");
    fail::remove("pack::len");
    ensure!(gc.packs_deleted > 0, "GC condemned nothing: {gc:?}");
    drop(repo);
    let repo = Repository::open(path.as_ref())?;
    let r = repo.verify()?;
    ensure!(
        r.quarantined == 1 && r.newly_quarantined == 0 && r.damage.is_empty(),
        "the quarantine of {flipped} was dropped by GC: {r:?}"
    );
    Ok(format!(
        "packs_deleted={} quarantine kept",
        gc.packs_deleted
    ))
}

fn sealing_read(path: &str) -> anyhow::Result<String> {
    let repo = create(path)?;
    let held = Arc::new((Mutex::new(true), Condvar::new()));
    let h = held.clone();
    fail::cfg_callback("pack::background_seal", move || {
        let (lock, cv) = &*h;
        let mut hold = lock.lock().unwrap();
        while *hold {
            hold = cv.wait(hold).unwrap();
        }
    })
    .map_err(anyhow::Error::msg)?;
    // 48 KiB chunks of noise: 1 MiB packs fill after ~21 of them.
    let pins = repo.pins();
    let mut ids = Vec::new();
    for i in 0..30u64 {
        let raw = noise(1000 + i, 48 << 10);
        let id = ChunkId::of(&raw);
        repo.store_chunk(&id, &raw, &pins)?;
        ids.push((id, raw));
    }
    // The first chunks are in a pack whose seal is held before its rename.
    let (id, raw) = &ids[0];
    let read = repo.read_chunk(id);
    {
        let (lock, cv) = &*held;
        *lock.lock().unwrap() = false;
        cv.notify_all();
    }
    fail::remove("pack::background_seal");
    match read {
        Ok(bytes) if bytes == *raw => {}
        Ok(_) => bail!("wrong bytes from a pack being sealed"),
        Err(e) => bail!("a chunk in a pack being sealed could not be read: {e}"),
    }
    let sealed = pack_files(path.as_ref(), "pack").len();
    Ok(format!(
        "read during seal ok; sealed packs after release={sealed}"
    ))
}

fn first_commits(path: &str) -> anyhow::Result<String> {
    use bunker_store::observe::Step;
    use bunker_tests::power::PowerModel;
    use rand::SeedableRng;

    let root = std::path::PathBuf::from(path);
    let repo = create(path)?;
    let model = Arc::new(Mutex::new(PowerModel::default()));
    model.lock().unwrap().snapshot_all(&root);
    // (held: the first sync of snapshots/ is waiting, released: go on)
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let snapshots = root.join("snapshots");
    let (m, g) = (model.clone(), gate.clone());
    let first = std::sync::atomic::AtomicBool::new(true);
    bunker_store::observe::set(move |step| {
        if matches!(step, Step::SyncDir(d) if d == snapshots)
            && first.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            let (lock, cv) = &*g;
            let mut s = lock.lock().unwrap();
            s.0 = true;
            cv.notify_all();
            while !s.1 {
                s = cv.wait(s).unwrap();
            }
        }
        // The hook runs just before the sync: record it as done.
        m.lock().unwrap().step(step);
    });
    let a = noise(501, 200 << 10);
    let b = noise(502, 200 << 10);
    let repo_a = repo.clone();
    let a_thread = std::thread::spawn(move || {
        repo_a.ingest("n", &a[..], &IngestOptions::default(), &mut |_| {})
    });
    {
        let (lock, cv) = &*gate;
        let mut s = lock.lock().unwrap();
        while !s.0 {
            s = cv.wait(s).unwrap();
        }
    }
    let acked = repo.ingest("n", &b[..], &IngestOptions::default(), &mut |_| {})?;
    let image = root.with_extension("cut");
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
    model.lock().unwrap().cut(&root, &image, &mut rng, 0.0);
    {
        let (lock, cv) = &*gate;
        lock.lock().unwrap().1 = true;
        cv.notify_all();
    }
    a_thread.join().expect("first commit thread")?;
    let after = Repository::open(&image)?;
    let listed = after.list(Some("n"))?;
    ensure!(
        listed.iter().any(|s| s.id == acked.id),
        "snapshot n@{} was acknowledged but a power cut loses it (listed after the cut: {:?})",
        acked.id,
        listed.iter().map(|s| s.id).collect::<Vec<_>>()
    );
    ensure!(
        restore(&after, "n")? == b,
        "n@{} restores wrong bytes",
        acked.id
    );
    Ok(format!("n@{} survives the cut", acked.id))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, mode, repo] = &args[..] else {
        bail!("usage: bunker-fault-child verify-eio|verify-flaky|gc-markers|sealing-read|first-commits REPO");
    };
    let scenario = fail::FailScenario::setup();
    let out = match mode.as_str() {
        "verify-eio" => verify_eio(repo)?,
        "verify-flaky" => verify_flaky(repo)?,
        "gc-markers" => gc_markers(repo)?,
        "sealing-read" => sealing_read(repo)?,
        "first-commits" => first_commits(repo)?,
        other => bail!("unknown mode {other}"),
    };
    scenario.teardown();
    println!("OK {out}");
    Ok(())
}
