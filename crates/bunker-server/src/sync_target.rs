//! One run of a pull job: reads the job's token, connects to the source,
//! and copies the missing snapshots into this server's repository with
//! [`bunker_sync::sync`], through [`LocalTarget`].
//!
//! `LocalTarget` is the chunk protocol without HTTP: its sessions are
//! ordinary upload sessions (`crate::sessions`: an ingest slot, pins that
//! keep the run's chunks from GC, expiry when idle), chunks go through
//! the same store calls as `PUT .../chunks` (BLAKE3 checked against the id
//! before a chunk counts), and the commit is the session route's own
//! (`routes::sessions::commit_entries`: every entry names a stored chunk
//! of its length, the commit is atomic and at most one per origin). A
//! hostile source is refused here exactly as a hostile client is there.
//! Every session a run opens ends with the run (dropping its pins into
//! the next GC's retired set, as an abandoned upload's do), so a failed
//! run holds no slot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bunker_api::{ErrorCode, Origin, Role, Snapshot};
use bunker_client::{Client, Committed, Frame};
use bunker_store::ChunkId;
use bunker_sync::{Filter, SyncOptions, Target, TargetError};

use crate::config::SyncJobConfig;
use crate::error::ApiError;
use crate::sessions::Session;
use crate::state::State;
use crate::sync_jobs::{Behind, Failure, Outcome};
use crate::tokens::Principal;

/// The token id pull jobs hold their ingest slots under (no stored token
/// has it), and the creator their snapshots record: none.
const JOB_PRINCIPAL: u64 = 0;

/// Runs `job` once, on the calling (blocking) thread.
pub(crate) fn run(state: &Arc<State>, job: &SyncJobConfig) -> Result<Outcome, Failure> {
    state
        .accepting()
        .map_err(|_| Failure::new("the server is shutting down"))?;
    let client = source(job)?;
    let filter = Filter::new(job.names.clone());
    let target = LocalTarget::new(state, job);
    let result = bunker_sync::sync(&client, &target, &filter, &SyncOptions::default(), &|_| {});
    let behind = behind(&client, state, &filter);
    let copied = target.counts();
    drop(target);
    match result {
        Ok(_) => Ok(Outcome {
            snapshots_copied: copied.0,
            logical_bytes: copied.1,
            wire_bytes: copied.2,
            behind,
        }),
        Err(e) => Err(Failure {
            reason: describe(&e, job),
            behind,
            snapshots_copied: copied.0,
            logical_bytes: copied.1,
            wire_bytes: copied.2,
        }),
    }
}

/// A run's error for `/v1/sync`: the client's advice about `--token` and
/// `BUNKER_TOKEN` does not apply to a job.
fn describe(e: &bunker_sync::SyncError, job: &SyncJobConfig) -> String {
    match e {
        bunker_sync::SyncError::Source(bunker_client::Error::Unauthorized { message }) => format!(
            "the source refused the token in {}: {message}",
            job.token_file.display()
        ),
        bunker_sync::SyncError::Source(bunker_client::Error::Unreachable { url, reason }) => {
            format!("cannot reach the source at {url}: {reason}")
        }
        other => other.to_string(),
    }
}

/// A client of the job's source with the token read from its file now.
fn source(job: &SyncJobConfig) -> Result<Client, Failure> {
    let path = job.token_file.display();
    let token = std::fs::read_to_string(&job.token_file)
        .map_err(|e| Failure::new(format!("reading token_file {path}: {e}")))?;
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(Failure::new(format!("token_file {path} is empty")));
    }
    let mut client = match &job.ca_file {
        None => Client::new(&job.from, Some(token)),
        Some(ca) => {
            let pem = std::fs::read(ca)
                .map_err(|e| Failure::new(format!("reading ca_file {}: {e}", ca.display())))?;
            Client::with_ca(&job.from, Some(token), &pem)
                .map_err(|e| Failure::new(format!("ca_file {}: {e}", ca.display())))?
        }
    };
    client.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    Ok(client)
}

/// The newest source snapshot of the job's names whose origin is not
/// here, after the run; `None` when the source cannot be listed.
fn behind(source: &Client, state: &State, filter: &Filter) -> Option<Behind> {
    let repo = source.info().ok()?.repository_id.to_ascii_lowercase();
    let listed = source.list(None).ok()?;
    let here: HashSet<(String, u64)> = state
        .repo
        .list(None)
        .ok()?
        .iter()
        .filter_map(|s| s.origin.map(|o| (hex(&o.repo_id), o.snapshot_id)))
        .collect();
    // A copy of a copy keeps the first origin (as the engine matches).
    let key = |s: &Snapshot| match &s.origin {
        Some(o) => (o.repository_id.to_ascii_lowercase(), o.snapshot_id),
        None => (repo.clone(), s.id),
    };
    let newest = listed
        .iter()
        .filter(|s| filter.matches(&s.name) && !here.contains(&key(s)))
        .map(|s| s.created_unix_ms)
        .max();
    Some(newest.map_or(Behind::UpToDate, Behind::Since))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// This server's repository as a [`Target`] (see the module doc).
struct LocalTarget<'a> {
    state: &'a Arc<State>,
    job: &'a SyncJobConfig,
    principal: Principal,
    /// Sessions this run opened that have not ended: ended with it.
    open: Mutex<Vec<String>>,
    snapshots: AtomicU64,
    logical_bytes: AtomicU64,
    wire_bytes: AtomicU64,
}

fn refused(e: ApiError) -> TargetError {
    match e.code {
        ErrorCode::BadRequest
        | ErrorCode::InvalidName
        | ErrorCode::HashMismatch
        | ErrorCode::MissingChunk
        | ErrorCode::PayloadTooLarge => TargetError::Refused(e.message),
        ErrorCode::Forbidden => TargetError::Forbidden(e.message),
        _ => TargetError::Failed(e.message),
    }
}

impl<'a> LocalTarget<'a> {
    fn new(state: &'a Arc<State>, job: &'a SyncJobConfig) -> LocalTarget<'a> {
        LocalTarget {
            state,
            job,
            principal: Principal {
                id: JOB_PRINCIPAL,
                role: Role::Writer,
                scope: None,
                name: Some(format!("sync job {}", job.name)),
            },
            open: Mutex::new(Vec::new()),
            snapshots: AtomicU64::new(0),
            logical_bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
        }
    }

    /// Snapshots committed, their bytes, chunk bytes received.
    fn counts(&self) -> (u64, u64, u64) {
        (
            self.snapshots.load(Ordering::Relaxed),
            self.logical_bytes.load(Ordering::Relaxed),
            self.wire_bytes.load(Ordering::Relaxed),
        )
    }

    fn session(&self, sid: &str) -> Result<Arc<Session>, TargetError> {
        self.state.accepting().map_err(refused)?;
        self.state.sessions.get(sid).ok_or_else(|| {
            TargetError::Failed(format!(
                "upload session {sid} ended (idle for session_idle_secs?)"
            ))
        })
    }

    fn end(&self, sid: &str) {
        self.state.sessions.remove(sid);
        if let Ok(mut open) = self.open.lock() {
            open.retain(|s| s != sid);
        }
    }
}

impl Drop for LocalTarget<'_> {
    fn drop(&mut self) {
        let open = self.open.lock().map(|o| o.clone()).unwrap_or_default();
        for sid in open {
            self.state.sessions.remove(&sid);
        }
    }
}

impl Target for LocalTarget<'_> {
    fn snapshots(&self) -> Result<Vec<Snapshot>, TargetError> {
        let st = self.state;
        let list = st.repo.list(None).map_err(|e| refused(st.store_error(e)))?;
        Ok(list
            .iter()
            .map(|s| crate::convert::snapshot(&st.checks, s))
            .collect())
    }

    fn max_chunk(&self) -> Result<u64, TargetError> {
        Ok(u64::from(self.state.repo.chunker_params().max_len))
    }

    fn begin(&self, name: &str, source: &str, origin: &Origin) -> Result<String, TargetError> {
        let st = self.state;
        st.accepting().map_err(refused)?;
        // The engine filters by the job's names too; a source cannot
        // smuggle another name in.
        if !Filter::new(self.job.names.clone()).matches(name) {
            return Err(TargetError::Refused(format!(
                "{name:?} is not among the job's names"
            )));
        }
        crate::routes::check_name(&self.principal, name).map_err(refused)?;
        let origin = crate::routes::sessions::origin(origin, name).map_err(refused)?;
        let slot = st.stream_permit(&self.principal).map_err(refused)?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)
            .map_err(|e| TargetError::Failed(format!("no randomness: {e}")))?;
        let id = hex(&raw);
        let source: String = format!("sync job {}: {source}", self.job.name)
            .chars()
            .take(192)
            .collect();
        st.sessions.open(
            id.clone(),
            name.to_string(),
            source,
            JOB_PRINCIPAL,
            Some(origin),
            slot,
            st.repo.pins(),
        );
        if let Ok(mut open) = self.open.lock() {
            open.push(id.clone());
        }
        Ok(id)
    }

    fn missing(&self, sid: &str, ids: &[ChunkId]) -> Result<Vec<bool>, TargetError> {
        let s = self.session(sid)?;
        Ok(self.state.repo.missing(ids, &s.pins))
    }

    fn put_frame(&self, sid: &str, id: &ChunkId, frame: &Frame) -> Result<(), TargetError> {
        let s = self.session(sid)?;
        let st = self.state;
        self.wire_bytes
            .fetch_add(frame.bytes.len() as u64, Ordering::Relaxed);
        let stored = if frame.zstd {
            st.repo.store_chunk_frame(id, &frame.bytes, &s.pins)
        } else {
            let raw_len = frame.bytes.len() as u64;
            st.repo
                .store_chunk(id, &frame.bytes, &s.pins)
                .map(|n| (raw_len, n))
        };
        let (raw_len, stored) = stored.map_err(|e| refused(st.store_error(e)))?;
        if stored > 0 {
            s.add_stored(raw_len, stored);
            st.metrics.chunks_stored.fetch_add(1, Ordering::Relaxed);
            st.metrics.bytes_stored.fetch_add(stored, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit(
        &self,
        sid: &str,
        manifest: &mut dyn std::io::Read,
        blake3: &str,
    ) -> Result<Committed, TargetError> {
        let s = self.session(sid)?;
        let st = self.state;
        let hash = blake3::Hash::from_hex(blake3.trim())
            .map_err(|_| TargetError::Refused(format!("{blake3:?} is not a BLAKE3 hash")))?;
        s.committing.store(true, Ordering::SeqCst);
        let done = crate::routes::sessions::commit_entries(st, &s, manifest, *hash.as_bytes());
        s.committing.store(false, Ordering::SeqCst);
        let result = done.map(|(info, created)| {
            s.pins.committed();
            let m = &st.metrics;
            m.bytes_ingested.fetch_add(info.size, Ordering::Relaxed);
            m.bytes_deduplicated
                .fetch_add(info.size.saturating_sub(info.new_bytes), Ordering::Relaxed);
            if created {
                self.snapshots.fetch_add(1, Ordering::Relaxed);
                self.logical_bytes.fetch_add(info.size, Ordering::Relaxed);
                tracing::info!(job = %self.job.name, name = %info.name, id = info.id.0, bytes = info.size, "sync job committed a copy");
            }
            Committed {
                snapshot: crate::convert::snapshot(&st.checks, &info),
                created,
            }
        });
        self.end(sid);
        result.map_err(refused)
    }

    fn abort(&self, sid: &str) {
        self.end(sid);
    }
}
