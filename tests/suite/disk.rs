//! Full disk: the server's data directory on a small filesystem of its own
//! (a loop-mounted ext4 the test makes, or a tmpfs where loop devices are
//! not available), filled by backups at 20 seeded points (a ballast file
//! shifts where the space runs out: inside a pack, an index flush, a
//! manifest, or a GC). Each time: the failing backup gets a clean 507 (the
//! CLI exits 1 naming the full disk), nothing acknowledged is lost, no
//! SIGBUS, verify is clean; deleting and GC work with zero bytes free
//! (the space reserve); the next backup succeeds once space is freed.

use std::path::{Path, PathBuf};
use std::process::Command;

use bunker_tests::server::Server;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const BIN: &str = env!("CARGO_BIN_EXE_bunker-e2e");
const FS_MIB: u64 = 64;

/// A small filesystem mounted for one trial; unmounted when dropped.
struct SmallFs {
    mnt: PathBuf,
    kind: &'static str,
}

impl SmallFs {
    /// A loop-mounted ext4 of `FS_MIB`, else a tmpfs of that size; `Err`
    /// says why neither could be mounted (not root, no loop devices...).
    fn mount(dir: &Path) -> Result<SmallFs, String> {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let img = dir.join("fs.img");
        let run = |cmd: &mut Command| -> Result<(), String> {
            let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        };
        let ext4 = (|| {
            std::fs::File::create(&img)
                .and_then(|f| f.set_len(FS_MIB << 20))
                .map_err(|e| e.to_string())?;
            run(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0"])
                .arg(&img))?;
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt))
        })();
        if ext4.is_ok() {
            return Ok(SmallFs {
                mnt,
                kind: "ext4 (loop)",
            });
        }
        let _ = std::fs::remove_file(&img);
        let size = format!("size={FS_MIB}m");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &size, "tmpfs"])
            .arg(&mnt))
        .map(|()| SmallFs {
            mnt: mnt.clone(),
            kind: "tmpfs",
        })
        .map_err(|tmpfs| format!("ext4: {}; tmpfs: {tmpfs}", ext4.unwrap_err()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn put(server: &Server, name: &str, data: &[u8]) -> Result<u64, (u16, String)> {
    match ureq::put(format!("{}/v1/snapshots/{name}", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .config()
        .http_status_as_error(false)
        .build()
        .send(data)
    {
        Ok(mut r) if r.status() == 201 => {
            Ok(r.body_mut().read_json::<bunker_api::Snapshot>().unwrap().id)
        }
        Ok(mut r) => Err((
            r.status().as_u16(),
            r.body_mut().read_to_string().unwrap_or_default(),
        )),
        Err(e) => Err((0, e.to_string())),
    }
}

/// Every snapshot of `snaps` restores to its hash, and verify is clean.
fn assert_intact<'a>(
    client: &bunker_client::Client,
    snaps: impl IntoIterator<Item = &'a (String, u64, [u8; 32])>,
    what: &str,
) {
    for (name, id, hash) in snaps {
        assert_eq!(
            &restore_hash(client, name, *id),
            hash,
            "{what}: {name}@{id}"
        );
    }
    let v = client.verify(&Default::default()).unwrap();
    assert!(v.clean, "{what}: verify: {v:?}");
}

fn restore_hash(client: &bunker_client::Client, name: &str, id: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    client
        .restore(
            name,
            Some(id),
            bunker_client::Target::Stream(&mut h),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("{name}@{id} does not restore: {e}"));
    *h.finalize().as_bytes()
}

#[test]
fn a_full_disk_gets_clean_errors_loses_nothing_and_recovers_when_space_is_freed() {
    let seed = crate::seed(0xF011);
    let trials = crate::scaled(20);
    let reproduce =
        format!("BUNKER_SEED={seed} cargo test --release -p bunker-tests --test suite disk::");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut kinds = std::collections::BTreeMap::new();
    let mut full_at = Vec::new();
    for trial in 0..trials {
        let dir = tempfile::tempdir().unwrap();
        let fs = match SmallFs::mount(dir.path()) {
            Ok(fs) => fs,
            Err(why) => {
                // Mounting needs root (CAP_SYS_ADMIN); say so loudly rather
                // than pretend the row ran.
                println!("full disk: NOT RUN, cannot mount a small filesystem here: {why}");
                return;
            }
        };
        *kinds.entry(fs.kind).or_insert(0) += 1;
        // Ballast: where the space runs out moves with it.
        let ballast = rng.random_range(0..24u64) << 20 | rng.random_range(0..1u64 << 20);
        std::fs::write(fs.mnt.join("ballast"), vec![7u8; ballast as usize]).unwrap();
        let data = fs.mnt.join("data");
        let server = Server::start(BIN, &data, &[]);
        let client = bunker_client::Client::new(&server.url, Some(server.admin.clone()));
        let mut acked: Vec<(String, u64, [u8; 32])> = Vec::new();
        let mut k = 0u64;
        // Back up random (incompressible) images until the disk is full.
        let refused = loop {
            let len = rng.random_range(512 << 10..3 << 20);
            let image = bunker_tests::noise(seed ^ (trial << 20) ^ k, len);
            let name = format!("disk-{}", k % 3);
            k += 1;
            match put(&server, &name, &image) {
                Ok(id) => acked.push((name, id, *blake3::hash(&image).as_bytes())),
                Err(e) => break e,
            }
            assert!(k < 200, "the disk never filled; {reproduce}");
        };
        assert_eq!(
            refused.0, 507,
            "trial {trial}: a full disk must be 507: {refused:?}; {reproduce}"
        );
        assert!(refused.1.contains("insufficient_storage"), "{refused:?}");
        full_at.push(acked.len());
        // The CLI names it and exits 1.
        let img = dir.path().join("img");
        std::fs::write(&img, bunker_tests::noise(seed ^ 0xC11, 4 << 20)).unwrap();
        let o = Command::new(BIN)
            .args(["backup", "cli-full"])
            .arg(&img)
            .env("BUNKER_SERVER", &server.url)
            .env("BUNKER_TOKEN", &server.admin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "CLI on a full disk: {err}; {reproduce}"
        );
        assert!(
            err.contains("space") || err.contains("507"),
            "CLI message: {err}"
        );
        // Alive, nothing acknowledged lost, clean.
        client.health().expect("server alive on a full disk");
        assert_intact(
            &client,
            &acked,
            &format!("trial {trial}, disk full; {reproduce}"),
        );
        // Freeing space works with zero bytes free: delete half, GC.
        let (go, keep): (Vec<_>, Vec<_>) = acked.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, (name, id, _)) in &go {
            client.delete_snapshot(name, *id).unwrap_or_else(|e| {
                panic!("trial {trial}: delete on a full disk: {e}; {reproduce}")
            });
        }
        let gc = client
            .gc(&Default::default())
            .unwrap_or_else(|e| panic!("trial {trial}: GC on a full disk: {e}; {reproduce}"));
        assert!(
            gc.bytes_reclaimed > 0,
            "trial {trial}: GC freed nothing: {gc:?}"
        );
        // The next backup succeeds, and everything kept still restores.
        let image = bunker_tests::noise(seed ^ 0xAF7E ^ trial, 1 << 20);
        let id = put(&server, "after", &image).unwrap_or_else(|e| {
            panic!("trial {trial}: backup after freeing space: {e:?}; {reproduce}")
        });
        assert_eq!(
            restore_hash(&client, "after", id),
            *blake3::hash(&image).as_bytes()
        );
        assert_intact(
            &client,
            keep.iter().map(|(_, s)| *s),
            &format!("trial {trial}, after freeing; {reproduce}"),
        );
        server.stop();
        drop(fs);
    }
    println!(
        "full disk: {trials} trials on {kinds:?} of {FS_MIB} MiB; the disk filled after {:?} backups; every refusal a 507, CLI exit 1; nothing acknowledged lost; verify clean; delete and GC worked with zero bytes free; the next backup succeeded",
        full_at
    );
}
