//! A pack backend that holds sealed packs in memory.
//!
//! Staging files are real files in a directory the caller gives (the pack
//! writer and recovery write them with ordinary file I/O); `store_sealed`
//! reads the staged file into memory and removes it. Nothing sealed survives
//! the process, so this is for tests: the conformance suite, and repository
//! tests that want packs gone on drop or inspected without a disk layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::IoContext;
use crate::{Error, PackId, Result};

use super::PackBackend;

pub struct MemPacks {
    staging: PathBuf,
    sealed: RwLock<BTreeMap<PackId, Arc<[u8]>>>,
}

impl MemPacks {
    /// A backend with no packs, staging in `staging` (created on first use).
    pub fn new(staging: PathBuf) -> MemPacks {
        MemPacks {
            staging,
            sealed: RwLock::new(BTreeMap::new()),
        }
    }

    fn get(&self, pack: PackId) -> Result<Arc<[u8]>> {
        self.sealed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pack)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                what: format!("pack {}", self.describe(pack)),
            })
    }

    fn beyond_end(&self, pack: PackId, offset: u64, len: usize) -> Error {
        Error::Corrupt {
            file: self.describe(pack),
            pack: Some(pack),
            offset: Some(offset),
            chunk: None,
            reason: format!("read of {len} bytes is beyond the end of the pack"),
        }
    }
}

impl PackBackend for MemPacks {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.staging.join(format!("{:016x}.open", pack.0))
    }

    fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()> {
        let bytes = std::fs::read(staged).at(staged)?;
        self.sealed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pack, bytes.into());
        // Like the rename of a local backend: once published, the staging
        // file is gone and recovery will not see it again.
        std::fs::remove_file(staged).at(staged)
    }

    fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        let bytes = self.get(pack)?;
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(len)?));
        match range.and_then(|r| bytes.get(r)) {
            Some(b) => Ok(b.to_vec()),
            None => Err(self.beyond_end(pack, offset, len)),
        }
    }

    fn pack_len(&self, pack: PackId) -> Result<u64> {
        Ok(self.get(pack)?.len() as u64)
    }

    fn list(&self) -> Result<Vec<PackId>> {
        let sealed = self.sealed.read().unwrap_or_else(|p| p.into_inner());
        Ok(sealed.keys().copied().collect())
    }

    fn list_staged(&self) -> Result<Vec<PackId>> {
        let rd = match std::fs::read_dir(&self.staging) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.staging, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let name = entry.at(&self.staging)?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".open"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            out.extend(id.map(PackId));
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, pack: PackId) -> Result<()> {
        self.sealed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pack);
        Ok(())
    }

    fn describe(&self, pack: PackId) -> String {
        format!("mem/{:016x}.pack", pack.0)
    }
}
