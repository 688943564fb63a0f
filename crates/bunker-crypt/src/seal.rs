//! Sealing and opening one object.
//!
//! A sealed object is `nonce (24) || ciphertext || tag (16)`. The 24-byte
//! nonce is fresh from the OS random source for every object: a
//! per-thread counter would save the system call (about 1 µs, under 0.01
//! core-s per GB of 128 KiB records) but repeat nonces in a forked process
//! or a cloned VM, where the kernel's generator is reseeded and a copied
//! counter is not. The cipher is
//! AES-256-GCM, ring's (chosen by measurement: docs/BENCHMARKS.md,
//! "Encryption"), under a key derived per object, `BLAKE3-keyed(subkey, nonce[0..12])`,
//! with `nonce[12..24]` as the GCM nonce: random 96-bit GCM nonces alone
//! would cap a key at about 2^32 objects, while with the derivation two
//! objects share a GCM key and nonce only if 192 random bits collide. The
//! subkey is `BLAKE3-derive_key` of the repository key with one context
//! string per [`Purpose`], so a record can never be opened as a manifest.
//!
//! The associated data is the object's identity (for a record: pack id,
//! offset and chunk id), chosen by the caller and not stored: an object
//! opened anywhere but where it was sealed is [`Error::Damaged`].
//! Layout: docs/FORMAT.md, "Sealed objects".

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use zeroize::Zeroize;

use crate::{Error, Key, Result};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What an object is; each purpose seals under its own subkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// A pack record's stored bytes (after compression).
    Record,
    /// A pack's trailer (the list of its chunk ids and record locations).
    Trailer,
    /// A snapshot manifest (its header, metadata and chunk list).
    Manifest,
    /// A snapshot's block hashes file.
    BlockHashes,
    /// The key in a passphrase-wrapped key file (its subkey is derived
    /// from the passphrase's argon2id output, not a repository key).
    WrappedKey,
}

impl Purpose {
    fn context(self) -> &'static str {
        match self {
            Purpose::Record => "bunker 2026-12-07 record subkey v1",
            Purpose::Trailer => "bunker 2026-12-07 trailer subkey v1",
            Purpose::Manifest => "bunker 2026-12-07 manifest subkey v1",
            Purpose::BlockHashes => "bunker 2026-12-07 block hashes subkey v1",
            Purpose::WrappedKey => "bunker 2026-12-07 wrapped key subkey v1",
        }
    }
}

/// Seals and opens objects of one purpose. Cheap to share between threads.
pub struct Sealer {
    subkey: [u8; 32],
    purpose: Purpose,
}

impl Drop for Sealer {
    fn drop(&mut self) {
        self.subkey.zeroize();
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({:?})", self.purpose)
    }
}

impl Sealer {
    pub fn new(key: &Key, purpose: Purpose) -> Sealer {
        Sealer {
            subkey: blake3::derive_key(purpose.context(), key.bytes()),
            purpose,
        }
    }

    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// The object's key and its GCM nonce.
    fn cipher(&self, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
        let mut object_key: [u8; 32] = blake3::keyed_hash(&self.subkey, &nonce[..12]).into();
        let cipher = UnboundKey::new(&AES_256_GCM, &object_key).expect("a 32-byte AES-256 key");
        object_key.zeroize();
        let gcm_nonce = Nonce::assume_unique_for_key(nonce[12..].try_into().expect("12 bytes"));
        (LessSafeKey::new(cipher), gcm_nonce)
    }

    /// Seals without copying: `buf` is [`NONCE_LEN`] bytes of room, the
    /// plaintext, then [`TAG_LEN`] bytes of room; on return it is the
    /// sealed object. A caller that writes its plaintext into such a buffer
    /// (a record compressed at offset 24) saves a copy per object.
    ///
    /// # Panics
    /// If `buf` is shorter than [`OVERHEAD`].
    pub fn seal_in_place(&self, ad: &[u8], buf: &mut [u8]) {
        assert!(buf.len() >= OVERHEAD, "no room for the nonce and tag");
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source failed");
        buf[..NONCE_LEN].copy_from_slice(&nonce);
        let tag_at = buf.len() - TAG_LEN;
        let (cipher, gcm_nonce) = self.cipher(&nonce);
        let tag = cipher
            .seal_in_place_separate_tag(gcm_nonce, Aad::from(ad), &mut buf[NONCE_LEN..tag_at])
            .expect("AES-GCM seals any length below 64 GiB");
        buf[tag_at..].copy_from_slice(tag.as_ref());
    }

    /// Appends the sealed form of `plaintext` to `out`.
    pub fn seal_into(&self, ad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        out.extend_from_slice(&[0; TAG_LEN]);
        self.seal_in_place(ad, &mut out[start..]);
    }

    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(ad, plaintext, &mut out);
        out
    }

    /// The plaintext of `sealed`, if it was sealed by this key and purpose
    /// with this associated data and not changed since.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_into(ad, sealed, &mut out)?;
        Ok(out)
    }

    /// Opens without copying: returns the plaintext, the part of `sealed`
    /// between nonce and tag. On error the bytes of `sealed` are
    /// unspecified.
    pub fn open_in_place<'a>(&self, ad: &[u8], sealed: &'a mut [u8]) -> Result<&'a mut [u8]> {
        if sealed.len() < OVERHEAD {
            return Err(Error::Damaged {
                reason: "sealed object shorter than its nonce and tag",
            });
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("24 bytes");
        let (cipher, gcm_nonce) = self.cipher(&nonce);
        cipher
            .open_in_place(gcm_nonce, Aad::from(ad), &mut sealed[NONCE_LEN..])
            .map_err(|_| Error::Damaged {
                reason: "authentication failed (wrong place, or changed bytes)",
            })
    }

    /// Like [`Sealer::open`], appending to `out`; on error `out` is as it
    /// was.
    pub fn open_into(&self, ad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> Result<()> {
        if sealed.len() < OVERHEAD {
            return Err(Error::Damaged {
                reason: "sealed object shorter than its nonce and tag",
            });
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("24 bytes");
        let start = out.len();
        out.extend_from_slice(&sealed[NONCE_LEN..]);
        let (cipher, gcm_nonce) = self.cipher(&nonce);
        let opened = cipher
            .open_in_place(gcm_nonce, Aad::from(ad), &mut out[start..])
            .map(|plain| plain.len());
        match opened {
            Ok(len) => {
                out.truncate(start + len);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::Damaged {
                    reason: "authentication failed (wrong place, or changed bytes)",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(p: Purpose) -> Sealer {
        Sealer::new(&Key::from_bytes([3; 32]), p)
    }

    #[test]
    fn round_trips_every_length_near_the_block_size() {
        let s = sealer(Purpose::Record);
        for len in (0..70).chain([4095, 4096, 65_536, 1 << 20]) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let sealed = s.seal(b"id", &data);
            assert_eq!(sealed.len(), len + OVERHEAD);
            assert_eq!(s.open(b"id", &sealed).unwrap(), data);
        }
    }

    #[test]
    fn in_place_sealing_matches_copying_sealing() {
        let s = sealer(Purpose::Record);
        let data = b"sealed where it lies, opened where it lies".to_vec();
        let mut buf = vec![0u8; NONCE_LEN];
        buf.extend_from_slice(&data);
        buf.extend_from_slice(&[0; TAG_LEN]);
        s.seal_in_place(b"id", &mut buf);
        assert_eq!(s.open(b"id", &buf).unwrap(), data);
        let copied = s.seal(b"id", &data);
        let mut copy = copied.clone();
        assert_eq!(s.open_in_place(b"id", &mut copy).unwrap(), &data[..]);
        let mut flipped = copied;
        flipped[30] ^= 4;
        assert!(matches!(
            s.open_in_place(b"id", &mut flipped),
            Err(Error::Damaged { .. })
        ));
    }

    #[test]
    fn plaintext_never_shows_and_nonces_differ() {
        let s = sealer(Purpose::Manifest);
        let data = b"a very recognisable marker, a very recognisable marker".repeat(10);
        let a = s.seal(b"x", &data);
        let b = s.seal(b"x", &data);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
        for sealed in [a, b] {
            assert!(!sealed.windows(16).any(|w| w == &data[..16]));
        }
    }

    /// The construction as docs/FORMAT.md, "Sealed objects" states it,
    /// written out without `Sealer`.
    #[test]
    fn sealed_objects_open_as_format_md_describes() {
        let key = Key::from_bytes([9; 32]);
        let sealed = Sealer::new(&key, Purpose::Trailer).seal(b"pack 7", b"trailer bytes");
        let subkey = blake3::derive_key("bunker 2026-12-07 trailer subkey v1", &[9; 32]);
        let object_key = blake3::keyed_hash(&subkey, &sealed[..12]);
        let aes = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, object_key.as_bytes()).unwrap());
        let nonce = Nonce::assume_unique_for_key(sealed[12..24].try_into().unwrap());
        let mut body = sealed[24..].to_vec();
        let plain = aes
            .open_in_place(nonce, Aad::from(b"pack 7"), &mut body)
            .unwrap();
        assert_eq!(plain, b"trailer bytes");
    }

    #[test]
    fn every_bit_flip_is_damage() {
        let s = sealer(Purpose::Record);
        let sealed = s.seal(b"pack 1 offset 64", b"sixteen+ bytes of data");
        for bit in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let mut out = b"kept".to_vec();
            let err = s.open_into(b"pack 1 offset 64", &b, &mut out).unwrap_err();
            assert!(matches!(err, Error::Damaged { .. }), "bit {bit}: {err}");
            assert_eq!(out, b"kept");
        }
    }

    #[test]
    fn another_place_purpose_or_key_is_damage() {
        let s = sealer(Purpose::Record);
        let sealed = s.seal(b"pack 1 offset 64", b"data");
        let other_place = s.open(b"pack 1 offset 128", &sealed).unwrap_err();
        assert!(matches!(other_place, Error::Damaged { .. }));
        let other_purpose = sealer(Purpose::Trailer).open(b"pack 1 offset 64", &sealed);
        assert!(matches!(other_purpose, Err(Error::Damaged { .. })));
        let other_key = Sealer::new(&Key::from_bytes([4; 32]), Purpose::Record);
        assert!(matches!(
            other_key.open(b"pack 1 offset 64", &sealed),
            Err(Error::Damaged { .. })
        ));
        for len in 0..OVERHEAD {
            assert!(matches!(
                s.open(b"pack 1 offset 64", &sealed[..len]),
                Err(Error::Damaged { .. })
            ));
        }
    }
}
