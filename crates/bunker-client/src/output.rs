//! Where a restore writes: a regular file, a block device, a stream or
//! nowhere.
//!
//! A regular file is never written under its own name. The image goes to
//! `TARGET.bunker-partial` (created exclusively and locked; a stale one from
//! a killed restore is removed first) and is renamed over TARGET only
//! after the whole-image hash matched, the file was fsynced, and then the
//! directory is fsynced. So TARGET is either the old file, untouched, or the
//! complete verified image; a failed restore removes its partial file.
//! Without `force` the rename refuses to replace a TARGET that appeared
//! meanwhile (`RENAME_NOREPLACE`).
//!
//! Links are not followed to files: a symbolic link at TARGET is refused
//! unless it leads to a block device (`/dev/disk/by-id/...`), and a link at
//! the partial name is removed, never written through. A block device
//! cannot be renamed: it is written in place, only with `force`, only if it
//! holds the whole image and no one else has it open exclusively (a
//! mounted filesystem); a failed restore leaves it partly written.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::restore::Target;
use crate::{Error, Result};

/// Appended to a regular file's name while it is being restored.
pub const PARTIAL_SUFFIX: &str = ".bunker-partial";
/// Bytes written to a file after which their writeback is started.
const WRITEBACK_STEP: u64 = 8 << 20;

static ZEROS: [u8; 1 << 20] = [0u8; 1 << 20];

/// The restore's destination.
pub(crate) enum Output<'a> {
    File {
        file: File,
        /// What is written: the partial file or the device.
        path: PathBuf,
        /// A regular file pre-sized with holes: zero chunks are skipped.
        sparse: bool,
        /// Where the last started writeback ended (see `WRITEBACK_STEP`).
        written_back: u64,
        /// For a regular file: where the partial file goes when complete.
        publish: Option<Publish>,
    },
    Stream(&'a mut dyn Write),
    Null,
}

pub(crate) struct Publish {
    target: PathBuf,
    /// An existing TARGET may be replaced (`--force`).
    replace: bool,
}

impl<'a> Output<'a> {
    pub(crate) fn open(target: Target<'a>, size: u64) -> Result<Output<'a>> {
        match target {
            Target::Null => Ok(Output::Null),
            Target::Stream(w) => Ok(Output::Stream(w)),
            Target::File { path, force } => open_path(path, force, size),
        }
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        match self {
            Output::File {
                file,
                path,
                written_back,
                ..
            } => {
                file.write_all_at(data, offset)
                    .map_err(|e| write_error(path, e))?;
                let end = offset + data.len() as u64;
                if end >= *written_back + WRITEBACK_STEP {
                    // Starts writing the range back now (and drops its pages
                    // from the cache once clean), so the disk works while
                    // the restore goes on instead of all at the final sync.
                    let _ = rustix::fs::fadvise(
                        &*file,
                        *written_back,
                        std::num::NonZeroU64::new(end - *written_back),
                        rustix::fs::Advice::DontNeed,
                    );
                    *written_back = end;
                }
                Ok(())
            }
            Output::Stream(w) => w
                .write_all(data)
                .map_err(|e| write_error(Path::new("the output stream"), e)),
            Output::Null => Ok(()),
        }
    }

    pub(crate) fn write_zero(
        &mut self,
        offset: u64,
        len: usize,
        hasher: &mut blake3::Hasher,
    ) -> Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS.len());
            hasher.update(&ZEROS[..n]);
            match self {
                Output::File { sparse: true, .. } | Output::Null => {}
                _ => self.write(offset + done as u64, &ZEROS[..n])?,
            }
            done += n;
        }
        Ok(())
    }

    /// Makes the verified image durable and, for a regular file, puts it
    /// in place under its name.
    pub(crate) fn finish(&mut self) -> Result<()> {
        match self {
            Output::File {
                file,
                path,
                publish,
                ..
            } => {
                file.sync_all().map_err(|e| write_error(path, e))?;
                let Some(p) = publish else { return Ok(()) };
                p.rename(path)?;
                // In place: nothing left for `discard` to remove.
                let target = p.target.clone();
                *publish = None;
                sync_parent(&target)
            }
            Output::Stream(w) => w
                .flush()
                .map_err(|e| write_error(Path::new("the output stream"), e)),
            Output::Null => Ok(()),
        }
    }

    /// After a failure: removes the partial file. TARGET was never touched;
    /// a block device keeps what was written.
    pub(crate) fn discard(&mut self) {
        if let Output::File {
            path,
            publish: Some(_),
            ..
        } = self
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Publish {
    fn rename(&self, partial: &Path) -> Result<()> {
        let target = &self.target;
        let renamed = if self.replace {
            std::fs::rename(partial, target)
        } else {
            rename_noreplace(partial, target)
        };
        renamed.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                exists(target)
            } else {
                Error::io(
                    format!("renaming {} to {}", partial.display(), target.display()),
                    e,
                )
            }
        })
    }
}

/// Makes a rename into the directory of `path` durable.
fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing the directory {}", dir.display()), e))
}

/// Renames `from` to `to` unless `to` exists (then `AlreadyExists`).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A filesystem without RENAME_NOREPLACE: a hard link fails the
        // same way when `to` exists.
        Err(rustix::io::Errno::INVAL) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

fn open_path<'a>(path: PathBuf, force: bool, size: u64) -> Result<Output<'a>> {
    let lstat = match std::fs::symlink_metadata(&path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("looking at {}", path.display()), e)),
    };
    match lstat {
        Some(m) if m.file_type().is_symlink() => {
            // /dev/disk/by-id and friends are links to block devices;
            // a link to a file could lead anywhere.
            match std::fs::metadata(&path) {
                Ok(t) if t.file_type().is_block_device() => open_device(path, force, size),
                _ => Err(refused(
                    &path,
                    "is a symbolic link; a restore follows links only to block devices: give the path of the file itself",
                )),
            }
        }
        Some(m) if m.file_type().is_block_device() => open_device(path, force, size),
        Some(m) if m.is_file() && !force => Err(exists(&path)),
        Some(m) if !m.is_file() => Err(refused(
            &path,
            "is neither a regular file nor a block device",
        )),
        _ => open_partial(path, force, size),
    }
}

fn open_device<'a>(path: PathBuf, force: bool, size: u64) -> Result<Output<'a>> {
    if !force {
        return Err(refused(
            &path,
            "is a block device: a restore overwrites it in place; pass --force to do so",
        ));
    }
    // O_EXCL on a block device: fails with EBUSY while it is mounted or
    // held exclusively by another program.
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(&path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) {
                refused(
                    &path,
                    "is in use (mounted, or held by another program): refusing to write to it",
                )
            } else {
                Error::io(format!("opening {}", path.display()), e)
            }
        })?;
    let what = |e| Error::io(format!("sizing {}", path.display()), e);
    if !file.metadata().map_err(what)?.file_type().is_block_device() {
        return Err(refused(
            &path,
            "stopped being a block device while opening it",
        ));
    }
    let capacity = file.seek(SeekFrom::End(0)).map_err(what)?;
    if capacity < size {
        return Err(refused(
            &path,
            &format!(
                "holds {capacity} bytes, the image is {size}: refusing to write a truncated image"
            ),
        ));
    }
    Ok(Output::File {
        file,
        path,
        sparse: false,
        written_back: 0,
        publish: None,
    })
}

/// `TARGET.bunker-partial`, created or taken over, locked and sized.
fn open_partial<'a>(target: PathBuf, force: bool, size: u64) -> Result<Output<'a>> {
    let Some(name) = target.file_name() else {
        return Err(refused(&target, "is not a file name"));
    };
    let mut partial_name = name.to_os_string();
    partial_name.push(PARTIAL_SUFFIX);
    let partial = target.with_file_name(partial_name);
    let file = claim(&partial)?;
    if let Err(e) = file.set_len(0).and_then(|()| file.set_len(size)) {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::io(format!("sizing {}", partial.display()), e));
    }
    Ok(Output::File {
        file,
        path: partial,
        sparse: true,
        written_back: 0,
        publish: Some(Publish {
            target,
            replace: force,
        }),
    })
}

/// Creates `partial` for this restore alone (`O_EXCL`: never through a
/// link, never an existing file, which could be a hard link to anything or
/// readable by others). What is already there goes first: a link, or a
/// stale partial file of a killed restore once its lock is free; a partial
/// file another restore holds is refused.
fn claim(partial: &Path) -> Result<File> {
    let what = |e| Error::io(format!("creating {}", partial.display()), e);
    for _ in 0..8 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(partial)
        {
            Ok(f) => return lock(f, partial),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(what(e)),
        }
        let m = match std::fs::symlink_metadata(partial) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(what(e)),
        };
        // Locked while it is removed, so a running restore's file is never
        // taken from under it.
        let mut _stale = None;
        if m.is_file() {
            let stale = match OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(partial)
            {
                Ok(f) => lock(f, partial)?,
                // Removed, or replaced by a link, since we looked.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
                {
                    continue
                }
                Err(e) => return Err(what(e)),
            };
            let held = stale.metadata().map_err(what)?;
            if (held.dev(), held.ino()) != (m.dev(), m.ino()) {
                continue;
            }
            _stale = Some(stale);
        } else if !m.file_type().is_symlink() {
            return Err(refused(
                partial,
                "exists and is not a regular file: remove it to restore here",
            ));
        }
        match std::fs::remove_file(partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}", partial.display()), e))
            }
            _ => {}
        }
    }
    Err(refused(
        partial,
        "keeps changing under this restore (another restore to the same target?)",
    ))
}

fn lock(f: File, partial: &Path) -> Result<File> {
    use rustix::fs::{flock, FlockOperation};
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(f),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(refused(
            partial,
            "is being written by another restore to the same target",
        )),
        Err(e) => Err(Error::io(
            format!("locking {}", partial.display()),
            e.into(),
        )),
    }
}

fn exists(path: &Path) -> Error {
    Error::io(
        format!("{} exists", path.display()),
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "refusing to overwrite it; pass --force to replace it",
        ),
    )
}

pub(crate) fn refused(path: &Path, why: &str) -> Error {
    Error::io(
        path.display().to_string(),
        std::io::Error::other(why.to_string()),
    )
}

pub(crate) fn write_error(path: &Path, e: std::io::Error) -> Error {
    let full = e.raw_os_error() == Some(28);
    Error::io(
        if full {
            format!(
                "writing {}: the disk is full (free space or restore elsewhere)",
                path.display()
            )
        } else {
            format!("writing {}", path.display())
        },
        e,
    )
}
