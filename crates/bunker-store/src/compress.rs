//! The compression decision: zstd when it pays, raw bytes when it does not.
//!
//! Incompressible chunks (media, encrypted blocks) must not cost a full zstd
//! pass: a large chunk is first probed with four 8 KiB samples at level 1
//! (about 1% of a 1 MiB chunk); if they shrink by less than 5% the chunk is
//! stored raw. Otherwise the whole chunk is compressed at the repository's
//! level and kept raw anyway if that saved less than 1/32.

use std::cell::RefCell;

use bunker_crypt::seal::{NONCE_LEN, TAG_LEN};

use crate::format::pack::Codec;
use crate::pack::Payload;

/// Chunks smaller than this skip the probe: compressing them is cheap.
const PROBE_MIN_LEN: usize = 128 << 10;
const SAMPLE_LEN: usize = 8 << 10;

pub(crate) enum Stored<'a> {
    Raw(&'a [u8]),
    Zstd(Vec<u8>),
    /// A zstd frame that arrived compressed (a client's upload), stored as
    /// it came once it was decoded and its BLAKE3 checked.
    Frame(&'a [u8]),
    /// A zstd frame at `[NONCE_LEN..len - TAG_LEN]` of its buffer, with
    /// room to be sealed in place ([`compress_sealable`]).
    Sealable(Vec<u8>),
    /// A [`Stored::Sealable`] frame once sealed
    /// (`crate::crypt::RepoCrypt::seal_stored`).
    Sealed(Vec<u8>),
}

impl Stored<'_> {
    pub(crate) fn codec(&self) -> Codec {
        match self {
            Stored::Raw(_) => Codec::Raw,
            Stored::Zstd(_) | Stored::Frame(_) | Stored::Sealable(_) | Stored::Sealed(_) => {
                Codec::Zstd
            }
        }
    }

    /// The stored bytes before sealing; `None` once sealed.
    #[cfg(test)]
    pub(crate) fn plain(&self) -> Option<&[u8]> {
        match self {
            Stored::Raw(b) | Stored::Frame(b) => Some(b),
            Stored::Zstd(v) => Some(v),
            Stored::Sealable(v) => Some(&v[NONCE_LEN..v.len() - TAG_LEN]),
            Stored::Sealed(_) => None,
        }
    }

    /// What the pack writer gets: the bytes, or the sealable buffer.
    pub(crate) fn payload(&mut self) -> Payload<'_> {
        match self {
            Stored::Raw(b) | Stored::Frame(b) => Payload::Bytes(b),
            Stored::Zstd(v) => Payload::Bytes(v),
            Stored::Sealable(v) => Payload::Sealable(v),
            Stored::Sealed(sealed) => Payload::Sealed(sealed),
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        self.plain().expect("not sealed")
    }
}

thread_local! {
    static COMPRESSORS: RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn with_compressor<T>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> T,
) -> Option<T> {
    COMPRESSORS.with(|c| {
        let mut c = c.borrow_mut();
        if !c.iter().any(|(l, _)| *l == level) {
            c.push((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.iter_mut().find(|(l, _)| *l == level)?;
        Some(f(comp))
    })
}

fn looks_incompressible(raw: &[u8]) -> bool {
    let last = raw.len() - SAMPLE_LEN;
    let mut sampled = 0usize;
    let mut packed = 0usize;
    for at in [0, last / 3, last * 2 / 3, last] {
        let sample = &raw[at..at + SAMPLE_LEN];
        match with_compressor(1, |c| c.compress(sample)) {
            Some(Ok(out)) => packed += out.len(),
            _ => return false,
        }
        sampled += SAMPLE_LEN;
    }
    packed * 20 > sampled * 19
}

pub(crate) fn compress(raw: &[u8], level: i32) -> Stored<'_> {
    match zstd_frame(raw, level, 0, 0) {
        Some(out) => Stored::Zstd(out),
        None => Stored::Raw(raw),
    }
}

/// The zstd frame of `raw` after `head` bytes of zeros and followed by
/// `tail` more, if compressing pays (the probe, then a saving of at least
/// 1/32); `None`: store it raw.
fn zstd_frame(raw: &[u8], level: i32, head: usize, tail: usize) -> Option<Vec<u8>> {
    if raw.len() >= PROBE_MIN_LEN && looks_incompressible(raw) {
        return None;
    }
    let bound = zstd::zstd_safe::compress_bound(raw.len());
    let mut buf = with_compressor(level, |c| {
        let mut buf = Vec::with_capacity(head + bound + tail);
        buf.resize(head, 0);
        let mut at = std::io::Cursor::new(buf);
        at.set_position(head as u64);
        c.compress_to_buffer(raw, &mut at).map(|_| at.into_inner())
    })?
    .ok()?;
    if buf.len() - head >= raw.len() - raw.len() / 32 {
        return None;
    }
    buf.resize(buf.len() + tail, 0);
    Some(buf)
}

/// [`compress`] for an encrypted repository: the same decision and bytes,
/// but a zstd frame is written after [`NONCE_LEN`] bytes of room and
/// followed by [`TAG_LEN`], so the pack writer seals it where it is
/// instead of copying it into a sealing buffer (the copy cost as much as
/// the cipher: docs/BENCHMARKS.md, "Encryption").
pub(crate) fn compress_sealable(raw: &[u8], level: i32) -> Stored<'_> {
    match zstd_frame(raw, level, NONCE_LEN, TAG_LEN) {
        Some(buf) => Stored::Sealable(buf),
        None => Stored::Raw(raw),
    }
}

/// How a chunk that arrived as the zstd `frame` of `raw` is stored: the
/// frame as it is when it saves what [`compress`] asks of its own output
/// (no second compression pass), else the raw bytes (it did not compress,
/// so recompressing would not pay either).
pub(crate) fn keep_frame<'a>(raw: &'a [u8], frame: &'a [u8]) -> Stored<'a> {
    if frame.len() < raw.len() - raw.len() / 32 {
        Stored::Frame(frame)
    } else {
        Stored::Raw(raw)
    }
}

/// Decodes a zstd frame of at most `max_len` bytes with the decoder that
/// reads records back, so a frame stored as it came decodes on read
/// exactly as it decoded here.
pub(crate) fn decompress_frame(frame: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    with_decompressor(|dec| {
        dec.decompress(frame, max_len)
            .map_err(|e| format!("not a zstd frame of at most {max_len} bytes: {e}"))
    })
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> Result<T, String>,
) -> Result<T, String> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        f(d.as_mut().ok_or("no decompressor")?)
    })
}

/// Decompresses `stored` into exactly `raw_len` bytes, or says why not.
pub(crate) fn decompress(codec: Codec, stored: Vec<u8>, raw_len: usize) -> Result<Vec<u8>, String> {
    match codec {
        Codec::Raw if stored.len() == raw_len => Ok(stored),
        Codec::Raw => Err(format!(
            "raw record holds {} bytes, expected {raw_len}",
            stored.len()
        )),
        Codec::Zstd => with_decompressor(|dec| {
            let out = dec
                .decompress(&stored, raw_len)
                .map_err(|e| format!("zstd: {e}"))?;
            if out.len() != raw_len {
                return Err(format!(
                    "decompressed to {} bytes, expected {raw_len}",
                    out.len()
                ));
            }
            Ok(out)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_is_raw_text_is_zstd_and_both_round_trip() {
        let mut random = vec![0u8; 1 << 20];
        let mut s = 1u64;
        for b in random.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (s >> 56) as u8;
        }
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("2026-11-22 INFO request {i} served in 3ms\n").into_bytes())
            .collect();
        let r = compress(&random, 3);
        assert_eq!(r.codec(), Codec::Raw);
        let t = compress(&text, 3);
        assert_eq!(t.codec(), Codec::Zstd);
        assert!(t.bytes().len() < text.len() / 5);
        assert_eq!(
            decompress(Codec::Zstd, t.bytes().to_vec(), text.len()).unwrap(),
            text
        );
        assert!(decompress(Codec::Zstd, t.bytes().to_vec(), text.len() - 1).is_err());
        assert!(decompress(Codec::Zstd, vec![1, 2, 3], 10).is_err());
    }

    #[test]
    fn a_sealable_frame_is_the_same_frame_with_room_around_it() {
        let text: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("2026-12-07 INFO sealed {i}\n").into_bytes())
            .collect();
        let mut random = vec![0u8; 256 << 10];
        getrandom::fill(&mut random).unwrap();
        for data in [&text, &random] {
            let (plain, mut sealable) = (compress(data, 1), compress_sealable(data, 1));
            assert_eq!(plain.codec(), sealable.codec());
            assert_eq!(plain.bytes(), sealable.bytes());
            match sealable.payload() {
                Payload::Sealable(buf) => {
                    assert_eq!(plain.codec(), Codec::Zstd);
                    assert_eq!(buf.len(), NONCE_LEN + plain.bytes().len() + TAG_LEN);
                }
                Payload::Bytes(b) => assert_eq!(b, plain.bytes()),
                Payload::Sealed(_) => panic!("compression does not seal"),
            }
        }
    }
}
