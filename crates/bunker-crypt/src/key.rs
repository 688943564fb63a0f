//! The repository key and its key file.
//!
//! A key is 256 random bits. Its id is a BLAKE3 derivation of the key (16
//! bytes, shown as 32 hex digits): it names the key in configs and errors
//! without revealing it. The key file is 64 bytes, written once with mode
//! 0600 and never overwritten. Layout: docs/FORMAT.md, "Key file".

use std::fmt;
use std::io::Write;
use std::path::Path;

use zeroize::Zeroize;

use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"BNKRKEYF";
/// Version history: 1 — a plain 256-bit key (2026-12).
pub const VERSION: u32 = 1;
pub const FILE_LEN: usize = 64;

const KEY_ID_CONTEXT: &str = "bunker 2026-12-07 key id v1";

/// The id of a key: safe to print, log and store in the clear.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 256-bit repository key. Wiped from memory on drop; `Debug` shows only
/// its id.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Drop for Key {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(id {})", self.id())
    }
}

impl Key {
    /// A new key from the operating system's random source.
    pub fn generate() -> Key {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).expect("the OS random source failed");
        Key(b)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A 256-bit subkey for `context` (`BLAKE3-derive_key`), for keyed
    /// uses outside sealing, such as the store's at-rest chunk ids. Each
    /// use has its own context string, so subkeys never coincide.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.0)
    }

    pub fn id(&self) -> KeyId {
        let h = blake3::derive_key(KEY_ID_CONTEXT, &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&h[..16]);
        KeyId(id)
    }

    /// `Ok` when this is the key a repository records as `expected`.
    pub fn check(&self, expected: KeyId) -> Result<()> {
        let given = self.id();
        if given == expected {
            Ok(())
        } else {
            Err(Error::WrongKey { expected, given })
        }
    }

    pub fn encode(&self) -> [u8; FILE_LEN] {
        let mut b = [0u8; FILE_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(FILE_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.id().0);
        b[32..64].copy_from_slice(&self.0);
        b
    }

    /// Parses a key file's bytes; `path` only names the file in errors.
    pub fn decode(path: &Path, b: &[u8]) -> Result<Key> {
        let not = |reason: String| Error::NotKeyFile {
            path: path.to_owned(),
            reason,
        };
        if b.len() >= 32 && &b[..8] == crate::wrap::MAGIC {
            return Err(Error::Wrapped {
                path: path.to_owned(),
                key_id: KeyId(b[16..32].try_into().expect("16 bytes")),
            });
        }
        if b.len() < 16 || &b[..8] != MAGIC {
            return Err(not("no BNKRKEYF magic".into()));
        }
        let version = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: VERSION,
            });
        }
        let len = u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")) as usize;
        if len != FILE_LEN || b.len() != FILE_LEN {
            return Err(not(format!(
                "{} bytes, header says {len}, version {VERSION} has {FILE_LEN}",
                b.len()
            )));
        }
        let stored = KeyId(b[16..32].try_into().expect("16 bytes"));
        let key = Key(b[32..64].try_into().expect("32 bytes"));
        if key.id() != stored {
            return Err(Error::KeyFileDamaged {
                path: path.to_owned(),
                stored,
            });
        }
        Ok(key)
    }

    /// Reads a key file.
    pub fn load(path: &Path) -> Result<Key> {
        let mut bytes = read_bounded(path, FILE_LEN.max(crate::wrap::FILE_LEN) + 1)?;
        let key = Key::decode(path, &bytes);
        bytes.zeroize();
        key
    }

    /// Writes this key to a new file with mode 0600, synced; refuses an
    /// existing path.
    pub fn create_file(&self, path: &Path) -> Result<()> {
        let mut bytes = self.encode();
        let written = write_new(path, &bytes);
        bytes.zeroize();
        written
    }
}

/// The first `limit` bytes of `path` at most: a key file is small, and a
/// path given by mistake (a disk image, `/dev/zero`) must not be read
/// whole. A longer file is then refused by its length check.
pub(crate) fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(limit);
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64).read_to_end(&mut bytes))
        .map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(bytes)
}

/// Writes a new file, mode 0600, synced with its directory entry; never
/// replaces an existing file. Both kinds of key file are written so.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source: std::io::Error| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        // A partial key file would block the next attempt and could be
        // mistaken for a key.
        let _ = std::fs::remove_file(path);
        return Err(io(e));
    }
    // The new name must survive a crash too.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = Key::generate();
        key.create_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Key::load(&path).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        assert_eq!(back.id(), key.id());
    }

    #[test]
    fn create_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let key = Key::generate();
        key.create_file(&path).unwrap();
        let err = Key::generate().create_file(&path).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(Key::load(&path).unwrap().id(), key.id());
    }

    #[test]
    fn every_bit_flip_in_the_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let good = Key::generate().encode();
        for bit in 0..FILE_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let err = Key::decode(&path, &b).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::NotKeyFile { .. }
                        | Error::UnsupportedVersion { .. }
                        | Error::KeyFileDamaged { .. }
                ),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn wrong_key_names_both_ids() {
        let a = Key::generate();
        let b = Key::generate();
        let err = b.check(a.id()).unwrap_err().to_string();
        assert!(err.contains(&a.id().to_string()), "{err}");
        assert!(err.contains(&b.id().to_string()), "{err}");
        a.check(a.id()).unwrap();
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = Key::from_bytes([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.id().to_string()));
    }

    #[test]
    fn truncated_and_foreign_files_are_not_key_files() {
        let path = Path::new("k");
        let good = Key::generate().encode();
        for len in [0, 8, 16, 63] {
            let err = Key::decode(path, &good[..len]).unwrap_err();
            assert!(matches!(err, Error::NotKeyFile { .. }), "{len}: {err}");
        }
        let mut long = good.to_vec();
        long.push(0);
        assert!(matches!(
            Key::decode(path, &long).unwrap_err(),
            Error::NotKeyFile { .. }
        ));
    }
}
