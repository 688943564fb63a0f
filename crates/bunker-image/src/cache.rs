//! A least-recently-used cache of verified chunks, bounded by bytes.
//! Keyed by chunk id, so a chunk that appears at many offsets is held
//! once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bunker_chunk::ChunkId;

pub(crate) struct Lru {
    limit: u64,
    bytes: u64,
    tick: u64,
    /// Chunk, and the tick of its last use.
    map: HashMap<ChunkId, (Arc<[u8]>, u64)>,
    /// Last use -> chunk, oldest first.
    order: BTreeMap<u64, ChunkId>,
}

impl Lru {
    pub(crate) fn new(limit: u64) -> Lru {
        Lru {
            limit,
            bytes: 0,
            tick: 0,
            map: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub(crate) fn get(&mut self, id: &ChunkId) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let (data, used) = self.map.get_mut(id)?;
        self.order.remove(used);
        *used = self.tick;
        self.order.insert(self.tick, *id);
        Some(data.clone())
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }

    /// Keeps `data`, dropping the least recently used chunks to make room;
    /// a chunk larger than the whole cache is not kept.
    pub(crate) fn insert(&mut self, id: ChunkId, data: Arc<[u8]>) {
        let len = data.len() as u64;
        if len > self.limit || self.map.contains_key(&id) {
            return;
        }
        while self.bytes + len > self.limit {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.map.remove(&old) {
                self.bytes -= d.len() as u64;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, id);
        self.map.insert(id, (data, self.tick));
        self.bytes += len;
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    fn chunk(len: usize) -> Arc<[u8]> {
        vec![0u8; len].into()
    }

    #[test]
    fn the_least_recently_used_chunk_goes_first() {
        let mut c = Lru::new(300);
        c.insert(id(1), chunk(100));
        c.insert(id(2), chunk(100));
        c.insert(id(3), chunk(100));
        assert!(c.get(&id(1)).is_some());
        c.insert(id(4), chunk(100));
        assert!(c.contains(&id(1)));
        assert!(!c.contains(&id(2)), "2 was the least recently used");
        assert!(c.contains(&id(3)) && c.contains(&id(4)));
        assert_eq!(c.bytes(), 300);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_limit() {
        let mut c = Lru::new(250);
        for n in 0..50 {
            c.insert(id(n), chunk(40 + n as usize));
            assert!(c.bytes() <= 250);
        }
        c.insert(id(200), chunk(251));
        assert!(!c.contains(&id(200)), "larger than the cache");
        let mut empty = Lru::new(0);
        empty.insert(id(1), chunk(1));
        assert_eq!(empty.bytes(), 0);
    }
}
