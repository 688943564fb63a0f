//! Another server's NBD export as a backup source: its size, its bytes
//! (runs that `base:allocation` reports as reading zeros are filled here,
//! never transferred), and, with a dirty bitmap, the extents written since
//! the bitmap was created (`qemu:dirty-bitmap:NAME`).
//!
//! Both maps are taken once, when the export is opened; the export must
//! not change while it is backed up (`qemu-nbd -r` of a stopped guest's
//! image, or of a backup job's snapshot).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use crate::client::{ClientError, Connection, Url, STATE_DIRTY};
use crate::proto::{BASE_ALLOCATION, STATE_ZERO};

/// Bytes per block of a sequential read (several pipelined requests).
const SEQUENTIAL_BLOCK: usize = 8 << 20;

/// The name of the block-status context of qcow2 bitmap `name`.
pub fn bitmap_context(name: &str) -> String {
    format!("qemu:dirty-bitmap:{name}")
}

/// A changed extent: where, how long, and whether it reads as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

/// An open export with its maps.
pub struct Remote {
    conn: Connection,
    /// Runs that read as zeros, sorted and disjoint: (offset, len).
    zeros: Vec<(u64, u64)>,
    /// Runs the dirty bitmap marks, sorted and disjoint.
    dirty: Option<Vec<(u64, u64)>>,
}

impl Remote {
    /// Opens `url`; with `bitmap`, its dirty extents are read too, and a
    /// bitmap the server does not export is [`ClientError::NoContext`].
    pub fn open(url: &Url, bitmap: Option<&str>) -> Result<Remote, ClientError> {
        let wanted = bitmap.map(bitmap_context);
        let mut contexts = vec![BASE_ALLOCATION];
        contexts.extend(wanted.as_deref());
        let mut conn = match Connection::connect(url, &contexts) {
            // A server without base:allocation is still readable, only
            // without skipping its holes.
            Err(ClientError::NoContext { context, .. }) if context == BASE_ALLOCATION => {
                Connection::connect(url, &contexts[1..])?
            }
            other => other?,
        };
        let mut zeros = Vec::new();
        let mut dirty = None;
        for (name, runs) in conn.block_status()? {
            if name == BASE_ALLOCATION {
                zeros = runs
                    .iter()
                    .filter(|s| s.flags & STATE_ZERO != 0)
                    .map(|s| (s.offset, s.len))
                    .collect();
            } else if Some(&name) == wanted.as_ref() {
                dirty = Some(
                    runs.iter()
                        .filter(|s| s.flags & STATE_DIRTY != 0)
                        .map(|s| (s.offset, s.len))
                        .collect(),
                );
            }
        }
        Ok(Remote {
            conn,
            zeros: merge(zeros),
            dirty: dirty.map(merge),
        })
    }

    pub fn size(&self) -> u64 {
        self.conn.size()
    }

    /// Bytes of data transferred by reads so far.
    pub fn bytes_received(&self) -> u64 {
        self.conn.bytes_received()
    }

    /// The dirty bitmap's extents, split where they read as zeros; `None`
    /// without a bitmap.
    pub fn changed(&self) -> Option<Vec<Changed>> {
        let dirty = self.dirty.as_ref()?;
        let mut out = Vec::new();
        for &(offset, len) in dirty {
            let end = offset + len;
            let mut at = offset;
            let first = self.zeros.partition_point(|z| z.0 + z.1 <= offset);
            for &(zo, zl) in self.zeros[first..].iter().take_while(|z| z.0 < end) {
                let (zs, ze) = (zo.max(at), (zo + zl).min(end));
                if zs > at {
                    out.push(Changed {
                        offset: at,
                        len: zs - at,
                        zero: false,
                    });
                }
                out.push(Changed {
                    offset: zs,
                    len: ze - zs,
                    zero: true,
                });
                at = ze;
            }
            if at < end {
                out.push(Changed {
                    offset: at,
                    len: end - at,
                    zero: false,
                });
            }
        }
        Some(out)
    }

    /// Fills `buf` from `offset`, transferring only what does not read
    /// as zeros.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        let first = self.zeros.partition_point(|z| z.0 + z.1 <= offset);
        for &(zo, zl) in self.zeros[first..].iter().take_while(|z| z.0 < end) {
            let (zs, ze) = (zo.max(at), (zo + zl).min(end));
            if zs > at {
                let range = (at - offset) as usize..(zs - offset) as usize;
                self.conn.read_at(at, &mut buf[range])?;
            }
            buf[(zs - offset) as usize..(ze - offset) as usize].fill(0);
            at = ze;
        }
        if at < end {
            self.conn.read_at(at, &mut buf[(at - offset) as usize..])?;
        }
        Ok(())
    }

    /// Reads the whole export in order on a thread of its own, a block
    /// ahead of the consumer.
    pub fn into_reader(self) -> Sequential {
        let (tx, rx) = sync_channel::<Result<Vec<u8>, ClientError>>(2);
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let size = self.size();
        let mut remote = self;
        std::thread::spawn(move || {
            let mut at = 0u64;
            while at < size {
                let n = (size - at).min(SEQUENTIAL_BLOCK as u64) as usize;
                let mut block = vec![0u8; n];
                let r = remote.read_at(at, &mut block).map(|()| block);
                counter.store(remote.bytes_received(), Ordering::Relaxed);
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
            let _ = remote.conn.disconnect();
        });
        Sequential {
            rx,
            block: Vec::new(),
            at: 0,
            size,
            delivered: 0,
            received,
        }
    }
}

/// Merges touching runs (they come in order).
fn merge(runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (o, l) in runs {
        match out.last_mut() {
            Some(last) if last.0 + last.1 == o => last.1 += l,
            _ => out.push((o, l)),
        }
    }
    out
}

/// The export's bytes in order, as `io::Read`.
pub struct Sequential {
    rx: Receiver<Result<Vec<u8>, ClientError>>,
    block: Vec<u8>,
    at: usize,
    size: u64,
    delivered: u64,
    received: Arc<AtomicU64>,
}

impl Sequential {
    /// Data bytes transferred so far.
    pub fn bytes_received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }
}

impl Read for Sequential {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.block.len() {
            match self.rx.recv() {
                Ok(Ok(block)) => {
                    self.block = block;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                // The reader thread is done: the end of the export, or
                // it died, which must not pass for the end.
                Err(_) if self.delivered == self.size => return Ok(0),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the NBD reader stopped after {} of {} bytes",
                            self.delivered, self.size
                        ),
                    ))
                }
            }
        }
        let n = buf.len().min(self.block.len() - self.at);
        buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
        self.at += n;
        self.delivered += n as u64;
        Ok(n)
    }
}
