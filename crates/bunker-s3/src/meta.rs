//! The repository's other files as objects: [`S3Meta`], a [`MetaBackend`].
//!
//! Key `k` is the object `PREFIX/k`; every key passes `check_key` before a
//! request is made, so a key names one object under the prefix and one
//! file under the repository directory. `put_file` uploads large files in
//! parts (above the part size) and `get_file` streams the object to the
//! file, so a large manifest is never held whole in memory. Replacing
//! puts: the engine decides what may be overwritten.

use std::io::Write;
use std::path::Path;

use bunker_store::backend::meta::check_key;
use bunker_store::backend::MetaBackend;
use bunker_store::{Error, Result};
use bytes::Bytes;
use futures::StreamExt;

use crate::bucket::Bucket;
use crate::upload::{put_file, Journal};

pub struct S3Meta {
    bucket: Bucket,
    journal: Journal,
}

impl S3Meta {
    /// Objects in `bucket`; multipart uploads are journalled in
    /// `<data>/staging/uploads` with the packs' (and aborted by
    /// `S3Packs::open` after a crash).
    pub fn open(bucket: &Bucket, data: &Path) -> Result<S3Meta> {
        Ok(S3Meta {
            bucket: bucket.clone(),
            journal: Journal::open(data.join("staging").join("uploads"))?,
        })
    }
}

impl MetaBackend for S3Meta {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        let bytes = Bytes::copy_from_slice(bytes);
        self.bucket
            .run(|remote| async move { remote.put(&key, bytes, false).await })
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        let bytes = Bytes::copy_from_slice(bytes);
        match self
            .bucket
            .run(|remote| async move { remote.put(&key, bytes, true).await })
        {
            Ok(()) => Ok(true),
            // Also when a retry of our own create found it done: the
            // caller reads the object back either way.
            Err(Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        put_file(&self.bucket, &self.journal, key, path, false).map(drop)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        let bytes = self
            .bucket
            .run(|remote| async move { remote.get(&key).await })?;
        Ok(bytes.map(|b| b.to_vec()))
    }

    fn get_file(&self, key: &str, path: &Path) -> Result<bool> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        let path = path.to_path_buf();
        self.bucket.run(|remote| async move {
            let Some(got) = remote.get_stream(&key).await? else {
                return Ok(false);
            };
            // Created only now: an absent key leaves `path` untouched.
            let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut stream = got.into_stream();
            while let Some(piece) = stream.next().await {
                let piece =
                    piece.map_err(|e| crate::error::map(&remote.store, &remote.url(&key), e))?;
                file.write_all(&piece).map_err(|e| Error::io(&path, e))?;
            }
            Ok(true)
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Listing is by directory: list the one `prefix` ends in, then
        // keep the keys that start with it.
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        let prefix = prefix.to_string();
        let dir_key = self.bucket.remote.key(&dir);
        self.bucket.run(|remote| async move {
            let objects = remote.list(&dir_key).await?;
            let mut keys: Vec<String> = objects
                .into_iter()
                .filter_map(|(k, _)| remote.relative(&k).map(str::to_string))
                .filter(|k| k.starts_with(&prefix))
                .collect();
            keys.sort();
            Ok(keys)
        })
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let key = self.bucket.remote.key(key);
        self.bucket
            .run(|remote| async move { remote.delete(&key).await })
    }

    fn describe(&self) -> String {
        self.bucket.describe()
    }
}
