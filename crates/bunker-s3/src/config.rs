//! Where the bucket is and how to talk to it: [`S3Config`].
//!
//! Deserialisable from the server's TOML `[storage]` table (every field but
//! `bucket` has a default; unknown fields such as `kind` are left to the
//! caller), or built from an `s3://BUCKET/PREFIX` URL with
//! [`S3Config::from_url`]. [`S3Config::validate`] refuses a bad bucket name
//! or prefix before anything is sent. Credentials come from the config,
//! else from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
//! else requests go unsigned when `anonymous = true` (test endpoints);
//! with none of those, opening fails rather than probing an instance
//! metadata endpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bunker_store::{Error, Result};
use serde::Deserialize;

/// Largest default read cache, whatever the free space.
const MAX_DEFAULT_CACHE_BYTES: u64 = 64 << 30;
/// S3 refuses parts smaller than this (except the last).
const MIN_PART_BYTES: u64 = 5 << 20;
/// S3 allows at most this many parts in one upload.
pub(crate) const MAX_PARTS: u64 = 10_000;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket root.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible service; None for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Allow a plain `http://` endpoint (test stores, a private network).
    pub allow_http: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Send unsigned requests when no credentials are configured.
    pub anonymous: bool,
    /// Requests in flight at once, over all operations.
    pub max_in_flight: usize,
    /// Retries of one request (5xx, SlowDown, timeouts, dropped connections).
    pub max_retries: usize,
    /// Time after which a request is not retried any more.
    pub retry_timeout_ms: u64,
    /// First and largest pause between retries (exponential, with jitter).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// One request, from connecting to the last byte of the response.
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Files above this are uploaded in parts of this size.
    pub part_bytes: u64,
    /// Multipart parts uploaded at once for one object.
    pub parts_in_flight: usize,
    /// The read cache; None is `<data>/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Bound of the read cache; None is 10% of the free space of the data
    /// directory's filesystem, at most 64 GiB. 0 turns the cache off.
    pub cache_bytes: Option<u64>,
    /// The unit the cache fetches and evicts.
    pub cache_block_bytes: u64,
    /// Memory for read-ahead: records a restore, drill or verify announced,
    /// fetched ahead of it (GETs of up to 8 MiB, `max_in_flight` at once)
    /// and held until read. 0 turns read-ahead off.
    pub read_ahead_bytes: u64,
}

/// A credential that `Debug` does not print.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Default for S3Config {
    fn default() -> S3Config {
        S3Config {
            bucket: String::new(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".to_string(),
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            anonymous: false,
            max_in_flight: 32,
            max_retries: 8,
            retry_timeout_ms: 120_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 15_000,
            request_timeout_ms: 60_000,
            connect_timeout_ms: 5_000,
            part_bytes: 16 << 20,
            parts_in_flight: 4,
            cache_dir: None,
            cache_bytes: None,
            cache_block_bytes: 1 << 20,
            read_ahead_bytes: 64 << 20,
        }
    }
}

/// Signing keys as resolved from the config and the environment.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Keys {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
    Anonymous,
}

impl S3Config {
    /// A config with defaults for `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub fn from_url(url: &str) -> Result<S3Config> {
        let bad =
            |why: &str| Error::Invalid(format!("{url:?} is not an s3://BUCKET/PREFIX URL: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket is missing"));
        }
        let config = S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_end_matches('/').to_string(),
            ..S3Config::default()
        };
        config.validate().map_err(|e| match e {
            Error::Invalid(why) => bad(&why),
            e => e,
        })?;
        Ok(config)
    }

    /// Refuses what the bucket would refuse later, or what would put
    /// objects somewhere unexpected.
    pub fn validate(&self) -> Result<()> {
        let b = &self.bucket;
        let bucket_ok = (3..=63).contains(&b.len())
            && b.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
            && !b.starts_with(['-', '.'])
            && !b.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(Error::Invalid(format!(
                "bucket name {b:?}: 3 to 63 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
            )));
        }
        let p = &self.prefix;
        if !p.is_empty()
            && p.split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\\'))
        {
            return Err(Error::Invalid(format!(
                "prefix {p:?}: plain path components separated by single '/', no leading or trailing '/'"
            )));
        }
        if let Some(endpoint) = &self.endpoint {
            let http = endpoint.starts_with("http://");
            if !http && !endpoint.starts_with("https://") {
                return Err(Error::Invalid(format!(
                    "endpoint {endpoint:?} must start with http:// or https://"
                )));
            }
            if http && !self.allow_http {
                return Err(Error::Invalid(format!(
                    "endpoint {endpoint:?} is plain http: set allow_http to use it"
                )));
            }
        }
        if self.part_bytes < MIN_PART_BYTES {
            return Err(Error::Invalid(format!(
                "part_bytes {} is below the S3 minimum part size of {MIN_PART_BYTES}",
                self.part_bytes
            )));
        }
        if self.max_in_flight == 0 || self.parts_in_flight == 0 || self.cache_block_bytes == 0 {
            return Err(Error::Invalid(
                "max_in_flight, parts_in_flight and cache_block_bytes must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// `s3://bucket/prefix at endpoint`, for messages.
    pub fn describe(&self) -> String {
        let place = if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        };
        match &self.endpoint {
            Some(e) => format!("{place} at {e}"),
            None => format!("{place} in AWS region {}", self.region),
        }
    }

    pub(crate) fn credentials(&self) -> Result<Credentials> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let id = self
            .access_key_id
            .clone()
            .or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = self
            .secret_access_key
            .as_ref()
            .map(|s| s.0.clone())
            .or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let token = self
            .session_token
            .as_ref()
            .map(|s| s.0.clone())
            .or_else(|| env("AWS_SESSION_TOKEN"));
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials::Keys {
                access_key_id,
                secret_access_key,
                session_token: token,
            }),
            (None, None) if self.anonymous => Ok(Credentials::Anonymous),
            (Some(_), None) | (None, Some(_)) => Err(Error::Remote {
                store: self.describe(),
                reason: "an access key id needs its secret access key and the other way round"
                    .into(),
            }),
            (None, None) => Err(Error::Remote {
                store: self.describe(),
                reason: "no credentials: set access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or anonymous = true for an unsigned test endpoint".into(),
            }),
        }
    }

    pub(crate) fn cache_dir(&self, data: &Path) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| data.join("cache"))
    }

    /// The configured bound, or 10% of the free space under `data` (at
    /// most 64 GiB).
    pub(crate) fn cache_bytes(&self, data: &Path) -> Result<u64> {
        if let Some(b) = self.cache_bytes {
            return Ok(b);
        }
        let fs = rustix::fs::statvfs(data).map_err(|e| Error::io(data, e.into()))?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        Ok((free / 10).min(MAX_DEFAULT_CACHE_BYTES))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_prefix() {
        let c = S3Config::from_url("s3://backups/site-a/nightly/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("backups", "site-a/nightly")
        );
        let c = S3Config::from_url("s3://backups").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("backups", ""));
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.max_in_flight, 32);
        assert_eq!(c.max_retries, 8);
        assert_eq!(c.part_bytes, 16 << 20);
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, want) in [
            ("backups/x", "must start with s3://"),
            ("s3:///x", "bucket is missing"),
            ("s3://ab", "bucket name"),
            ("s3://Backups", "bucket name"),
            ("s3://backups//x", "prefix"),
            ("s3://backups/a/../b", "prefix"),
        ] {
            let e = S3Config::from_url(url).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(url), "{url}: {e}");
        }
    }

    #[test]
    fn toml_maps_onto_the_config_with_defaults() {
        let c: S3Config = toml::from_str(
            r#"
            kind = "s3"
            bucket = "backups"
            prefix = "p"
            endpoint = "http://127.0.0.1:8333"
            allow_http = true
            cache_bytes = 1000
            secret_access_key = "hush"
            "#,
        )
        .unwrap();
        assert_eq!(c.bucket, "backups");
        assert_eq!(c.cache_bytes, Some(1000));
        assert_eq!(c.region, "us-east-1");
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("hush"), "Debug prints a secret");
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let mut c = S3Config::from_url("s3://backups").unwrap();
        c.endpoint = Some("http://127.0.0.1:1".into());
        assert!(c.validate().unwrap_err().to_string().contains("allow_http"));
        c.allow_http = true;
        c.validate().unwrap();
    }
}
