//! `GET /v1/sync`: the scheduled pull jobs of a target server and how
//! their last runs went (docs/API.md, "Sync jobs").

use serde::{Deserialize, Serialize};

/// Every `[[sync]]` job of the server's config, in config order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncJobs {
    pub jobs: Vec<SyncJob>,
}

/// One pull job: what it copies from where, and how it is doing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncJob {
    /// The job's `name` (its `job` label in `/metrics`).
    pub name: String,
    /// The source server's URL (the token is never shown).
    pub from: String,
    /// Names or name prefixes copied; empty means every name the source
    /// token may read.
    pub names: Vec<String>,
    pub interval_seconds: u64,
    /// A run is in progress now.
    pub running: bool,
    /// The last run that ended, if any since the server started.
    pub last_run: Option<SyncRun>,
    /// When the last run that copied everything it was asked ended (unix
    /// ms); `None` when none has since the server started.
    pub last_success_unix_ms: Option<i64>,
    /// When the next run starts, unix ms.
    pub next_run_unix_ms: i64,
    /// Age of the newest source snapshot not yet on this server, seconds
    /// (0 when up to date), as of the last run that reached the source;
    /// `None` until one has.
    pub lag_seconds: Option<u64>,
    /// Snapshots of these names this server holds now.
    pub target_snapshots: u64,
    /// The newest verify or drill of any of them (unix ms), if any.
    pub newest_check_unix_ms: Option<i64>,
}

/// How one run went.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRun {
    pub started_unix_ms: i64,
    pub ended_unix_ms: i64,
    pub ok: bool,
    /// Why the run failed (no token in it); `None` when ok.
    pub error: Option<String>,
    /// Snapshots committed here by this run.
    pub snapshots_copied: u64,
    /// Image bytes of those snapshots.
    pub logical_bytes: u64,
    /// Chunk bytes fetched from the source (stored frames, as sent).
    pub wire_bytes: u64,
}
