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
    /// Scheduled GCs rewrite packs whose live fraction is below this.
    pub gc_rewrite_below: f64,
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
            gc_rewrite_below: bunker_store::DEFAULT_REWRITE_BELOW,
        }
    }
}

impl Config {
    /// Reads a TOML file of the fields above; unknown keys are an error.
    pub fn from_toml(text: &str) -> Result<Config, StartError> {
        toml::from_str(text).map_err(|source| StartError::Config { source })
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
}
