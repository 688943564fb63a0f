//! The connection to one bucket under one key prefix.
//!
//! [`Bucket`] is the public handle: it owns the runtime bridge and the
//! object_store client, checks on connect that the bucket answers (a clear
//! `Error::Remote` naming endpoint and bucket for wrong credentials or a
//! missing bucket, bounded by the request timeout and retries), and is
//! shared by [`crate::S3Packs`] and [`crate::S3Meta`]. [`Remote`] is the
//! async side used inside the crate's futures: every request takes a permit
//! of one semaphore, so at most `max_in_flight` are in flight, and every
//! error goes through [`crate::error::map`].

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bunker_store::{Error, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig,
};
use tokio::sync::Semaphore;

use crate::bridge::Bridge;
use crate::config::{Credentials, S3Config};
use crate::error;

/// A connected bucket. Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    pub(crate) bridge: Arc<Bridge>,
    pub(crate) remote: Arc<Remote>,
    pub(crate) config: Arc<S3Config>,
}

impl Bucket {
    /// Builds the client and [`check`](Bucket::check)s the bucket.
    pub fn connect(config: &S3Config) -> Result<Bucket> {
        config.validate()?;
        let store = config.describe();
        let bridge = Arc::new(Bridge::new(store.clone())?);
        let remote = Arc::new(Remote::new(config, store)?);
        let bucket = Bucket {
            bridge,
            remote,
            config: Arc::new(config.clone()),
        };
        bucket.check()?;
        Ok(bucket)
    }

    /// Lists one key under the prefix: proves the endpoint answers, the
    /// bucket exists and the credentials may read it.
    pub fn check(&self) -> Result<()> {
        let remote = self.remote.clone();
        self.bridge.run(async move { remote.check().await })?
    }

    /// `s3://bucket/prefix at endpoint`.
    pub fn describe(&self) -> String {
        self.remote.store.clone()
    }

    /// Runs `f` with the async side on the crate's runtime and waits.
    pub(crate) fn run<T, F>(&self, f: impl FnOnce(Arc<Remote>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.bridge.run(f(self.remote.clone()))?
    }
}

pub(crate) struct Remote {
    s3: AmazonS3,
    prefix: String,
    bucket: String,
    /// `s3://bucket/prefix at endpoint`.
    pub(crate) store: String,
    permits: Semaphore,
}

impl Remote {
    fn new(config: &S3Config, store: String) -> Result<Remote> {
        // reqwest's TLS asks rustls for the process default; ring is the
        // only provider this workspace builds. Already set is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_timeout(config.request_timeout())
            .with_connect_timeout(Duration::from_millis(config.connect_timeout_ms));
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(config.backoff_initial_ms),
                max_backoff: Duration::from_millis(config.backoff_max_ms),
                base: 2.0,
            },
            max_retries: config.max_retries,
            retry_timeout: Duration::from_millis(config.retry_timeout_ms),
        };
        // Not from_env: that would also take endpoints and regions from
        // the environment behind the config's back.
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &config.endpoint {
            // Path-style requests (`endpoint/bucket/key`): what MinIO,
            // SeaweedFS and Ceph RGW expect by default.
            builder = builder
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        builder = match config.credentials()? {
            Credentials::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let b = builder
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key);
                match session_token {
                    Some(t) => b.with_token(t),
                    None => b,
                }
            }
            Credentials::Anonymous => builder.with_skip_signature(true),
        };
        let s3 = builder.build().map_err(|e| Error::Remote {
            store: store.clone(),
            reason: format!("bad object store settings: {e}"),
        })?;
        Ok(Remote {
            s3,
            prefix: config.prefix.clone(),
            bucket: config.bucket.clone(),
            store,
            permits: Semaphore::new(config.max_in_flight),
        })
    }

    /// The object key of `key` under the prefix.
    pub(crate) fn key(&self, key: &str) -> Key {
        if key.is_empty() {
            Key::from(self.prefix.as_str())
        } else if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    /// `key` relative to the prefix, for listings.
    pub(crate) fn relative<'a>(&self, full: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(full)
        } else {
            full.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// `s3://bucket/prefix/key`, for messages.
    pub(crate) fn url(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    fn fail(&self, key: &Key, e: object_store::Error) -> Error {
        error::map(&self.store, &self.url(key), e)
    }

    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        // The semaphore is never closed.
        self.permits.acquire().await.expect("semaphore closed")
    }

    async fn check(&self) -> Result<()> {
        let _p = self.permit().await;
        let prefix = (!self.prefix.is_empty()).then(|| Key::from(self.prefix.as_str()));
        match self.s3.list_with_delimiter(prefix.as_ref()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let key = prefix.unwrap_or_default();
                Err(match self.fail(&key, e) {
                    // Listing never reports a missing key, only a missing bucket.
                    Error::NotFound { .. } => Error::Remote {
                        store: self.store.clone(),
                        reason: "the bucket does not exist".into(),
                    },
                    e => e,
                })
            }
        }
    }

    /// The size of `key`, or None when there is no such object.
    pub(crate) async fn head(&self, key: &Key) -> Result<Option<u64>> {
        let _p = self.permit().await;
        match self.s3.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// Bytes `range` of `key`, exactly: a short answer is an error.
    pub(crate) async fn get_range(&self, key: &Key, range: Range<u64>) -> Result<Bytes> {
        let _p = self.permit().await;
        let want = range.end - range.start;
        let bytes = self
            .s3
            .get_range(key, range.clone())
            .await
            .map_err(|e| self.fail(key, e))?;
        if bytes.len() as u64 != want {
            return Err(Error::Corrupt {
                file: self.url(key),
                pack: None,
                offset: Some(range.start),
                chunk: None,
                reason: format!("asked for {want} bytes, got {}", bytes.len()),
            });
        }
        Ok(bytes)
    }

    /// The whole of `key`, or None when there is no such object.
    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Bytes>> {
        let _p = self.permit().await;
        match self.s3.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.fail(key, e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// A streaming GET of `key` (the permit is held only for the start).
    pub(crate) async fn get_stream(&self, key: &Key) -> Result<Option<GetResult>> {
        let _p = self.permit().await;
        let opts = GetOptions {
            range: None::<GetRange>,
            ..GetOptions::default()
        };
        match self.s3.get_opts(key, opts).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// One PUT; `create` makes it conditional (If-None-Match: *), and an
    /// existing object is then `Error::AlreadyExists`.
    pub(crate) async fn put(&self, key: &Key, bytes: Bytes, create: bool) -> Result<()> {
        let _p = self.permit().await;
        let mode = if create {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        self.s3
            .put_opts(key, PutPayload::from(bytes), PutOptions::from(mode))
            .await
            .map(drop)
            .map_err(|e| self.fail(key, e))
    }

    /// Deletes `key`; an absent key is fine.
    pub(crate) async fn delete(&self, key: &Key) -> Result<()> {
        let _p = self.permit().await;
        match self.s3.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(key, e)),
        }
    }

    /// Every object under the directory `dir` (all pages): full keys and sizes.
    pub(crate) async fn list(&self, dir: &Key) -> Result<Vec<(String, u64)>> {
        let _p = self.permit().await;
        let dir = (!dir.as_ref().is_empty()).then_some(dir);
        self.s3
            .list(dir)
            .map_ok(|m| (m.location.to_string(), m.size))
            .try_collect()
            .await
            .map_err(|e| self.fail(dir.unwrap_or(&Key::default()), e))
    }

    pub(crate) async fn create_multipart(&self, key: &Key) -> Result<String> {
        let _p = self.permit().await;
        self.s3
            .create_multipart(key)
            .await
            .map_err(|e| self.fail(key, e))
    }

    pub(crate) async fn put_part(
        &self,
        key: &Key,
        upload: &str,
        index: usize,
        bytes: Bytes,
    ) -> Result<PartId> {
        let _p = self.permit().await;
        self.s3
            .put_part(key, &upload.to_string(), index, PutPayload::from(bytes))
            .await
            .map_err(|e| self.fail(key, e))
    }

    pub(crate) async fn complete_multipart(
        &self,
        key: &Key,
        upload: &str,
        parts: Vec<PartId>,
    ) -> Result<()> {
        let _p = self.permit().await;
        self.s3
            .complete_multipart(key, &upload.to_string(), parts)
            .await
            .map(drop)
            .map_err(|e| self.fail(key, e))
    }

    /// Aborts an upload; one that is already gone (completed or aborted)
    /// is fine.
    pub(crate) async fn abort_multipart(&self, key: &Key, upload: &str) -> Result<()> {
        let _p = self.permit().await;
        match self.s3.abort_multipart(key, &upload.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(key, e)),
        }
    }
}
