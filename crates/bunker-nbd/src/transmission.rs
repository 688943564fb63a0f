//! The transmission phase: one request at a time, answered in order. Every
//! request but `DISC` gets an answer; a bad one (beyond the end, unknown
//! command, write to a read-only export) gets an error and the connection
//! stays up. Only a broken frame (wrong magic, a write payload over
//! [`MAX_PAYLOAD`]) or a closed socket ends it.

use std::io::{self, Read, Write};

use crate::handshake::{Conn, Session};
use crate::proto::*;
use crate::{SourceError, MAX_PAYLOAD};

pub(crate) fn run(conn: &mut Conn, s: Session) -> io::Result<()> {
    let size = s.export.size();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(&mut conn.reader) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let len = u64::from(req.len);
        let in_range = req.offset.checked_add(len).is_some_and(|e| e <= size);
        let beyond = || {
            format!(
                "bytes {}..{} are beyond the end of the export ({size} bytes)",
                req.offset,
                req.offset.saturating_add(len)
            )
        };
        let overlay = s.export.overlay.as_ref();
        let read_only =
            "the export is read-only (start bunker export with --overlay FILE to write)";
        match req.kind {
            CMD_DISC => return Ok(()),
            CMD_READ => {
                if !in_range {
                    fail(conn, &s, req.cookie, EINVAL, &beyond(), None)?;
                } else if req.len > MAX_PAYLOAD {
                    let m = format!("read of {len} bytes; at most {MAX_PAYLOAD}");
                    fail(conn, &s, req.cookie, EINVAL, &m, None)?;
                } else if req.flags & !CMD_FLAG_FUA != 0 {
                    let m = format!("unknown read flags {:#x}", req.flags);
                    fail(conn, &s, req.cookie, EINVAL, &m, None)?;
                } else {
                    read(conn, &s, req, &mut buf)?;
                }
            }
            CMD_WRITE => {
                if req.len > MAX_PAYLOAD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a write of {len} bytes; at most {MAX_PAYLOAD}: disconnected"),
                    ));
                }
                buf.resize(req.len as usize, 0);
                conn.reader.read_exact(&mut buf)?;
                match overlay {
                    None => fail(conn, &s, req.cookie, EPERM, read_only, None)?,
                    Some(_) if !in_range => fail(conn, &s, req.cookie, ENOSPC, &beyond(), None)?,
                    Some(o) => {
                        let r = o.write(&*s.export.source, req.offset, &buf).and_then(|()| {
                            if req.flags & CMD_FLAG_FUA != 0 {
                                o.flush()
                            } else {
                                Ok(())
                            }
                        });
                        answer(conn, &s, req.cookie, r.map_err(|e| e.to_string()))?;
                    }
                }
            }
            CMD_WRITE_ZEROES | CMD_TRIM => match overlay {
                None => fail(conn, &s, req.cookie, EPERM, read_only, None)?,
                Some(_) if !in_range => fail(conn, &s, req.cookie, ENOSPC, &beyond(), None)?,
                Some(o) => {
                    // TRIM is a hint the overlay does not take: the bytes
                    // stay as they were, which the protocol allows.
                    let r = if req.kind == CMD_WRITE_ZEROES {
                        o.write_zeroes(&*s.export.source, req.offset, len)
                    } else {
                        Ok(())
                    };
                    let r = r.and_then(|()| {
                        if req.flags & CMD_FLAG_FUA != 0 {
                            o.flush()
                        } else {
                            Ok(())
                        }
                    });
                    answer(conn, &s, req.cookie, r.map_err(|e| e.to_string()))?;
                }
            },
            CMD_FLUSH => {
                let r = overlay.map_or(Ok(()), |o| o.flush());
                answer(conn, &s, req.cookie, r.map_err(|e| e.to_string()))?;
            }
            CMD_CACHE => {
                if in_range {
                    s.export.source.prefetch(req.offset, len);
                    simple_reply(&mut conn.writer, req.cookie, 0)?;
                } else {
                    fail(conn, &s, req.cookie, EINVAL, &beyond(), None)?;
                }
            }
            CMD_BLOCK_STATUS => {
                if !s.allocation {
                    let m = "BLOCK_STATUS needs base:allocation selected (SET_META_CONTEXT)";
                    fail(conn, &s, req.cookie, EINVAL, m, None)?;
                } else if !in_range || len == 0 {
                    fail(conn, &s, req.cookie, EINVAL, &beyond(), None)?;
                } else {
                    block_status(conn, &s, req)?;
                }
            }
            other => {
                let m = format!("unknown command {other}");
                fail(conn, &s, req.cookie, EINVAL, &m, None)?;
            }
        }
        conn.writer.flush()?;
    }
}

/// Success, or `EIO` with `message`.
fn answer(conn: &mut Conn, s: &Session, cookie: u64, r: Result<(), String>) -> io::Result<()> {
    match r {
        Ok(()) => simple_reply(&mut conn.writer, cookie, 0),
        Err(m) => fail(conn, s, cookie, EIO, &m, None),
    }
}

/// An error reply: an error chunk with the message (and offset) when
/// structured replies were negotiated, else a simple reply.
fn fail(
    conn: &mut Conn,
    s: &Session,
    cookie: u64,
    error: u32,
    message: &str,
    offset: Option<u64>,
) -> io::Result<()> {
    if s.structured {
        error_chunk(&mut conn.writer, cookie, error, message, offset)
    } else {
        simple_reply(&mut conn.writer, cookie, error)
    }
}

/// A read within the export: a hole when it is all zero chunks (with
/// structured replies), else its bytes; a damaged chunk is `EIO` at that
/// chunk's first byte within the request.
fn read(conn: &mut Conn, s: &Session, req: Request, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = u64::from(req.len);
    if len == 0 {
        return if s.structured {
            chunk_header(
                &mut conn.writer,
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_NONE,
                0,
            )
        } else {
            simple_reply(&mut conn.writer, req.cookie, 0)
        };
    }
    if s.structured {
        if let Ok(ext) = s.export.extents(req.offset, len) {
            if ext.first().is_some_and(|e| e.zero && e.len >= len) {
                chunk_header(
                    &mut conn.writer,
                    req.cookie,
                    REPLY_FLAG_DONE,
                    REPLY_TYPE_OFFSET_HOLE,
                    12,
                )?;
                conn.writer.write_all(&req.offset.to_be_bytes())?;
                return conn.writer.write_all(&req.len.to_be_bytes());
            }
        }
    }
    buf.resize(req.len as usize, 0);
    match s.export.read_at(req.offset, buf) {
        Ok(()) if s.structured => {
            chunk_header(
                &mut conn.writer,
                req.cookie,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + req.len,
            )?;
            conn.writer.write_all(&req.offset.to_be_bytes())?;
            conn.writer.write_all(buf)
        }
        Ok(()) => {
            simple_reply(&mut conn.writer, req.cookie, 0)?;
            conn.writer.write_all(buf)
        }
        Err(e) => {
            tracing::warn!(
                "NBD read of bytes {}..{}: {e}",
                req.offset,
                req.offset + len
            );
            let at = match &e {
                SourceError::Damaged { offset, .. } => Some((*offset).max(req.offset)),
                SourceError::Failed(_) => None,
            };
            fail(conn, s, req.cookie, EIO, &e.to_string(), at)
        }
    }
}

/// The `base:allocation` extents of the request: zero runs as holes that
/// read as zeros, the rest as allocated data.
fn block_status(conn: &mut Conn, s: &Session, req: Request) -> io::Result<()> {
    let len = u64::from(req.len);
    let mut extents = match s.export.extents(req.offset, len) {
        Ok(e) if !e.is_empty() => e,
        Ok(_) => {
            return fail(conn, s, req.cookie, EIO, "no extents", None);
        }
        Err(e) => return fail(conn, s, req.cookie, EIO, &e.to_string(), None),
    };
    if req.flags & CMD_FLAG_REQ_ONE != 0 {
        extents.truncate(1);
    }
    let mut payload = Vec::with_capacity(4 + 8 * extents.len());
    payload.extend_from_slice(&1u32.to_be_bytes());
    for e in &extents {
        let flags = if e.zero { STATE_HOLE | STATE_ZERO } else { 0 };
        // Within a request of at most u32::MAX bytes.
        payload.extend_from_slice(&(e.len.min(len) as u32).to_be_bytes());
        payload.extend_from_slice(&flags.to_be_bytes());
    }
    chunk_header(
        &mut conn.writer,
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        payload.len() as u32,
    )?;
    conn.writer.write_all(&payload)
}
