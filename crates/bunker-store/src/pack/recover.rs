//! Reading a sealed pack's trailer, and recovering staging packs left by a
//! crash: scan records from the header, cut the file at the first torn or
//! invalid record, then seal what is left.
//!
//! Recovered records were never referenced by a committed snapshot (a
//! commit seals the pack first), but they are kept: a backup interrupted by
//! the crash and sent again deduplicates against them. GC reclaims them if
//! nothing ever does.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use bunker_crypt::{KeyId, OVERHEAD};

use crate::backend::PackBackend;
use crate::crypt::{trailer_ad, RepoCrypt};
use crate::error::IoContext;
use crate::format::checksum;
use crate::format::pack::{
    Footer, PackHeader, RecordHeader, TrailerEntry, FOOTER_LEN, HEADER_LEN, RECORD_HEADER_LEN,
    TRAILER_ENTRY_LEN,
};
use crate::pack::{write_seal, SealedPack};
use crate::{durable, Error, PackId, Result};

/// The records listed in a sealed pack's trailer, checked against the
/// footer's checksum and the file length; in an encrypted repository the
/// pack must name the repository's key and its trailer must open.
pub(crate) fn read_trailer(
    backend: &dyn PackBackend,
    crypt: Option<&RepoCrypt>,
    pack: PackId,
) -> Result<Vec<TrailerEntry>> {
    let file = backend.describe(pack);
    let corrupt = |reason: String| Error::Corrupt {
        file: file.clone(),
        pack: Some(pack),
        offset: None,
        chunk: None,
        reason,
    };
    let len = backend.pack_len(pack)?;
    if len < (HEADER_LEN + FOOTER_LEN) as u64 {
        return Err(corrupt(format!(
            "pack is {len} bytes, too short to be sealed"
        )));
    }
    let header = PackHeader::decode(&file, &backend.read(pack, 0, HEADER_LEN)?)?;
    check_pack_key(&header, crypt).map_err(corrupt)?;
    let overhead = if crypt.is_some() { OVERHEAD } else { 0 };
    let footer = Footer::decode_in(
        &backend.read(pack, len - FOOTER_LEN as u64, FOOTER_LEN)?,
        len,
        crypt.is_some(),
    )
    .map_err(corrupt)?;
    let count =
        usize::try_from(footer.count).map_err(|_| corrupt("record count overflows".into()))?;
    let trailer = backend.read(
        pack,
        footer.trailer_offset,
        count * TRAILER_ENTRY_LEN + overhead,
    )?;
    if checksum(&[&trailer]) != footer.trailer_checksum {
        return Err(corrupt("trailer checksum mismatch".into()));
    }
    let trailer = match crypt {
        Some(c) => c
            .trailers()
            .open(&trailer_ad(pack, footer.count), &trailer)
            .map_err(|_| {
                corrupt("sealed trailer does not open: damaged, or from another pack".into())
            })?,
        None => trailer,
    };
    let mut entries = Vec::with_capacity(count);
    let mut expect = HEADER_LEN as u64;
    for slot in trailer.chunks_exact(TRAILER_ENTRY_LEN) {
        let e = TrailerEntry::decode(slot).map_err(corrupt)?;
        if e.offset != expect {
            return Err(corrupt(format!(
                "trailer entry at {} does not follow the previous record",
                e.offset
            )));
        }
        expect = e.offset + RECORD_HEADER_LEN as u64 + u64::from(e.stored_len);
        entries.push(e);
    }
    if expect != footer.trailer_offset {
        return Err(corrupt("trailer does not cover the records".into()));
    }
    Ok(entries)
}

/// `Ok` when a pack's header names the key the repository uses (none in a
/// clear repository); else why not, naming both key ids.
fn check_pack_key(
    header: &PackHeader,
    crypt: Option<&RepoCrypt>,
) -> std::result::Result<(), String> {
    let expected = crypt.map(|c| c.key_id().0);
    if header.key_id == expected {
        return Ok(());
    }
    let name = |k: Option<[u8; 16]>| match k {
        Some(k) => format!("key {}", KeyId(k)),
        None => "no key (clear)".to_string(),
    };
    Err(format!(
        "pack is sealed with {}, the repository uses {}",
        name(header.key_id),
        name(expected)
    ))
}

/// A torn tail cut from a staging pack on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The staging file.
    pub file: String,
    /// Where the cut was made (the file's length afterwards; 0 when the
    /// whole file went).
    pub offset: u64,
    /// How many bytes were cut.
    pub cut_bytes: u64,
    /// Why the bytes from `offset` on were not a valid record.
    pub reason: String,
}

/// Recovers the staging file of `pack`: keeps the valid prefix of records,
/// cuts the rest (logged, and returned), seals and publishes it. The pack is
/// `None` when no record survived (the file is removed).
pub(crate) fn recover_staged(
    backend: &dyn PackBackend,
    repo_id: [u8; 16],
    crypt: Option<&RepoCrypt>,
    pack: PackId,
) -> Result<(Option<SealedPack>, Option<TornTail>)> {
    let path = backend.staging_path(pack);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .at(&path)?;
    let file_len = file.metadata().at(&path)?.len();
    let mut head = [0u8; HEADER_LEN];
    let header_ok = file_len >= HEADER_LEN as u64
        && file.read_exact_at(&mut head, 0).is_ok()
        && PackHeader::decode(&path.display().to_string(), &head).is_ok_and(|h| {
            h.pack == pack && h.repo_id == repo_id && check_pack_key(&h, crypt).is_ok()
        });
    if !header_ok {
        tracing::warn!(
            pack = pack.0,
            bytes = file_len,
            "removing staging pack without a valid header"
        );
        durable::remove_file(&path)?;
        let torn = TornTail {
            file: path.display().to_string(),
            offset: 0,
            cut_bytes: file_len,
            reason: "no valid pack header".into(),
        };
        return Ok((None, Some(torn)));
    }
    let mut entries = Vec::new();
    let mut offset = HEADER_LEN as u64;
    let mut rec = [0u8; RECORD_HEADER_LEN];
    let mut stored = Vec::new();
    let cut_reason = loop {
        if offset == file_len {
            break None;
        }
        if offset + RECORD_HEADER_LEN as u64 > file_len {
            break Some("torn record header".to_string());
        }
        file.read_exact_at(&mut rec, offset).at(&path)?;
        let h = match RecordHeader::decode_in(&rec, crypt.is_some()) {
            Ok(h) => h,
            Err(why) => break Some(why),
        };
        let end = offset + RECORD_HEADER_LEN as u64 + u64::from(h.stored_len);
        if end > file_len {
            break Some("torn record data".to_string());
        }
        stored.resize(h.stored_len as usize, 0);
        file.read_exact_at(&mut stored, offset + RECORD_HEADER_LEN as u64)
            .at(&path)?;
        if !h.verify(&rec, &stored) {
            break Some("record checksum mismatch".to_string());
        }
        // A record that does not open is damage the checksum cannot see
        // (written whole, then altered consistently): cut there too.
        if let Some(c) = crypt {
            if c.records()
                .open_in_place(
                    c.record_ad(&h.id, h.raw_len, h.codec, pack, offset)
                        .as_ref(),
                    &mut stored,
                )
                .is_err()
            {
                break Some("sealed record does not open".to_string());
            }
        }
        entries.push(TrailerEntry {
            id: h.id,
            offset,
            raw_len: h.raw_len,
            stored_len: h.stored_len,
            codec: h.codec,
        });
        offset = end;
    };
    let torn = cut_reason.map(|reason| {
        tracing::warn!(
            pack = pack.0,
            offset,
            cut_bytes = file_len - offset,
            kept_records = entries.len(),
            "cut torn tail of staging pack: {reason}"
        );
        TornTail {
            file: path.display().to_string(),
            offset,
            cut_bytes: file_len - offset,
            reason,
        }
    });
    if entries.is_empty() {
        durable::remove_file(&path)?;
        return Ok((None, torn));
    }
    write_seal(&file, pack, offset, &entries, crypt).at(&path)?;
    durable::sync_data(&file, &path)?;
    backend.store_sealed(pack, &path)?;
    tracing::info!(
        pack = pack.0,
        records = entries.len(),
        "recovered and sealed staging pack"
    );
    Ok((Some(SealedPack { pack, entries }), torn))
}
