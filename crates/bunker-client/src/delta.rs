//! Delta restore: a snapshot written over an existing file or block device,
//! fetching only the chunks whose bytes differ.
//!
//! The manifest is streamed (never held whole) and cut into batches of
//! about `BATCH_BYTES` of the image. A reader thread reads the target's
//! bytes of each batch once, in order, up to `QUEUED_BATCHES` ahead; the
//! main thread hashes every chunk of a batch on all cores (rayon) and
//! compares it with the manifest's id (a zero run: are the bytes zero,
//! checked in pieces of `ZERO_PIECE`), fetches the differing chunks in
//! parallel (`FETCHERS` threads, each chunk verified against its id as in a
//! restore), and writes them in order: only the 4 KiB blocks (`BLOCK`) of
//! a chunk whose bytes differ, so a chunk changed in one block costs one
//! block of writes. The blocks of a zero piece that are not zero become holes
//! in a file (zeros where the filesystem cannot punch holes) and zeros on a
//! device. The batch buffer then holds the final bytes of that range (the
//! target's where they matched, the fetched ones elsewhere) and goes into
//! the whole-image BLAKE3, which must equal the snapshot's at the end.
//!
//! What a failed delta restore leaves: every range before the failing chunk
//! holds the snapshot's bytes, the failing chunk and everything after it
//! hold the target's old bytes (nothing is written out of order), and a file
//! shorter than the image has already been extended with zeros. A file
//! longer than the image is cut to the image's length only after the
//! whole-image hash matched. Nothing is renamed: the target is written in
//! place (that is the point), so a crash leaves the same mix; running the
//! delta restore again finishes the job.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bunker_api::Snapshot;
use bunker_chunk::ChunkId;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use rayon::prelude::*;

use crate::output::{refused, write_error};
use crate::restore::{check_image, Entry, Limits, RestoreProgress};
use crate::{Client, Error, Result};

/// Bytes of the image read, hashed and written as one batch. With
/// `QUEUED_BATCHES` read ahead, about 4 batch buffers exist at once.
const BATCH_BYTES: u64 = 16 << 20;
/// A zero run is checked in pieces of this many bytes: a 1 TiB zero run
/// needs no 1 TiB buffer.
const ZERO_PIECE: u64 = 1 << 20;
/// Within a differing chunk or zero piece, only the blocks of this size
/// (aligned to the image) whose bytes differ are written: a filesystem's
/// block, and the unit a storage array tracks changes in.
const BLOCK: u64 = 4096;
/// Batches the reader reads ahead of the writer.
const QUEUED_BATCHES: usize = 2;
/// Differing chunks fetched at once.
const FETCHERS: usize = 4;

/// What a delta restore did.
#[derive(Clone, Debug)]
pub struct DeltaReport {
    pub snapshot: Snapshot,
    /// Bytes of the image (the target's length afterwards).
    pub bytes: u64,
    /// Bytes of the target read (once each).
    pub bytes_read: u64,
    /// Bytes of chunks fetched from the server.
    pub bytes_fetched: u64,
    /// Bytes written to the target: the 4 KiB blocks of fetched chunks
    /// and zero runs whose bytes differed (zeros as holes punched in a
    /// file).
    pub bytes_written: u64,
    /// Data chunks (not zero runs) whose bytes were already right.
    pub chunks_same: u64,
    /// Data chunks fetched and written.
    pub chunks_differing: u64,
    pub seconds: f64,
}

/// A range of the image to compare: one data chunk, or a piece of a zero run.
struct Piece {
    start: u64,
    end: u64,
    /// `None`: a piece of a zero run.
    chunk: Option<Entry>,
}

/// Consecutive pieces and the target's bytes under them.
struct Batch {
    start: u64,
    data: Vec<u8>,
    pieces: Vec<Piece>,
}

/// The existing file or device written over.
struct DeltaTarget {
    file: File,
    path: PathBuf,
    /// A regular file (holes, resizing) rather than a block device.
    regular: bool,
    /// Its length before the restore.
    len: u64,
}

/// Running totals of the transfer.
#[derive(Default)]
struct Totals {
    bytes: u64,
    bytes_read: u64,
    bytes_fetched: u64,
    bytes_written: u64,
    chunks_same: u64,
    chunks_differing: u64,
}

impl Client {
    /// Writes `name@id` (latest when `id` is None) over the existing file or
    /// block device at `path`, fetching only the chunks whose bytes differ
    /// (module doc). A device longer than the image needs `force`; one
    /// shorter is refused; a file is resized to the image.
    pub fn restore_delta(
        &self,
        name: &str,
        id: Option<u64>,
        path: &Path,
        force: bool,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<DeltaReport> {
        let started = Instant::now();
        let snap = self.fetch_snapshot(name, id)?;
        let limits = self.limits()?;
        let target = open_target(path, snap.size_bytes, force)?;
        if target.regular && target.len < snap.size_bytes {
            // Extended with zeros (a hole): zero chunks there already match.
            target
                .file
                .set_len(snap.size_bytes)
                .map_err(|e| write_error(&target.path, e))?;
        }
        let mut totals = Totals::default();
        let hash = self.delta_transfer(&snap, limits, &target, &mut totals, progress)?;
        check_image(&snap, totals.bytes, &hash)?;
        if target.regular && target.len > snap.size_bytes {
            target
                .file
                .set_len(snap.size_bytes)
                .map_err(|e| write_error(&target.path, e))?;
        }
        target
            .file
            .sync_all()
            .map_err(|e| write_error(&target.path, e))?;
        Ok(DeltaReport {
            snapshot: snap,
            bytes: totals.bytes,
            bytes_read: totals.bytes_read,
            bytes_fetched: totals.bytes_fetched,
            bytes_written: totals.bytes_written,
            chunks_same: totals.chunks_same,
            chunks_differing: totals.chunks_differing,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The reader thread (`read_batches`) and, on this thread, for each
    /// batch in order: compare, fetch, write, hash. Returns the BLAKE3 of
    /// the final image.
    fn delta_transfer(
        &self,
        snap: &Snapshot,
        limits: Limits,
        target: &DeltaTarget,
        totals: &mut Totals,
        progress: &mut dyn FnMut(&RestoreProgress),
    ) -> Result<blake3::Hash> {
        let (batch_tx, batch_rx) = bounded::<Result<Batch>>(QUEUED_BATCHES);
        let (spare_tx, spare_rx) = unbounded::<Vec<u8>>();
        std::thread::scope(|scope| {
            scope.spawn(move || self.read_batches(snap, limits, target, batch_tx, spare_rx));
            let mut hasher = blake3::Hasher::new();
            // Dropping the receiver on an error stops the reader.
            for batch in batch_rx {
                let mut batch = batch?;
                self.apply(snap, target, &mut batch, totals)?;
                hasher.update_rayon(&batch.data);
                totals.bytes = batch.start + batch.data.len() as u64;
                progress(&RestoreProgress {
                    bytes: totals.bytes,
                    total: snap.size_bytes,
                });
                let _ = spare_tx.send(batch.data);
            }
            Ok(hasher.finalize())
        })
    }

    /// Streams the manifest into batches, reads the target's bytes of each
    /// and sends them on, in order; an error ends the stream.
    fn read_batches(
        &self,
        snap: &Snapshot,
        limits: Limits,
        target: &DeltaTarget,
        batches: Sender<Result<Batch>>,
        spare: Receiver<Vec<u8>>,
    ) {
        let _ = rustix::fs::fadvise(&target.file, 0, None, rustix::fs::Advice::Sequential);
        let mut pieces: Vec<Piece> = Vec::new();
        let mut failed: Option<Error> = None;
        // Reads the pieces gathered so far and sends them; false when the
        // writer has stopped or the read failed.
        let flush = |pieces: &mut Vec<Piece>, failed: &mut Option<Error>| -> bool {
            if pieces.is_empty() {
                return true;
            }
            let start = pieces[0].start;
            let end = pieces[pieces.len() - 1].end;
            let mut data = spare.try_recv().unwrap_or_default();
            data.resize((end - start) as usize, 0);
            if let Err(e) = target.file.read_exact_at(&mut data, start) {
                *failed = Some(Error::io(
                    format!("reading bytes {start}..{end} of {}", target.path.display()),
                    e,
                ));
                return false;
            }
            let batch = Batch {
                start,
                data,
                pieces: std::mem::take(pieces),
            };
            batches.send(Ok(batch)).is_ok()
        };
        let planned = self.plan(snap, limits, &mut |run| {
            for e in run {
                if e.id.is_zero() {
                    let mut at = e.start;
                    while at < e.end {
                        let end = e.end.min(at + ZERO_PIECE);
                        pieces.push(Piece {
                            start: at,
                            end,
                            chunk: None,
                        });
                        at = end;
                        if end - pieces[0].start >= BATCH_BYTES && !flush(&mut pieces, &mut failed)
                        {
                            return false;
                        }
                    }
                } else {
                    let start = e.start;
                    pieces.push(Piece {
                        start,
                        end: e.end,
                        chunk: Some(e),
                    });
                    let span = pieces[pieces.len() - 1].end - pieces[0].start;
                    if span >= BATCH_BYTES && !flush(&mut pieces, &mut failed) {
                        return false;
                    }
                }
            }
            true
        });
        let result = planned.and_then(|()| match failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        });
        match result {
            Ok(()) => {
                if flush(&mut pieces, &mut failed) {
                    return;
                }
                if let Some(e) = failed {
                    let _ = batches.send(Err(e));
                }
            }
            Err(e) => {
                let _ = batches.send(Err(e));
            }
        }
    }

    /// Compares each piece of `batch` with the target's bytes (on all
    /// cores), fetches the differing chunks (`FETCHERS` at once) and writes
    /// them in order, stopping at the first error. Afterwards the batch's
    /// buffer holds the image's bytes of its range.
    fn apply(
        &self,
        snap: &Snapshot,
        target: &DeltaTarget,
        batch: &mut Batch,
        totals: &mut Totals,
    ) -> Result<()> {
        totals.bytes_read += batch.data.len() as u64;
        let base = batch.start;
        let range = |p: &Piece| (p.start - base) as usize..(p.end - base) as usize;
        let data = &batch.data;
        let same: Vec<bool> = batch
            .pieces
            .par_iter()
            .map(|p| {
                let bytes = &data[range(p)];
                match &p.chunk {
                    Some(e) => ChunkId::of(bytes) == e.id,
                    None => bunker_chunk::is_zero(bytes),
                }
            })
            .collect();
        let wanted: Vec<&Entry> = batch
            .pieces
            .iter()
            .zip(&same)
            .filter(|(_, &same)| !same)
            .filter_map(|(p, _)| p.chunk.as_ref())
            .collect();
        let mut fetched = self.fetch_chunks(snap, &wanted).into_iter();
        for (p, same) in batch.pieces.iter().zip(same) {
            if same {
                if p.chunk.is_some() {
                    totals.chunks_same += 1;
                }
                continue;
            }
            let old = &mut batch.data[range(p)];
            match &p.chunk {
                Some(_) => {
                    let chunk = fetched.next().unwrap_or_else(|| {
                        Err(Error::Interrupted("a fetch went missing".into()))
                    })?;
                    for (from, to) in differing_blocks(p.start, old, Some(&chunk)) {
                        target
                            .file
                            .write_all_at(&chunk[from..to], p.start + from as u64)
                            .map_err(|e| write_error(&target.path, e))?;
                        totals.bytes_written += (to - from) as u64;
                    }
                    old.copy_from_slice(&chunk);
                    totals.bytes_fetched += chunk.len() as u64;
                    totals.chunks_differing += 1;
                }
                None => {
                    for (from, to) in differing_blocks(p.start, old, None) {
                        clear(target, p.start + from as u64, (to - from) as u64)?;
                        totals.bytes_written += (to - from) as u64;
                    }
                    old.fill(0);
                }
            }
        }
        Ok(())
    }

    /// The chunks of `wanted`, in its order, fetched by up to `FETCHERS`
    /// threads and each verified against its id (`fetch_chunk`). After the
    /// first error nothing more is fetched.
    fn fetch_chunks(&self, snap: &Snapshot, wanted: &[&Entry]) -> Vec<Result<Vec<u8>>> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Vec<u8>>>>> =
            Mutex::new((0..wanted.len()).map(|_| None).collect());
        let failed = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..FETCHERS.min(wanted.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= wanted.len() || failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = self.fetch_chunk(snap, wanted[i]);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                });
            }
        });
        // A slot left empty (after another's error) ends the writer there.
        results
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .map_while(|r| r)
            .collect()
    }
}

/// The runs of `old` (the target's bytes at image offset `start`) that
/// differ from `new` (`None`: zeros), as byte ranges of `old`, in whole
/// blocks of `BLOCK` bytes aligned to the image (cut at the ends of `old`),
/// neighbours joined. Only these are written: a chunk that differs in one
/// 4 KiB block costs one block of writes, not the chunk.
fn differing_blocks(start: u64, old: &[u8], new: Option<&[u8]>) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    while from < old.len() {
        let to = old
            .len()
            .min((((start + from as u64) / BLOCK + 1) * BLOCK - start) as usize);
        let differs = match new {
            Some(new) => old[from..to] != new[from..to],
            None => !bunker_chunk::is_zero(&old[from..to]),
        };
        if differs {
            match runs.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => runs.push((from, to)),
            }
        }
        from = to;
    }
    runs
}

/// Makes `len` bytes at `offset` zero: a hole in a file (zeros written
/// where the filesystem cannot punch one), zeros on a device.
fn clear(target: &DeltaTarget, offset: u64, len: u64) -> Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    if target.regular {
        let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if fallocate(&target.file, flags, offset, len).is_ok() {
            return Ok(());
        }
    }
    static ZEROS: [u8; ZERO_PIECE as usize] = [0u8; ZERO_PIECE as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_PIECE);
        target
            .file
            .write_all_at(&ZEROS[..n as usize], offset + done)
            .map_err(|e| write_error(&target.path, e))?;
        done += n;
    }
    Ok(())
}

/// Opens the existing file or block device at `path` for reading and
/// writing in place. A link is followed only to a block device (as for a
/// restore); a device must hold the image, and one longer than it needs
/// `force` (the bytes past the image stay as they are).
fn open_target(path: &Path, size: u64, force: bool) -> Result<DeltaTarget> {
    let lstat = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refused(
                path,
                "does not exist: a delta restore writes over an existing file or block device (restore without --delta to create it)",
            ))
        }
        Err(e) => return Err(Error::io(format!("looking at {}", path.display()), e)),
    };
    let device = if lstat.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(t) if t.file_type().is_block_device() => true,
            _ => {
                return Err(refused(
                    path,
                    "is a symbolic link; a restore follows links only to block devices: give the path of the file itself",
                ))
            }
        }
    } else if lstat.file_type().is_block_device() {
        true
    } else if lstat.is_file() {
        false
    } else {
        return Err(refused(
            path,
            "is neither a regular file nor a block device",
        ));
    };
    if device {
        open_device(path, size, force)
    } else {
        open_file(path)
    }
}

fn open_file(path: &Path) -> Result<DeltaTarget> {
    use rustix::fs::{flock, FlockOperation};
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let m = file
        .metadata()
        .map_err(|e| Error::io(format!("looking at {}", path.display()), e))?;
    if !m.is_file() {
        return Err(refused(
            path,
            "stopped being a regular file while opening it",
        ));
    }
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(refused(path, "is being written by another delta restore"))
        }
        Err(e) => return Err(Error::io(format!("locking {}", path.display()), e.into())),
    }
    Ok(DeltaTarget {
        file,
        path: path.to_path_buf(),
        regular: true,
        len: m.len(),
    })
}

fn open_device(path: &Path, size: u64, force: bool) -> Result<DeltaTarget> {
    // O_EXCL on a block device: EBUSY while it is mounted or held
    // exclusively by another program.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                refused(
                    path,
                    "is in use (mounted, or held by another program): refusing to write to it",
                )
            } else {
                Error::io(format!("opening {}", path.display()), e)
            }
        })?;
    let what = |e| Error::io(format!("sizing {}", path.display()), e);
    if !file.metadata().map_err(what)?.file_type().is_block_device() {
        return Err(refused(
            path,
            "stopped being a block device while opening it",
        ));
    }
    let capacity = file.seek(SeekFrom::End(0)).map_err(what)?;
    if capacity < size {
        return Err(refused(
            path,
            &format!("holds {capacity} bytes, the image is {size}: a block device cannot grow"),
        ));
    }
    if capacity > size && !force {
        return Err(refused(
            path,
            &format!(
                "is a block device of {capacity} bytes, the image is {size}: the bytes past the image would stay as they are; pass --force to restore onto it anyway"
            ),
        ));
    }
    Ok(DeltaTarget {
        file,
        path: path.to_path_buf(),
        regular: false,
        len: capacity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_blocks_are_whole_aligned_blocks_joined() {
        // A piece starting 100 bytes before a block boundary.
        let start = BLOCK - 100;
        let old = vec![7u8; 100 + 3 * BLOCK as usize];
        let mut new = old.clone();
        assert!(differing_blocks(start, &old, Some(&new)).is_empty());
        new[0] = 0; // the cut first block
        new[100 + 5] = 0; // the first whole block
        new[100 + 2 * BLOCK as usize] = 0; // the third
        assert_eq!(
            differing_blocks(start, &old, Some(&new)),
            vec![
                (0, 100 + BLOCK as usize),
                (100 + 2 * BLOCK as usize, old.len())
            ]
        );
        let mut zeros = vec![0u8; old.len()];
        assert!(differing_blocks(start, &zeros, None).is_empty());
        zeros[100 + BLOCK as usize] = 1;
        assert_eq!(
            differing_blocks(start, &zeros, None),
            vec![(100 + BLOCK as usize, 100 + 2 * BLOCK as usize)]
        );
    }
}
