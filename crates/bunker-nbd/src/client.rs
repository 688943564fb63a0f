//! An NBD client: reads an export of another server (`qemu-nbd`,
//! `nbdkit`, `bunker export`) as a backup source, written from the NBD
//! project's `doc/proto.md`.
//!
//! Fixed newstyle only: `STRUCTURED_REPLY` (when offered), then
//! `SET_META_CONTEXT` for the contexts asked (`base:allocation`,
//! `qemu:dirty-bitmap:NAME`), then `GO`. A context the server does not
//! offer is [`ClientError::NoContext`] naming it, never a silently empty
//! map. In transmission: `READ` (simple or structured replies, hole
//! chunks filled with zeros without transfer), `BLOCK_STATUS` over the
//! whole export in bounded requests, `DISC`.
//!
//! Reads are pipelined: one [`Connection::read_at`] call sends all its
//! requests (of at most [`READ_REQUEST_LEN`]) before reading the replies,
//! so a large read is one round trip. Replies are matched by cookie and
//! checked: a reply that is not for a request in flight, data outside its
//! request, or a request not fully covered is a protocol error.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::proto::*;

/// Bytes per `READ` request: large enough that the request overhead is
/// nothing, small enough for any server (the portable maximum is 32 MiB).
pub const READ_REQUEST_LEN: u32 = 2 << 20;

/// Bytes per `BLOCK_STATUS` request (the length field is 32 bits).
const STATUS_REQUEST_LEN: u64 = 1 << 30;

/// A negotiation reply longer than this is a protocol error.
const MAX_OPTION_REPLY: u32 = 64 << 10;

/// `qemu:dirty-bitmap:*` status flag: the extent was written since the
/// bitmap was created or cleared.
pub const STATE_DIRTY: u32 = 1;

/// Where an export is: `nbd://HOST[:PORT]/EXPORT` or
/// `nbd+unix:///EXPORT?socket=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub address: Address,
    pub export: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `HOST:PORT`, as `TcpStream::connect` takes it.
    Tcp(String),
    Unix(std::path::PathBuf),
}

impl Url {
    /// Whether `s` is meant as an NBD URL (it may still be malformed).
    pub fn is_nbd(s: &str) -> bool {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://")
    }

    /// Parses an NBD URL; the error says what is wrong with it.
    pub fn parse(s: &str) -> std::result::Result<Url, String> {
        if let Some(rest) = s.strip_prefix("nbd+unix://") {
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| format!("{s:?}: an nbd+unix URL needs ?socket=PATH"))?;
            let export = path.strip_prefix('/').unwrap_or(path);
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("{s:?}: an nbd+unix URL needs ?socket=PATH"))?;
            return Ok(Url {
                address: Address::Unix(socket.into()),
                export: export.to_string(),
            });
        }
        let rest = s
            .strip_prefix("nbd://")
            .ok_or_else(|| format!("{s:?} is not an NBD URL (nbd://HOST:PORT/EXPORT)"))?;
        let (host, export) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() {
            return Err(format!("{s:?}: no host (nbd://HOST:PORT/EXPORT)"));
        }
        let has_port = match host.rsplit_once(':') {
            // `[::1]`: the colons are the address's.
            Some(_) if host.ends_with(']') => false,
            Some((_, port)) => {
                port.parse::<u16>()
                    .map_err(|_| format!("{s:?}: port {port:?} is not a number"))?;
                true
            }
            None => false,
        };
        let address = if has_port {
            host.to_string()
        } else {
            format!("{host}:10809")
        };
        Ok(Url {
            address: Address::Tcp(address),
            export: export.to_string(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Address::Tcp(a) => write!(f, "nbd://{a}/{}", self.export),
            Address::Unix(p) => write!(f, "nbd+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

/// Why talking to an NBD server failed, by what the caller does next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nobody answers there: check the address and that the server runs.
    #[error("cannot connect to the NBD server at {address}: {source}")]
    Connect { address: String, source: io::Error },
    /// The server refused the export (unknown name, policy, ...).
    #[error("the NBD server refused export {export:?}: {message}")]
    Refused { export: String, message: String },
    /// A metadata context asked for is not offered: for
    /// `qemu:dirty-bitmap:NAME`, no bitmap NAME is exported.
    #[error("the NBD server does not offer {context:?} for export {export:?}{hint}")]
    NoContext {
        export: String,
        context: String,
        hint: &'static str,
    },
    /// The server answered a request with an error.
    #[error("the NBD server failed {command} of {len} bytes at {offset}: error {errno}{message}")]
    Command {
        command: &'static str,
        offset: u64,
        len: u64,
        errno: u32,
        message: String,
    },
    /// The server broke the protocol (or is not an NBD server).
    #[error("NBD protocol violation by the server: {0}")]
    Protocol(String),
    /// The connection failed or closed mid-way.
    #[error("NBD connection lost: {0}")]
    Io(#[from] io::Error),
}

type Result<T> = std::result::Result<T, ClientError>;

fn violation(what: impl Into<String>) -> ClientError {
    ClientError::Protocol(what.into())
}

/// A run of an export in one block-status context: `flags` as the
/// context defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub offset: u64,
    pub len: u64,
    pub flags: u32,
}

/// A connection in the transmission phase.
pub struct Connection {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: BufWriter<Box<dyn Write + Send>>,
    export: String,
    size: u64,
    flags: u16,
    structured: bool,
    /// Negotiated contexts: (server's id, name).
    contexts: Vec<(u32, String)>,
    next_cookie: u64,
    /// Data bytes received in read replies (holes not counted).
    bytes_received: u64,
}

/// One `READ` in flight: where its bytes go and how many arrived.
struct Pending {
    cookie: u64,
    offset: u64,
    /// Position in the caller's buffer.
    at: usize,
    len: usize,
    covered: usize,
    done: bool,
}

impl Connection {
    /// Connects to `url` and negotiates its export with the given
    /// metadata contexts (none: no block status).
    pub fn connect(url: &Url, contexts: &[&str]) -> Result<Connection> {
        let (reader, writer): (Box<dyn Read + Send>, Box<dyn Write + Send>) = match &url.address {
            Address::Tcp(a) => {
                let connect_err = |source| ClientError::Connect {
                    address: a.clone(),
                    source,
                };
                let s = TcpStream::connect(a).map_err(connect_err)?;
                let _ = s.set_nodelay(true);
                // A server that accepts and then says nothing must not
                // hang the backup forever.
                s.set_read_timeout(Some(Duration::from_secs(300)))
                    .map_err(connect_err)?;
                (Box::new(s.try_clone().map_err(connect_err)?), Box::new(s))
            }
            Address::Unix(p) => {
                let connect_err = |source| ClientError::Connect {
                    address: p.display().to_string(),
                    source,
                };
                let s = std::os::unix::net::UnixStream::connect(p).map_err(connect_err)?;
                s.set_read_timeout(Some(Duration::from_secs(300)))
                    .map_err(connect_err)?;
                (Box::new(s.try_clone().map_err(connect_err)?), Box::new(s))
            }
        };
        let mut c = Connection {
            reader: BufReader::with_capacity(1 << 20, reader),
            writer: BufWriter::with_capacity(64 << 10, writer),
            export: url.export.clone(),
            size: 0,
            flags: 0,
            structured: false,
            contexts: Vec::new(),
            next_cookie: 1,
            bytes_received: 0,
        };
        match c.handshake(contexts) {
            Ok(()) => Ok(c),
            Err(e @ (ClientError::Refused { .. } | ClientError::NoContext { .. })) => {
                // Leave the way the protocol asks, so that the server
                // does not log a broken negotiation.
                let _ = c.send_option(OPT_ABORT, &[]);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The transmission flags the server sent (`proto::FLAG_*`).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Data bytes received by reads so far (zeros sent as holes excluded).
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    fn handshake(&mut self, contexts: &[&str]) -> Result<()> {
        let magic = read_u64(&mut self.reader)?;
        let opt = read_u64(&mut self.reader)?;
        if magic != NBDMAGIC {
            return Err(violation(format!(
                "greeting {magic:#x} is not NBDMAGIC: not an NBD server"
            )));
        }
        if opt != IHAVEOPT {
            return Err(violation(
                "the server speaks oldstyle NBD; only fixed newstyle is supported",
            ));
        }
        let server = read_u16(&mut self.reader)?;
        if server & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(violation(
                "the server does not speak fixed newstyle NBD, which this client needs",
            ));
        }
        let mut flags = FLAG_C_FIXED_NEWSTYLE;
        if server & FLAG_NO_ZEROES != 0 {
            flags |= FLAG_C_NO_ZEROES;
        }
        self.writer.write_all(&flags.to_be_bytes())?;

        self.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (kind, data) = self.option_reply(OPT_STRUCTURED_REPLY)?;
        match kind {
            REP_ACK => self.structured = true,
            k if k & (1 << 31) != 0 => {}
            k => {
                return Err(violation(format!(
                    "reply {k} to STRUCTURED_REPLY ({data:?})"
                )))
            }
        }

        if !contexts.is_empty() {
            self.set_meta_context(contexts)?;
        }

        let mut go = Vec::new();
        push_str32(&mut go, &self.export);
        go.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(OPT_GO, &go)?;
        let mut export = None;
        loop {
            let (kind, data) = self.option_reply(OPT_GO)?;
            match kind {
                REP_INFO => {
                    if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT {
                        let size = u64::from_be_bytes(data[2..10].try_into().expect("8"));
                        let flags = u16::from_be_bytes([data[10], data[11]]);
                        export = Some((size, flags));
                    }
                }
                REP_ACK => break,
                k if k & (1 << 31) != 0 => {
                    return Err(ClientError::Refused {
                        export: self.export.clone(),
                        message: refusal(k, &data),
                    })
                }
                k => return Err(violation(format!("reply {k} to GO"))),
            }
        }
        let (size, flags) =
            export.ok_or_else(|| violation("GO ended without the export's size"))?;
        self.size = size;
        self.flags = flags;
        Ok(())
    }

    /// Asks for `contexts` on the export; each must be granted.
    fn set_meta_context(&mut self, contexts: &[&str]) -> Result<()> {
        if !self.structured {
            return Err(ClientError::NoContext {
                export: self.export.clone(),
                context: contexts[0].to_string(),
                hint: " (the server has no structured replies, so no block status)",
            });
        }
        let mut data = Vec::new();
        push_str32(&mut data, &self.export);
        data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            push_str32(&mut data, c);
        }
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        loop {
            let (kind, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
            match kind {
                REP_META_CONTEXT if data.len() >= 4 => {
                    let id = u32::from_be_bytes(data[..4].try_into().expect("4"));
                    let name = String::from_utf8_lossy(&data[4..]).into_owned();
                    self.contexts.push((id, name));
                }
                REP_ACK => break,
                REP_ERR_UNKNOWN => {
                    return Err(ClientError::Refused {
                        export: self.export.clone(),
                        message: refusal(kind, &data),
                    })
                }
                // The server cannot do block status at all: every context
                // is missing.
                k if k & (1 << 31) != 0 => break,
                k => return Err(violation(format!("reply {k} to SET_META_CONTEXT"))),
            }
        }
        for c in contexts {
            if !self.contexts.iter().any(|(_, n)| n == c) {
                return Err(ClientError::NoContext {
                    export: self.export.clone(),
                    context: c.to_string(),
                    hint: if c.starts_with("qemu:dirty-bitmap:") {
                        " (no such bitmap is exported: qemu-nbd needs -B NAME, and the image \
                         a bitmap of that name; `qemu-img info` lists them)"
                    } else {
                        ""
                    },
                });
            }
        }
        Ok(())
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<()> {
        self.writer.write_all(&IHAVEOPT.to_be_bytes())?;
        self.writer.write_all(&option.to_be_bytes())?;
        self.writer.write_all(&(data.len() as u32).to_be_bytes())?;
        self.writer.write_all(data)?;
        self.writer.flush()?;
        Ok(())
    }

    fn option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>)> {
        let magic = read_u64(&mut self.reader)?;
        if magic != REPLY_MAGIC {
            return Err(violation(format!("option reply magic {magic:#x}")));
        }
        let got = read_u32(&mut self.reader)?;
        if got != option {
            return Err(violation(format!(
                "a reply to option {got} while option {option} was asked"
            )));
        }
        let kind = read_u32(&mut self.reader)?;
        let len = read_u32(&mut self.reader)?;
        if len > MAX_OPTION_REPLY {
            return Err(violation(format!("an option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        self.reader.read_exact(&mut data)?;
        Ok((kind, data))
    }

    fn send_request(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> Result<u64> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&flags.to_be_bytes());
        b[6..8].copy_from_slice(&kind.to_be_bytes());
        b[8..16].copy_from_slice(&cookie.to_be_bytes());
        b[16..24].copy_from_slice(&offset.to_be_bytes());
        b[24..].copy_from_slice(&len.to_be_bytes());
        self.writer.write_all(&b)?;
        Ok(cookie)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ClientError::Command {
                command: "READ",
                offset,
                len,
                errno: EINVAL,
                message: format!(": beyond the export's {} bytes (not sent)", self.size),
            }),
        }
    }

    /// Fills `buf` from `offset`: every request sent first, then the
    /// replies read as they come.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let mut pending = Vec::new();
        let mut at = 0usize;
        while at < buf.len() {
            let len = (buf.len() - at).min(READ_REQUEST_LEN as usize);
            let off = offset + at as u64;
            let cookie = self.send_request(CMD_READ, 0, off, len as u32)?;
            pending.push(Pending {
                cookie,
                offset: off,
                at,
                len,
                covered: 0,
                done: false,
            });
            at += len;
        }
        self.writer.flush()?;
        let mut left = pending.len();
        let mut failed: Option<ClientError> = None;
        while left > 0 {
            let magic = read_u32(&mut self.reader)?;
            let cookie;
            match magic {
                SIMPLE_REPLY_MAGIC => {
                    let error = read_u32(&mut self.reader)?;
                    cookie = read_u64(&mut self.reader)?;
                    let p = find(&mut pending, cookie)?;
                    p.done = true;
                    if error != 0 {
                        failed.get_or_insert(ClientError::Command {
                            command: "READ",
                            offset: p.offset,
                            len: p.len as u64,
                            errno: error,
                            message: String::new(),
                        });
                    } else {
                        let range = p.at..p.at + p.len;
                        self.reader.read_exact(&mut buf[range])?;
                        p.covered = p.len;
                        self.bytes_received += p.len as u64;
                    }
                }
                STRUCTURED_REPLY_MAGIC => {
                    let flags = read_u16(&mut self.reader)?;
                    let kind = read_u16(&mut self.reader)?;
                    cookie = read_u64(&mut self.reader)?;
                    let len = read_u32(&mut self.reader)? as usize;
                    let p = find(&mut pending, cookie)?;
                    match kind {
                        REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                            let at = read_u64(&mut self.reader)?;
                            let n = if kind == REPLY_TYPE_OFFSET_DATA {
                                len.checked_sub(8)
                                    .ok_or_else(|| violation("a data chunk under 8 bytes"))?
                            } else {
                                if len != 12 {
                                    return Err(violation(format!("a hole chunk of {len} bytes")));
                                }
                                read_u32(&mut self.reader)? as usize
                            };
                            let start = at
                                .checked_sub(p.offset)
                                .filter(|s| s + n as u64 <= p.len as u64)
                                .ok_or_else(|| {
                                    violation(format!(
                                        "{n} bytes at {at} for a read of {} at {}",
                                        p.len, p.offset
                                    ))
                                })? as usize;
                            let dst = &mut buf[p.at + start..p.at + start + n];
                            if kind == REPLY_TYPE_OFFSET_DATA {
                                self.reader.read_exact(dst)?;
                                self.bytes_received += n as u64;
                            } else {
                                dst.fill(0);
                            }
                            p.covered += n;
                        }
                        REPLY_TYPE_NONE if len == 0 => {}
                        k if k & (1 << 15) != 0 => {
                            let e = error_payload(&mut self.reader, len)?;
                            failed.get_or_insert(ClientError::Command {
                                command: "READ",
                                offset: e.1.unwrap_or(p.offset),
                                len: p.len as u64,
                                errno: e.0,
                                message: e.2,
                            });
                            p.covered = p.len;
                        }
                        k => {
                            return Err(violation(format!(
                                "reply chunk type {k} ({len} bytes) to READ"
                            )))
                        }
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        p.done = true;
                    }
                }
                m => return Err(violation(format!("reply magic {m:#x}"))),
            }
            let p = find(&mut pending, cookie)?;
            if p.done {
                if p.covered != p.len && failed.is_none() {
                    return Err(violation(format!(
                        "a read of {} bytes at {} answered with {} bytes",
                        p.len, p.offset, p.covered
                    )));
                }
                let i = pending
                    .iter()
                    .position(|q| q.cookie == cookie)
                    .expect("found");
                pending.swap_remove(i);
                left -= 1;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The runs of every negotiated context over the whole export, in
    /// the order the contexts were asked: adjacent runs of equal flags
    /// merged, covering `0..size` exactly.
    pub fn block_status(&mut self) -> Result<Vec<(String, Vec<Status>)>> {
        let mut maps: Vec<(u32, String, Vec<Status>)> = self
            .contexts
            .iter()
            .map(|(id, n)| (*id, n.clone(), Vec::new()))
            .collect();
        let end_of = |m: &Vec<Status>| m.last().map_or(0, |s| s.offset + s.len);
        loop {
            let from = maps.iter().map(|m| end_of(&m.2)).min().unwrap_or(self.size);
            if from >= self.size {
                break;
            }
            let len = (self.size - from).min(STATUS_REQUEST_LEN) as u32;
            let cookie = self.send_request(CMD_BLOCK_STATUS, 0, from, len)?;
            self.writer.flush()?;
            loop {
                let magic = read_u32(&mut self.reader)?;
                if magic == SIMPLE_REPLY_MAGIC {
                    let errno = read_u32(&mut self.reader)?;
                    let _ = read_u64(&mut self.reader)?;
                    return Err(ClientError::Command {
                        command: "BLOCK_STATUS",
                        offset: from,
                        len: len.into(),
                        errno,
                        message: String::new(),
                    });
                }
                if magic != STRUCTURED_REPLY_MAGIC {
                    return Err(violation(format!("reply magic {magic:#x}")));
                }
                let flags = read_u16(&mut self.reader)?;
                let kind = read_u16(&mut self.reader)?;
                let got = read_u64(&mut self.reader)?;
                let n = read_u32(&mut self.reader)?;
                if got != cookie {
                    return Err(violation(format!("a reply for cookie {got}, not {cookie}")));
                }
                match kind {
                    REPLY_TYPE_BLOCK_STATUS if n >= 12 && (n - 4) % 8 == 0 => {
                        let id = read_u32(&mut self.reader)?;
                        let mut raw = vec![0u8; (n - 4) as usize];
                        self.reader.read_exact(&mut raw)?;
                        let map = maps.iter_mut().find(|m| m.0 == id).ok_or_else(|| {
                            violation(format!("block status for context {id}, not negotiated"))
                        })?;
                        let mut pos = from;
                        for d in raw.chunks_exact(8) {
                            let l = u32::from_be_bytes(d[..4].try_into().expect("4")) as u64;
                            let f = u32::from_be_bytes(d[4..].try_into().expect("4"));
                            if l == 0 {
                                return Err(violation("a block status extent of length 0"));
                            }
                            push_status(&mut map.2, pos, (pos + l).min(self.size), f);
                            pos += l;
                            if pos >= self.size {
                                break;
                            }
                        }
                    }
                    REPLY_TYPE_NONE if n == 0 => {}
                    k if k & (1 << 15) != 0 => {
                        let (errno, _, message) = error_payload(&mut self.reader, n as usize)?;
                        return Err(ClientError::Command {
                            command: "BLOCK_STATUS",
                            offset: from,
                            len: len.into(),
                            errno,
                            message,
                        });
                    }
                    k => {
                        return Err(violation(format!(
                            "reply chunk type {k} ({n} bytes) to BLOCK_STATUS"
                        )))
                    }
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    break;
                }
            }
            let now = maps.iter().map(|m| end_of(&m.2)).min().unwrap_or(self.size);
            if now <= from {
                return Err(violation(format!(
                    "block status at {from} did not describe that offset in every context"
                )));
            }
        }
        Ok(maps.into_iter().map(|(_, n, m)| (n, m)).collect())
    }

    /// Ends the session politely (`DISC`); dropping the connection
    /// without it is also safe for a read-only client.
    pub fn disconnect(mut self) -> Result<()> {
        self.send_request(CMD_DISC, 0, 0, 0)?;
        self.writer.flush()?;
        Ok(())
    }
}

/// Appends `[start, end)` with `flags` to `map`, skipping what the map
/// already covers and merging with an equal last run.
fn push_status(map: &mut Vec<Status>, start: u64, end: u64, flags: u32) {
    let covered = map.last().map_or(0, |s| s.offset + s.len);
    let start = start.max(covered);
    if start >= end {
        return;
    }
    match map.last_mut() {
        Some(last) if last.flags == flags && last.offset + last.len == start => {
            last.len += end - start;
        }
        _ => map.push(Status {
            offset: start,
            len: end - start,
            flags,
        }),
    }
}

fn find(pending: &mut [Pending], cookie: u64) -> Result<&mut Pending> {
    pending
        .iter_mut()
        .find(|p| p.cookie == cookie)
        .ok_or_else(|| {
            violation(format!(
                "a reply for cookie {cookie}, which is not in flight"
            ))
        })
}

/// An error chunk's payload: errno, offset (for `ERROR_OFFSET`), message.
fn error_payload(r: &mut impl Read, len: usize) -> Result<(u32, Option<u64>, String)> {
    if !(6..=MAX_OPTION_REPLY as usize).contains(&len) {
        return Err(violation(format!("an error chunk of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    let errno = u32::from_be_bytes(data[..4].try_into().expect("4"));
    let mlen = u16::from_be_bytes([data[4], data[5]]) as usize;
    let msg = data
        .get(6..6 + mlen)
        .ok_or_else(|| violation("an error message longer than its chunk"))?;
    let offset = data
        .get(6 + mlen..6 + mlen + 8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8")));
    let message = String::from_utf8_lossy(msg);
    Ok((
        errno,
        offset,
        if message.is_empty() {
            String::new()
        } else {
            format!(" ({message})")
        },
    ))
}

fn refusal(kind: u32, data: &[u8]) -> String {
    let what = match kind {
        REP_ERR_UNKNOWN => "no such export",
        REP_ERR_POLICY => "not allowed",
        REP_ERR_UNSUP => "not supported",
        REP_ERR_INVALID => "invalid request",
        REP_ERR_TOO_BIG => "request too big",
        _ => "refused",
    };
    let text = String::from_utf8_lossy(data);
    if text.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {text}")
    }
}

fn push_str32(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;

    use super::*;
    use crate::{Export, ExportError, Exports, FileSource};

    struct One(Arc<Export>);

    impl Exports for One {
        fn open(&self, name: &str) -> std::result::Result<Arc<Export>, ExportError> {
            match name {
                "disk" => Ok(self.0.clone()),
                other => Err(ExportError::Unknown(format!("no snapshot {other}"))),
            }
        }
        fn list(&self) -> Vec<String> {
            vec!["disk".into()]
        }
    }

    /// bunker's own NBD server over a file of `content`: the URL of
    /// export `disk`.
    fn server(dir: &std::path::Path, content: &[u8]) -> String {
        let path = dir.join("disk.img");
        std::fs::write(&path, content).unwrap();
        let source = Arc::new(FileSource::new(std::fs::File::open(&path).unwrap()).unwrap());
        let export = Arc::new(Export {
            name: "disk".into(),
            description: String::new(),
            source,
            overlay: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || crate::serve(listener, Arc::new(One(export))));
        format!("nbd://{addr}/disk")
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 253) as u8).collect()
    }

    #[test]
    fn urls_parse_with_default_port_and_unix_sockets() {
        let u = Url::parse("nbd://host/vol").unwrap();
        assert_eq!(u.address, Address::Tcp("host:10809".into()));
        assert_eq!(u.export, "vol");
        let u = Url::parse("nbd://127.0.0.1:2000/").unwrap();
        assert_eq!(u.address, Address::Tcp("127.0.0.1:2000".into()));
        assert_eq!(u.export, "");
        let u = Url::parse("nbd://[::1]").unwrap();
        assert_eq!(u.address, Address::Tcp("[::1]:10809".into()));
        let u = Url::parse("nbd+unix:///d?socket=/run/s.sock").unwrap();
        assert_eq!(u.address, Address::Unix("/run/s.sock".into()));
        assert_eq!(u.export, "d");
        assert!(Url::parse("nbd://h:port/x").unwrap_err().contains("port"));
        assert!(Url::parse("nbd+unix:///d").unwrap_err().contains("socket="));
        assert!(Url::parse("nbd:///x").unwrap_err().contains("no host"));
    }

    #[test]
    fn a_pipelined_read_returns_the_export_exactly() {
        let dir = tempfile::tempdir().unwrap();
        // Several requests per read, the last one short.
        let data = content(5 * READ_REQUEST_LEN as usize + 12_345);
        let url = Url::parse(&server(dir.path(), &data)).unwrap();
        let mut c = Connection::connect(&url, &[BASE_ALLOCATION]).unwrap();
        assert_eq!(c.size(), data.len() as u64);
        let mut buf = vec![0u8; data.len()];
        c.read_at(0, &mut buf).unwrap();
        assert!(buf == data);
        let mut part = vec![0u8; 3 << 20];
        c.read_at(777, &mut part).unwrap();
        assert!(part[..] == data[777..777 + part.len()]);
        assert_eq!(c.bytes_received(), (data.len() + part.len()) as u64);
        // Beyond the end: refused before anything is sent; the
        // connection still works.
        let e = c
            .read_at(data.len() as u64 - 10, &mut [0u8; 20])
            .unwrap_err();
        assert!(
            matches!(e, ClientError::Command { errno: EINVAL, .. }),
            "{e}"
        );
        let status = c.block_status().unwrap();
        assert_eq!(
            status,
            vec![(
                BASE_ALLOCATION.to_string(),
                vec![Status {
                    offset: 0,
                    len: data.len() as u64,
                    flags: 0
                }]
            )]
        );
        c.disconnect().unwrap();
    }

    #[test]
    fn an_unknown_export_or_a_missing_context_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let url = server(dir.path(), &content(4096));
        let wrong = Url::parse(&url.replace("/disk", "/nosuch")).unwrap();
        let e = Connection::connect(&wrong, &[]).err().unwrap();
        assert!(matches!(e, ClientError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("no snapshot nosuch"), "{e}");
        let url = Url::parse(&url).unwrap();
        let e = Connection::connect(&url, &[BASE_ALLOCATION, "qemu:dirty-bitmap:b0"])
            .err()
            .unwrap();
        assert!(
            matches!(&e, ClientError::NoContext { context, .. } if context == "qemu:dirty-bitmap:b0"),
            "{e}"
        );
        let e = Connection::connect(&Url::parse("nbd://127.0.0.1:1/x").unwrap(), &[])
            .err()
            .unwrap();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
