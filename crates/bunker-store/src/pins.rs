//! Pins: the packs that backups in progress depend on, so GC spares them.
//!
//! Every location a snapshot writer or upload session is handed (a chunk it
//! deduplicates against, a chunk it has just stored, a chunk a client was
//! told is present) pins that location's pack, under the read side of the
//! repository's GC gate. GC takes the write side twice: when it starts
//! (it then protects every pin held, plus the pins of writers that finished
//! since the previous GC started, and from then on every new pin) and when
//! it condemns packs (it condemns none that is protected). So a pack a
//! writer depends on is either pinned before GC decides, and spared, or
//! already tombstoned when the writer looks, and never handed out.
//!
//! Pins are pack ids, not chunk ids: at most one entry per pack per writer.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::PackId;

#[derive(Default)]
pub(crate) struct PinBoard {
    state: Mutex<BoardState>,
}

#[derive(Default)]
struct BoardState {
    next: u64,
    active: HashMap<u64, HashSet<u64>>,
    /// Pins of writers that ended without a commit since the last GC
    /// started: a chunk such a writer stored may be what another stream
    /// was told is pending, and that stream pins it only once it is
    /// published. (A committed writer's chunks are in its manifest, which
    /// any GC starting after the commit marks.)
    retired: HashSet<u64>,
    /// While a GC runs: every pack it must not condemn.
    gc: Option<HashSet<u64>>,
}

impl PinBoard {
    fn lock(&self) -> MutexGuard<'_, BoardState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn holder(self: &Arc<Self>) -> Pins {
        let mut s = self.lock();
        let id = s.next;
        s.next += 1;
        s.active.insert(id, HashSet::new());
        Pins {
            board: self.clone(),
            id,
            committed: AtomicBool::new(false),
        }
    }

    /// Starts protecting (call under the write side of the gate).
    pub(crate) fn gc_begin(&self) {
        let mut s = self.lock();
        let mut protected: HashSet<u64> = std::mem::take(&mut s.retired);
        for set in s.active.values() {
            protected.extend(set.iter().copied());
        }
        s.gc = Some(protected);
    }

    /// Whether GC must spare `pack` (call under the write side of the gate).
    pub(crate) fn gc_protects(&self, pack: PackId) -> bool {
        self.lock().gc.as_ref().is_some_and(|p| p.contains(&pack.0))
    }

    pub(crate) fn gc_end(&self) {
        self.lock().gc = None;
    }
}

/// The pins of one writer or session; released on drop (retired for one
/// more GC start unless [`Pins::committed`] was called).
pub struct Pins {
    board: Arc<PinBoard>,
    id: u64,
    committed: AtomicBool,
}

impl Pins {
    /// Pins packs. Call with the read side of the GC gate held, together
    /// with the lookup that produced them.
    pub(crate) fn add(&self, packs: impl IntoIterator<Item = PackId>) {
        let mut s = self.board.lock();
        let s = &mut *s;
        let Some(mine) = s.active.get_mut(&self.id) else {
            return;
        };
        for p in packs {
            if mine.insert(p.0) {
                if let Some(gc) = s.gc.as_mut() {
                    gc.insert(p.0);
                }
            }
        }
    }

    /// Records that what these pins protect is now referenced by a durable
    /// manifest: dropping them need not protect anything further.
    pub fn committed(&self) {
        self.committed.store(true, Ordering::Relaxed);
    }

    /// How many packs are pinned.
    pub fn len(&self) -> usize {
        self.board
            .lock()
            .active
            .get(&self.id)
            .map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let mut s = self.board.lock();
        if let Some(set) = s.active.remove(&self.id) {
            if !self.committed.load(Ordering::Relaxed) {
                s.retired.extend(set);
            }
        }
    }
}
