//! Chunk-protocol sessions.
//!
//! Lifecycle: `POST /v1/sessions` opens a session for one snapshot name;
//! the client asks which chunk ids are missing, uploads those, and commits
//! the ordered list of (length, id) with the whole-stream BLAKE3. A session
//! ends at commit, at `DELETE`, or `session_idle_secs` after its last
//! request (a reaper runs every few seconds). An open session holds one of
//! the server's ingest stream slots (`max_streams`, and one of its token's
//! `max_streams_per_token`) until it ends. A commit's body must arrive
//! within `commit_timeout_secs`, so a committing session ends too. Sessions
//! live in memory: a restarted server has none, and a client starts over
//! (the chunks it uploaded are stored and deduplicate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Session {
    pub id: String,
    pub name: String,
    pub source: String,
    pub creator: u64,
    pub opened: Instant,
    last_used: Mutex<Instant>,
    pub new_chunks: AtomicU64,
    pub new_bytes: AtomicU64,
    pub new_raw_bytes: AtomicU64,
    pub committing: AtomicBool,
    /// Packs of the chunks this session was told are present, or stored:
    /// GC spares them until the session ends.
    pub pins: bunker_store::Pins,
    /// The ingest slot, released when the last reference to the session
    /// goes (after commit, abort or expiry, and any request in flight).
    _slot: crate::IngestSlot,
}

impl Session {
    pub fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// Counts one chunk this session stored.
    pub fn add_stored(&self, raw_bytes: u64, stored_bytes: u64) {
        self.new_chunks.fetch_add(1, Ordering::Relaxed);
        self.new_raw_bytes.fetch_add(raw_bytes, Ordering::Relaxed);
        self.new_bytes.fetch_add(stored_bytes, Ordering::Relaxed);
    }

    /// What this session stored so far.
    pub fn new_data(&self) -> bunker_store::NewData {
        bunker_store::NewData {
            chunks: self.new_chunks.load(Ordering::Relaxed),
            raw_bytes: self.new_raw_bytes.load(Ordering::Relaxed),
            stored_bytes: self.new_bytes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn open(
        &self,
        id: String,
        name: String,
        source: String,
        creator: u64,
        slot: crate::IngestSlot,
        pins: bunker_store::Pins,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            id: id.clone(),
            name,
            source,
            creator,
            opened: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            new_chunks: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
            new_raw_bytes: AtomicU64::new(0),
            committing: AtomicBool::new(false),
            pins,
            _slot: slot,
        });
        if let Ok(mut m) = self.map.lock() {
            m.insert(id, s.clone());
        }
        s
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.map.lock().ok()?.get(id).cloned()?;
        s.touch();
        Some(s)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().ok()?.remove(id)
    }

    /// Ends sessions idle for longer than `idle`; returns how many.
    pub fn expire(&self, idle: Duration) -> usize {
        let Ok(mut m) = self.map.lock() else { return 0 };
        let before = m.len();
        m.retain(|_, s| s.committing.load(Ordering::Relaxed) || s.idle_for() < idle);
        before - m.len()
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
