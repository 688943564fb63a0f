//! An NBD server for bunker snapshots, written from the NBD project's
//! protocol specification (`doc/proto.md`).
//!
//! The protocol reads and writes through a narrow seam: a [`Source`]
//! (read a range, say which ranges are zeros, prefetch) that a
//! `bunker_image::Image` implements (`image.rs`) and so does a plain file
//! ([`FileSource`], for protocol tests), wrapped in an [`Export`] with an
//! optional writable [`Overlay`]. Which names exist is the caller's
//! ([`Exports`]); no HTTP in here.
//!
//! - `proto.rs`: the wire format (numbers and framing only).
//! - `handshake.rs`: fixed newstyle option haggling: `GO`/`INFO` (export
//!   and block-size information), `EXPORT_NAME`, `LIST`, `ABORT`,
//!   `STRUCTURED_REPLY`, `LIST_`/`SET_META_CONTEXT` for `base:allocation`.
//!   A client that does not speak fixed newstyle is refused.
//! - `transmission.rs`: `READ` (a damaged chunk is an `EIO` error chunk for
//!   that request only), `BLOCK_STATUS` (zero chunks are holes that read
//!   as zeros), `CACHE`, `FLUSH`, `DISC`, and `WRITE`/`TRIM`/`WRITE_ZEROES`
//!   with an overlay (`EPERM` without). A bad request gets an error reply
//!   and the connection stays up.
//! - `overlay.rs`: the copy-on-write file and its persisted extent map.
//!
//! - `client.rs`, `remote.rs`: the other direction, an NBD client that
//!   reads another server's export (with its allocation and dirty-bitmap
//!   maps) as a backup source.
//!
//! One thread per connection ([`serve`]); a client that goes away ends its
//! own connection only.

pub mod client;
mod file;
mod handshake;
mod image;
mod overlay;
mod proto;
pub mod remote;
mod transmission;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

pub use file::FileSource;
pub use overlay::{Overlay, OverlayError, OverlayIdentity};

/// Largest read or write payload accepted (the protocol's portable
/// maximum, 32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// A run of an export: data, or zeros that are not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// Why a read of a source failed, by what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The bytes at `offset` cannot be read correctly (damaged data):
    /// `EIO` for this request, the export serves on.
    #[error("{message}")]
    Damaged { offset: u64, message: String },
    /// Anything else (the server unreachable, a local I/O error): `EIO`.
    #[error("{0}")]
    Failed(String),
}

/// What an export reads from: a snapshot image, or a file in tests.
pub trait Source: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range is within `size()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError>;
    /// The data and zero runs from `offset`, covering at least its first
    /// byte and at most `len` bytes; the range is within `size()`.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError>;
    /// A hint that `offset..offset+len` will be read soon.
    fn prefetch(&self, _offset: u64, _len: u64) {}
    /// The request size that reads efficiently: a power of two from 512
    /// to 32 MiB.
    fn preferred_block(&self) -> u32 {
        4096
    }
}

/// One export: a source, writable through an overlay if it has one.
pub struct Export {
    /// The canonical name (`NAME@ID`).
    pub name: String,
    /// Shown to clients that ask (`nbdinfo`).
    pub description: String,
    pub source: Arc<dyn Source>,
    pub overlay: Option<Arc<Overlay>>,
}

impl Export {
    pub fn size(&self) -> u64 {
        self.source.size()
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        match &self.overlay {
            Some(o) => o.read_at(&*self.source, offset, buf),
            None => self.source.read_at(offset, buf),
        }
    }

    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        match &self.overlay {
            Some(o) => o.extents(&*self.source, offset, len),
            None => self.source.extents(offset, len),
        }
    }
}

/// Why an export name cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No such snapshot: `NBD_REP_ERR_UNKNOWN`.
    #[error("{0}")]
    Unknown(String),
    /// The token may not read it: `NBD_REP_ERR_POLICY`.
    #[error("{0}")]
    Denied(String),
    /// Anything else (server unreachable, bad manifest): the client is
    /// told `NBD_REP_ERR_UNKNOWN` with this message.
    #[error("{0}")]
    Failed(String),
}

/// The names a server answers to, and what they are.
pub trait Exports: Send + Sync {
    /// The export called `name` (`""`: the default export).
    fn open(&self, name: &str) -> Result<Arc<Export>, ExportError>;
    /// Names listed to `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
}

/// Serves `listener` until it fails: one thread per connection.
pub fn serve(listener: TcpListener, exports: Arc<dyn Exports>) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            // A connection that went away before it was accepted, or a
            // transient shortage: the next one may work.
            Err(e) if e.kind() != io::ErrorKind::InvalidInput => {
                tracing::warn!("accepting an NBD connection: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        let exports = exports.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            match handle(stream, &*exports) {
                Ok(()) => tracing::debug!("NBD client {peer} done"),
                Err(e) => tracing::info!("NBD client {peer}: {e}"),
            }
        });
    }
}

/// One connection: the handshake, then requests until the client leaves.
pub fn handle(stream: std::net::TcpStream, exports: &dyn Exports) -> io::Result<()> {
    let reader = io::BufReader::with_capacity(1 << 16, stream.try_clone()?);
    let writer = io::BufWriter::with_capacity(1 << 20, stream);
    let mut conn = handshake::Conn { reader, writer };
    match handshake::negotiate(&mut conn, exports)? {
        Some(session) => transmission::run(&mut conn, session),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
