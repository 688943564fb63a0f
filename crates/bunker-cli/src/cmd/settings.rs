//! Server settings from the command line: the `--config` file and the
//! `--s3*` flags, shared by `serve` and `repair` so both find the same
//! repository. Flags win over the file.

use std::path::Path;

use anyhow::Context;
use bunker_server::config::{Storage, StorageKind};
use bunker_server::Config;

/// The `[storage]` settings as flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct S3Args {
    /// Keep packs, manifests and the repository config in this bucket
    /// (s3://BUCKET/PREFIX); the data directory keeps the index, staging
    /// packs and a read cache.
    #[arg(long, value_name = "URL")]
    s3: Option<String>,
    /// S3-compatible endpoint, http(s)://HOST:PORT (default: AWS).
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Region to sign requests for.
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// Allow a plain http:// endpoint.
    #[arg(long)]
    s3_allow_http: bool,
    /// Send unsigned requests when no credentials are set (test stores).
    #[arg(long)]
    s3_anonymous: bool,
    /// Bound of the local read cache, bytes (0: no cache).
    #[arg(long, value_name = "BYTES")]
    s3_cache_bytes: Option<u64>,
    /// Take the bucket's lease from the server holding it, before it
    /// expires. Only when that server is known dead: two servers writing
    /// one bucket destroy each other's data.
    #[arg(long)]
    s3_break_lease: bool,
}

impl S3Args {
    fn apply(&self, storage: &mut Storage) {
        if let Some(url) = &self.s3 {
            storage.kind = StorageKind::S3;
            storage.url = Some(url.clone());
        }
        if let Some(v) = &self.s3_endpoint {
            storage.s3.endpoint = Some(v.clone());
        }
        if let Some(v) = &self.s3_region {
            storage.s3.region = v.clone();
        }
        if self.s3_allow_http {
            storage.s3.allow_http = true;
        }
        if self.s3_anonymous {
            storage.s3.anonymous = true;
        }
        if let Some(v) = self.s3_cache_bytes {
            storage.s3.cache_bytes = Some(v);
        }
        if self.s3_break_lease {
            storage.break_lease = true;
        }
    }
}

/// The config file (or the defaults), with the `--s3*` flags applied.
pub fn load(file: Option<&Path>, s3: &S3Args) -> anyhow::Result<Config> {
    let mut config = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            Config::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    s3.apply(&mut config.storage);
    Ok(config)
}
