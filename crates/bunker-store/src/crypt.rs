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

use crate::format::sealed::FileKind;
use crate::sealed_file::FileSeal;
use crate::PackId;

const IDS_CONTEXT: &str = "bunker 2026-12-07 chunk id subkey v1";

/// The key of an encrypted repository, as the store uses it.
pub struct RepoCrypt {
    key_id: KeyId,
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
    pub fn new(key: &Key) -> RepoCrypt {
        RepoCrypt {
            key_id: key.id(),
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

/// The associated data of a record: where it is and which chunk it holds.
pub(crate) fn record_ad(pack: PackId, offset: u64, kid: &ChunkId) -> [u8; 48] {
    let mut ad = [0u8; 48];
    ad[..8].copy_from_slice(&pack.0.to_le_bytes());
    ad[8..16].copy_from_slice(&offset.to_le_bytes());
    ad[16..].copy_from_slice(&kid.0);
    ad
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
