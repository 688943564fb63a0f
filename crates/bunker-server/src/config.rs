//! Server settings: flags, an optional TOML file, and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::StartError;

/// Everything `bunker serve` can be told: each field is a key of the TOML
/// config file, and the common ones also have a flag of the same name (with
/// dashes).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Repository and server state (tokens) live here.
    pub data: PathBuf,
    pub listen: SocketAddr,
    /// PEM certificate chain and private key: serve HTTPS (rustls).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Concurrent ingest streams (raw uploads and open chunk-protocol
    /// sessions); beyond it, 503 with Retry-After.
    pub max_streams: usize,
    /// Of those, how many one token may hold at once, so that one writer
    /// cannot take them all.
    pub max_streams_per_token: usize,
    /// A chunk-protocol commit body must arrive within this long of its
    /// request, however steadily it trickles (then 408, nothing committed).
    pub commit_timeout_secs: u64,
    /// Concurrent restore streams (snapshot data, manifests, single
    /// chunks) per token; beyond it, 503 with Retry-After.
    pub max_restores_per_token: usize,
    /// Decoded chunks one restore may hold ahead of its client (at least
    /// one chunk).
    pub restore_read_ahead_bytes: u64,
    /// Decoded chunks all restores together may hold; a restore waits for
    /// room instead of going beyond it.
    pub restore_memory_bytes: u64,
    /// Chunk uploads and `missing` queries buffered in memory at once,
    /// bytes; beyond it a request waits a moment, then gets 503.
    pub body_memory_bytes: u64,
    /// A client that accepts no response bytes for this long is
    /// disconnected (a stalled reader frees what its response held).
    pub write_timeout_secs: u64,
    /// Largest request body (a raw image upload), bytes.
    pub max_body_bytes: u64,
    /// A request whose body sends nothing for this long is cut.
    pub idle_timeout_secs: u64,
    /// Time allowed to send the request headers.
    pub header_timeout_secs: u64,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub grace_secs: u64,
    /// A chunk-protocol session ends this long after its last request,
    /// freeing its stream slot.
    pub session_idle_secs: u64,
    /// Open connections at once; more wait to be accepted.
    pub max_connections: usize,
    /// Run GC every this many seconds (0: never; `bunker gc` still works).
    pub gc_interval_secs: u64,
    /// The status page marks a name whose newest verify or drill is older
    /// than this (or failed) in red (`GET /v1/status`).
    pub drill_interval_secs: u64,
    /// Scheduled GCs rewrite packs whose live fraction is below this.
    pub gc_rewrite_below: f64,
    /// Pack size a new repository seals at, bytes (fixed once it exists,
    /// like the chunker): on object storage each pack is one object, so
    /// larger packs mean fewer requests.
    pub pack_bytes: u64,
    /// Average chunk size of a new repository, bytes: a power of two from
    /// 64 KiB to 1 MiB (default 256 KiB). Fixed once the repository exists:
    /// a server started with another value than its repository's refuses
    /// to start (`--chunk-size`).
    pub chunk_size: Option<u64>,
    /// Where sealed packs and manifests live: the data directory (default)
    /// or a bucket (`[storage] kind = "s3"`).
    pub storage: Storage,
    /// Scheduled pull jobs (`[[sync]]` tables): copy snapshots from
    /// another bunker server into this one (`crate::sync_jobs`).
    pub sync: Vec<SyncJobConfig>,
    /// Encryption at rest (`[encryption]`, `--key-file`).
    pub encryption: Encryption,
}

/// The `[encryption]` table: the repository key file. With it a new
/// repository is created encrypted and an existing one must be encrypted
/// with that key; without it a repository must be clear. A mismatch
/// refuses to start, naming the key ids (docs/OPERATIONS.md, "Encryption").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Encryption {
    /// A plain key file, or a passphrase-wrapped one (`bunker key export`).
    pub key_file: Option<PathBuf>,
    /// For a wrapped `key_file`: a file whose first line is the passphrase
    /// (`--key-passphrase-file`); without it the environment variable
    /// `BUNKER_KEY_PASSPHRASE`.
    pub passphrase_file: Option<PathBuf>,
}

/// The `[storage]` table. `kind = "local"` (the default) keeps everything
/// in the data directory and ignores the other keys; `kind = "s3"` puts
/// packs, manifests and the repository config in a bucket, given as `url =
/// "s3://BUCKET/PREFIX"` or as `bucket` and `prefix`, with every other
/// [`bunker_s3::S3Config`] key (endpoint, region, credentials, retries,
/// timeouts, part size, cache) beside them, and `lease_ttl_secs`. Any
/// other key is an error naming it, as everywhere in the config.
#[derive(Clone, Debug)]
pub struct Storage {
    pub kind: StorageKind,
    pub url: Option<String>,
    /// How long the lease on the bucket holds without renewal; it is
    /// renewed every quarter of this (`crate::lease`).
    pub lease_ttl_secs: u64,
    /// Take the bucket's lease even from a holder whose lease has not
    /// expired (`--s3-break-lease`, never a config key: only for an
    /// operator who knows that server is dead).
    pub break_lease: bool,
    pub s3: bunker_s3::S3Config,
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            kind: StorageKind::default(),
            url: None,
            lease_ttl_secs: crate::lease::DEFAULT_TTL.as_secs(),
            break_lease: false,
            s3: bunker_s3::S3Config::default(),
        }
    }
}

/// The table's own keys, besides [`bunker_s3::S3Config`]'s.
const STORAGE_KEYS: &[&str] = &["kind", "url", "lease_ttl_secs"];

// By hand rather than derived: serde cannot deny unknown fields of a struct
// with a flattened one, and a misspelt key (`end_point`) must not be
// silently ignored.
impl<'de> Deserialize<'de> for Storage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Storage, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let s3_keys = field_names::<bunker_s3::S3Config>();
        if let Some(unknown) = table
            .keys()
            .find(|k| !STORAGE_KEYS.contains(&k.as_str()) && !s3_keys.contains(&k.as_str()))
        {
            let mut expected: Vec<&str> = STORAGE_KEYS.to_vec();
            expected.extend(s3_keys);
            return Err(D::Error::custom(format!(
                "unknown key `{unknown}` in [storage], expected one of {}",
                expected.join(", ")
            )));
        }
        let mut storage = Storage::default();
        let mut take = |key: &str| table.remove(key);
        if let Some(v) = take("kind") {
            storage.kind = v.try_into().map_err(D::Error::custom)?;
        }
        if let Some(v) = take("url") {
            storage.url = Some(v.try_into().map_err(D::Error::custom)?);
        }
        if let Some(v) = take("lease_ttl_secs") {
            storage.lease_ttl_secs = v.try_into().map_err(D::Error::custom)?;
        }
        storage.s3 = toml::Value::Table(table)
            .try_into()
            .map_err(D::Error::custom)?;
        Ok(storage)
    }
}

/// The field names a derived `Deserialize` of `T` announces: asked of a
/// deserializer that only records them.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{value::Error, Error as _, Visitor};
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("names only"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    #[default]
    Local,
    S3,
}

impl Storage {
    /// The bucket to use, validated; None for local storage. `url`, when
    /// set, gives the bucket and prefix.
    pub fn s3_config(&self) -> Result<Option<bunker_s3::S3Config>, StartError> {
        if self.kind == StorageKind::Local {
            return Ok(None);
        }
        let mut s3 = self.s3.clone();
        if let Some(url) = &self.url {
            let at = bunker_s3::S3Config::from_url(url).map_err(|e| StartError::Storage {
                reason: e.to_string(),
            })?;
            s3.bucket = at.bucket;
            s3.prefix = at.prefix;
        }
        s3.validate().map_err(|e| StartError::Storage {
            reason: format!("{}: {e}", s3.describe()),
        })?;
        Ok(Some(s3))
    }

    /// The lease's ttl (at least a second).
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs.max(1))
    }

    /// `local`, or the bucket as `s3://bucket/prefix at endpoint` (never
    /// credentials): what `/healthz` reports.
    pub fn describe(&self) -> String {
        match self.s3_config() {
            Ok(Some(s3)) => s3.describe(),
            _ => "local".to_string(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data: PathBuf::from("bunker-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7711)),
            tls_cert: None,
            tls_key: None,
            max_streams: 8,
            max_streams_per_token: 4,
            commit_timeout_secs: 3600,
            max_restores_per_token: 16,
            restore_read_ahead_bytes: 4 << 20,
            restore_memory_bytes: 256 << 20,
            body_memory_bytes: 256 << 20,
            write_timeout_secs: 60,
            max_body_bytes: 1 << 50,
            idle_timeout_secs: 60,
            header_timeout_secs: 10,
            grace_secs: 30,
            session_idle_secs: 900,
            max_connections: 4096,
            gc_interval_secs: 0,
            drill_interval_secs: 7 * 86_400,
            gc_rewrite_below: bunker_store::DEFAULT_REWRITE_BELOW,
            pack_bytes: bunker_store::DEFAULT_PACK_LEN,
            chunk_size: None,
            storage: Storage::default(),
            sync: Vec::new(),
            encryption: Encryption::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file of the fields above; unknown keys are an error.
    pub fn from_toml(text: &str) -> Result<Config, StartError> {
        let config: Config =
            toml::from_str(text).map_err(|source| StartError::Config { source })?;
        let mut seen = std::collections::BTreeSet::new();
        for job in &config.sync {
            if !seen.insert(job.name.as_str()) {
                return Err(StartError::SyncJob {
                    reason: format!(
                        "two [[sync]] jobs are named {:?}: give each its own `name`",
                        job.name
                    ),
                });
            }
        }
        Ok(config)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }

    pub fn commit_timeout(&self) -> Duration {
        Duration::from_secs(self.commit_timeout_secs.max(1))
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs.max(1))
    }
}

/// One `[[sync]]` table: pull the snapshots of `names` from the server at
/// `from` every `interval`, with the reader token in `token_file` (read
/// at start and again before each run, so it can be replaced without a
/// restart; never logged or shown).
#[derive(Clone, Debug, PartialEq)]
pub struct SyncJobConfig {
    /// The job's label in `/v1/sync` and `/metrics`: the `name` key, or
    /// the source's host and port.
    pub name: String,
    /// The source server, `http://` or `https://`.
    pub from: String,
    pub token_file: PathBuf,
    /// Names or prefixes (`db-`) to copy; empty: all the token may read.
    pub names: Vec<String>,
    pub interval: Duration,
    /// PEM certificates to trust for an `https` source (beside the
    /// system's roots).
    pub ca_file: Option<PathBuf>,
}

/// The shortest `interval` a job may have: shorter is a typo, not a
/// schedule (and a source hammered every instant).
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

const SYNC_KEYS: &[&str] = &["name", "from", "token_file", "names", "interval", "ca_file"];

// By hand, as `[storage]`: the error names the unknown key and the table.
impl<'de> Deserialize<'de> for SyncJobConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SyncJobConfig, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        if let Some(unknown) = table.keys().find(|k| !SYNC_KEYS.contains(&k.as_str())) {
            return Err(D::Error::custom(format!(
                "unknown key `{unknown}` in [[sync]], expected one of {}",
                SYNC_KEYS.join(", ")
            )));
        }
        let mut take =
            |key: &'static str| -> Result<Option<toml::Value>, D::Error> { Ok(table.remove(key)) };
        let text = |v: toml::Value, key: &str| -> Result<String, D::Error> {
            v.try_into()
                .map_err(|e| D::Error::custom(format!("[[sync]] `{key}`: {e}")))
        };
        let missing = |key: &str| D::Error::custom(format!("[[sync]] needs `{key}`"));
        let from = text(take("from")?.ok_or_else(|| missing("from"))?, "from")?;
        let host =
            source_host(&from).map_err(|e| D::Error::custom(format!("[[sync]] `from`: {e}")))?;
        let token_file = PathBuf::from(text(
            take("token_file")?.ok_or_else(|| missing("token_file"))?,
            "token_file",
        )?);
        let interval = text(
            take("interval")?.ok_or_else(|| missing("interval"))?,
            "interval",
        )?;
        let interval = parse_interval(&interval)
            .map_err(|e| D::Error::custom(format!("[[sync]] `interval`: {e}")))?;
        let names: Vec<String> = match take("names")? {
            Some(v) => v
                .try_into()
                .map_err(|e| D::Error::custom(format!("[[sync]] `names`: {e}")))?,
            None => Vec::new(),
        };
        for n in &names {
            if n.is_empty()
                || n.len() > 128
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(D::Error::custom(format!(
                    "[[sync]] `names`: {n:?} is not a snapshot name or prefix \
                     (1 to 128 of A-Z a-z 0-9 . _ -)"
                )));
            }
        }
        let ca_file = take("ca_file")?
            .map(|v| text(v, "ca_file").map(PathBuf::from))
            .transpose()?;
        if ca_file.is_some() && !from.starts_with("https://") {
            return Err(D::Error::custom(
                "[[sync]] `ca_file` is only for an https:// source",
            ));
        }
        let name = match take("name")? {
            Some(v) => text(v, "name")?,
            None => host.to_string(),
        };
        if name.is_empty()
            || name.len() > 64
            || name
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(D::Error::custom(format!(
                "[[sync]] `name` {name:?}: 1 to 64 characters, no quotes, backslashes or control characters"
            )));
        }
        Ok(SyncJobConfig {
            name,
            from,
            token_file,
            names,
            interval,
            ca_file,
        })
    }
}

/// The `host:port` of an `http://` or `https://` URL.
fn source_host(url: &str) -> Result<&str, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err(format!(
            "{url:?} needs a host (and no credentials: the token goes in token_file)"
        ));
    }
    Ok(host)
}

/// A humane duration: one or more `<number><unit>` with units `s`, `m`,
/// `h`, `d` (`90s`, `15m`, `1h30m`, `1d`), at least [`MIN_SYNC_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 15m, 1h30m or 1d");
    let mut total: u64 = 0;
    let mut digits = String::new();
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    for c in t.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    let d = Duration::from_secs(total);
    if d < MIN_SYNC_INTERVAL {
        return Err(format!(
            "{text:?} is shorter than the minimum of {} s",
            MIN_SYNC_INTERVAL.as_secs()
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("listen = \"127.0.0.1:0\"\nmax_streams = 3\n").unwrap();
        assert_eq!(c.max_streams, 3);
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.grace_secs, 30);
        let e = Config::from_toml("max_stream = 3").unwrap_err();
        assert!(matches!(e, StartError::Config { .. }), "{e}");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn storage_table_selects_a_bucket() {
        let c = Config::from_toml("").unwrap();
        assert!(c.storage.s3_config().unwrap().is_none());
        assert_eq!(c.storage.describe(), "local");
        let c = Config::from_toml(
            r#"
            [storage]
            kind = "s3"
            url = "s3://backups/site-a"
            endpoint = "http://127.0.0.1:8333"
            allow_http = true
            anonymous = true
            max_retries = 2
            cache_bytes = 1000
            secret_access_key = "hush"
            access_key_id = "me"
            "#,
        )
        .unwrap();
        let s3 = c.storage.s3_config().unwrap().unwrap();
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("backups", "site-a")
        );
        assert_eq!((s3.max_retries, s3.cache_bytes), (2, Some(1000)));
        let d = c.storage.describe();
        assert!(
            d.starts_with("s3://backups/site-a at http://127.0.0.1:8333"),
            "{d}"
        );
        assert!(!d.contains("hush") && !d.contains("me@"), "{d}");
        assert_eq!(c.storage.lease_ttl_secs, 60);
        let c = Config::from_toml("[storage]\nkind = \"s3\"\nbucket = \"B\"\n").unwrap();
        let e = c.storage.s3_config().unwrap_err();
        assert!(matches!(e, StartError::Storage { .. }), "{e}");
        assert!(e.to_string().contains("bucket name"), "{e}");
    }

    #[test]
    fn storage_rejects_unknown_keys_naming_them() {
        for (text, bad) in [
            (
                "[storage]\nkind = \"s3\"\nend_point = \"http://x\"\n",
                "end_point",
            ),
            ("[storage]\nlease_ttl = 5\n", "lease_ttl"),
            ("[storage]\nbreak_lease = true\n", "break_lease"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(matches!(e, StartError::Config { .. }), "{e}");
            let m = e.to_string();
            assert!(
                m.contains(&format!("unknown key `{bad}` in [storage]")),
                "{m}"
            );
            assert!(
                m.contains("endpoint") && m.contains("lease_ttl_secs"),
                "{m}"
            );
        }
        let c = Config::from_toml(
            "[storage]\nkind = \"s3\"\nbucket = \"b\"\nlease_ttl_secs = 4\nmax_in_flight = 3\n",
        )
        .unwrap();
        assert_eq!(c.storage.lease_ttl(), Duration::from_secs(4));
        assert_eq!(c.storage.s3.max_in_flight, 3);
        assert!(!c.storage.break_lease);
        let e = Config::from_toml("[storage]\nkind = \"ftp\"\n").unwrap_err();
        assert!(e.to_string().contains("ftp"), "{e}");
    }

    #[test]
    fn sync_tables_parse_and_refuse_unknown_keys_naming_them() {
        let c = Config::from_toml(
            r#"
            [[sync]]
            from = "http://10.0.0.5:7711"
            token_file = "/etc/bunker/site-a.token"
            names = ["db-", "mail"]
            interval = "1h30m"

            [[sync]]
            name = "site-b"
            from = "https://b.example:7711/"
            token_file = "b.token"
            interval = "90s"
            ca_file = "b-ca.pem"
            "#,
        )
        .unwrap();
        assert_eq!(c.sync.len(), 2);
        let a = &c.sync[0];
        assert_eq!(a.name, "10.0.0.5:7711");
        assert_eq!(a.names, ["db-", "mail"]);
        assert_eq!(a.interval, Duration::from_secs(5400));
        assert_eq!(a.ca_file, None);
        let b = &c.sync[1];
        assert_eq!((b.name.as_str(), b.interval.as_secs()), ("site-b", 90));
        assert!(b.names.is_empty());
        assert_eq!(b.ca_file.as_deref(), Some(std::path::Path::new("b-ca.pem")));

        let job = |extra: &str| {
            Config::from_toml(&format!(
                "[[sync]]\nfrom = \"http://a:1\"\ntoken_file = \"t\"\ninterval = \"1h\"\n{extra}"
            ))
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let e = job("token = \"s3cret\"\n");
        assert!(e.contains("unknown key `token` in [[sync]]"), "{e}");
        assert!(e.contains("token_file") && !e.contains("s3cret"), "{e}");
        let e = job("ca_file = \"x.pem\"\n");
        assert!(e.contains("only for an https:// source"), "{e}");
        let e = job("names = [\"../etc\"]\n");
        assert!(e.contains("\"../etc\" is not a snapshot name"), "{e}");
        let e = job("[[sync]]\nfrom = \"http://a:1\"\ntoken_file = \"u\"\ninterval = \"2h\"\n");
        assert!(e.contains("two [[sync]] jobs are named \"a:1\""), "{e}");
        for (text, want) in [
            (
                "[[sync]]\ntoken_file = \"t\"\ninterval = \"1h\"\n",
                "needs `from`",
            ),
            (
                "[[sync]]\nfrom = \"a:1\"\ntoken_file = \"t\"\ninterval = \"1h\"\n",
                "must start with http://",
            ),
            (
                "[[sync]]\nfrom = \"http://u:p@a:1\"\ntoken_file = \"t\"\ninterval = \"1h\"\n",
                "no credentials",
            ),
            (
                "[[sync]]\nfrom = \"http://a:1\"\ninterval = \"1h\"\n",
                "needs `token_file`",
            ),
            (
                "[[sync]]\nfrom = \"http://a:1\"\ntoken_file = \"t\"\n",
                "needs `interval`",
            ),
            (
                "[[sync]]\nfrom = \"http://a:1\"\ntoken_file = \"t\"\ninterval = 3600\n",
                "`interval`",
            ),
        ] {
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn intervals_are_humane_and_not_too_short() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("1s", 1),
        ] {
            assert_eq!(
                parse_interval(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for text in [
            "",
            "0s",
            "1",
            "h",
            "1x",
            "1.5h",
            "-1h",
            "99999999999999999999d",
        ] {
            assert!(parse_interval(text).is_err(), "{text}");
        }
        assert!(parse_interval("0s").unwrap_err().contains("minimum"));
    }
}
