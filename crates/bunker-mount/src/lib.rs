//! `bunker mount`: a snapshot shown as one read-only file, `DIR/NAME@ID.img`,
//! in a FUSE filesystem, so `mount -o loop,ro DIR/NAME@ID.img /mnt/x` gives
//! the files of the filesystem inside without restoring the image.
//!
//! The bytes come from a [`bunker_image::Image`]: every chunk is BLAKE3-checked
//! before it is served and kept in its LRU cache, sequential readers get
//! read-ahead, zero chunks are never fetched. A read touching a damaged chunk
//! (or one the server cannot send) answers `EIO`; every other read works.
//! Reads are served by `READERS` threads, so a slow fetch does not hold up
//! reads the cache can answer.
//!
//! The filesystem is read-only (`ro` mount, opening for writing is `EROFS`)
//! and never changes: the kernel may cache attributes and pages for long.
//! It is mounted through `fuser` without libfuse: with mount(2) as root,
//! else through `fusermount3`. [`check_fuse`] says clearly when neither can
//! work, before anything is mounted. [`Mounted::unmount`] unmounts, and
//! refuses while the image is in use (loop-mounted) rather than detach it
//! under its users.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bunker_image::{Image, ImageError};
use crossbeam_channel::{Receiver, Sender};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

/// Threads serving reads.
pub const READERS: usize = 4;
/// How long the kernel may keep attributes and names: the image never
/// changes while mounted.
const TTL: Duration = Duration::from_secs(3600);
const ROOT: u64 = fuser::FUSE_ROOT_ID;
const FILE: u64 = 2;

/// Why a mount failed, by what the user does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// FUSE cannot work on this machine as things are: install or load
    /// what `reason` names.
    #[error("FUSE is unavailable: {reason}")]
    Unavailable { reason: String },
    /// The mount point is wrong: give another.
    #[error("cannot mount on {}: {reason}", path.display())]
    Mountpoint { path: PathBuf, reason: String },
    /// The image is in use (loop-mounted, a file open): unmount that first;
    /// it stays mounted and served meanwhile.
    #[error("{} is in use (is the image loop-mounted or open?): unmount that first; it stays mounted until then", path.display())]
    Busy { path: PathBuf },
    /// The kernel or fusermount3 refused the unmount.
    #[error("unmounting {}: {reason}", path.display())]
    Unmount { path: PathBuf, reason: String },
    /// The kernel or fusermount3 refused the mount.
    #[error("mounting on {}: {source}", path.display())]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mounted image. Dropping it unmounts it if it can, without waiting;
/// [`Mounted::unmount`] says whether it could.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
    file: PathBuf,
}

impl Mounted {
    /// `DIR/NAME@ID.img`.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// False once the filesystem was unmounted, also from outside
    /// (`umount DIR`, `fusermount3 -u DIR`): the session has ended.
    pub fn is_mounted(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
    }

    /// Unmounts and waits for the session to end. A mount in use (the image
    /// loop-mounted, a file open in DIR) is [`MountError::Busy`] and stays
    /// mounted and served: never detached lazily under its users.
    pub fn unmount(&mut self) -> Result<(), MountError> {
        if self.is_mounted() {
            unmount_dir(&self.dir)?;
        }
        if let Some(s) = self.session.take() {
            // Unmounted: the session has ended or is ending (ENODEV).
            s.join();
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Without waiting: fuser tries to unmount and the session thread
        // goes its way.
        drop(self.session.take());
    }
}

/// Unmounts `dir`: umount(2) as root, else `fusermount3 -u`.
fn unmount_dir(dir: &Path) -> Result<(), MountError> {
    let busy = || MountError::Busy {
        path: dir.to_path_buf(),
    };
    if is_root() {
        return match rustix::mount::unmount(dir, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::BUSY) => Err(busy()),
            Err(e) => Err(MountError::Unmount {
                path: dir.to_path_buf(),
                reason: std::io::Error::from(e).to_string(),
            }),
        };
    }
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("--")
        .arg(dir)
        .output()
        .map_err(|e| MountError::Unmount {
            path: dir.to_path_buf(),
            reason: format!("running fusermount3 -u: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if why.contains("busy") {
        return Err(busy());
    }
    Err(MountError::Unmount {
        path: dir.to_path_buf(),
        reason: why,
    })
}

/// The file name of an image: `NAME@ID.img`, any `/` of the name (a
/// scope separator) as `_`.
pub fn file_name(image: &Image) -> String {
    let snap = image.snapshot();
    format!("{}@{}.img", snap.name.replace('/', "_"), snap.id)
}

/// Mounts `image` read-only on the directory `dir` as `DIR/NAME@ID.img`.
pub fn mount(image: Image, dir: &Path) -> Result<Mounted, MountError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    check_fuse(Path::new("/dev/fuse"), is_root(), &path)?;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(MountError::Mountpoint {
                path: dir.to_path_buf(),
                reason: "not a directory".into(),
            })
        }
        Err(e) => {
            return Err(MountError::Mountpoint {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            })
        }
    }
    let name = file_name(&image);
    let snap = image.snapshot();
    let created = UNIX_EPOCH + Duration::from_millis(snap.created_unix_ms.max(0) as u64);
    let fs = ImageFs::new(Arc::new(image), name.clone(), created);
    let options = [
        MountOption::RO,
        MountOption::FSName("bunker".into()),
        MountOption::Subtype("bunker".into()),
        MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount2(fs, dir, &options).map_err(|e| mount_error(dir, e))?;
    Ok(Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
        file: dir.join(name),
    })
}

/// Whether FUSE can work here: `dev` (`/dev/fuse`) must exist, and a user
/// other than root needs `fusermount3` (or `fusermount`) on `path` (a
/// `PATH` value).
pub fn check_fuse(dev: &Path, root: bool, path: &OsStr) -> Result<(), MountError> {
    if !dev.exists() {
        return Err(MountError::Unavailable {
            reason: format!(
                "{} does not exist (load the fuse kernel module with `modprobe fuse`; in a container, pass the device in)",
                dev.display()
            ),
        });
    }
    let on_path = |program: &str| std::env::split_paths(path).any(|d| d.join(program).is_file());
    if !root && !on_path("fusermount3") && !on_path("fusermount") {
        return Err(MountError::Unavailable {
            reason: "fusermount3 is not installed, and only root mounts without it (Debian: apt-get install fuse3)".into(),
        });
    }
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The mount failed: say what to do about the usual causes.
fn mount_error(dir: &Path, e: std::io::Error) -> MountError {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NODEV.raw_os_error() => MountError::Unavailable {
            reason: "the kernel has no FUSE support (modprobe fuse)".into(),
        },
        Some(code) if code == rustix::io::Errno::NOENT.raw_os_error() => MountError::Unavailable {
            reason: format!("{e} (is fusermount3 installed? Debian: apt-get install fuse3)"),
        },
        _ => MountError::Mount {
            path: dir.to_path_buf(),
            source: e,
        },
    }
}

/// A read the kernel asked for, handed to a reader thread.
struct ReadJob {
    offset: u64,
    size: u32,
    reply: ReplyData,
}

/// The filesystem: the root directory and the one image file.
struct ImageFs {
    size: u64,
    name: String,
    created: SystemTime,
    uid: u32,
    gid: u32,
    /// Reads for the reader threads; dropped (ending them) with the
    /// filesystem.
    jobs: Sender<ReadJob>,
}

impl ImageFs {
    fn new(image: Arc<Image>, name: String, created: SystemTime) -> ImageFs {
        let (jobs, rx) = crossbeam_channel::bounded::<ReadJob>(READERS * 4);
        for _ in 0..READERS {
            let image = image.clone();
            let rx: Receiver<ReadJob> = rx.clone();
            std::thread::spawn(move || {
                while let Ok(job) = rx.recv() {
                    serve_read(&image, job);
                }
            });
        }
        ImageFs {
            size: image.size(),
            name,
            created,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            jobs,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, nlink, size) = match ino {
            ROOT => (FileType::Directory, 0o555, 2, 0),
            FILE => (FileType::RegularFile, 0o444, 1, self.size),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

/// One read: the bytes at `offset` (cut at the end of the image), or EIO
/// when a chunk they touch is damaged or cannot be fetched.
fn serve_read(image: &Image, job: ReadJob) {
    let size = image.size();
    if job.offset >= size {
        job.reply.data(&[]);
        return;
    }
    let len = u64::from(job.size).min(size - job.offset) as usize;
    let mut buf = vec![0u8; len];
    match image.read_at(job.offset, &mut buf) {
        Ok(()) => job.reply.data(&buf),
        Err(e) => {
            let errno = match e {
                ImageError::OutOfRange { .. } => rustix::io::Errno::INVAL,
                _ => rustix::io::Errno::IO,
            };
            job.reply.error(errno.raw_os_error());
        }
    }
}

impl Filesystem for ImageFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE) {
            Some(attr) if parent == ROOT && name == OsStr::new(&self.name) => {
                reply.entry(&TTL, &attr, 0)
            }
            _ => reply.error(rustix::io::Errno::NOENT.raw_os_error()),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(rustix::io::Errno::NOENT.raw_os_error()),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != FILE {
            return reply.error(rustix::io::Errno::ISDIR.raw_os_error());
        }
        let access = flags & rustix::fs::OFlags::ACCMODE.bits() as i32;
        if access != rustix::fs::OFlags::RDONLY.bits() as i32 {
            return reply.error(rustix::io::Errno::ROFS.raw_os_error());
        }
        // The file never changes: the kernel may keep its pages.
        reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != FILE || offset < 0 {
            return reply.error(rustix::io::Errno::INVAL.raw_os_error());
        }
        let job = ReadJob {
            offset: offset as u64,
            size,
            reply,
        };
        if let Err(crossbeam_channel::SendError(job)) = self.jobs.send(job) {
            job.reply.error(rustix::io::Errno::IO.raw_os_error());
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(rustix::io::Errno::NOTDIR.raw_os_error());
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, self.name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            // The offset given is where the next readdir resumes.
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_fuse_device_or_fusermount_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().as_os_str();
        let e = check_fuse(Path::new("/nonexistent/fuse"), true, empty).unwrap_err();
        assert!(matches!(e, MountError::Unavailable { .. }));
        assert!(
            e.to_string().contains("/nonexistent/fuse does not exist"),
            "{e}"
        );
        // A user other than root, with no fusermount3 on the PATH.
        let e = check_fuse(dir.path(), false, empty).unwrap_err();
        assert!(
            e.to_string().contains("fusermount3 is not installed"),
            "{e}"
        );
        assert!(check_fuse(dir.path(), true, empty).is_ok());
        std::fs::write(dir.path().join("fusermount3"), b"").unwrap();
        assert!(check_fuse(dir.path(), false, empty).is_ok());
    }
}
