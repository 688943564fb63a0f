//! Random access to a snapshot: its manifest as a byte stream and single
//! chunks by id, for readers that serve any offset (NBD export, FUSE
//! mount) and keep their own verified cache.
//!
//! A chunk comes back exactly as long as asked or as an error; its BLAKE3
//! is the caller's to check (the server checked it too, but the bytes
//! crossed a wire since).

use std::io::Read;

use bunker_api::{ErrorCode, Snapshot};
use bunker_chunk::ChunkId;

use crate::restore::content_length;
use crate::{Client, Error, Result, ServerCode};

impl Client {
    /// The manifest of `snap` (`GET .../manifest`): 40-byte entries, end
    /// offset (u64 little-endian) then chunk id, cut at the length its
    /// chunk count makes it. Entries are not checked here.
    pub fn manifest(&self, snap: &Snapshot) -> Result<impl Read + Send + use<>> {
        self.open_manifest(snap)
    }

    /// The `len` raw bytes of chunk `id` of `snap` (`GET .../chunks/{id}`).
    /// A chunk the server reports damaged or missing, or that arrives with
    /// another length, is [`Error::Verification`]; the bytes are not
    /// hashed here.
    pub fn chunk(&self, snap: &Snapshot, id: &ChunkId, len: u64) -> Result<Vec<u8>> {
        let path = format!(
            "/v1/snapshots/{}/{}/chunks/{}",
            snap.name,
            snap.id,
            id.to_hex()
        );
        let what = format!("sending chunk {id}");
        let resp = self
            .check(self.get(&path).call())
            .map_err(|err| match err {
                Error::Api {
                    code: ServerCode::Known(ErrorCode::CorruptData),
                    message,
                    ..
                } => {
                    Error::Verification(format!("the server reports chunk {id} damaged: {message}"))
                }
                Error::NotFound { message } => Error::Verification(format!(
                    "chunk {id} is missing from the repository: {message}"
                )),
                Error::TimedOut { after, .. } => Error::TimedOut {
                    what: what.clone(),
                    after,
                },
                other => other,
            })?;
        if let Some(n) = content_length(&resp).filter(|&n| n != len) {
            return Err(Error::Verification(format!(
                "the server announces {n} bytes for chunk {id}, which has {len}"
            )));
        }
        // One byte more than the chunk tells a longer body from a whole one.
        let mut data = Vec::with_capacity(len as usize + 1);
        resp.into_body()
            .into_reader()
            .take(len + 1)
            .read_to_end(&mut data)
            .map_err(|e| self.read_error(&what, e))?;
        if data.len() as u64 > len {
            return Err(Error::Verification(format!(
                "the server sends more than the {len} bytes of chunk {id}"
            )));
        }
        if (data.len() as u64) < len {
            return Err(Error::Verification(format!(
                "chunk {id} arrived with only {} of its {len} bytes",
                data.len()
            )));
        }
        Ok(data)
    }
}
