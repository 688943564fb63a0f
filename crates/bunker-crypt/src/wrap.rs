//! Passphrase-wrapped key files, for escrow.
//!
//! A wrapped key file holds the repository key sealed under a key derived
//! from a passphrase with argon2id, so a copy can be kept away from the
//! data (a safe, a password manager) without being the key itself. The
//! header (magic, version, key id, KDF and its parameters, salt) is clear
//! and is the associated data of the sealed key: a changed parameter or key
//! id fails to open, like a wrong passphrase. After unwrapping, the key
//! must hash to the key id in the header.
//!
//! Parameters read from a file are checked against fixed bounds before
//! anything is allocated, so a hostile file cannot ask for terabytes of
//! memory or years of work. [`load_key_file`] is the one seam the server
//! and CLI use: it reads a key file of either kind. Layout: docs/FORMAT.md,
//! "Wrapped key file".

use std::fmt;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use zeroize::Zeroize;

use crate::seal::{NONCE_LEN, TAG_LEN};
use crate::{key, Error, Key, KeyId, Purpose, Result, Sealer};

pub const MAGIC: &[u8; 8] = b"BNKRKEYW";
/// Version history: 1 — argon2id (v0x13) over a 256-bit key (2026-12).
pub const VERSION: u32 = 1;
/// The clear header, which is also the sealed key's associated data.
pub const HEADER_LEN: usize = 64;
pub const SEALED_LEN: usize = NONCE_LEN + 32 + TAG_LEN;
pub const FILE_LEN: usize = HEADER_LEN + SEALED_LEN;

/// The KDF code of argon2id, version 0x13 (RFC 9106): the only one so far.
pub const KDF_ARGON2ID: u32 = 1;

/// Bounds on the KDF parameters, for writing and for reading: below the
/// minimum a passphrase is too cheap to guess, above the maximum a file
/// could make `serve` allocate or compute without end.
pub const MIN_MEMORY_KIB: u32 = 8 * 1024;
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
pub const MAX_ITERATIONS: u32 = 16;
pub const MAX_LANES: u32 = 8;
/// Shortest passphrase [`wrap`] accepts, in characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Longest passphrase read from a file.
pub const MAX_PASSPHRASE_BYTES: usize = 4096;

/// The environment variable a passphrase may come from (the CLI and the
/// server read it when no passphrase file is given).
pub const PASSPHRASE_ENV: &str = "BUNKER_KEY_PASSPHRASE";

/// argon2id parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane: RFC 9106's second recommended setting
    /// with one lane instead of four, because this implementation runs
    /// lanes one after another (more lanes buy no memory for the same
    /// time). About 0.2 s per unwrap on the 2-core reference machine, paid
    /// once per server start (docs/FORMAT.md, "Wrapped key file").
    fn default() -> KdfParams {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            lanes: 1,
        }
    }
}

impl KdfParams {
    /// Why these parameters are outside the bounds, if they are.
    fn refusal(&self) -> Option<String> {
        let KdfParams {
            memory_kib: m,
            iterations: t,
            lanes: p,
        } = *self;
        if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&m) {
            Some(format!(
                "memory {m} KiB is outside {MIN_MEMORY_KIB}..={MAX_MEMORY_KIB} KiB"
            ))
        } else if !(1..=MAX_ITERATIONS).contains(&t) {
            Some(format!("iterations {t} is outside 1..={MAX_ITERATIONS}"))
        } else if !(1..=MAX_LANES).contains(&p) {
            Some(format!("lanes {p} is outside 1..={MAX_LANES}"))
        } else {
            None
        }
    }

    /// The 256-bit key-encrypting key for `passphrase` and `salt`; the
    /// parameters must be within bounds.
    fn derive(&self, passphrase: &Passphrase, salt: &[u8; 16]) -> Key {
        let params = Params::new(self.memory_kib, self.iterations, self.lanes, Some(32))
            .expect("parameters within our bounds are within argon2's");
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(&passphrase.0, salt, &mut out)
            .expect("a 16-byte salt and a 32-byte output are valid");
        let kek = Key::from_bytes(out);
        out.zeroize();
        kek
    }
}

/// A passphrase; wiped from memory on drop, never shown by `Debug`.
pub struct Passphrase(Vec<u8>);

impl Drop for Passphrase {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// `from` names where the bytes came from in errors; an empty
    /// passphrase is refused.
    pub fn new(bytes: Vec<u8>, from: &str) -> Result<Passphrase> {
        let p = Passphrase(bytes);
        if p.0.is_empty() {
            return Err(Error::BadPassphrase {
                reason: format!("the passphrase from {from} is empty"),
            });
        }
        Ok(p)
    }

    /// The first line of `path`, without its line ending; at most
    /// [`MAX_PASSPHRASE_BYTES`].
    pub fn read_file(path: &Path) -> Result<Passphrase> {
        let mut bytes = key::read_bounded(path, MAX_PASSPHRASE_BYTES + 2)?;
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let line_end = if end > 0 && bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        if line_end > MAX_PASSPHRASE_BYTES {
            bytes.zeroize();
            return Err(Error::BadPassphrase {
                reason: format!(
                    "the first line of {} is longer than {MAX_PASSPHRASE_BYTES} bytes: \
                     not a passphrase file",
                    path.display()
                ),
            });
        }
        // Truncating keeps the rest in the allocation: wipe it first.
        bytes[line_end..].zeroize();
        bytes.truncate(line_end);
        Passphrase::new(bytes, &path.display().to_string())
    }

    /// The passphrase in [`PASSPHRASE_ENV`], if it is set.
    pub fn from_env() -> Result<Option<Passphrase>> {
        match std::env::var_os(PASSPHRASE_ENV) {
            Some(v) => {
                use std::os::unix::ffi::OsStringExt;
                Passphrase::new(v.into_vec(), PASSPHRASE_ENV).map(Some)
            }
            None => Ok(None),
        }
    }

    /// The passphrase in `file` if one is named, else in [`PASSPHRASE_ENV`]
    /// if set, else none: the order the CLI and the server both follow.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Option<Passphrase>> {
        match file {
            Some(f) => Passphrase::read_file(f).map(Some),
            None => Passphrase::from_env(),
        }
    }

    /// Characters, or bytes if it is not UTF-8.
    fn chars(&self) -> usize {
        std::str::from_utf8(&self.0).map_or(self.0.len(), |s| s.chars().count())
    }
}

/// Which kind of key file a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFileKind {
    /// The key itself (`BNKRKEYF`, docs/FORMAT.md "Key file").
    Plain,
    /// The key sealed under a passphrase (`BNKRKEYW`).
    Wrapped,
}

impl KeyFileKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyFileKind::Plain => "plain",
            KeyFileKind::Wrapped => "wrapped",
        }
    }
}

/// The clear header of a wrapped key file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    key_id: KeyId,
    kdf: KdfParams,
    salt: [u8; 16],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(FILE_LEN as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.key_id.0);
        b[32..36].copy_from_slice(&KDF_ARGON2ID.to_le_bytes());
        b[36..40].copy_from_slice(&self.kdf.memory_kib.to_le_bytes());
        b[40..44].copy_from_slice(&self.kdf.iterations.to_le_bytes());
        b[44..48].copy_from_slice(&self.kdf.lanes.to_le_bytes());
        b[48..64].copy_from_slice(&self.salt);
        b
    }

    /// Checks everything but the sealed key; allocates nothing.
    fn decode(path: &Path, b: &[u8]) -> Result<Header> {
        let not = |reason: String| Error::NotKeyFile {
            path: path.to_owned(),
            reason,
        };
        if b.len() < 16 || &b[..8] != MAGIC {
            return Err(not("no BNKRKEYW magic".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_owned(),
                found: version,
                supported: VERSION,
            });
        }
        let len = u32_at(12) as usize;
        if len != FILE_LEN || b.len() != FILE_LEN {
            return Err(not(format!(
                "{} bytes, header says {len}, a version {VERSION} wrapped key file has {FILE_LEN}",
                b.len()
            )));
        }
        let key_id = KeyId(b[16..32].try_into().expect("16 bytes"));
        let kdf_code = u32_at(32);
        if kdf_code != KDF_ARGON2ID {
            return Err(Error::KdfParams {
                path: path.to_owned(),
                key_id,
                reason: format!("unknown KDF {kdf_code} (this build knows 1, argon2id)"),
            });
        }
        let kdf = KdfParams {
            memory_kib: u32_at(36),
            iterations: u32_at(40),
            lanes: u32_at(44),
        };
        if let Some(reason) = kdf.refusal() {
            return Err(Error::KdfParams {
                path: path.to_owned(),
                key_id,
                reason,
            });
        }
        Ok(Header {
            key_id,
            kdf,
            salt: b[48..64].try_into().expect("16 bytes"),
        })
    }
}

fn sealer(kek: &Key) -> Sealer {
    Sealer::new(kek, Purpose::WrappedKey)
}

/// The wrapped key file's bytes for `key` under `passphrase`, with a fresh
/// random salt. Refuses parameters outside the bounds and passphrases
/// shorter than [`MIN_PASSPHRASE_CHARS`].
pub fn wrap(key: &Key, passphrase: &Passphrase, kdf: KdfParams) -> Result<[u8; FILE_LEN]> {
    let chars = passphrase.chars();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(Error::BadPassphrase {
            reason: format!(
                "the passphrase has {chars} characters; a wrapped key needs at least \
                 {MIN_PASSPHRASE_CHARS} (a long phrase of several words is best)"
            ),
        });
    }
    if let Some(reason) = kdf.refusal() {
        return Err(Error::BadPassphrase {
            reason: format!("KDF parameters: {reason}"),
        });
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS random source failed");
    let header = Header {
        key_id: key.id(),
        kdf,
        salt,
    }
    .encode();
    let kek = kdf.derive(passphrase, &salt);
    let mut out = [0u8; FILE_LEN];
    out[..HEADER_LEN].copy_from_slice(&header);
    let sealed = &mut out[HEADER_LEN..];
    sealed[NONCE_LEN..NONCE_LEN + 32].copy_from_slice(key.bytes());
    sealer(&kek).seal_in_place(&header, sealed);
    Ok(out)
}

/// The key in a wrapped key file's bytes; `path` only names the file in
/// errors.
pub fn unwrap(path: &Path, b: &[u8], passphrase: &Passphrase) -> Result<Key> {
    if b.len() >= 8 && &b[..8] == key::MAGIC {
        return Err(Error::NotWrapped {
            path: path.to_owned(),
        });
    }
    let header = Header::decode(path, b)?;
    let kek = header.kdf.derive(passphrase, &header.salt);
    let mut sealed: [u8; SEALED_LEN] = b[HEADER_LEN..].try_into().expect("checked length");
    let opened = sealer(&kek)
        .open_in_place(&b[..HEADER_LEN], &mut sealed)
        .map(|plain| {
            let mut bytes: [u8; 32] = (&*plain).try_into().expect("32 bytes sealed");
            let key = Key::from_bytes(bytes);
            bytes.zeroize();
            key
        });
    sealed.zeroize();
    let key = opened.map_err(|_| Error::WrongPassphrase {
        path: path.to_owned(),
        key_id: header.key_id,
    })?;
    // Authenticated, so only a file sealed with a wrong id by someone who
    // knew the passphrase gets here; still never hand out a key whose id
    // is not the one the file names.
    if key.id() != header.key_id {
        return Err(Error::KeyFileDamaged {
            path: path.to_owned(),
            stored: header.key_id,
        });
    }
    Ok(key)
}

/// The kind and key id of a key file's bytes, without a passphrase. For a
/// wrapped file the id is the header's, checked only when it is
/// unwrapped.
pub fn inspect(path: &Path, b: &[u8]) -> Result<(KeyFileKind, KeyId)> {
    if b.len() >= 8 && &b[..8] == MAGIC {
        Ok((KeyFileKind::Wrapped, Header::decode(path, b)?.key_id))
    } else {
        Ok((KeyFileKind::Plain, Key::decode(path, b)?.id()))
    }
}

/// A key file of either kind, bounded: one byte more than the longer
/// kind, so an overlong file is still seen as one.
fn read(path: &Path) -> Result<Vec<u8>> {
    key::read_bounded(path, FILE_LEN.max(key::FILE_LEN) + 1)
}

/// [`inspect`] of the file at `path`.
pub fn inspect_file(path: &Path) -> Result<(KeyFileKind, KeyId)> {
    let mut b = read(path)?;
    let r = inspect(path, &b);
    b.zeroize();
    r
}

/// Reads a key file of either kind: a plain one as it is (the passphrase,
/// if any, unused), a wrapped one with `passphrase`, which it needs.
pub fn load_key_file(path: &Path, passphrase: Option<&Passphrase>) -> Result<(Key, KeyFileKind)> {
    let mut b = read(path)?;
    let r = if b.len() >= 8 && &b[..8] == MAGIC {
        match passphrase {
            Some(p) => unwrap(path, &b, p).map(|k| (k, KeyFileKind::Wrapped)),
            None => Header::decode(path, &b).and_then(|h| {
                Err(Error::NeedsPassphrase {
                    path: path.to_owned(),
                    key_id: h.key_id,
                })
            }),
        }
    } else {
        Key::decode(path, &b).map(|k| (k, KeyFileKind::Plain))
    };
    b.zeroize();
    r
}

/// Writes `bytes` (a wrapped key file) to a new file with mode 0600,
/// synced; refuses an existing path.
pub fn create_file(path: &Path, bytes: &[u8; FILE_LEN]) -> Result<()> {
    key::write_new(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cheapest parameters the bounds allow: tests stay fast.
    const CHEAP: KdfParams = KdfParams {
        memory_kib: MIN_MEMORY_KIB,
        iterations: 1,
        lanes: 1,
    };

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.as_bytes().to_vec(), "test").unwrap()
    }

    const P: &str = "correct horse battery staple";

    #[test]
    fn wrapped_key_round_trips_and_names_its_id() {
        let key = Key::generate();
        let b = wrap(&key, &pass(P), CHEAP).unwrap();
        assert_eq!(b.len(), FILE_LEN);
        assert!(!b.windows(32).any(|w| w == key.bytes()), "the key shows");
        let back = unwrap(Path::new("w"), &b, &pass(P)).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        let (kind, id) = inspect(Path::new("w"), &b).unwrap();
        assert_eq!((kind, id), (KeyFileKind::Wrapped, key.id()));
        let (kind, id) = inspect(Path::new("k"), &key.encode()).unwrap();
        assert_eq!((kind, id), (KeyFileKind::Plain, key.id()));
        // A fresh salt and nonce each time.
        assert_ne!(wrap(&key, &pass(P), CHEAP).unwrap(), b);
    }

    #[test]
    fn the_default_parameters_round_trip() {
        let key = Key::generate();
        let b = wrap(&key, &pass(P), KdfParams::default()).unwrap();
        assert_eq!(b[36..40], (64u32 * 1024).to_le_bytes());
        let back = unwrap(Path::new("w"), &b, &pass(P)).unwrap();
        assert_eq!(back.id(), key.id());
    }

    #[test]
    fn a_wrong_passphrase_is_refused_naming_file_and_key_id() {
        let key = Key::generate();
        let b = wrap(&key, &pass(P), CHEAP).unwrap();
        let err = unwrap(
            Path::new("escrow.wkey"),
            &b,
            &pass("correct horse battery stapler"),
        )
        .unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("escrow.wkey"), "{msg}");
        assert!(msg.contains(&key.id().to_string()), "{msg}");
        assert!(msg.contains("wrong passphrase or damaged"), "{msg}");
    }

    /// Every header field is bound: a change is refused, never a different
    /// key. One bit in every header byte, a different bit in each, and in
    /// the sealed key's nonce, ciphertext and tag (every bit of a sealed
    /// object: `seal::tests`); each trial pays a KDF. Flips that raise the
    /// cost a lot are left to the bounds test.
    #[test]
    fn a_bit_flip_in_every_header_byte_is_refused() {
        let key = Key::generate();
        let good = wrap(&key, &pass(P), CHEAP).unwrap();
        let path = Path::new("w");
        let bytes = (0..HEADER_LEN).chain([HEADER_LEN, HEADER_LEN + NONCE_LEN + 5, FILE_LEN - 1]);
        for bit in bytes.map(|byte| byte * 8 + byte % 8) {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            let m = u32::from_le_bytes(b[36..40].try_into().unwrap());
            if (36..40).contains(&(bit / 8)) && m > 2 * MIN_MEMORY_KIB && m <= MAX_MEMORY_KIB {
                continue;
            }
            let t = u32::from_le_bytes(b[40..44].try_into().unwrap());
            if (40..44).contains(&(bit / 8)) && t > 4 && t <= MAX_ITERATIONS {
                continue;
            }
            let err = unwrap(path, &b, &pass(P)).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::NotKeyFile { .. }
                        | Error::UnsupportedVersion { .. }
                        | Error::KdfParams { .. }
                        | Error::WrongPassphrase { .. }
                ),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn changed_parameters_within_bounds_are_refused() {
        let key = Key::generate();
        let good = wrap(&key, &pass(P), CHEAP).unwrap();
        let path = Path::new("w");
        // memory, iterations, lanes, each to another valid value; the key id
        // to another key's.
        for (at, v) in [(36, MIN_MEMORY_KIB + 8), (40, 2), (44, 2)] {
            let mut b = good;
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            let err = unwrap(path, &b, &pass(P)).unwrap_err();
            assert!(matches!(err, Error::WrongPassphrase { .. }), "{at}: {err}");
        }
        let mut b = good;
        b[16..32].copy_from_slice(&Key::generate().id().0);
        let err = unwrap(path, &b, &pass(P)).unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
    }

    #[test]
    fn hostile_parameters_are_refused_before_any_work() {
        let key = Key::generate();
        let good = wrap(&key, &pass(P), CHEAP).unwrap();
        let path = Path::new("w");
        for (at, v, what) in [
            (36, u32::MAX, "memory"),
            (36, MAX_MEMORY_KIB + 1, "memory"),
            (36, MIN_MEMORY_KIB - 1, "memory"),
            (36, 0, "memory"),
            (40, u32::MAX, "iterations"),
            (40, MAX_ITERATIONS + 1, "iterations"),
            (40, 0, "iterations"),
            (44, 0, "lanes"),
            (44, MAX_LANES + 1, "lanes"),
            (32, 2, "unknown KDF"),
        ] {
            let mut b = good;
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            // Refused by the header check alone: nothing derived.
            let err = Header::decode(path, &b).unwrap_err();
            assert!(matches!(err, Error::KdfParams { .. }), "{what}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(what) && msg.contains(&key.id().to_string()),
                "{msg}"
            );
            let err = unwrap(path, &b, &pass(P)).unwrap_err();
            assert!(matches!(err, Error::KdfParams { .. }), "{what}: {err}");
        }
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let good = wrap(&Key::generate(), &pass(P), CHEAP).unwrap();
        for len in [0, 7, 8, 16, 63, 64, FILE_LEN - 1] {
            let err = unwrap(Path::new("w"), &good[..len], &pass(P)).unwrap_err();
            assert!(matches!(err, Error::NotKeyFile { .. }), "{len}: {err}");
        }
        let mut long = good.to_vec();
        long.push(0);
        let err = unwrap(Path::new("w"), &long, &pass(P)).unwrap_err();
        assert!(matches!(err, Error::NotKeyFile { .. }), "{err}");
    }

    #[test]
    fn each_kind_given_where_the_other_is_expected_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::generate();
        let plain = dir.path().join("plain.key");
        key.create_file(&plain).unwrap();
        let wrapped = dir.path().join("escrow.wkey");
        create_file(&wrapped, &wrap(&key, &pass(P), CHEAP).unwrap()).unwrap();

        let err = unwrap(&plain, &key.encode(), &pass(P)).unwrap_err();
        assert!(matches!(err, Error::NotWrapped { .. }), "{err}");
        assert!(err.to_string().contains("plain key file"), "{err}");
        let err = Key::load(&wrapped).unwrap_err();
        assert!(matches!(err, Error::Wrapped { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("escrow.wkey") && msg.contains(&key.id().to_string()),
            "{msg}"
        );

        // The seam: either kind, the passphrase needed only by the wrapped.
        let (k, kind) = load_key_file(&plain, None).unwrap();
        assert_eq!((k.id(), kind), (key.id(), KeyFileKind::Plain));
        let (k, kind) = load_key_file(&plain, Some(&pass(P))).unwrap();
        assert_eq!((k.id(), kind), (key.id(), KeyFileKind::Plain));
        let (k, kind) = load_key_file(&wrapped, Some(&pass(P))).unwrap();
        assert_eq!((k.id(), kind), (key.id(), KeyFileKind::Wrapped));
        let err = load_key_file(&wrapped, None).unwrap_err();
        assert!(matches!(err, Error::NeedsPassphrase { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("escrow.wkey") && msg.contains(&key.id().to_string()),
            "{msg}"
        );
        assert_eq!(
            inspect_file(&wrapped).unwrap(),
            (KeyFileKind::Wrapped, key.id())
        );
        // Read bounded: a huge file given by mistake is refused by length.
        let err = load_key_file(Path::new("/dev/zero"), None).unwrap_err();
        assert!(matches!(err, Error::NotKeyFile { .. }), "{err}");
        let foreign = dir.path().join("foreign");
        std::fs::write(&foreign, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        let err = load_key_file(&foreign, Some(&pass(P))).unwrap_err();
        assert!(matches!(err, Error::NotKeyFile { .. }), "{err}");
    }

    #[test]
    fn wrapped_file_is_0600_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let key = Key::generate();
        create_file(&path, &wrap(&key, &pass(P), CHEAP).unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = wrap(&Key::generate(), &pass(P), CHEAP).unwrap();
        let err = create_file(&path, &other).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(inspect_file(&path).unwrap().1, key.id());
    }

    #[test]
    fn weak_passphrases_and_parameters_are_refused_at_wrap() {
        let key = Key::generate();
        let err = Passphrase::new(Vec::new(), "the env").unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        // Characters, not bytes: eleven two-byte characters are too few.
        for short in ["short", "elevenchars", "ééééééééééé"] {
            let err = wrap(&key, &pass(short), CHEAP).unwrap_err();
            assert!(matches!(err, Error::BadPassphrase { .. }), "{err}");
            assert!(err.to_string().contains("at least 12"), "{err}");
        }
        wrap(&key, &pass("twelve chars"), CHEAP).unwrap();
        let low = KdfParams {
            memory_kib: MIN_MEMORY_KIB - 1,
            ..CHEAP
        };
        assert!(matches!(
            wrap(&key, &pass(P), low),
            Err(Error::BadPassphrase { .. })
        ));
    }

    #[test]
    fn passphrase_file_is_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p");
        for (text, want) in [
            (&b"line one\nline two\n"[..], &b"line one"[..]),
            (b"crlf ending\r\n", b"crlf ending"),
            (b"no newline", b"no newline"),
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(Passphrase::read_file(&f).unwrap().0, want);
        }
        std::fs::write(&f, vec![b'x'; MAX_PASSPHRASE_BYTES]).unwrap();
        assert_eq!(
            Passphrase::read_file(&f).unwrap().0.len(),
            MAX_PASSPHRASE_BYTES
        );
        std::fs::write(&f, vec![b'x'; MAX_PASSPHRASE_BYTES + 1]).unwrap();
        let err = Passphrase::read_file(&f).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        std::fs::write(&f, b"\nsecond").unwrap();
        let err = Passphrase::read_file(&f).unwrap_err();
        assert!(matches!(err, Error::BadPassphrase { .. }), "{err}");
        assert!(format!("{:?}", pass(P)) == "Passphrase(..)");
    }

    /// The construction as docs/FORMAT.md, "Wrapped key file" states it,
    /// written out: argon2id of the passphrase and salt is the key of a
    /// sealed object (purpose wrapped key) whose associated data is the
    /// 64-byte header.
    #[test]
    fn wrapped_key_opens_as_format_md_describes() {
        let key = Key::from_bytes([7; 32]);
        let b = wrap(&key, &pass(P), CHEAP).unwrap();
        let params = Params::new(MIN_MEMORY_KIB, 1, 1, Some(32)).unwrap();
        let mut kek = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(P.as_bytes(), &b[48..64], &mut kek)
            .unwrap();
        let plain = Sealer::new(&Key::from_bytes(kek), Purpose::WrappedKey)
            .open(&b[..64], &b[64..])
            .unwrap();
        assert_eq!(plain, [7; 32]);
    }
}
