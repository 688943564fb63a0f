//! Storing chunks and reading them back.
//!
//! A chunk is stored once: the index reservation decides which stream
//! stores it, the others wait for it or reference it. Every pack a stored
//! or found chunk lives in is pinned for the caller while the GC gate is
//! held, so GC cannot condemn it before the snapshot that needs it commits
//! (docs/GC.md). Every read checks the record, decompresses and compares
//! the BLAKE3 with the chunk id: damage is an error naming pack, offset
//! and chunk, never wrong bytes.
//!
//! The public functions take true chunk ids; the crate-internal ones
//! (`locate`, `read_at`, `store_chunks`...) take at-rest ids, which the
//! callers holding true ids convert with [`Repository::at_rest`]
//! (`crate::crypt`). In a clear repository the two are the same.

use bunker_chunk::ChunkId;

use super::Repository;
use crate::compress::{
    compress, compress_sealable, decompress, decompress_frame, keep_frame, Stored,
};
use crate::cpu::{self, Stage};
use crate::crypt::RecordBinding;
use crate::index::Reservation;
use crate::pack::{NewRecord, SealedPack};
use crate::pins::Pins;
use crate::{Error, Location, Result};

/// Chunks a backup stored that the repository did not hold before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewData {
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub raw_bytes: u64,
    /// Their bytes in packs (after compression, record headers excluded).
    pub stored_bytes: u64,
}

impl NewData {
    pub fn add(&mut self, raw_bytes: u64, stored_bytes: u64) {
        self.chunks += 1;
        self.raw_bytes += raw_bytes;
        self.stored_bytes += stored_bytes;
    }
}

impl Repository {
    /// Which of `ids` the repository does not have (pending chunks count as
    /// present: another stream is storing them). The packs of those present
    /// are pinned in `pins`, so GC keeps them for the session's commit.
    pub fn missing(&self, ids: &[ChunkId], pins: &Pins) -> Vec<bool> {
        let _gate = self.gate_read();
        let mut packs = Vec::new();
        let out = ids
            .iter()
            .map(|id| {
                if id.is_zero() {
                    return false;
                }
                let kid = self.at_rest(id);
                match self.inner.index.lookup(&kid) {
                    Some(loc) => {
                        packs.push(loc.pack);
                        false
                    }
                    None => !self.is_pending(&kid),
                }
            })
            .collect();
        pins.add(packs);
        out
    }

    /// Looks `id` up and pins its pack: for a chunk a writer was told was
    /// pending, once its writer has published it.
    pub(crate) fn locate_pinned(&self, id: &ChunkId, pins: &Pins) -> Option<Location> {
        self.inner.index.wait(id)?;
        let _gate = self.gate_read();
        let loc = self.inner.index.lookup(id)?;
        pins.add([loc.pack]);
        Some(loc)
    }

    pub(crate) fn is_pending(&self, id: &ChunkId) -> bool {
        matches!(
            self.inner.index.reserve_peek(id),
            Some(Reservation::Pending)
        )
    }

    /// Stores one chunk given its raw bytes, after checking that they hash
    /// to `id`. Returns the bytes added to packs (0: it was stored already).
    pub fn store_chunk(&self, id: &ChunkId, raw: &[u8], pins: &Pins) -> Result<u64> {
        self.check_chunk(id, raw)?;
        let (new, pending) = self.store_chunks(&[(self.at_rest(id), raw)], pins)?;
        self.wait_for(pending, pins)?;
        Ok(new.stored_bytes)
    }

    /// Stores one chunk that arrived as a zstd `frame` (a client's
    /// upload): decoded once, with the decoder reads use, checked against
    /// `id`, and the frame itself kept as the record when it saves space,
    /// so the chunk is never compressed a second time. Returns the chunk's
    /// raw length and the bytes added to packs (0: it was stored already).
    pub fn store_chunk_frame(&self, id: &ChunkId, frame: &[u8], pins: &Pins) -> Result<(u64, u64)> {
        let max = self.inner.config.chunker.max_len as usize;
        let raw = decompress_frame(frame, max)
            .map_err(|reason| Error::Invalid(format!("chunk {id}: {reason}")))?;
        self.check_chunk(id, &raw)?;
        let chunk = [(self.at_rest(id), &raw[..])];
        let (new, pending, _) = self.store_encoded(&chunk, |raw| keep_frame(raw, frame), pins)?;
        self.wait_for(pending, pins)?;
        Ok((raw.len() as u64, new.stored_bytes))
    }

    /// Refuses a chunk whose length is outside 1..=max_len or whose bytes
    /// do not hash to `id`.
    fn check_chunk(&self, id: &ChunkId, raw: &[u8]) -> Result<()> {
        if raw.is_empty() || raw.len() > self.inner.config.chunker.max_len as usize {
            return Err(Error::Invalid(format!(
                "chunk of {} bytes is outside 1..=max_len",
                raw.len()
            )));
        }
        let actual = ChunkId::of(raw);
        if actual != *id {
            return Err(Error::ChunkHashMismatch {
                claimed: *id,
                actual,
            });
        }
        Ok(())
    }

    /// Waits for the chunks another stream was storing and pins their packs.
    fn wait_for(&self, pending: Vec<ChunkId>, pins: &Pins) -> Result<()> {
        for id in pending {
            self.locate_pinned(&id, pins)
                .ok_or_else(|| concurrent_writer_failed(&id))?;
        }
        Ok(())
    }

    /// Stores chunks (by at-rest id) that are not stored yet; returns what
    /// was stored and the ids another stream is storing right now. The
    /// packs of all the others are pinned in `pins`: the GC gate is held
    /// from the lookups to the pins, across the appends.
    pub(crate) fn store_chunks(
        &self,
        chunks: &[(ChunkId, &[u8])],
        pins: &Pins,
    ) -> Result<(NewData, Vec<ChunkId>)> {
        self.store_chunks_located(chunks, pins)
            .map(|(new, pending, _)| (new, pending))
    }

    /// [`Repository::store_chunks`], also answering where each chunk is
    /// (`None` for those another stream is storing).
    pub(crate) fn store_chunks_located(
        &self,
        chunks: &[(ChunkId, &[u8])],
        pins: &Pins,
    ) -> Result<(NewData, Vec<ChunkId>, Vec<Option<Location>>)> {
        let level = self.inner.config.zstd_level;
        match self.crypt() {
            // Compressed into buffers the pack writer seals in place.
            Some(_) => self.store_encoded(chunks, |raw| compress_sealable(raw, level), pins),
            None => self.store_encoded(chunks, |raw| compress(raw, level), pins),
        }
    }

    /// [`Repository::store_chunks`] with the records' bytes chosen by
    /// `encode` from each chunk's raw bytes (run in parallel, only for the
    /// chunks this call stores).
    fn store_encoded<'a>(
        &self,
        chunks: &[(ChunkId, &'a [u8])],
        encode: impl Fn(&'a [u8]) -> Stored<'a> + Sync,
        pins: &Pins,
    ) -> Result<(NewData, Vec<ChunkId>, Vec<Option<Location>>)> {
        use rayon::prelude::*;
        let inner = &*self.inner;
        let gate = self.gate_read();
        let mut mine = Vec::new();
        let mut pending = Vec::new();
        let mut known = Vec::new();
        let mut found = vec![None; chunks.len()];
        let lookup = cpu::Span::start(Stage::Lookup);
        for (i, (id, _)) in chunks.iter().enumerate() {
            match inner.index.reserve(id) {
                Reservation::Mine => mine.push(i),
                Reservation::Pending => pending.push(*id),
                Reservation::Known(loc) => {
                    known.push(loc.pack);
                    found[i] = Some(loc);
                }
            }
        }
        pins.add(known);
        drop(lookup);
        if mine.is_empty() {
            return Ok((NewData::default(), pending, found));
        }
        // Compressed records are sealed right after compression, on the
        // same thread, when the associated data does not need their place.
        let early = self
            .crypt()
            .filter(|c| c.binding() == RecordBinding::Identity);
        let mut stored: Vec<_> = mine
            .par_iter()
            .map(|&i| {
                let (kid, raw) = chunks[i];
                let s = cpu::timed(Stage::Compress, || encode(raw));
                match (early, s) {
                    (Some(c), s @ Stored::Sealable(_)) => {
                        cpu::timed(Stage::Encrypt, || c.seal_stored(&kid, raw.len() as u32, s))
                    }
                    (_, s) => s,
                }
            })
            .collect();
        let _append = cpu::Span::start(Stage::Append);
        let mut records: Vec<NewRecord<'_>> = mine
            .iter()
            .zip(&mut stored)
            .map(|(&i, s)| NewRecord {
                id: chunks[i].0,
                raw_len: chunks[i].1.len() as u32,
                codec: s.codec(),
                stored: s.payload(),
            })
            .collect();
        match inner.packs.append(&mut records) {
            Ok((locations, sealed)) => {
                pins.add(locations.iter().map(|l| l.pack));
                let mut new = NewData::default();
                for ((r, loc), &i) in records.iter().zip(&locations).zip(&mine) {
                    new.add(u64::from(loc.raw_len), u64::from(loc.stored_len));
                    inner.index.publish(&r.id, *loc);
                    found[i] = Some(*loc);
                }
                // Pinned: an index flush (fsyncs) need not hold GC back.
                drop(gate);
                self.index_sealed(sealed);
                Ok((new, pending, found))
            }
            Err(e) => {
                for r in &records {
                    inner.index.abandon(&r.id);
                }
                Err(e)
            }
        }
    }

    /// Hands sealed packs to the index, flushing it when its in-memory
    /// part is full: during one long stream too, so memory does not grow
    /// with the size of a backup. A failed flush loses nothing (the index
    /// is a cache; the entries stay queued) and is retried at the next one.
    pub(crate) fn index_sealed(&self, sealed: impl IntoIterator<Item = SealedPack>) {
        let index = &self.inner.index;
        for s in sealed {
            index.add_sealed(s.pack, s.index_entries());
        }
        if index.needs_flush() {
            if let Err(e) = index.flush() {
                tracing::warn!("index flush failed (will retry): {e}");
            }
        }
    }

    /// Reads one chunk, verified: record checksum, decompression, length
    /// and BLAKE3 against `id`.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let (kid, loc) = self.locate_true(id)?;
        self.read_at(&kid, &loc).map_err(|e| naming_true(e, id))
    }

    /// The at-rest id of chunk `id` and where the index has it.
    fn locate_true(&self, id: &ChunkId) -> Result<(ChunkId, Location)> {
        let kid = self.at_rest(id);
        let loc = self
            .inner
            .index
            .lookup(&kid)
            .ok_or_else(|| Error::NotFound {
                what: format!("chunk {id}"),
            })?;
        Ok((kid, loc))
    }

    /// Reads one chunk as its record stores it, for a copy to another
    /// repository: `(bytes, zstd)`, the zstd frame or the raw bytes. It is
    /// verified first like every read (decoded, length and BLAKE3), and
    /// read again where the index says it is now if GC moved it meanwhile.
    pub fn read_chunk_stored(&self, id: &ChunkId) -> Result<(Vec<u8>, bool)> {
        let (kid, loc) = self.locate_true(id)?;
        match self.read_stored_at(&kid, &loc) {
            Err(e) => match self.locate(&kid) {
                Some(now) if now != loc => self.read_stored_at(&kid, &now),
                _ => Err(e),
            },
            ok => ok,
        }
        .map_err(|e| naming_true(e, id))
    }

    fn read_stored_at(&self, id: &ChunkId, loc: &Location) -> Result<(Vec<u8>, bool)> {
        let (codec, stored) = self.inner.packs.read_record(id, loc)?;
        let zstd = codec == crate::format::pack::Codec::Zstd;
        if zstd {
            self.decode_verified(id, loc, codec, stored.clone())?;
            Ok((stored, true))
        } else {
            Ok((self.decode_verified(id, loc, codec, stored)?, false))
        }
    }

    pub(crate) fn read_at(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let (codec, stored) = self.inner.packs.read_record(id, loc)?;
        self.decode_verified(id, loc, codec, stored)
    }

    /// Decodes a record's stored bytes and checks length and BLAKE3 (the
    /// at-rest id of the bytes' BLAKE3 must be `id`).
    pub(crate) fn decode_verified(
        &self,
        id: &ChunkId,
        loc: &Location,
        codec: crate::format::pack::Codec,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::Corrupt {
            file: self.inner.packs.backend().describe(loc.pack),
            pack: Some(loc.pack),
            offset: Some(loc.offset),
            chunk: Some(*id),
            reason,
        };
        let raw = decompress(codec, stored, loc.raw_len as usize).map_err(corrupt)?;
        if self.at_rest(&ChunkId::of(&raw)) != *id {
            return Err(corrupt("chunk bytes do not match their BLAKE3 id".into()));
        }
        Ok(raw)
    }

    /// Reads a chunk at `loc`, or where the index says it is now if the
    /// read fails and the chunk has moved meanwhile (GC rewrote its pack).
    pub(crate) fn read_moved(&self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        match self.read_at(id, loc) {
            Err(e) => match self.locate(id) {
                Some(now) if now != *loc => self.read_at(id, &now),
                _ => Err(e),
            },
            ok => ok,
        }
    }

    pub(crate) fn locate(&self, id: &ChunkId) -> Option<Location> {
        self.inner.index.lookup(id)
    }
}

/// An error about at-rest chunk `kid` as the caller, who asked for true
/// chunk `id`, should see it: naming `id`.
pub(crate) fn naming_true(e: Error, id: &ChunkId) -> Error {
    match e {
        Error::Corrupt {
            file,
            pack,
            offset,
            chunk: Some(_),
            reason,
        } => Error::Corrupt {
            file,
            pack,
            offset,
            chunk: Some(*id),
            reason,
        },
        other => other,
    }
}

pub(crate) fn concurrent_writer_failed(id: &ChunkId) -> Error {
    Error::Corrupt {
        file: "index".into(),
        pack: None,
        offset: None,
        chunk: Some(*id),
        reason: "a concurrent writer failed to store this chunk".into(),
    }
}
