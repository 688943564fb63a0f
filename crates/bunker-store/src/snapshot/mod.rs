//! Snapshots: names, ids, listing and the manifest files behind them.
//!
//! A snapshot is `snapshots/<name>/<id>.snap`. Names are 1 to 128 characters
//! of `[A-Za-z0-9._-]` not starting with a dot, so a name is always a single
//! safe path component. Ids are unique across the repository and increase in
//! commit order, so "latest" is the highest id whatever the clock says.

pub(crate) mod blocks;
pub(crate) mod manifest;
pub(crate) mod plain;
mod writer;

use std::path::{Path, PathBuf};

pub use crate::format::manifest::Origin;
pub use blocks::{BlocksFile, BlocksWriter, ChainingValues};
pub use manifest::ManifestEntry;
pub use plain::Owner;
pub use writer::CopyCommit;
pub(crate) use writer::SnapshotWriter;

use crate::format::manifest::ManifestHeader;
use crate::{Error, Result, SnapshotId};

/// What a listing shows of a snapshot (its manifest header).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub id: SnapshotId,
    pub created_unix_ms: i64,
    pub size: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Raw bytes of the chunks newly stored (0 in older manifests).
    pub new_raw_bytes: u64,
    pub ingest_ms: u64,
    pub stream_hash: [u8; 32],
    pub source: String,
    /// Id of the API token that created it (0: none).
    pub creator: u64,
    /// When this repository committed it; for a copy, `created_unix_ms`
    /// is the origin's creation time.
    pub committed_unix_ms: i64,
    /// Set on a copy made by `bunker sync`.
    pub origin: Option<Origin>,
}

impl SnapshotInfo {
    pub(crate) fn from_header(h: &ManifestHeader) -> SnapshotInfo {
        SnapshotInfo {
            name: h.name.clone(),
            id: h.id,
            created_unix_ms: h.created_unix_ms,
            size: h.size,
            chunks: h.entries,
            zero_chunks: h.zero_chunks,
            new_chunks: h.new_chunks,
            new_bytes: h.new_bytes,
            new_raw_bytes: h.new_raw_bytes,
            ingest_ms: h.ingest_ms,
            stream_hash: h.stream_hash,
            source: h.source.clone(),
            creator: h.creator,
            committed_unix_ms: h.committed_unix_ms,
            origin: h.origin,
        }
    }

    pub fn stream_hash_hex(&self) -> String {
        blake3::Hash::from_bytes(self.stream_hash)
            .to_hex()
            .to_string()
    }
}

/// Checks a snapshot name; the error says what is wrong with it.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "snapshot name {:?} {why}",
            name.chars().take(140).collect::<String>()
        )))
    };
    if name.is_empty() || name.len() > 128 {
        return bad("must be 1 to 128 characters long");
    }
    if name.starts_with('.') {
        return bad("must not start with a dot");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("may only contain A-Z, a-z, 0-9, '.', '_' and '-'");
    }
    Ok(())
}

pub(crate) fn manifest_path(root: &Path, name: &str, id: SnapshotId) -> PathBuf {
    root.join(name).join(format!("{}.snap", id.0))
}

/// Ids of the committed snapshots of `name`, ascending.
pub(crate) fn ids(root: &Path, name: &str) -> Result<Vec<SnapshotId>> {
    let dir = root.join(name);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".snap"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push(SnapshotId(id));
        }
    }
    out.sort();
    Ok(out)
}

/// Names that have at least a directory under `snapshots/`, sorted.
pub(crate) fn names(root: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(root, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        if let Ok(name) = entry.file_name().into_string() {
            if validate_name(&name).is_ok() && entry.path().is_dir() {
                out.push(name);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn hostile_names_are_refused() {
        for ok in ["vol1", "a", "db-2026.11.22_x", &"x".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../etc",
            "a/b",
            "a\\b",
            "a b",
            "ä",
            "a\0b",
            &"x".repeat(129),
            "%2e%2e",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
