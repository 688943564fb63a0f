//! The first admin token: `<data>/admin.token` and its hash.
//!
//! When the token store holds no token at all, a new admin secret is made
//! durable in `admin.token` (a fresh 0600 file synced and renamed into
//! place, the directory synced) before its hash is saved in
//! `server/tokens.json`. A crash in between leaves a secret that never
//! worked and no token, and the next start does the same again, replacing
//! it; never an admin that nobody holds. A symbolic link or anything but a
//! regular file at `admin.token` is refused, never followed or replaced.
//! An existing `admin.token` readable by others is tightened to 0600 at
//! every start (the server writes it, never reads it).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bunker_api::Role;

use crate::error::StartError;
use crate::tokens::TokenStore;

/// Opens the token store in `<data>/server/`; on a first start (no token
/// at all) creates the admin token and returns the path of its secret.
pub fn open_or_init(data: &Path) -> Result<(TokenStore, Option<PathBuf>), StartError> {
    let dir = data.join("server");
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| StartError::io("creating the server state directory", &dir, e))?;
        sync_dir(data)?;
    }
    let store = TokenStore::open(&dir)?;
    let path = data.join("admin.token");
    if !store.is_empty() {
        tighten(&path);
        return Ok((store, None));
    }
    init(&store, &path)?;
    Ok((store, Some(path)))
}

/// Writes a new admin secret to `path`, then saves its hash in `store`.
pub(crate) fn init(store: &TokenStore, path: &Path) -> Result<(), StartError> {
    let first_admin = |source| StartError::FirstAdmin { source };
    let (id, secret) = crate::tokens::mint().map_err(first_admin)?;
    write_secret(path, &format!("bkr_{id}_{secret}"))?;
    store
        .add(Role::Admin, None, Some("first admin".into()), &id, &secret)
        .map_err(first_admin)?;
    Ok(())
}

/// Replaces `path` with a 0600 file holding `text` and a newline, durably.
fn write_secret(path: &Path, text: &str) -> Result<(), StartError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    refuse_unless_regular(path)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A leftover of a crash: `remove_file` removes a link, not its target.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StartError::io("removing", tmp, e)),
    }
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        writeln!(f, "{text}")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(StartError::io("writing", tmp, e));
    }
    // Checked again just before the rename, which replaces a link rather
    // than writing through it anyway.
    if let Err(e) = refuse_unless_regular(path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| StartError::io("renaming", &tmp, e))?;
    sync_dir(dir)
}

/// An error unless `path` is absent or a regular file (not a link to one).
fn refuse_unless_regular(path: &Path) -> Result<(), StartError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StartError::io("examining", path, e)),
        Ok(m) if m.file_type().is_symlink() => Err(StartError::AdminTokenIsLink {
            path: path.to_path_buf(),
        }),
        Ok(m) if !m.file_type().is_file() => Err(StartError::AdminTokenNotFile {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
    }
}

/// Takes group and other permissions off an existing `admin.token`
/// (never through a link), with a warning. Failures are warnings too: the
/// server runs without reading the file.
fn tighten(path: &Path) {
    use rustix::fs::{Mode, OFlags};
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    if m.file_type().is_symlink() {
        tracing::warn!("{} is a symbolic link; left alone", path.display());
        return;
    }
    if !m.file_type().is_file() || m.permissions().mode() & 0o077 == 0 {
        return;
    }
    let tightened = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|fd| {
        if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode)
            != rustix::fs::FileType::RegularFile
        {
            return Err(rustix::io::Errno::INVAL);
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))
    });
    match tightened {
        Ok(()) => tracing::warn!(
            "{} was readable by others (mode {:o}); its mode is now 0600",
            path.display(),
            m.permissions().mode() & 0o777
        ),
        Err(e) => tracing::warn!(
            "{} is readable by others and could not be made 0600: {e}",
            path.display()
        ),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StartError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StartError::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    }

    fn secret(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    #[test]
    fn first_start_writes_the_secret_before_its_hash() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("server");
        std::fs::create_dir(&dir).unwrap();
        let path = data.path().join("admin.token");
        // The hash cannot be saved: the secret is already durable, and no
        // token exists that nobody holds.
        let store = TokenStore::open(&dir).unwrap();
        store.set_before_save(|| Err(std::io::Error::other("the disk went away")));
        let err = init(&store, &path).unwrap_err().to_string();
        assert!(err.contains("the disk went away"), "{err}");
        assert_eq!(mode(&path), 0o600);
        let stale = secret(&path);
        assert!(!dir.join("tokens.json").exists());
        assert!(store.is_empty());
        // The next start finds no token and replaces the stale secret.
        let (store, written) = open_or_init(data.path()).unwrap();
        assert_eq!(written.as_deref(), Some(path.as_path()));
        let fresh = secret(&path);
        assert_ne!(fresh, stale);
        assert_eq!(store.authenticate(&fresh).unwrap().role, Role::Admin);
        assert!(store.authenticate(&stale).is_none());
        assert_eq!(mode(&path), 0o600);
        assert!(!data.path().join("admin.token.tmp").exists());
        // Later starts leave the file alone, and work without it.
        std::fs::remove_file(&path).unwrap();
        let (store, written) = open_or_init(data.path()).unwrap();
        assert!(written.is_none());
        assert!(!path.exists());
        assert!(store.authenticate(&fresh).is_some());
    }

    #[test]
    fn a_link_at_admin_token_is_refused_not_followed() {
        let data = tempfile::tempdir().unwrap();
        let victim = data.path().join("victim");
        std::fs::write(&victim, "keep me\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = data.path().join("admin.token");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = open_or_init(data.path()).err().unwrap();
        assert!(matches!(err, StartError::AdminTokenIsLink { .. }), "{err}");
        assert!(
            err.to_string().contains("admin.token is a symbolic link"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
        assert_eq!(mode(&victim), 0o644);
        assert!(!data.path().join("server/tokens.json").exists());
        // A dangling link is refused too, and creates nothing.
        std::fs::remove_file(&victim).unwrap();
        assert!(open_or_init(data.path()).is_err());
        assert!(!victim.exists());
        // A directory is not replaced.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = open_or_init(data.path()).err().unwrap();
        assert!(matches!(err, StartError::AdminTokenNotFile { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        std::fs::remove_dir(&path).unwrap();
        let (_, written) = open_or_init(data.path()).unwrap();
        assert!(written.is_some());
    }

    #[test]
    fn a_loose_admin_token_is_made_0600() {
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join("admin.token");
        // Left by a first start that crashed before saving the hash, and
        // opened up by someone since.
        std::fs::write(&path, "bkr_0000000000000000_stale\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (store, _) = open_or_init(data.path()).unwrap();
        assert_eq!(mode(&path), 0o600);
        let admin = secret(&path);
        assert!(store.authenticate(&admin).is_some());
        // At a later start too: the server tightens what it finds.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let (_, written) = open_or_init(data.path()).unwrap();
        assert!(written.is_none());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(secret(&path), admin);
    }
}
