//! The only place that fsyncs and renames.
//!
//! Every durability step of the commit protocol (docs/FORMAT.md, "Commit
//! protocol") goes through these functions, so the order of syncs can be
//! read in one file and faults can be injected in one place. A failed sync is
//! returned to the caller, which must treat the data as lost: Linux may drop
//! dirty pages after reporting the error, so retrying an fsync and trusting
//! its success would acknowledge data that is gone.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::error::IoContext;
use crate::Result;

/// An injected failure (feature `failpoints`, tests only).
#[cfg(feature = "failpoints")]
pub(crate) fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("injected failure: {what}"))
}

/// Fails here when the failpoint `name` is configured to (tests only).
macro_rules! failpoint {
    ($name:literal, $path:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| Err(crate::Error::io(
            $path,
            crate::durable::injected($name)
        )));
    };
}
pub(crate) use failpoint;

/// Starts writing `file[offset..offset + len]` back to disk without waiting,
/// so a later sync finds little left to write and the disk works meanwhile.
/// `POSIX_FADV_DONTNEED` starts asynchronous writeback of the range's dirty
/// pages (those stay cached until written; clean ones are dropped). Not a
/// durability step: nothing may rely on it, and failures only cost speed.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    if let Err(e) = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    ) {
        tracing::debug!("fadvise: {e}");
    }
}

/// Flushes a file's data (and the metadata needed to read it back).
pub(crate) fn sync_data(file: &File, path: &Path) -> Result<()> {
    failpoint!("durable::sync_data", path);
    #[cfg(feature = "failpoints")]
    observe::step(observe::Step::SyncData(path));
    file.sync_data().at(path)
}

/// Makes the entries of a directory (creations, renames, deletions) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    failpoint!("durable::sync_dir", dir);
    #[cfg(feature = "failpoints")]
    observe::step(observe::Step::SyncDir(dir));
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// An observer of every durability step, for the power-loss tests
/// (feature `failpoints`): called just before each sync, so it can model
/// what a crash at that moment would leave on disk.
#[cfg(feature = "failpoints")]
pub mod observe {
    use std::path::Path;
    use std::sync::OnceLock;

    /// A durability step about to happen.
    #[derive(Clone, Copy, Debug)]
    pub enum Step<'a> {
        /// The file at this path: its contents become durable.
        SyncData(&'a Path),
        /// This directory: its entries become durable.
        SyncDir(&'a Path),
    }

    type Hook = Box<dyn Fn(Step<'_>) + Send + Sync>;
    static HOOK: OnceLock<Hook> = OnceLock::new();

    /// Installs the observer (once per process).
    pub fn set(hook: impl Fn(Step<'_>) + Send + Sync + 'static) {
        let _ = HOOK.set(Box::new(hook));
    }

    pub(crate) fn step(s: Step<'_>) {
        if let Some(h) = HOOK.get() {
            h(s);
        }
    }
}

/// Renames `from` to `to` within one filesystem and syncs `to`'s directory.
/// After this returns, `to` exists with `from`'s contents across a crash.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    failpoint!("durable::rename", to);
    std::fs::rename(from, to).at(to)?;
    sync_dir(parent(to))
}

/// Writes a small file atomically: temp file, sync, rename, sync directory.
/// The temp name is unique, so concurrent writers never share one (the
/// last rename wins; callers serialize read-modify-write cycles).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = temp_path(path, SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        sync_data(&f, &tmp)?;
    }
    rename(&tmp, path)
}

/// The temp file [`replace_file`] writes `path` through: `NAME.PID.SEQ.tmp`
/// beside it (PID and SEQ in decimal).
fn temp_path(path: &Path, seq: u64) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{seq}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Whether `name` is exactly a temp name [`replace_file`] gives a file
/// called `target` (any process, any sequence number).
fn is_temp_of(name: &str, target: &str) -> bool {
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix(target)
        .and_then(|r| r.strip_prefix('.'))
        .and_then(|r| r.strip_suffix(".tmp"))
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(pid, seq)| {
            decimal(pid) && pid.parse::<u32>().is_ok() && decimal(seq) && seq.parse::<u64>().is_ok()
        })
}

/// Removes from `dir` the temp files that an interrupted [`replace_file`]
/// of one of `targets` (file names in `dir`) left: regular files whose name
/// is exactly `TARGET.PID.SEQ.tmp`, nothing else. Only for a directory no
/// other process writes (the caller holds the repository lock). A temp
/// file that cannot be removed is logged and left: it holds nothing anyone
/// reads. Returns the paths removed.
pub(crate) fn remove_stale_temps(dir: &Path, targets: &[&str]) -> Result<Vec<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io(dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !targets.iter().any(|t| is_temp_of(name, t))
            || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed the temp file of an interrupted write");
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the stale temp file {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

/// `mkdir -p` that syncs the parent of every directory it creates, and of
/// `dir` itself always, so a file later published inside it cannot vanish
/// with its directory.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    // The parent of a relative single-component path is "": the cwd.
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    if !dir.is_dir() {
        if let Some(p) = dir.parent() {
            create_dir_all(p)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(crate::Error::io(dir, e)),
        }
    }
    // Even when it exists: another thread may have created it and not yet
    // synced its entry, and what goes inside may be acknowledged first (two
    // first commits to one name). A failed sync fails the caller.
    sync_dir(parent(dir))
}

/// Removes a file and syncs its directory.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::Error::io(path, e)),
    }
}

/// Syncs the data of the file at `path`, written and closed earlier (its
/// directory entry is synced by the caller, once for many files).
pub(crate) fn sync_file_at(path: &Path) -> Result<()> {
    let f = File::open(path).at(path)?;
    sync_data(&f, path)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_exactly() {
        let made = temp_path(Path::new("/r/index/state"), 17);
        let made = made.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_of(made, "state"), "{made}");
        assert!(is_temp_of(".deleted-hwm.4242.0.tmp", ".deleted-hwm"));
        for other in [
            "state",
            "state.tmp",
            "state.1.tmp",
            "state.1.2.3.tmp",
            "state.x.2.tmp",
            "state.1.+2.tmp",
            "state..2.tmp",
            "state.1.2.TMP",
            "state.1.2.tmp.bak",
            "state.99999999999.2.tmp",
            "xstate.1.2.tmp",
            "tombstones.1.2.tmp",
        ] {
            assert!(!is_temp_of(other, "state"), "{other}");
        }
    }
}
