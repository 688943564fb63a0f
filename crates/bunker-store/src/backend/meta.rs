//! The storage seam for the repository's files other than packs.
//!
//! A repository whose packs live in an object store keeps its truth there
//! too: the config, every committed manifest, `snapshots/.deleted-hwm` and
//! `tombstones` are objects under fixed keys, and the local directory holds
//! copies that make it fast (and the index, which is rebuilt from the pack
//! trailers). A local repository has no [`MetaBackend`]: its files are the
//! truth. [`MemMeta`] holds objects in memory, for tests. Every backend
//! must pass the suite in `conformance::meta`.
//!
//! Keys are relative paths with `/` separators, the same as the files'
//! paths under the repository directory (`config`,
//! `snapshots/<name>/<id>.snap`, `snapshots/.deleted-hwm`, `tombstones`),
//! so the remote and local layouts read alike.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

use crate::error::IoContext;
use crate::{Error, Result};

pub trait MetaBackend: Send + Sync {
    /// Stores `bytes` under `key`, replacing what was there. Durable on
    /// return (a successful PUT).
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// Stores `bytes` under `key` only when no object is there (a
    /// conditional create, If-None-Match: *); returns false, leaving the
    /// object as it is, when one is. For objects written once and never
    /// replaced (the repository's `config`): a late write of a process that
    /// died, or a second process, can never replace what another read.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// Stores the file at `path` under `key` (manifests may be large: a
    /// remote backend streams it). Durable on return.
    fn put_file(&self, key: &str, path: &Path) -> Result<()>;
    /// The object under `key`, or None when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes the object under `key` to `path` (created or truncated) and
    /// returns true, or returns false when there is none (`path` untouched).
    /// The caller syncs and renames.
    fn get_file(&self, key: &str, path: &Path) -> Result<bool>;
    /// All keys starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// Removes `key`; removing a key that is not there succeeds.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where the objects are, for messages: `s3://bucket/prefix at URL`.
    fn describe(&self) -> String;
}

/// Objects in memory, for tests: shared by two repositories (through an
/// `Arc`) it plays a bucket that outlives a server's data directory.
#[derive(Default)]
pub struct MemMeta {
    objects: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemMeta {
    pub fn new() -> MemMeta {
        MemMeta::default()
    }
}

impl MetaBackend for MemMeta {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        self.objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), bytes.to_vec());
        Ok(())
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        check_key(key)?;
        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
        if objects.contains_key(key) {
            return Ok(false);
        }
        objects.insert(key.to_string(), bytes.to_vec());
        Ok(true)
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).at(path)?;
        self.put(key, &bytes)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        Ok(self
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    fn get_file(&self, key: &str, path: &Path) -> Result<bool> {
        match self.get(key)? {
            Some(bytes) => {
                std::fs::write(path, bytes).at(path)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let objects = self.objects.read().unwrap_or_else(|p| p.into_inner());
        Ok(objects
            .range(prefix.to_string()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}

/// Keys are relative paths of safe components: never empty, absolute, or
/// with `.`/`..` components, so a key maps to one file under the
/// repository directory and nowhere else.
pub fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\'));
    if bad {
        return Err(Error::Invalid(format!(
            "object key {key:?} is not a relative path of plain components"
        )));
    }
    Ok(())
}
