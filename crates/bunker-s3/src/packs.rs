//! Sealed packs as objects: [`S3Packs`], a [`PackBackend`].
//!
//! Pack `id` is the object `PREFIX/packs/<aa>/<bb>/<id>.pack`, with the
//! fan-out names of `LocalPacks` (`aa` the low byte of the id, `bb` the
//! next). Staging is local: packs are written in `<data>/staging/<id>.open`
//! and `store_sealed` uploads the file create-only (an existing pack is
//! never replaced), returning once the PUT or CompleteMultipartUpload
//! succeeded; the staged bytes then move into the read cache (recent packs
//! are read most) and the staging file is removed. Reads check the range
//! against the pack's length (one HEAD per pack: sealed packs are
//! immutable) and go through the [`Cache`]; `read_record` is one read.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bunker_store::backend::PackBackend;
use bunker_store::{Error, PackId, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use object_store::path::Path as Key;

use crate::bucket::{Bucket, Remote};
use crate::cache::Cache;
use crate::upload::{abort_journalled, put_file, Journal};
use crate::window::{Fetch, Window};

/// Largest GET one read-ahead run makes (at most a quarter of the
/// window, so that several are in flight).
const READ_AHEAD_RUN_BYTES: u64 = 8 << 20;

pub struct S3Packs {
    bucket: Bucket,
    shared: Arc<Shared>,
    staging: PathBuf,
    journal: Journal,
}

/// What read-ahead tasks share with the caller's threads.
struct Shared {
    cache: Option<Cache>,
    /// Records announced by `will_need`, fetched ahead; None when
    /// `read_ahead_bytes` is 0.
    window: Option<Window>,
    /// Lengths of sealed packs, learnt by HEAD or upload.
    lens: Mutex<HashMap<PackId, u64>>,
}

impl S3Packs {
    /// Packs in `bucket`, staging and caching under the data directory
    /// `data`. Aborts the multipart uploads an earlier process journalled
    /// and did not finish.
    pub fn open(bucket: &Bucket, data: &Path) -> Result<S3Packs> {
        let config = &bucket.config;
        let staging = data.join("staging");
        std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        let journal = Journal::open(staging.join("uploads"))?;
        let capacity = config.cache_bytes(data)?;
        let cache = match capacity {
            0 => None,
            _ => Some(Cache::open(
                config.cache_dir(data),
                capacity,
                config.cache_block_bytes,
            )?),
        };
        let packs = S3Packs {
            bucket: bucket.clone(),
            shared: Arc::new(Shared {
                cache,
                window: (config.read_ahead_bytes > 0).then(|| {
                    Window::new(
                        config.read_ahead_bytes,
                        READ_AHEAD_RUN_BYTES.min(config.read_ahead_bytes / 4),
                        config.max_in_flight,
                    )
                }),
                lens: Mutex::new(HashMap::new()),
            }),
            staging,
            journal,
        };
        let journal = packs.journal.clone();
        let aborted =
            bucket.run(|remote| async move { abort_journalled(&remote, &journal).await })?;
        if aborted > 0 {
            tracing::info!("aborted {aborted} multipart uploads left by an earlier process");
        }
        Ok(packs)
    }

    fn key(&self, pack: PackId) -> Key {
        self.bucket.remote.key(&pack_key(pack))
    }

    /// Starts fetching a read-ahead run on the bridge's runtime.
    fn launch(&self, run: Fetch) {
        let task = fetch_run(self.shared.clone(), self.bucket.remote.clone(), run);
        self.bucket.bridge.spawn(task);
    }

    fn len_known(&self, pack: PackId) -> Option<u64> {
        lock(&self.shared.lens).get(&pack).copied()
    }

    /// `len` bytes at `offset`, checked against the pack's length first so
    /// that a read past the end is `Corrupt` (the pack exists) rather than
    /// whatever the store answers for an unsatisfiable range.
    /// A read-ahead run that holds the range answers first: its GET
    /// succeeded, so the range is within the pack.
    /// Bytes, not a Vec: a read-ahead run's slice is handed out without a
    /// copy, and [`PackBackend::read_record`] copies only the record body.
    fn read_range(&self, pack: PackId, offset: u64, len: usize) -> Result<Bytes> {
        if let Some(window) = &self.shared.window {
            if len > 0 {
                if let Some(bytes) = window.take(pack, offset, len as u64, &|f| self.launch(f)) {
                    return Ok(bytes);
                }
            }
        }
        let pack_len = self.pack_len(pack)?;
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|end| end > pack_len) {
            return Err(Error::Corrupt {
                file: self.describe(pack),
                pack: Some(pack),
                offset: Some(offset),
                chunk: None,
                reason: format!(
                    "read of {len} bytes is beyond the end of the {pack_len}-byte pack"
                ),
            });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let key = self.key(pack);
        let fetch = |range: std::ops::Range<u64>| {
            let key = key.clone();
            self.bucket
                .run(|remote| async move { remote.get_range(&key, range).await })
                .map_err(|e| self.gone_means_not_found(pack, e))
        };
        match &self.shared.cache {
            Some(cache) => cache
                .read(pack, pack_len, offset, len as u64, &fetch)
                .map(Bytes::from),
            None => fetch(offset..offset + len as u64),
        }
    }

    /// A pack deleted behind the length cache's back reads as NotFound.
    fn gone_means_not_found(&self, pack: PackId, e: Error) -> Error {
        if matches!(e, Error::NotFound { .. }) {
            lock(&self.shared.lens).remove(&pack);
            return Error::NotFound {
                what: format!("pack {}", self.describe(pack)),
            };
        }
        e
    }

    /// Copies the staged pack into the cache block by block, unless it
    /// would push out more than a quarter of the cache.
    fn cache_staged(&self, pack: PackId, staged: &Path, len: u64) {
        let Some(cache) = &self.shared.cache else {
            return;
        };
        if len > cache_budget(cache) {
            return;
        }
        let Ok(f) = File::open(staged) else { return };
        let block = cache.block_bytes();
        let claim = cache.claim(pack, 0..len.div_ceil(block));
        for index in claim.mine {
            let range = cache.byte_range(&(index..index + 1), len);
            let mut buf = vec![0u8; (range.end - range.start) as usize];
            match f.read_exact_at(&mut buf, range.start) {
                Ok(()) => cache.fill(pack, index, &buf),
                Err(_) => cache.release(pack, [index]),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `packs/<aa>/<bb>/<id>.pack`, as `LocalPacks` lays packs out.
fn pack_key(pack: PackId) -> String {
    format!(
        "packs/{:02x}/{:02x}/{:016x}.pack",
        pack.0 & 0xff,
        (pack.0 >> 8) & 0xff,
        pack.0
    )
}

/// The pack id of a key under `packs/`, if it is one.
fn parse_pack_key(key: &str) -> Option<PackId> {
    let name = key.strip_prefix("packs/")?.rsplit('/').next()?;
    let hex = name.strip_suffix(".pack")?;
    let id = u64::from_str_radix(hex, 16).ok()?;
    (hex.len() == 16 && pack_key(PackId(id)) == key).then_some(PackId(id))
}

impl PackBackend for S3Packs {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.staging.join(format!("{:016x}.open", pack.0))
    }

    fn store_sealed(&self, pack: PackId, staged: &Path) -> Result<()> {
        let len = put_file(&self.bucket, &self.journal, self.key(pack), staged, true)?;
        lock(&self.shared.lens).insert(pack, len);
        self.cache_staged(pack, staged, len);
        std::fs::remove_file(staged).map_err(|e| Error::io(staged, e))
    }

    fn read(&self, pack: PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.read_range(pack, offset, len).map(Vec::from)
    }

    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> Result<Vec<u8>> {
        let bytes = self.read_range(pack, offset, head.len() + stored_len)?;
        head.copy_from_slice(&bytes[..head.len()]);
        Ok(bytes[head.len()..].to_vec())
    }

    fn pack_len(&self, pack: PackId) -> Result<u64> {
        if let Some(len) = self.len_known(pack) {
            return Ok(len);
        }
        let key = self.key(pack);
        match self
            .bucket
            .run(|remote| async move { remote.head(&key).await })?
        {
            Some(len) => {
                lock(&self.shared.lens).insert(pack, len);
                Ok(len)
            }
            None => Err(Error::NotFound {
                what: format!("pack {}", self.describe(pack)),
            }),
        }
    }

    fn list(&self) -> Result<Vec<PackId>> {
        let dir = self.bucket.remote.key("packs");
        let objects = self.bucket.run(|remote| async move {
            let objects = remote.list(&dir).await?;
            Ok(objects
                .into_iter()
                .filter_map(|(key, _)| remote.relative(&key).and_then(parse_pack_key))
                .collect::<Vec<_>>())
        })?;
        let mut packs = objects;
        packs.sort();
        Ok(packs)
    }

    fn list_sized(&self) -> Result<Vec<(PackId, u64)>> {
        let dir = self.bucket.remote.key("packs");
        let mut packs = self.bucket.run(|remote| async move {
            let objects = remote.list(&dir).await?;
            Ok(objects
                .into_iter()
                .filter_map(|(key, len)| {
                    remote
                        .relative(&key)
                        .and_then(parse_pack_key)
                        .map(|p| (p, len))
                })
                .collect::<Vec<_>>())
        })?;
        packs.sort();
        // Later reads of these packs (a GC rewrite) need no HEAD either.
        lock(&self.shared.lens).extend(packs.iter().copied());
        Ok(packs)
    }

    fn list_staged(&self) -> Result<Vec<PackId>> {
        let rd = std::fs::read_dir(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let name = entry.map_err(|e| Error::io(&self.staging, e))?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".open"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            out.extend(id.map(PackId));
        }
        out.sort();
        Ok(out)
    }

    fn reads_ahead(&self) -> bool {
        self.shared.window.is_some()
    }

    fn will_need(&self, records: &[(PackId, u64, usize)]) {
        let Some(window) = &self.shared.window else {
            return;
        };
        let cache = self.shared.cache.as_ref();
        window.plan(
            records,
            |pack, offset, len| cache.is_some_and(|c| c.holds(pack, offset, len)),
            &|f| self.launch(f),
        );
    }

    fn delete(&self, pack: PackId) -> Result<()> {
        let key = self.key(pack);
        self.bucket
            .run(|remote| async move { remote.delete(&key).await })?;
        lock(&self.shared.lens).remove(&pack);
        if let Some(cache) = &self.shared.cache {
            cache.forget(pack);
        }
        Ok(())
    }

    fn describe(&self, pack: PackId) -> String {
        self.bucket.remote.url(&self.key(pack))
    }
}

/// A quarter of the cache: read-ahead must not evict what it fetched
/// before it is read.
fn cache_budget(cache: &Cache) -> u64 {
    cache.capacity() / 4
}

/// Fetches one read-ahead run and hands it to the window; the runs that
/// makes room for are started from here.
fn fetch_run(
    shared: Arc<Shared>,
    remote: Arc<Remote>,
    (pack, range): Fetch,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        // Reports a failure if the task ends without an answer (dropped
        // with the runtime, or a panic), so no reader waits for it forever.
        let mut report = Unanswered {
            shared: Some(shared),
            pack,
            start: range.start,
        };
        let key = remote.key(&pack_key(pack));
        let got = match remote.get_range(&key, range.clone()).await {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                // The reads fetch for themselves and report what is wrong.
                tracing::debug!("read-ahead of {} {range:?}: {e}", remote.url(&key));
                None
            }
        };
        let Some(shared) = report.shared.take() else {
            return;
        };
        if let Some(window) = &shared.window {
            window.fetched(pack, range.start, got, &|f| {
                tokio::spawn(fetch_run(shared.clone(), remote.clone(), f));
            });
        }
    })
}

/// A read-ahead fetch not reported yet.
struct Unanswered {
    shared: Option<Arc<Shared>>,
    pack: PackId,
    start: u64,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(window) = self.shared.as_ref().and_then(|s| s.window.as_ref()) {
            window.abandoned(self.pack, self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pack_keys_round_trip_and_match_the_local_layout() {
        for id in [0u64, 1, 0xff, 0x1234, u64::MAX] {
            let key = pack_key(PackId(id));
            assert_eq!(parse_pack_key(&key), Some(PackId(id)), "{key}");
        }
        assert_eq!(
            pack_key(PackId(0x1234)),
            "packs/34/12/0000000000001234.pack"
        );
        assert_eq!(parse_pack_key("packs/34/12/0000000000001234.open"), None);
        assert_eq!(parse_pack_key("packs/00/00/0000000000001234.pack"), None);
    }
}
