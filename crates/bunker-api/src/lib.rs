//! The HTTP API of bunker, version 1: paths, headers, JSON bodies and error
//! codes, shared by the server and the client so they cannot drift apart.
//!
//! Every error response has the body `{"error": {"code": "...",
//! "message": "..."}}`; codes are stable ([`ErrorCode`]), messages are for
//! people and never contain filesystem paths. The routes are documented in
//! docs/API.md.

use serde::{Deserialize, Serialize};

mod sync_jobs;
pub use sync_jobs::{SyncJob, SyncJobs, SyncRun};

/// Prefix of every versioned route.
pub const PREFIX: &str = "/v1";
/// Hex BLAKE3 of the whole image, sent by a client that wants the server to
/// refuse a snapshot whose bytes hash differently (raw upload and commit).
pub const HEADER_STREAM_HASH: &str = "x-bunker-stream-hash";
/// Free-text description of the source (e.g. `host1:/dev/sdb`), kept in the
/// snapshot (at most 192 bytes).
pub const HEADER_SOURCE: &str = "x-bunker-source";
/// Bytes of one manifest entry in a chunk-protocol commit body: raw length
/// (u64, little-endian) then the chunk id (32 bytes).
pub const COMMIT_ENTRY_LEN: usize = 40;
/// Sent by a reader (`Accept-Encoding: zstd` on `GET .../chunks/{id}`)
/// that takes a chunk as the zstd frame it is stored as; the answer then
/// says `Content-Encoding: zstd` when it is one.
pub const ENCODING_ZSTD: &str = "zstd";
/// Bytes of one chunk id in a `missing` request body.
pub const CHUNK_ID_LEN: usize = 32;

/// Stable error codes; each maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    BadRequest,
    InvalidName,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Conflict,
    /// Another GC or verify, or another server-side drill, is running.
    Busy,
    PayloadTooLarge,
    HeadersTooLarge,
    RangeNotSatisfiable,
    HashMismatch,
    MissingChunk,
    TooManyStreams,
    /// A shared memory budget (request bodies) stayed full for a moment.
    Overloaded,
    ShuttingDown,
    InsufficientStorage,
    CorruptData,
    Internal,
    /// The object store holding the repository did not answer, or kept
    /// refusing, through every retry; nothing acknowledged is affected.
    /// Retry later (the response carries Retry-After).
    StoreUnavailable,
    /// The object store refused for good (credentials, bucket,
    /// permissions): the server's setup needs fixing, retrying won't help.
    StoreRefused,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidName => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Timeout => 408,
            ErrorCode::Conflict | ErrorCode::Busy => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::HashMismatch | ErrorCode::MissingChunk => 422,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::TooManyStreams
            | ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::StoreUnavailable => 503,
            ErrorCode::StoreRefused => 502,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::CorruptData | ErrorCode::Internal => 500,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Busy => "busy",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::MissingChunk => "missing_chunk",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::CorruptData => "corrupt_data",
            ErrorCode::Internal => "internal",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::StoreRefused => "store_refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// Who may do what ("admin" > "writer", "reader").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Create snapshots and read the ones it created; never delete.
    Writer,
    /// List and restore.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// A snapshot as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub name: String,
    pub id: u64,
    /// Commit time on the server's clock, unix milliseconds.
    pub created_unix_ms: i64,
    pub size_bytes: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub new_chunks: u64,
    /// Bytes this backup added to the repository (after compression).
    pub new_bytes: u64,
    pub seconds: f64,
    /// BLAKE3 of the whole image, hex.
    pub blake3: String,
    pub source: String,
    /// Id of the token that created it, if any.
    pub creator: Option<String>,
    /// The last verify that covered this snapshot, as the server recorded it.
    #[serde(default)]
    pub last_verify: Option<Check>,
    /// The last restore drill of this snapshot, of either kind: reported
    /// by a client or run by the server (`verified_by` says which).
    #[serde(default)]
    pub last_drill: Option<Check>,
    /// The last drill the server ran itself (`"verify": "server"`): no
    /// client report can replace it.
    #[serde(default)]
    pub last_server_drill: Option<Check>,
    /// Where this snapshot was copied from (`bunker sync`); `None` for a
    /// backup made here. A copy keeps the source's `created_unix_ms`.
    #[serde(default)]
    pub origin: Option<Origin>,
}

/// The snapshot a copy was made from: a snapshot is copied at most once
/// per (`repository_id`, `snapshot_id`) into a target repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The source repository's id (32 hex digits, as `GET /v1/info` shows it).
    pub repository_id: String,
    /// The snapshot's id in the source repository.
    pub snapshot_id: u64,
    /// Its name there (a copy keeps it).
    pub name: String,
    /// Its creation time there, unix milliseconds (source clock).
    pub created_unix_ms: i64,
}

/// The outcome of one verify or drill of a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// When the server recorded it, unix milliseconds (server clock).
    pub at_unix_ms: i64,
    pub ok: bool,
    /// What was checked and how it went, for people: "full verify",
    /// "sample 10%", "4.0 GiB at 1.52 GB/s", or the error.
    pub detail: String,
    /// Who read and checked the data: the server itself (every verify, a
    /// server-side drill), or a client whose report the server recorded
    /// without being able to check it.
    #[serde(default)]
    pub verified_by: Verifier,
    /// Id of the token that ran or reported it (`null` in records made
    /// before the server kept it).
    #[serde(default)]
    pub token: Option<String>,
    /// That token's label, if it has one.
    #[serde(default)]
    pub token_name: Option<String>,
}

/// Who verified a check's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verifier {
    /// A client (a drill report); the default of older records.
    #[default]
    Client,
    /// The server.
    Server,
}

impl Verifier {
    pub fn as_str(self) -> &'static str {
        match self {
            Verifier::Client => "client",
            Verifier::Server => "server",
        }
    }
}

/// `POST /v1/snapshots/{name}/{id}/drill`: what a client-side drill found,
/// or, with `"verify": "server"` alone, a request that the server drill
/// the snapshot itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillResult {
    pub ok: bool,
    /// Bytes restored and verified.
    pub bytes: u64,
    pub seconds: f64,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// `client` (the default): this is a report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verifier>,
}

/// The body asking for a server-side drill: `{"verify": "server"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDrillRequest {
    pub verify: Verifier,
}

/// The answer to a server-side drill: what the server read and how it
/// went, and the check it recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerDrill {
    pub name: String,
    pub id: u64,
    pub ok: bool,
    /// Bytes of the image read and verified (zero chunks included).
    pub bytes: u64,
    pub seconds: f64,
    #[serde(default)]
    pub error: Option<String>,
    pub check: Check,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<Snapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_bytes: u32,
    pub avg_bytes: u32,
    pub max_bytes: u32,
}

/// `GET /v1/info`: what a client needs to chunk like the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Info {
    pub server_version: String,
    pub repository_id: String,
    pub chunker: ChunkerParams,
    pub zstd_level: i32,
    /// Where packs and manifests live: `local` (the data directory) or the
    /// bucket as `s3://BUCKET/PREFIX at ENDPOINT`; never credentials.
    #[serde(default)]
    pub storage: String,
    /// The server keeps block hashes with snapshots (`PUT
    /// /v1/sessions/{sid}/blocks`, `GET .../blocks`); absent (false) on
    /// servers before they existed.
    #[serde(default)]
    pub block_hashes: bool,
    /// The repository is encrypted at rest; absent (false) on servers
    /// before encryption existed.
    #[serde(default)]
    pub encrypted: bool,
    /// The id of its key (32 hex digits; safe to show, the key is not).
    #[serde(default)]
    pub key_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub snapshots: u64,
    /// Sum of all snapshot sizes.
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks the snapshots reference (after
    /// dedup, before compression).
    pub unique_bytes: u64,
    /// Those chunks' bytes in packs (after compression).
    #[serde(default)]
    pub referenced_stored_bytes: u64,
    /// Bytes of all pack files (referenced data, garbage awaiting GC,
    /// record headers and trailers).
    pub stored_bytes: u64,
    /// logical / unique.
    pub dedup_ratio: f64,
    /// unique / referenced stored.
    pub compression_ratio: f64,
    pub chunks: u64,
    pub packs: u64,
    pub index_bytes: u64,
    /// When the last GC measured the shared part of these figures (unix
    /// ms); what came after is added from the snapshot headers. `None`
    /// before the first GC.
    #[serde(default)]
    pub accounted_unix_ms: Option<i64>,
    #[serde(default)]
    pub names: Vec<NameStats>,
}

/// Space of one snapshot name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NameStats {
    pub name: String,
    pub snapshots: u64,
    pub logical_bytes: u64,
    /// Chunks only this name's snapshots reference: what deleting all of
    /// them (and a GC) would free.
    pub unique_chunks: u64,
    pub unique_bytes: u64,
    pub unique_stored_bytes: u64,
    /// Snapshots deleted since the last GC; their chunks count until it runs.
    pub deleted_since_gc: u64,
}

/// `GET /v1/status`: what the status page shows per snapshot name, beyond
/// `GET /v1/stats` and `GET /v1/sync`: stored bytes per day, the latest
/// snapshot, the newest checks, and the space left. Scoped like the
/// snapshot listing: only names of snapshots the token may read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The server's clock when it answered, unix milliseconds.
    pub now_unix_ms: i64,
    /// A verify or drill older than this is overdue (`drill_interval_secs`).
    pub drill_interval_seconds: u64,
    /// Start (UTC midnight) of the first of the `DAYS` days that
    /// `stored_bytes_per_day` covers, the last being today.
    pub first_day_unix_ms: i64,
    pub names: Vec<NameStatus>,
    pub space: Space,
}

/// Days of history in [`NameStatus::stored_bytes_per_day`].
pub const STATUS_DAYS: usize = 30;

/// One snapshot name on the status page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NameStatus {
    pub name: String,
    pub snapshots: u64,
    /// Sum of the sizes of its snapshots.
    pub logical_bytes: u64,
    /// The newest snapshot (by creation time).
    pub latest: LatestSnapshot,
    /// Bytes its snapshots added to packs (after compression), per UTC day
    /// by creation time, oldest first, [`STATUS_DAYS`] entries.
    pub stored_bytes_per_day: Vec<u64>,
    /// Raw bytes of the chunks its snapshots stored first (after dedup,
    /// before compression), and their bytes in packs.
    pub new_raw_bytes: u64,
    pub new_stored_bytes: u64,
    /// logical / new raw, and new raw / new stored (0 when a divisor is 0).
    pub dedup_ratio: f64,
    pub compression_ratio: f64,
    /// The newest check of each kind over its snapshots.
    pub last_verify: Option<Check>,
    pub last_drill: Option<Check>,
    pub last_server_drill: Option<Check>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatestSnapshot {
    pub id: u64,
    pub created_unix_ms: i64,
    pub size_bytes: u64,
    pub source: String,
}

/// Free space where the repository's packs grow, and when it runs out at
/// the growth of the last [`STATUS_DAYS`] days.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Space {
    /// Free and total bytes of the data directory's filesystem; `null` when
    /// packs live in a bucket.
    pub free_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    /// Pack bytes added per day by every snapshot created in the last
    /// [`STATUS_DAYS`] days (all names, like the totals of `stats`),
    /// before any GC reclaims space.
    pub growth_bytes_per_day: f64,
    /// `free_bytes / growth_bytes_per_day`; `null` without growth or free
    /// space figures.
    pub full_in_days: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub role: Role,
    /// Only this snapshot name and names continuing it after a separator
    /// (`-`, `.`, `_`, `/`): `db` covers `db` and `db-1`, not `db2`.
    #[serde(default)]
    pub scope: Option<String>,
    /// A label for people.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub scope: Option<String>,
    pub name: Option<String>,
    pub created_unix_ms: i64,
}

/// The secret appears only in this answer; the server keeps a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /v1/sessions`: start a chunk-protocol backup of `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub name: String,
    #[serde(default)]
    pub source: Option<String>,
    /// Set by `bunker sync`: the session copies this snapshot of another
    /// repository (same name). Its commit keeps the origin's creation
    /// time, and answers the existing copy (200) if the origin is here
    /// already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    /// The session ends this many seconds after its last request.
    pub idle_timeout_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_stable_names_and_statuses() {
        for (code, name, status) in [
            (ErrorCode::InvalidName, "invalid_name", 400),
            (ErrorCode::Forbidden, "forbidden", 403),
            (ErrorCode::TooManyStreams, "too_many_streams", 503),
            (ErrorCode::InsufficientStorage, "insufficient_storage", 507),
            (ErrorCode::HeadersTooLarge, "headers_too_large", 431),
            (ErrorCode::StoreUnavailable, "store_unavailable", 503),
            (ErrorCode::StoreRefused, "store_refused", 502),
        ] {
            assert_eq!(code.as_str(), name);
            assert_eq!(code.status(), status);
        }
    }
}

/// `POST /v1/prune`: apply a retention policy to one name or to all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// Keep everything committed within this many seconds of the newest.
    #[serde(default)]
    pub keep_within_secs: Option<u64>,
    /// List what would go and why; delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneDecision {
    pub id: u64,
    pub created_unix_ms: i64,
    pub keep: bool,
    /// The rules that keep it (`last`, `hourly`, ..., `within`, `newest`).
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneName {
    pub name: String,
    /// Newest first.
    pub snapshots: Vec<PruneDecision>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResult {
    pub dry_run: bool,
    pub names: Vec<PruneName>,
}

/// One damaged thing found by verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// Relative to the repository, e.g. `packs/3a/00/000000000000003a.pack`.
    pub file: String,
    pub pack: Option<u64>,
    pub offset: Option<u64>,
    pub chunk: Option<String>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedSnapshot {
    pub name: String,
    pub id: u64,
    pub bad_chunks: u64,
    pub reason: String,
}

fn hundred() -> f64 {
    100.0
}

/// `POST /v1/gc` body; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcRequest {
    #[serde(default)]
    pub dry_run: bool,
    /// Rewrite packs whose live fraction is below this (0..=1; default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_below: Option<f64>,
}

/// What a GC did (or, dry, would do). Bytes are pack-file bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub snapshots: u64,
    pub references: u64,
    pub packs_examined: u64,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub packs_protected: u64,
    pub packs_unreadable: u64,
    pub bytes_deleted: u64,
    pub bytes_rewritten: u64,
    pub bytes_reclaimed: u64,
    pub live_bytes: u64,
    pub index_entries_dropped: u64,
    pub mark_bytes: u64,
    pub mark_seconds: f64,
    pub sweep_seconds: f64,
    pub seconds: f64,
}

/// `POST /v1/verify` body; every field optional (an empty body verifies
/// everything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// `NAME` (its latest snapshot) or `NAME@ID`: read only its chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Read this percentage of the packs (or of the snapshot's chunks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_percent: Option<f64>,
}

/// `POST /v1/verify`: every record of every pack, the index, every manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub clean: bool,
    #[serde(default)]
    pub snapshot: Option<String>,
    #[serde(default = "hundred")]
    pub sample_percent: f64,
    /// Damaged records taken out of the index by this verify: the next
    /// backup of the same data stores them again.
    #[serde(default)]
    pub newly_quarantined: u64,
    /// Damaged records quarantined earlier (not listed as damage again).
    #[serde(default)]
    pub quarantined: u64,
    pub packs: u64,
    pub chunks: u64,
    pub stored_bytes: u64,
    pub snapshots: u64,
    pub seconds: f64,
    pub damage: Vec<Damage>,
    /// Records that could not be read (an I/O error) or read corrupt once
    /// and intact on a second read: not proven damaged, so nothing was
    /// quarantined. Verify again once the disk answers.
    #[serde(default)]
    pub unreadable: Vec<Damage>,
    pub damaged_snapshots: Vec<DamagedSnapshot>,
}
