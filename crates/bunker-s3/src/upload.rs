//! A local file to one object: one PUT up to the part size, a multipart
//! upload above it.
//!
//! Durable on return means the PUT or the CompleteMultipartUpload
//! succeeded. A failed multipart upload is aborted before returning, and
//! every upload id is written to a [`Journal`] file before the first part
//! goes out and removed after completion or abort, so a process killed in
//! between leaves a file naming the upload; [`abort_journalled`] aborts
//! those on the next open (object_store cannot list a bucket's multipart
//! uploads). Uploads whose journal died with the server's disk are left to
//! the bucket's `AbortIncompleteMultipartUpload` lifecycle rule
//! (docs/OPERATIONS.md, "Object storage").
//!
//! Create-only uploads (packs) never replace an object. A single PUT sends
//! If-None-Match: *. object_store 0.14 cannot send that header on
//! CompleteMultipartUpload, so a multipart create HEADs the key first; pack
//! ids come from the one writer that holds the repository lock, so nothing
//! else creates the key in between.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bunker_store::{Error, Result};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;

use crate::bucket::{Bucket, Remote};
use crate::config::MAX_PARTS;

/// Bytes of the end of an object compared with the file before an existing
/// object is taken for ours: a pack's trailer lists its records and their
/// checksums, so equal sizes and tails mean the same pack.
const TAIL_BYTES: u64 = 64 << 10;

/// Uploads the file at `path` as `key` on the bucket's runtime and waits;
/// returns its size. The one way both backends put a file.
pub(crate) fn put_file(
    bucket: &Bucket,
    journal: &Journal,
    key: Key,
    path: &Path,
    create: bool,
) -> Result<u64> {
    let size = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let config = bucket.config.clone();
    let journal = journal.clone();
    let path = path.to_path_buf();
    bucket.run(move |remote| async move {
        Upload {
            remote: &remote,
            journal: &journal,
            part_bytes: config.part_bytes,
            parts_in_flight: config.parts_in_flight,
            create,
        }
        .file(&key, &path, size)
        .await
    })?;
    Ok(size)
}

/// How to upload.
pub(crate) struct Upload<'a> {
    pub(crate) remote: &'a Remote,
    pub(crate) journal: &'a Journal,
    pub(crate) part_bytes: u64,
    pub(crate) parts_in_flight: usize,
    /// Refuse to replace an existing object.
    pub(crate) create: bool,
}

impl Upload<'_> {
    /// Uploads the `size` bytes of `file` as `key`.
    pub(crate) async fn file(&self, key: &Key, file: &Path, size: u64) -> Result<()> {
        if size <= self.part_bytes {
            let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
            if bytes.len() as u64 != size {
                return Err(Error::Invalid(format!(
                    "{} changed size while it was uploaded",
                    file.display()
                )));
            }
            return match self.remote.put(key, Bytes::from(bytes), self.create).await {
                // An earlier attempt of ours may have succeeded with its
                // answer lost: object_store retried the PUT, which then
                // found the object. Same size and tail: it is ours.
                Err(Error::AlreadyExists { .. }) if self.same_object(key, file, size).await? => {
                    Ok(())
                }
                r => r,
            };
        }
        if self.create && self.remote.head(key).await?.is_some() {
            if self.same_object(key, file, size).await? {
                return Ok(());
            }
            return Err(Error::AlreadyExists {
                what: self.remote.url(key),
            });
        }
        self.multipart(key, file, size).await
    }

    async fn multipart(&self, key: &Key, file: &Path, size: u64) -> Result<()> {
        let part = self.part_bytes.max(size.div_ceil(MAX_PARTS));
        let parts = size.div_ceil(part);
        let upload = self.remote.create_multipart(key).await?;
        let entry = match self.journal.record(key, &upload) {
            Ok(entry) => entry,
            Err(e) => {
                let _ = self.remote.abort_multipart(key, &upload).await;
                return Err(e);
            }
        };
        let r = self.parts(key, &upload, file, size, part, parts).await;
        let r = match r {
            Ok(ids) => match self.remote.complete_multipart(key, &upload, ids).await {
                // A retried CompleteMultipartUpload whose first try
                // succeeded finds the upload gone: the object is ours if
                // it has our size and tail.
                Err(e) if self.same_object(key, file, size).await.unwrap_or(false) => {
                    tracing::info!(
                        "{}: completion reported {e}, but the object is ours",
                        self.remote.url(key)
                    );
                    Ok(())
                }
                r => r,
            },
            Err(e) => Err(e),
        };
        if r.is_err() {
            if let Err(e) = self.remote.abort_multipart(key, &upload).await {
                // The journal entry stays: the next open aborts it.
                tracing::warn!("aborting upload {upload} of {}: {e}", self.remote.url(key));
                return r;
            }
        }
        self.journal.remove(&entry);
        r
    }

    async fn parts(
        &self,
        key: &Key,
        upload: &str,
        file: &Path,
        size: u64,
        part: u64,
        parts: u64,
    ) -> Result<Vec<object_store::multipart::PartId>> {
        let f = File::open(file).map_err(|e| Error::io(file, e))?;
        let f = &f;
        futures::stream::iter(0..parts)
            .map(|i| async move {
                let start = i * part;
                let len = part.min(size - start) as usize;
                let mut buf = vec![0u8; len];
                // A read from the page cache on the crate's own runtime.
                f.read_exact_at(&mut buf, start)
                    .map_err(|e| Error::io(file, e))?;
                self.remote
                    .put_part(key, upload, i as usize, Bytes::from(buf))
                    .await
            })
            .buffered(self.parts_in_flight)
            .try_collect()
            .await
    }

    /// Whether the object at `key` has `file`'s size and last bytes.
    async fn same_object(&self, key: &Key, file: &Path, size: u64) -> Result<bool> {
        if self.remote.head(key).await? != Some(size) {
            return Ok(false);
        }
        let start = size - size.min(TAIL_BYTES);
        if start == size {
            return Ok(true);
        }
        let theirs = self.remote.get_range(key, start..size).await?;
        let mut ours = vec![0u8; (size - start) as usize];
        File::open(file)
            .and_then(|f| f.read_exact_at(&mut ours, start))
            .map_err(|e| Error::io(file, e))?;
        Ok(theirs[..] == ours[..])
    }
}

/// Files naming multipart uploads in progress, one per upload.
#[derive(Clone)]
pub(crate) struct Journal {
    dir: PathBuf,
}

static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

impl Journal {
    pub(crate) fn open(dir: PathBuf) -> Result<Journal> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Journal { dir })
    }

    /// Writes and syncs an entry for `upload` of `key`; returns its path.
    fn record(&self, key: &Key, upload: &str) -> Result<PathBuf> {
        let name = format!(
            "{}-{}.upload",
            std::process::id(),
            NEXT_ENTRY.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(name);
        let write = || -> std::io::Result<()> {
            let f = File::create(&path)?;
            f.write_all_at(format!("{key}\n{upload}\n").as_bytes(), 0)?;
            f.sync_all()?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    fn remove(&self, entry: &Path) {
        if let Err(e) = std::fs::remove_file(entry) {
            tracing::warn!("removing upload journal entry {}: {e}", entry.display());
        }
    }

    /// Entries left by earlier processes: (entry, key, upload id). This
    /// process's own (named by its pid) are uploads in progress.
    fn pending(&self) -> Result<Vec<(PathBuf, Key, String)>> {
        let ours = format!("{}-", std::process::id());
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let path = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".upload") || name.starts_with(&ours) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let mut lines = text.lines();
            match (lines.next(), lines.next()) {
                (Some(key), Some(upload)) if !key.is_empty() && !upload.is_empty() => out.push((
                    path.clone(),
                    Key::parse(key).unwrap_or_else(|_| Key::from(key)),
                    upload.to_string(),
                )),
                // Torn while it was written: the upload was never started
                // by a part, and the lifecycle rule covers its creation.
                _ => self.remove(&path),
            }
        }
        Ok(out)
    }
}

/// Aborts every upload in the journal (left by a process that died
/// mid-upload) and removes the entries; returns how many.
pub(crate) async fn abort_journalled(remote: &Remote, journal: &Journal) -> Result<usize> {
    let pending = journal.pending()?;
    for (entry, key, upload) in &pending {
        remote.abort_multipart(key, upload).await?;
        tracing::info!("aborted multipart upload {upload} of {}", remote.url(key));
        journal.remove(entry);
    }
    Ok(pending.len())
}
