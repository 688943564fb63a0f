//! Fixed newstyle negotiation, up to the transmission phase: the
//! server's greeting, the client's flags, then options until `GO`,
//! `EXPORT_NAME` or `ABORT`. Every option gets an answer (an error names
//! what was wrong); only a client that does not speak fixed newstyle, or
//! sends garbage instead of an option, is disconnected.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use crate::proto::*;
use crate::{Export, ExportError, Exports, MAX_PAYLOAD};

/// An option's data longer than this is refused (`ERR_TOO_BIG`): names
/// and queries are short.
const MAX_OPTION_LEN: u32 = 64 << 10;

pub(crate) struct Conn {
    pub reader: BufReader<TcpStream>,
    pub writer: BufWriter<TcpStream>,
}

/// What the handshake agreed on.
pub(crate) struct Session {
    pub export: Arc<Export>,
    pub structured: bool,
    /// `base:allocation` was selected for this export.
    pub allocation: bool,
}

fn refuse(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The transmission flags of `export`.
pub(crate) fn transmission_flags(export: &Export) -> u16 {
    let mut f = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_CACHE | FLAG_CAN_MULTI_CONN;
    if export.overlay.is_some() {
        f |= FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
    } else {
        f |= FLAG_READ_ONLY;
    }
    f
}

/// Runs the handshake; `None` when the client ended it (`ABORT`, or an
/// unknown name with `EXPORT_NAME`, which cannot be answered otherwise).
pub(crate) fn negotiate(conn: &mut Conn, exports: &dyn Exports) -> io::Result<Option<Session>> {
    let w = &mut conn.writer;
    w.write_all(&NBDMAGIC.to_be_bytes())?;
    w.write_all(&IHAVEOPT.to_be_bytes())?;
    w.write_all(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes())?;
    w.flush()?;
    let client = read_u32(&mut conn.reader)?;
    if client & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(refuse(format!(
            "refused: the client does not speak fixed newstyle NBD (client flags {client:#x}); \
             oldstyle and plain newstyle clients are not supported"
        )));
    }
    if client & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(refuse(format!(
            "refused: the client sets unknown flags ({client:#x})"
        )));
    }
    let no_zeroes = client & FLAG_C_NO_ZEROES != 0;
    let mut structured = false;
    // The export `base:allocation` was last selected for.
    let mut meta_for: Option<String> = None;
    loop {
        let magic = read_u64(&mut conn.reader)?;
        if magic != IHAVEOPT {
            return Err(refuse(format!(
                "the client sent {magic:#x} where an option should start"
            )));
        }
        let option = read_u32(&mut conn.reader)?;
        let len = read_u32(&mut conn.reader)?;
        if len > MAX_OPTION_LEN {
            io::copy(
                &mut (&mut conn.reader).take(u64::from(len)),
                &mut io::sink(),
            )?;
            reply_error(
                conn,
                option,
                REP_ERR_TOO_BIG,
                &format!("option data of {len} bytes; at most {MAX_OPTION_LEN}"),
            )?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        conn.reader.read_exact(&mut data)?;
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(e) => {
                        // This option has no error reply: the session ends.
                        tracing::info!("NBD export {name:?} refused: {e}");
                        return Ok(None);
                    }
                };
                let w = &mut conn.writer;
                w.write_all(&export.size().to_be_bytes())?;
                w.write_all(&transmission_flags(&export).to_be_bytes())?;
                if !no_zeroes {
                    w.write_all(&[0u8; 124])?;
                }
                w.flush()?;
                let allocation = meta_for.as_deref() == Some(name.as_str());
                return Ok(Some(Session {
                    export,
                    structured,
                    allocation,
                }));
            }
            OPT_ABORT => {
                option_reply(&mut conn.writer, option, REP_ACK, &[])?;
                conn.writer.flush()?;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply_error(conn, option, REP_ERR_INVALID, "LIST takes no data")?;
                    continue;
                }
                for name in exports.list() {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    option_reply(&mut conn.writer, option, REP_SERVER, &d)?;
                }
                option_reply(&mut conn.writer, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info(&data) else {
                    reply_error(conn, option, REP_ERR_INVALID, "malformed INFO/GO data")?;
                    continue;
                };
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(e) => {
                        export_error(conn, option, &name, e)?;
                        continue;
                    }
                };
                send_info(conn, option, &export, &infos)?;
                option_reply(&mut conn.writer, option, REP_ACK, &[])?;
                conn.writer.flush()?;
                if option == OPT_GO {
                    let allocation = meta_for.as_deref() == Some(name.as_str());
                    return Ok(Some(Session {
                        export,
                        structured,
                        allocation,
                    }));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    reply_error(
                        conn,
                        option,
                        REP_ERR_INVALID,
                        "STRUCTURED_REPLY takes no data",
                    )?;
                    continue;
                }
                structured = true;
                option_reply(&mut conn.writer, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = option == OPT_SET_META_CONTEXT;
                if set {
                    // Replaced even when this one fails.
                    meta_for = None;
                }
                if set && !structured {
                    reply_error(
                        conn,
                        option,
                        REP_ERR_INVALID,
                        "SET_META_CONTEXT needs structured replies first",
                    )?;
                    continue;
                }
                let Some((name, queries)) = parse_meta(&data) else {
                    reply_error(conn, option, REP_ERR_INVALID, "malformed META_CONTEXT data")?;
                    continue;
                };
                if let Err(e) = exports.open(&name) {
                    export_error(conn, option, &name, e)?;
                    continue;
                }
                let selected = if set {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries.iter().any(|q| q == "base:" || q == BASE_ALLOCATION)
                };
                if selected {
                    let id: u32 = if set { 1 } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    option_reply(&mut conn.writer, option, REP_META_CONTEXT, &d)?;
                    if set {
                        meta_for = Some(name);
                    }
                }
                option_reply(&mut conn.writer, option, REP_ACK, &[])?;
            }
            OPT_STARTTLS => reply_error(
                conn,
                option,
                REP_ERR_POLICY,
                "bunker export does not offer TLS yet: keep it on loopback, or tunnel it (ssh -L)",
            )?,
            other => reply_error(
                conn,
                other,
                REP_ERR_UNSUP,
                &format!("option {other} is not supported"),
            )?,
        }
        conn.writer.flush()?;
    }
}

fn reply_error(conn: &mut Conn, option: u32, kind: u32, message: &str) -> io::Result<()> {
    option_reply(&mut conn.writer, option, kind, message.as_bytes())?;
    conn.writer.flush()
}

fn export_error(conn: &mut Conn, option: u32, name: &str, e: ExportError) -> io::Result<()> {
    tracing::info!("NBD export {name:?} refused: {e}");
    let kind = match e {
        ExportError::Denied(_) => REP_ERR_POLICY,
        ExportError::Unknown(_) | ExportError::Failed(_) => REP_ERR_UNKNOWN,
    };
    reply_error(conn, option, kind, &e.to_string())
}

/// The `NBD_REP_INFO` replies of `INFO`/`GO`: always the export and the
/// block sizes; the name and description when asked.
fn send_info(conn: &mut Conn, option: u32, export: &Export, infos: &[u16]) -> io::Result<()> {
    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
    d.extend_from_slice(&export.size().to_be_bytes());
    d.extend_from_slice(&transmission_flags(export).to_be_bytes());
    option_reply(&mut conn.writer, option, REP_INFO, &d)?;
    let preferred = export.source.preferred_block().clamp(512, MAX_PAYLOAD);
    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
    d.extend_from_slice(&1u32.to_be_bytes());
    d.extend_from_slice(&preferred.to_be_bytes());
    d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    option_reply(&mut conn.writer, option, REP_INFO, &d)?;
    for (kind, text) in [
        (INFO_NAME, &export.name),
        (INFO_DESCRIPTION, &export.description),
    ] {
        if infos.contains(&kind) {
            let mut d = kind.to_be_bytes().to_vec();
            d.extend_from_slice(text.as_bytes());
            option_reply(&mut conn.writer, option, REP_INFO, &d)?;
        }
    }
    Ok(())
}

/// `INFO`/`GO` data: name length, name, count, information requests.
fn parse_info(data: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut r = data;
    let len = read_u32(&mut r).ok()? as usize;
    if len > r.len() {
        return None;
    }
    let name = String::from_utf8(r[..len].to_vec()).ok()?;
    r = &r[len..];
    let n = read_u16(&mut r).ok()? as usize;
    if r.len() != 2 * n {
        return None;
    }
    let infos = r
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some((name, infos))
}

/// `LIST_`/`SET_META_CONTEXT` data: name length, name, count, queries.
fn parse_meta(data: &[u8]) -> Option<(String, Vec<String>)> {
    let mut r = data;
    let len = read_u32(&mut r).ok()? as usize;
    if len > r.len() {
        return None;
    }
    let name = String::from_utf8(r[..len].to_vec()).ok()?;
    r = &r[len..];
    let n = read_u32(&mut r).ok()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = read_u32(&mut r).ok()? as usize;
        if len > r.len() {
            return None;
        }
        queries.push(String::from_utf8(r[..len].to_vec()).ok()?);
        r = &r[len..];
    }
    r.is_empty().then_some((name, queries))
}
