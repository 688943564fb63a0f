//! Helpers shared by the suite and its child processes.

pub mod bucket;
pub mod power;
pub mod server;

/// The deterministic contents of the crash-test snapshot called `name`:
/// 0.25 to 3.25 MiB, half shared with other snapshots (dedup), with text,
/// zero and random regions.
pub fn snapshot_data(name: &str) -> Vec<u8> {
    let h = blake3::hash(name.as_bytes());
    let b = h.as_bytes();
    let len = (256 << 10) + (u32::from_le_bytes([b[0], b[1], b[2], 0]) as usize % (3 << 20));
    let mut data = noise(7, len / 2);
    data.extend_from_slice(&noise(
        u64::from_le_bytes([b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10]]),
        len - len / 2,
    ));
    let text: Vec<u8> = (0..)
        .flat_map(|i| format!("{name} line {i}\n").into_bytes())
        .take(len / 8)
        .collect();
    let at = len / 4;
    data[at..at + text.len()].copy_from_slice(&text);
    let z = len * 3 / 4;
    data[z..z + len / 10].fill(0);
    data
}

pub use bunker_testdata::noise;

/// A scratch directory for a test's repositories and servers: in
/// `/dev/shm` (tmpfs on Linux) when writable, else in the default temporary
/// directory. The suite creates, truncates and deletes hundreds of
/// thousands of files to test bunker's recovery, not the filesystem; on
/// ext4 mounted with `discard` each creation scans recently deleted inodes
/// (`recently_deleted` in the inode allocator) and each freed block is
/// discarded on the spot, which made the power-cut and truncation loops
/// 4-5x slower. Tests of images, sparse files and devices on a real disk
/// (restore, delta, SAN, upgrade, mount, NBD) use `tempfile::tempdir`.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("bunker-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary directory")
}

/// Lists the pack files (sealed `.pack` and staging `.open`) by path.
pub fn pack_files(repo: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for a in std::fs::read_dir(repo.join("packs")).unwrap().flatten() {
        for b in std::fs::read_dir(a.path()).unwrap().flatten() {
            for f in std::fs::read_dir(b.path()).unwrap().flatten() {
                if f.path().extension().is_some_and(|e| e == ext) {
                    out.push(f.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, at any depth, sorted.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Copies the tree at `from` to `to` (a repository image).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for src in files_under(from) {
        let dst = to.join(src.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(&src, &dst).unwrap();
    }
}

/// Cuts the file at `path` to `len` bytes.
pub fn truncate(path: &std::path::Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A record of a pack file, found by parsing it per docs/FORMAT.md.
#[derive(Clone, Copy, Debug)]
pub struct PackRecord {
    pub start: u64,
    pub end: u64,
    pub id: bunker_chunk::ChunkId,
}

/// The whole records of a pack's `bytes` before `limit`: a 64-byte pack
/// header, then records of a 64-byte header (magic `BREC`, stored length
/// at 12, chunk id at 16) and the stored bytes. Stops at the first one
/// that is not whole.
pub fn pack_records(bytes: &[u8], limit: usize) -> Vec<PackRecord> {
    let mut out = Vec::new();
    let mut at = 64;
    while at + 64 <= limit && &bytes[at..at + 4] == b"BREC" {
        let stored = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) as usize;
        let end = at + 64 + stored;
        if end > limit {
            break;
        }
        out.push(PackRecord {
            start: at as u64,
            end: end as u64,
            id: bunker_chunk::ChunkId(bytes[at + 16..at + 48].try_into().unwrap()),
        });
        at = end;
    }
    out
}

/// Where a sealed pack's trailer starts, as its footer says.
pub fn trailer_offset(pack: &[u8]) -> u64 {
    u64::from_le_bytes(pack[pack.len() - 48..pack.len() - 40].try_into().unwrap())
}

/// BLAKE3 of everything a reader yields, and its length.
pub fn hash_reader(mut r: impl std::io::Read) -> ([u8; 32], u64) {
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut r, &mut h).expect("read");
    (*h.finalize().as_bytes(), n)
}

/// Set (to anything) in a crash or fault child's environment: the child's
/// repository is encrypted with [`test_key`].
pub const KEY_ENV: &str = "BUNKER_CHILD_ENCRYPTED";

/// The key of the suites' encrypted repositories (fixed, so a seed
/// reproduces a run byte for byte).
pub fn test_key() -> std::sync::Arc<bunker_crypt::Key> {
    std::sync::Arc::new(bunker_crypt::Key::from_bytes([0x5e; 32]))
}

/// [`test_key`] when [`KEY_ENV`] is set, else none.
pub fn key_from_env() -> Option<std::sync::Arc<bunker_crypt::Key>> {
    std::env::var_os(KEY_ENV).map(|_| test_key())
}

/// How many trials a randomised fault test runs: `ci` in CI, ten times as
/// many in the soak tier (`BUNKER_SOAK=1`).
pub fn scaled(ci: u64) -> u64 {
    if std::env::var("BUNKER_SOAK").is_ok_and(|v| v == "1") {
        ci * 10
    } else {
        ci
    }
}

/// The seed of a randomised test: `BUNKER_SEED` or the given default.
pub fn seed(default: u64) -> u64 {
    std::env::var("BUNKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
