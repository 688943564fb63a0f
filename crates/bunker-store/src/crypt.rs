//! The repository key at work: at-rest chunk ids and the sealers of an
//! encrypted repository.
//!
//! A repository is clear (every file exactly as before encryption existed)
//! or encrypted, chosen at creation; its config records the key id. In an
//! encrypted repository every chunk id kept outside manifests (record
//! headers, trailers, the index, dedup windows) is the keyed id
//! [`RepoCrypt::at_rest`], so equal chunks are recognisable only to key
//! holders, and record payloads and trailers are sealed. The repository is
//! the seam: above it (manifests, API, client, sync) ids are true chunk
//! ids; below it (packs, index, windows) they are at-rest ids. In a clear
//! repository the at-rest id is the id itself. Layout: docs/FORMAT.md,
//! "Encryption".

use bunker_chunk::ChunkId;
use bunker_crypt::{Key, KeyId, Purpose, Sealer};
use zeroize::Zeroize;

use crate::compress::Stored;
use crate::format::pack::Codec;
use crate::format::sealed::FileKind;
use crate::sealed_file::FileSeal;
use crate::PackId;

/// What a record's associated data binds it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordBinding {
    /// Its at-rest id, raw length and codec: known before the record has a
    /// place, so it is sealed on the thread that compressed it, while its
    /// bytes are in that core's cache (config version 3).
    Identity,
    /// Its pack, offset and at-rest id: sealed under the pack writer's
    /// lock, where the offset is decided (config version 2).
    Place,
}

/// A record's associated data (37 or 48 bytes).
pub(crate) struct RecordAd {
    bytes: [u8; 48],
    len: usize,
}

impl AsRef<[u8]> for RecordAd {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const IDS_CONTEXT: &str = "bunker 2026-12-07 chunk id subkey v1";

/// The key of an encrypted repository, as the store uses it.
pub struct RepoCrypt {
    key_id: KeyId,
    binding: RecordBinding,
    ids: [u8; 32],
    records: Sealer,
    trailers: Sealer,
    manifests: FileSeal,
    blocks: FileSeal,
}

impl std::fmt::Debug for RepoCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoCrypt(key {})", self.key_id)
    }
}

impl Drop for RepoCrypt {
    fn drop(&mut self) {
        // The sealers wipe their own subkeys.
        self.ids.zeroize();
    }
}

impl RepoCrypt {
    /// The crypt of a new repository: records bound to their identity.
    pub fn new(key: &Key) -> RepoCrypt {
        RepoCrypt::with_binding(key, RecordBinding::Identity)
    }

    pub fn with_binding(key: &Key, binding: RecordBinding) -> RepoCrypt {
        RepoCrypt {
            key_id: key.id(),
            binding,
            ids: key.derive(IDS_CONTEXT),
            records: Sealer::new(key, Purpose::Record),
            trailers: Sealer::new(key, Purpose::Trailer),
            manifests: FileSeal::new(key, FileKind::Manifest),
            blocks: FileSeal::new(key, FileKind::BlockHashes),
        }
    }

    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The id a chunk has at rest: `BLAKE3-keyed(ids subkey, id)`.
    /// Deterministic, so dedup works; the zero id stays the zero id (it is
    /// never stored, only referenced).
    pub fn at_rest(&self, id: &ChunkId) -> ChunkId {
        if id.is_zero() {
            return *id;
        }
        ChunkId(*blake3::keyed_hash(&self.ids, &id.0).as_bytes())
    }

    pub(crate) fn records(&self) -> &Sealer {
        &self.records
    }

    pub fn binding(&self) -> RecordBinding {
        self.binding
    }

    /// Seals a compressed record in the buffer zstd wrote it to (room for
    /// nonce and tag left around it), for a repository whose records are
    /// bound to their identity: on the thread that compressed it, while its
    /// bytes are in that core's cache, and outside the pack writer's lock.
    /// Other records pass through: raw ones are sealed by the pack writer
    /// through its one reused buffer, which costs less than a fresh buffer
    /// per record (page faults).
    pub(crate) fn seal_stored<'a>(
        &self,
        kid: &ChunkId,
        raw_len: u32,
        stored: Stored<'a>,
    ) -> Stored<'a> {
        debug_assert_eq!(self.binding, RecordBinding::Identity);
        match stored {
            Stored::Sealable(mut sealed) => {
                let ad = self.record_ad(kid, raw_len, Codec::Zstd, PackId(0), 0);
                self.records.seal_in_place(ad.as_ref(), &mut sealed);
                Stored::Sealed(sealed)
            }
            other => other,
        }
    }

    /// The associated data of a record: with [`RecordBinding::Identity`]
    /// `kid ‖ raw_len (u32 LE) ‖ codec (u8)`, with [`RecordBinding::Place`]
    /// `pack (u64 LE) ‖ offset (u64 LE) ‖ kid`. `pack` and `offset` are
    /// ignored for the first.
    pub(crate) fn record_ad(
        &self,
        kid: &ChunkId,
        raw_len: u32,
        codec: Codec,
        pack: PackId,
        offset: u64,
    ) -> RecordAd {
        let mut bytes = [0u8; 48];
        let len = match self.binding {
            RecordBinding::Identity => {
                bytes[..32].copy_from_slice(&kid.0);
                bytes[32..36].copy_from_slice(&raw_len.to_le_bytes());
                bytes[36] = codec as u8;
                37
            }
            RecordBinding::Place => {
                bytes[..8].copy_from_slice(&pack.0.to_le_bytes());
                bytes[8..16].copy_from_slice(&offset.to_le_bytes());
                bytes[16..].copy_from_slice(&kid.0);
                48
            }
        };
        RecordAd { bytes, len }
    }

    pub(crate) fn trailers(&self) -> &Sealer {
        &self.trailers
    }

    /// Seals snapshot manifests (`crate::sealed_file`).
    pub(crate) fn manifests(&self) -> &FileSeal {
        &self.manifests
    }

    /// Seals block hashes files (`crate::sealed_file`).
    pub(crate) fn blocks(&self) -> &FileSeal {
        &self.blocks
    }
}

/// The associated data of a trailer: its pack and how many records it lists.
pub(crate) fn trailer_ad(pack: PackId, count: u64) -> [u8; 16] {
    let mut ad = [0u8; 16];
    ad[..8].copy_from_slice(&pack.0.to_le_bytes());
    ad[8..].copy_from_slice(&count.to_le_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_rest_ids_are_keyed_and_deterministic() {
        let a = RepoCrypt::new(&Key::from_bytes([1; 32]));
        let b = RepoCrypt::new(&Key::from_bytes([2; 32]));
        let id = ChunkId::of(b"chunk");
        assert_eq!(a.at_rest(&id), a.at_rest(&id));
        assert_ne!(a.at_rest(&id), id);
        assert_ne!(a.at_rest(&id), b.at_rest(&id));
        assert_eq!(a.at_rest(&ChunkId::ZERO), ChunkId::ZERO);
    }

    #[test]
    fn debug_shows_only_the_key_id() {
        let key = Key::from_bytes([0xab; 32]);
        let shown = format!("{:?}", RepoCrypt::new(&key));
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.id().to_string()), "{shown}");
    }
}
