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
//!
//! The session map stays usable after a thread panicked while holding its
//! lock (the map is a plain `HashMap` that a panic cannot leave half
//! updated), so an opened session is always registered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Session {
    pub id: String,
    pub name: String,
    pub source: String,
    pub creator: u64,
    /// A copy's origin and its creation time there (`bunker sync`).
    pub origin: Option<(bunker_store::Origin, i64)>,
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
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &self,
        id: String,
        name: String,
        source: String,
        creator: u64,
        origin: Option<(bunker_store::Origin, i64)>,
        slot: crate::IngestSlot,
        pins: bunker_store::Pins,
    ) -> Arc<Session> {
        let s = Arc::new(Session {
            id: id.clone(),
            name,
            source,
            creator,
            origin,
            opened: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            new_chunks: AtomicU64::new(0),
            new_bytes: AtomicU64::new(0),
            new_raw_bytes: AtomicU64::new(0),
            committing: AtomicBool::new(false),
            pins,
            _slot: slot,
        });
        self.lock().insert(id, s.clone());
        s
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.lock().get(id).cloned()?;
        s.touch();
        Some(s)
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().remove(id)
    }

    /// Ends sessions idle for longer than `idle`; returns how many.
    pub fn expire(&self, idle: Duration) -> usize {
        let mut m = self.lock();
        let before = m.len();
        m.retain(|_, s| s.committing.load(Ordering::Relaxed) || s.idle_for() < idle);
        before - m.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_map_still_registers_and_finds_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let repo = bunker_store::Repository::create(dir.path(), Default::default()).unwrap();
        let sessions = Sessions::default();
        std::thread::scope(|t| {
            let held = t.spawn(|| {
                let _guard = sessions.map.lock().unwrap();
                panic!("a handler panics while holding the session map");
            });
            assert!(held.join().is_err());
        });
        assert!(sessions.map.is_poisoned());
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let quota = crate::limits::Quota::new(1);
        let slot = crate::IngestSlot {
            _stream: slots.clone().try_acquire_owned().unwrap(),
            _quota: quota.take(7).unwrap(),
        };
        let opened = sessions.open(
            "s1".into(),
            "db-1".into(),
            "test".into(),
            7,
            None,
            slot,
            repo.pins(),
        );
        let found = sessions
            .get("s1")
            .expect("the opened session is registered");
        assert!(Arc::ptr_eq(&opened, &found));
        assert_eq!(sessions.len(), 1);
        drop((opened, found));
        assert_eq!(sessions.expire(Duration::ZERO), 1);
        assert!(sessions.remove("s1").is_none());
        // Its slot went with it.
        assert_eq!(slots.available_permits(), 1);
    }
}
