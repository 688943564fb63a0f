//! Repositories on a bucket for the crash, power-cut and race tests: the
//! crash child and the suite open them the same way, so the faults that
//! run against a local repository run against an object store too.

use std::path::Path;
use std::sync::Arc;

use bunker_s3::{Bucket, S3Config, S3Meta, S3Packs};
use bunker_store::{CreateOptions, OpenOptions, Remote, Repository};

/// The crash child's environment variable naming a bucket:
/// `ENDPOINT BUCKET PREFIX`, unsigned requests over plain HTTP.
pub const ENV: &str = "BUNKER_CHILD_S3";

/// The value of [`ENV`] for `prefix` in `bucket` at `endpoint`.
pub fn spec(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!("{endpoint} {bucket} {prefix}")
}

/// The config [`ENV`] stands for; None when it is not set.
pub fn from_env() -> Option<S3Config> {
    std::env::var(ENV).ok().map(|spec| config(&spec))
}

/// The config a [`spec`] stands for.
pub fn config(spec: &str) -> S3Config {
    let [endpoint, bucket, prefix] = spec.split_whitespace().collect::<Vec<_>>()[..] else {
        panic!("{ENV}={spec:?}: want ENDPOINT BUCKET PREFIX");
    };
    S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        endpoint: Some(endpoint.to_string()),
        allow_http: true,
        anonymous: true,
        cache_bytes: Some(64 << 20),
        cache_block_bytes: 64 << 10,
        ..S3Config::default()
    }
}

/// Opens (creating in the bucket if it holds none) the repository whose
/// local directory is `path` and whose truth is the bucket of `config`.
pub fn open(
    path: &Path,
    config: &S3Config,
    create: CreateOptions,
) -> bunker_store::Result<Repository> {
    std::fs::create_dir_all(path).map_err(|e| bunker_store::Error::io(path, e))?;
    let bucket = Bucket::connect(config)?;
    let remote = Remote {
        packs: Arc::new(S3Packs::open(&bucket, path)?),
        meta: Arc::new(S3Meta::open(&bucket, path)?),
    };
    let opts = OpenOptions {
        key: create.key.clone(),
        ..OpenOptions::default()
    };
    Repository::open_remote_with(path, opts, create, remote)
}
