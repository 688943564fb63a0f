//! Packs: appending chunk records, sealing, reading records back, recovery.
//!
//! All ingest streams append to one open pack at a time (appends are short
//! positional writes under a mutex; compression happens before, outside the
//! lock). A pack is sealed when it reaches its target length and whenever a
//! snapshot commits, so a committed snapshot only ever references sealed
//! packs: sealing is the durability point of chunk data. A pack that fills
//! up is sealed on a background thread (its fdatasync overlaps ingest into
//! the next pack); [`Packs::seal`], which every commit calls, waits for all
//! of those. In an encrypted repository each record's stored bytes are
//! sealed before they come here ([`Payload::Sealed`], on the thread that
//! compressed them), or here under the writer lock when the repository
//! binds records to their place (`crate::crypt::RecordBinding`) or the
//! caller has plaintext; they are opened in [`Packs::read_record`], so
//! every caller above handles plaintext stored bytes. Ids here are at-rest
//! ids (`crate::crypt`). Layout: docs/FORMAT.md, "Pack".

mod recover;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bunker_chunk::ChunkId;

use crate::backend::PackBackend;
use crate::crypt::{trailer_ad, RecordBinding, RepoCrypt};
use crate::error::IoContext;
use crate::format::checksum;
use crate::format::pack::{
    Codec, Footer, PackHeader, RecordHeader, TrailerEntry, FOOTER_LEN, HEADER_LEN,
    RECORD_HEADER_LEN, TRAILER_ENTRY_LEN,
};
use crate::{durable, Error, Location, PackId, Result};

pub use recover::TornTail;
pub(crate) use recover::{read_trailer, recover_staged};

/// A record ready to append: compressed (or not) outside the writer lock.
pub(crate) struct NewRecord<'a> {
    /// The chunk's at-rest id.
    pub id: ChunkId,
    pub raw_len: u32,
    pub codec: Codec,
    pub stored: Payload<'a>,
}

/// A record's stored bytes as the pack writer gets them.
pub(crate) enum Payload<'a> {
    /// Written as they are, or sealed through a copy in an encrypted pack.
    Bytes(&'a [u8]),
    /// The bytes at `[NONCE_LEN..len - TAG_LEN]` of a buffer with room to
    /// be sealed in place (`compress::compress_sealable`); written as
    /// those bytes in a clear pack.
    Sealable(&'a mut [u8]),
    /// A sealed object, written as it is: only in an encrypted repository
    /// whose records are bound to their identity.
    Sealed(&'a [u8]),
}

/// A pack that has just been sealed, with the records it holds.
pub(crate) struct SealedPack {
    pub pack: PackId,
    pub entries: Vec<TrailerEntry>,
}

impl SealedPack {
    /// The index entries of its records.
    pub(crate) fn index_entries(&self) -> Vec<(ChunkId, Location)> {
        self.entries
            .iter()
            .map(|e| e.index_entry(self.pack))
            .collect()
    }
}

pub(crate) struct Packs {
    backend: Arc<dyn PackBackend>,
    repo_id: [u8; 16],
    target_len: u64,
    crypt: Option<Arc<RepoCrypt>>,
    writer: Mutex<Writer>,
}

struct Writer {
    open: Option<OpenPack>,
    next_id: u64,
    poisoned: Option<String>,
    /// Full packs being synced and published on background threads.
    sealing: Vec<Sealing>,
    /// Background seals joined but not yet handed to the caller.
    ready: Vec<SealedPack>,
    /// Sealed and synced packs whose upload to a remote backend failed
    /// (`Error::Unavailable`): intact on local disk, so they do not poison
    /// the writer. The next [`Packs::seal`] uploads them before anything
    /// else, so no commit is acknowledged before its packs are stored.
    pending: Vec<OpenPack>,
    /// A sealed record being written (encrypted repositories).
    sealed: Vec<u8>,
}

/// A background seal that failed; `synced` is the pack when only its
/// upload failed, retryable (see `Writer::pending`).
struct SealFailure {
    error: Error,
    synced: Option<OpenPack>,
}

/// A store that could not be reached: the sealed, synced staging file is
/// still good, so the upload may be retried.
fn upload_may_retry(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. })
}

/// A full pack on its way to the backend. Until its thread is joined, its
/// records are read through `file` (the staging file's handle, which stays
/// valid across the rename): the sealed name may not exist yet.
struct Sealing {
    pack: PackId,
    file: File,
    path: PathBuf,
    thread: std::thread::JoinHandle<std::result::Result<SealedPack, Box<SealFailure>>>,
}

/// Background seals in flight at most; a fuller writer waits for the oldest
/// (the disk is the bottleneck then, and memory stays bounded).
const MAX_BACKGROUND_SEALS: usize = 2;

struct OpenPack {
    id: PackId,
    file: File,
    path: PathBuf,
    len: u64,
    /// Where the last early writeback ended (see `WRITEBACK_STEP`).
    written_back: u64,
    entries: Vec<TrailerEntry>,
}

/// Appended bytes after which their writeback to disk is started, so the
/// fdatasync of a seal waits for at most this much rather than a whole pack.
const WRITEBACK_STEP: u64 = 8 << 20;

impl Packs {
    pub(crate) fn new(
        backend: Box<dyn PackBackend>,
        repo_id: [u8; 16],
        target_len: u64,
        next_id: u64,
        crypt: Option<Arc<RepoCrypt>>,
    ) -> Packs {
        Packs {
            backend: Arc::from(backend),
            repo_id,
            target_len,
            crypt,
            writer: Mutex::new(Writer {
                open: None,
                next_id,
                poisoned: None,
                sealing: Vec::new(),
                ready: Vec::new(),
                pending: Vec::new(),
                sealed: Vec::new(),
            }),
        }
    }

    pub(crate) fn backend(&self) -> &dyn PackBackend {
        &*self.backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id the next new pack will get: every pack created so far has a
    /// smaller one.
    pub(crate) fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    /// Appends records to the open pack, sealing and rolling over when it
    /// reaches its target length. Returns each record's location, and the
    /// packs sealed along the way (for the index).
    pub(crate) fn append(
        &self,
        records: &mut [NewRecord<'_>],
    ) -> Result<(Vec<Location>, Vec<SealedPack>)> {
        let mut w = self.lock();
        if let Some(why) = &w.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let mut locations = Vec::with_capacity(records.len());
        let mut sealed = Vec::new();
        for r in records.iter_mut() {
            if w.open.is_none() {
                let id = PackId(w.next_id);
                w.next_id += 1;
                w.open = Some(self.create(id)?);
            }
            let w = &mut *w;
            let open = w
                .open
                .as_mut()
                .ok_or_else(|| Error::Poisoned("no open pack".into()))?;
            durable::failpoint!("pack::write", &open.path);
            let offset = open.len;
            let (room, tag) = (bunker_crypt::seal::NONCE_LEN, bunker_crypt::seal::TAG_LEN);
            let stored: &[u8] = match (&self.crypt, &mut r.stored) {
                (Some(c), Payload::Sealable(buf)) => {
                    let _span = crate::cpu::Span::start(crate::cpu::Stage::Encrypt);
                    let ad = c.record_ad(&r.id, r.raw_len, r.codec, open.id, offset);
                    c.records().seal_in_place(ad.as_ref(), buf);
                    buf
                }
                (Some(c), Payload::Bytes(plain)) => {
                    let _span = crate::cpu::Span::start(crate::cpu::Stage::Encrypt);
                    let ad = c.record_ad(&r.id, r.raw_len, r.codec, open.id, offset);
                    let at = seal_at(&mut w.sealed, plain);
                    let len = plain.len();
                    let buf = &mut w.sealed[at..at + len + bunker_crypt::OVERHEAD];
                    buf[room..room + len].copy_from_slice(plain);
                    c.records().seal_in_place(ad.as_ref(), buf);
                    &w.sealed[at..at + len + bunker_crypt::OVERHEAD]
                }
                (Some(c), Payload::Sealed(sealed)) => {
                    if c.binding() != RecordBinding::Identity {
                        return Err(Error::Invalid(
                            "a record sealed before it had a place, in a repository that binds records to their place".into(),
                        ));
                    }
                    sealed
                }
                (None, Payload::Bytes(plain)) => plain,
                (None, Payload::Sealable(buf)) => &buf[room..buf.len() - tag],
                (None, Payload::Sealed(_)) => {
                    return Err(Error::Invalid(
                        "a sealed record for a clear repository".into(),
                    ))
                }
            };
            let header = RecordHeader::new(r.id, r.codec, r.raw_len, stored);
            // A failed write leaves `len` unchanged: the next record (or the
            // seal, which truncates to `len`) overwrites the partial bytes.
            open.file
                .write_all_at(&header.encode(), offset)
                .at(&open.path)?;
            open.file
                .write_all_at(stored, offset + RECORD_HEADER_LEN as u64)
                .at(&open.path)?;
            open.len += (RECORD_HEADER_LEN + stored.len()) as u64;
            open.entries.push(TrailerEntry {
                id: r.id,
                offset,
                raw_len: r.raw_len,
                stored_len: stored.len() as u32,
                codec: r.codec,
            });
            locations.push(Location {
                pack: open.id,
                offset,
                raw_len: r.raw_len,
                stored_len: stored.len() as u32,
            });
            if open.len - open.written_back >= WRITEBACK_STEP {
                durable::start_writeback(
                    &open.file,
                    open.written_back,
                    open.len - open.written_back,
                );
                open.written_back = open.len;
            }
            if open.len >= self.target_len {
                self.seal_in_background(w)?;
            }
        }
        sealed.extend(collect_seals(&mut w, false)?);
        Ok((locations, sealed))
    }

    /// Writes the trailer of the full open pack and leaves its sync and
    /// publication to a background thread.
    fn seal_in_background(&self, w: &mut Writer) -> Result<()> {
        while w.sealing.len() >= MAX_BACKGROUND_SEALS {
            let oldest = w.sealing.remove(0).thread;
            let sealed = finish_seal(w, oldest)?;
            w.ready.push(sealed);
        }
        let Some(open) = w.open.take() else {
            return Ok(());
        };
        if let Err(e) = write_seal(
            &open.file,
            open.id,
            open.len,
            &open.entries,
            self.crypt.as_deref(),
        ) {
            let err = Error::io(&open.path, e);
            w.open = Some(open);
            return Err(err);
        }
        let reader = match open.file.try_clone() {
            Ok(f) => f,
            Err(e) => {
                let err = Error::io(&open.path, e);
                w.open = Some(open);
                return Err(err);
            }
        };
        let (pack, path) = (open.id, open.path.clone());
        let backend = self.backend.clone();
        let handle = std::thread::Builder::new()
            .name("bunker-seal".into())
            .spawn(
                move || -> std::result::Result<SealedPack, Box<SealFailure>> {
                    if let Err(error) = background_sync(&open) {
                        return Err(Box::new(SealFailure {
                            error,
                            synced: None,
                        }));
                    }
                    if let Err(error) = backend.store_sealed(open.id, &open.path) {
                        let synced = upload_may_retry(&error).then_some(open);
                        return Err(Box::new(SealFailure { error, synced }));
                    }
                    tracing::debug!(
                        pack = open.id.0,
                        records = open.entries.len(),
                        "sealed pack"
                    );
                    Ok(SealedPack {
                        pack: open.id,
                        entries: open.entries,
                    })
                },
            )
            .map_err(|e| Error::io("seal thread", e))?;
        w.sealing.push(Sealing {
            pack,
            file: reader,
            path,
            thread: handle,
        });
        Ok(())
    }

    /// Seals the open pack, if it holds any record, and waits for the packs
    /// being sealed in the background. After this returns Ok, every record
    /// appended before the call is durable in a sealed pack.
    pub(crate) fn seal(&self) -> Result<Vec<SealedPack>> {
        let mut w = self.lock();
        if let Some(why) = &w.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let mut sealed = self.upload_pending(&mut w)?;
        sealed.extend(collect_seals(&mut w, true)?);
        match self.seal_locked(&mut w) {
            Ok(last) => sealed.extend(last),
            Err(e) => {
                // Handed out by the next seal: they are stored.
                w.ready.extend(sealed);
                return Err(e);
            }
        }
        Ok(sealed)
    }

    /// Uploads the packs whose upload failed before, oldest first; the
    /// ones still failing stay pending.
    fn upload_pending(&self, w: &mut Writer) -> Result<Vec<SealedPack>> {
        let mut stored = Vec::new();
        while !w.pending.is_empty() {
            let open = &w.pending[0];
            if let Err(e) = self.backend.store_sealed(open.id, &open.path) {
                w.ready.extend(stored);
                if !upload_may_retry(&e) {
                    w.poisoned = Some(format!("sealing pack {}: {e}", open.id.0));
                }
                return Err(e);
            }
            let open = w.pending.remove(0);
            tracing::info!(pack = open.id.0, "uploaded a pack whose upload had failed");
            stored.push(SealedPack {
                pack: open.id,
                entries: open.entries,
            });
        }
        Ok(stored)
    }

    fn seal_locked(&self, w: &mut Writer) -> Result<Option<SealedPack>> {
        let Some(open) = w.open.take() else {
            return Ok(None);
        };
        if open.entries.is_empty() {
            // Nothing to keep: a header-only staging file.
            let _ = std::fs::remove_file(&open.path);
            return Ok(None);
        }
        if let Err(e) = write_seal(
            &open.file,
            open.id,
            open.len,
            &open.entries,
            self.crypt.as_deref(),
        ) {
            // Keep the pack open: the trailer is rewritten on the next seal.
            let err = Error::io(&open.path, e);
            w.open = Some(open);
            return Err(err);
        }
        if let Err(e) = durable::sync_data(&open.file, &open.path) {
            // Linux may have dropped the dirty pages: nothing in this pack
            // can be trusted until recovery re-reads it after a reopen.
            w.poisoned = Some(format!("sealing pack {}: {e}", open.id.0));
            return Err(e);
        }
        if let Err(e) = self.backend.store_sealed(open.id, &open.path) {
            if upload_may_retry(&e) {
                // Synced and intact: the next seal uploads it again.
                w.pending.push(open);
            } else {
                w.poisoned = Some(format!("sealing pack {}: {e}", open.id.0));
            }
            return Err(e);
        }
        tracing::debug!(
            pack = open.id.0,
            records = open.entries.len(),
            "sealed pack"
        );
        Ok(Some(SealedPack {
            pack: open.id,
            entries: open.entries,
        }))
    }

    fn create(&self, id: PackId) -> Result<OpenPack> {
        let path = self.backend.staging_path(id);
        if let Some(dir) = path.parent() {
            durable::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let header = PackHeader {
            repo_id: self.repo_id,
            pack: id,
            key_id: self.crypt.as_ref().map(|c| c.key_id().0),
        };
        file.write_all_at(&header.encode(), 0).at(&path)?;
        Ok(OpenPack {
            id,
            file,
            path,
            len: HEADER_LEN as u64,
            written_back: 0,
            entries: Vec::new(),
        })
    }

    /// The key at work, in an encrypted repository.
    pub(crate) fn crypt(&self) -> Option<&RepoCrypt> {
        self.crypt.as_deref()
    }

    /// Reads and checks one record: header fields must match `loc` and
    /// `id` (at rest), and the checksum must match the stored bytes; in an
    /// encrypted pack the stored bytes must open with the record's
    /// identity. Returns the codec and the stored bytes (opened, not yet
    /// decompressed or BLAKE3-checked).
    pub(crate) fn read_record(&self, id: &ChunkId, loc: &Location) -> Result<(Codec, Vec<u8>)> {
        let corrupt = |reason: String| Error::Corrupt {
            file: self.backend.describe(loc.pack),
            pack: Some(loc.pack),
            offset: Some(loc.offset),
            chunk: Some(*id),
            reason,
        };
        let (head, stored) = match self.read_open(loc)? {
            Some(pair) => pair,
            None => {
                let mut head = vec![0u8; RECORD_HEADER_LEN];
                let stored = self
                    .backend
                    .read_record(loc.pack, loc.offset, &mut head, loc.stored_len as usize)
                    .map_err(|e| naming(e, id, loc))?;
                (head, stored)
            }
        };
        self.backend.done_with(
            loc.pack,
            loc.offset,
            RECORD_HEADER_LEN + loc.stored_len as usize,
        );
        let stored = injected_flip(stored);
        let header = RecordHeader::decode_in(&head, self.crypt.is_some()).map_err(corrupt)?;
        if header.id != *id || header.raw_len != loc.raw_len || header.stored_len != loc.stored_len
        {
            return Err(corrupt(
                "record header does not match the index entry".into(),
            ));
        }
        if !header.verify(&head, &stored) {
            return Err(corrupt("record checksum mismatch".into()));
        }
        let stored = match &self.crypt {
            Some(c) => {
                let ad = c.record_ad(id, header.raw_len, header.codec, loc.pack, loc.offset);
                open_record(c, ad.as_ref(), stored).map_err(corrupt)?
            }
            None => stored,
        };
        Ok((header.codec, stored))
    }

    /// Reads from the open pack or one being sealed in the background:
    /// neither is the backend's yet.
    fn read_open(&self, loc: &Location) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let w = self.lock();
        let (file, path) = if let Some(open) = w.open.as_ref().filter(|o| o.id == loc.pack) {
            (&open.file, &open.path)
        } else if let Some(s) = w.sealing.iter().find(|s| s.pack == loc.pack) {
            (&s.file, &s.path)
        } else if let Some(p) = w.pending.iter().find(|p| p.id == loc.pack) {
            (&p.file, &p.path)
        } else {
            return Ok(None);
        };
        let mut head = vec![0u8; RECORD_HEADER_LEN];
        let mut stored = vec![0u8; loc.stored_len as usize];
        file.read_exact_at(&mut head, loc.offset).at(path)?;
        file.read_exact_at(&mut stored, loc.offset + RECORD_HEADER_LEN as u64)
            .at(path)?;
        Ok(Some((head, stored)))
    }
}

/// Opens a sealed record's stored bytes where they lie.
fn open_record(
    c: &RepoCrypt,
    ad: &[u8],
    mut stored: Vec<u8>,
) -> std::result::Result<Vec<u8>, String> {
    let len = c
        .records()
        .open_in_place(ad, &mut stored)
        .map_err(|_| {
            "sealed record does not open: damaged, or its header's chunk, length or codec altered"
                .to_string()
        })?
        .len();
    stored.copy_within(
        bunker_crypt::seal::NONCE_LEN..bunker_crypt::seal::NONCE_LEN + len,
        0,
    );
    stored.truncate(len);
    Ok(stored)
}

/// Adds the chunk and offset to an error reading its record, so whoever
/// sees it (a restore, a drill, verify's report) can tell which one.
fn naming(e: Error, id: &ChunkId, loc: &Location) -> Error {
    match e {
        Error::Corrupt {
            file,
            pack,
            offset,
            chunk: None,
            reason,
        } => Error::Corrupt {
            file,
            pack,
            offset: offset.or(Some(loc.offset)),
            chunk: Some(*id),
            reason,
        },
        Error::Io { path, source } => Error::Io {
            path,
            source: std::io::Error::new(
                source.kind(),
                format!("{source} (chunk {id}, record at offset {})", loc.offset),
            ),
        },
        other => other,
    }
}

/// A bit flipped in what was read, when the failpoint `pack::read_flip`
/// says so (tests only): a read that goes wrong once, as a flaky disk or
/// bus would, while the bytes at rest are intact.
#[cfg(feature = "failpoints")]
fn injected_flip(mut stored: Vec<u8>) -> Vec<u8> {
    if fail::eval("pack::read_flip", |_| ()).is_some() {
        if let Some(b) = stored.first_mut() {
            *b ^= 1;
        }
    }
    stored
}

#[cfg(not(feature = "failpoints"))]
fn injected_flip(stored: Vec<u8>) -> Vec<u8> {
    stored
}

/// Joins background seals: all of them when `wait`, else the finished
/// ones. A failed one poisons the writer, unless only its upload to a
/// remote store failed (then it is pending).
fn collect_seals(w: &mut Writer, wait: bool) -> Result<Vec<SealedPack>> {
    let mut done = std::mem::take(&mut w.ready);
    let mut i = 0;
    while i < w.sealing.len() {
        if wait || w.sealing[i].thread.is_finished() {
            let h = w.sealing.remove(i).thread;
            done.push(finish_seal(w, h)?);
        } else {
            i += 1;
        }
    }
    Ok(done)
}

fn finish_seal(
    w: &mut Writer,
    h: std::thread::JoinHandle<std::result::Result<SealedPack, Box<SealFailure>>>,
) -> Result<SealedPack> {
    let result = h.join().unwrap_or_else(|_| {
        Err(Box::new(SealFailure {
            error: Error::Poisoned("a seal thread panicked".into()),
            synced: None,
        }))
    });
    result.map_err(|f| {
        match f.synced {
            // Only the upload failed: retried by the next seal.
            Some(open) => w.pending.push(open),
            // As for a synchronous seal: the pack's data cannot be trusted.
            None => w.poisoned = Some(format!("sealing a pack: {}", f.error)),
        }
        f.error
    })
}

/// Where in `buf` (grown as needed, never shrunk or zeroed again) to seal a
/// copy of `plain`: its plaintext lands half a page away from `plain`'s
/// address modulo 4 KiB. A copy between addresses a few bytes apart modulo
/// 4 KiB runs at a fraction of memory speed on this CPU (4K aliasing), and
/// it cost more than the cipher (docs/BENCHMARKS.md, "Encryption").
fn seal_at(buf: &mut Vec<u8>, plain: &[u8]) -> usize {
    const PAGE: usize = 4096;
    let need = plain.len() + bunker_crypt::OVERHEAD + PAGE;
    if buf.len() < need {
        buf.resize(need, 0);
    }
    let want = (plain.as_ptr() as usize + PAGE / 2 - bunker_crypt::seal::NONCE_LEN) % PAGE;
    (want + PAGE - buf.as_ptr() as usize % PAGE) % PAGE
}

/// Writes the trailer (sealed in an encrypted repository) and footer
/// after the record at `len` and cuts the file there. The caller syncs and
/// publishes.
pub(crate) fn write_seal(
    file: &File,
    pack: PackId,
    len: u64,
    entries: &[TrailerEntry],
    crypt: Option<&RepoCrypt>,
) -> std::io::Result<()> {
    let mut trailer = vec![0u8; entries.len() * TRAILER_ENTRY_LEN];
    for (e, slot) in entries
        .iter()
        .zip(trailer.chunks_exact_mut(TRAILER_ENTRY_LEN))
    {
        e.encode_into(slot);
    }
    if let Some(c) = crypt {
        trailer = c
            .trailers()
            .seal(&trailer_ad(pack, entries.len() as u64), &trailer);
    }
    let footer = Footer {
        trailer_offset: len,
        count: entries.len() as u64,
        trailer_checksum: checksum(&[&trailer]),
    };
    let end = len + trailer.len() as u64 + FOOTER_LEN as u64;
    file.write_all_at(&trailer, len)?;
    file.write_all_at(&footer.encode(), len + trailer.len() as u64)?;
    file.set_len(end)
}

/// The data sync of a pack sealed in the background (a failpoint in tests).
fn background_sync(open: &OpenPack) -> Result<()> {
    durable::failpoint!("pack::background_seal", &open.path);
    durable::sync_data(&open.file, &open.path)
}
