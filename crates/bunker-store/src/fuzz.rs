//! Entry points for fuzzing the on-disk decoders: each takes arbitrary
//! bytes as one file of a repository and reads it the way the store does
//! (through the same code, maps included), returning whether it was
//! accepted. Whatever the bytes, none may panic, hang or allocate without
//! bound; damage must come back as an error.
//!
//! `scratch` is a directory the caller owns; each call overwrites the file
//! it needs there.

use std::path::Path;

use bunker_chunk::ChunkId;

use crate::backend::{LocalPacks, PackBackend, ReadMode};
use crate::pack::read_trailer;
use crate::{PackId, Result};

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| crate::Error::io(path, e))
}

/// A sealed pack: header, footer and trailer, then every record the
/// trailer lists, decompressed and checked against its id.
pub fn pack_file(scratch: &Path, bytes: &[u8]) -> Result<usize> {
    let backend = LocalPacks::new(scratch.join("packs"), ReadMode::Pread);
    let file = backend.describe(PackId(0));
    write(&scratch.join(file), bytes)?;
    let packs = crate::pack::Packs::new(Box::new(backend), [0; 16], 1 << 20, 1, None);
    let entries = read_trailer(packs.backend(), None, PackId(0))?;
    let mut good = 0;
    for e in &entries {
        let (id, loc) = e.index_entry(PackId(0));
        if let Ok((codec, stored)) = packs.read_record(&id, &loc) {
            if let Ok(raw) = crate::compress::decompress(codec, stored, loc.raw_len as usize) {
                good += usize::from(ChunkId::of(&raw) == id);
            }
        }
    }
    Ok(good)
}

/// An index run: open (header), verify (checksum, order, filter), and a
/// lookup of every entry's id and of an absent one.
pub fn index_run(scratch: &Path, bytes: &[u8]) -> Result<usize> {
    // The shard and run id the state file would name: those of the header.
    let shard = bytes.get(16).copied().unwrap_or(0);
    let id = bytes
        .get(24..32)
        .map_or(1, |b| crate::format::Le::u64(b, 0));
    let path = scratch.join("fuzz.run");
    write(&path, bytes)?;
    let run = crate::index::Run::open(&path, shard, id)?;
    run.verify()?;
    let mut found = 0;
    for i in 0..run.count {
        let (id, _) = run.get(i);
        found += usize::from(run.position(&id).is_some());
    }
    let _ = run.position(&ChunkId([0x0f; 32]));
    Ok(found)
}

/// The index state file.
pub fn index_state(bytes: &[u8]) -> Result<usize> {
    let s = crate::format::index::IndexState::decode("state", bytes)?;
    Ok(s.runs.len())
}

/// A block hashes file: header, length, values and footer checked on
/// open, then every chaining value read back.
pub fn blocks_file(scratch: &Path, bytes: &[u8]) -> Result<u64> {
    let path = scratch.join("blocks");
    write(&path, bytes)?;
    let owner = crate::snapshot::Owner::unpublished([0; 16]);
    let b = crate::snapshot::BlocksFile::open(&path, None, &owner)?;
    let mut n = 0;
    for cv in b.chaining_values()? {
        cv?;
        n += 1;
    }
    Ok(n)
}

/// A manifest: header and footer on open, the entries' checksum, every
/// entry in order, and the binary search for a few offsets.
pub fn manifest_file(scratch: &Path, bytes: &[u8]) -> Result<u64> {
    let path = scratch.join("manifest");
    write(&path, bytes)?;
    let owner = crate::snapshot::Owner::unpublished([0; 16]);
    let m = crate::snapshot::manifest::ManifestReader::open(&path, "fuzz", None, &owner)?;
    m.verify_entries()?;
    let mut n = 0;
    for e in m.entries_from(0)? {
        e?;
        n += 1;
    }
    let size = m.header.size;
    for offset in [0, size / 3, size.saturating_sub(1)] {
        if offset < size {
            m.find(offset)?;
        }
    }
    Ok(n)
}

/// The `tombstones`, `space` and `snapshots/.deleted-hwm` files, and
/// `config`.
pub fn small_files(bytes: &[u8]) -> usize {
    usize::from(crate::format::tombstones::decode("tombstones", bytes).is_ok())
        + usize::from(crate::format::deleted_hwm::decode(".deleted-hwm", bytes).is_ok())
        + usize::from(crate::format::space::decode("space", bytes).is_ok())
        + usize::from(crate::format::config::RepoConfig::decode("config", bytes).is_ok())
}
