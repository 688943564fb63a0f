//! Protocol tests: a hand-written client speaks to the real server
//! code on 127.0.0.1 over a plain file ([`FileSource`]), byte for byte as
//! proto.md says.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use crate::proto::*;
use crate::{Export, ExportError, Exports, FileSource, Overlay, OverlayIdentity};

struct One {
    export: Arc<Export>,
}

impl Exports for One {
    fn open(&self, name: &str) -> Result<Arc<Export>, ExportError> {
        match name {
            "" | "disk" => Ok(self.export.clone()),
            "secret" => Err(ExportError::Denied("the token may not read secret".into())),
            other => Err(ExportError::Unknown(format!("no snapshot {other}"))),
        }
    }
    fn list(&self) -> Vec<String> {
        vec!["disk".into()]
    }
}

const SIZE: usize = 100_000;

fn content() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

/// A server over a file of [`content`], with an overlay if asked.
fn server(dir: &std::path::Path, overlay: bool) -> std::net::SocketAddr {
    let path = dir.join("disk.img");
    std::fs::write(&path, content()).unwrap();
    let source = Arc::new(FileSource::new(std::fs::File::open(&path).unwrap()).unwrap());
    let overlay = overlay.then(|| {
        Arc::new(
            Overlay::open(
                &dir.join("ov"),
                OverlayIdentity {
                    name: "disk".into(),
                    id: 1,
                    blake3: "00".repeat(32),
                    size: SIZE as u64,
                },
            )
            .unwrap(),
        )
    });
    let export = Arc::new(Export {
        name: "disk".into(),
        description: "a test file".into(),
        source,
        overlay,
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || crate::serve(listener, Arc::new(One { export })));
    addr
}

struct Client {
    s: TcpStream,
}

impl Client {
    /// Connects and reads the greeting; sends `flags`.
    fn connect(addr: std::net::SocketAddr, flags: u32) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        assert_eq!(read_u64(&mut s).unwrap(), NBDMAGIC);
        assert_eq!(read_u64(&mut s).unwrap(), IHAVEOPT);
        let hs = read_u16(&mut s).unwrap();
        assert_eq!(hs, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        s.write_all(&flags.to_be_bytes()).unwrap();
        Client { s }
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut m = IHAVEOPT.to_be_bytes().to_vec();
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// One option reply: (type, data).
    fn reply(&mut self, option: u32) -> (u32, Vec<u8>) {
        assert_eq!(read_u64(&mut self.s).unwrap(), REPLY_MAGIC);
        assert_eq!(read_u32(&mut self.s).unwrap(), option);
        let kind = read_u32(&mut self.s).unwrap();
        let len = read_u32(&mut self.s).unwrap();
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        (kind, d)
    }

    fn go(&mut self, name: &str) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&1u16.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.option(OPT_GO, &d);
        let mut out = Vec::new();
        loop {
            let r = self.reply(OPT_GO);
            let last = r.0 != REP_INFO;
            out.push(r);
            if last {
                return out;
            }
        }
    }

    fn meta(&mut self, option: u32, name: &str, queries: &[&str]) -> Vec<(u32, Vec<u8>)> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            d.extend_from_slice(&(q.len() as u32).to_be_bytes());
            d.extend_from_slice(q.as_bytes());
        }
        self.option(option, &d);
        let mut out = Vec::new();
        loop {
            let r = self.reply(option);
            let last = r.0 != REP_META_CONTEXT;
            out.push(r);
            if last {
                return out;
            }
        }
    }

    /// Structured replies, `base:allocation`, then `GO` on "disk".
    fn ready(addr: std::net::SocketAddr) -> Client {
        let mut c = Client::connect(addr, FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        c.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(c.reply(OPT_STRUCTURED_REPLY).0, REP_ACK);
        let r = c.meta(OPT_SET_META_CONTEXT, "disk", &[BASE_ALLOCATION]);
        assert_eq!(r[0].0, REP_META_CONTEXT);
        let r = c.go("disk");
        assert_eq!(r.last().unwrap().0, REP_ACK);
        c
    }

    fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32, data: &[u8]) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// One reply: (error, payload of a structured chunk or nothing),
    /// checking the cookie.
    fn answer(&mut self, cookie: u64) -> (u32, u16, Vec<u8>) {
        let magic = read_u32(&mut self.s).unwrap();
        if magic == SIMPLE_REPLY_MAGIC {
            let error = read_u32(&mut self.s).unwrap();
            assert_eq!(read_u64(&mut self.s).unwrap(), cookie);
            return (error, 0, Vec::new());
        }
        assert_eq!(magic, STRUCTURED_REPLY_MAGIC);
        let flags = read_u16(&mut self.s).unwrap();
        assert_eq!(flags & REPLY_FLAG_DONE, REPLY_FLAG_DONE);
        let kind = read_u16(&mut self.s).unwrap();
        assert_eq!(read_u64(&mut self.s).unwrap(), cookie);
        let len = read_u32(&mut self.s).unwrap();
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        let error = if kind & (1 << 15) != 0 {
            u32::from_be_bytes(d[..4].try_into().unwrap())
        } else {
            0
        };
        (error, kind, d)
    }
}

#[test]
fn a_client_without_fixed_newstyle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server(dir.path(), false);
    let mut c = Client::connect(addr, 0);
    let mut b = [0u8; 1];
    assert_eq!(c.s.read(&mut b).unwrap(), 0, "the server hangs up");
}

#[test]
fn options_are_answered_and_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server(dir.path(), false);
    let mut c = Client::connect(addr, FLAG_C_FIXED_NEWSTYLE);
    c.option(OPT_LIST, &[]);
    let (kind, d) = c.reply(OPT_LIST);
    assert_eq!(kind, REP_SERVER);
    assert_eq!(&d[4..], b"disk");
    assert_eq!(c.reply(OPT_LIST).0, REP_ACK);
    c.option(99, b"xyz");
    let (kind, d) = c.reply(99);
    assert_eq!(kind, REP_ERR_UNSUP);
    assert_eq!(String::from_utf8_lossy(&d), "option 99 is not supported");
    let r = c.meta(OPT_SET_META_CONTEXT, "disk", &[BASE_ALLOCATION]);
    assert_eq!(r[0].0, REP_ERR_INVALID, "structured replies come first");
    let r = c.meta(OPT_LIST_META_CONTEXT, "disk", &[]);
    assert_eq!(r[0].0, REP_META_CONTEXT);
    assert_eq!(&r[0].1[4..], BASE_ALLOCATION.as_bytes());
    let r = c.go("nosuch");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert_eq!(String::from_utf8_lossy(&r[0].1), "no snapshot nosuch");
    let r = c.go("secret");
    assert_eq!(r[0].0, REP_ERR_POLICY);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.reply(OPT_STARTTLS).0, REP_ERR_POLICY);
    // The default export, read-only, with its block sizes.
    let r = c.go("");
    let export = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 0])
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(export.1[2..10].try_into().unwrap()),
        SIZE as u64
    );
    let flags = u16::from_be_bytes(export.1[10..12].try_into().unwrap());
    assert_ne!(flags & FLAG_READ_ONLY, 0);
    assert_ne!(flags & FLAG_CAN_MULTI_CONN, 0);
    let sizes = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d[..2] == [0, 3])
        .unwrap();
    assert_eq!(sizes.1.len(), 14);
    assert_eq!(r.last().unwrap().0, REP_ACK);
    // Simple replies: data follows a zero error.
    c.request(CMD_READ, 0, 7, 10, 5, &[]);
    assert_eq!(c.answer(7).0, 0);
    let mut d = [0u8; 5];
    c.s.read_exact(&mut d).unwrap();
    assert_eq!(&d[..], &content()[10..15]);
}

#[test]
fn a_thousand_requests_beyond_the_end_leave_the_connection_working() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server(dir.path(), false);
    let mut c = Client::ready(addr);
    for i in 0..1000u64 {
        let (kind, offset) = match i % 3 {
            0 => (CMD_READ, SIZE as u64 - 10),
            1 => (CMD_BLOCK_STATUS, u64::MAX - 3),
            _ => (CMD_CACHE, SIZE as u64 + i),
        };
        c.request(kind, 0, i, offset, 4096, &[]);
        let (error, reply, msg) = c.answer(i);
        assert_eq!(error, EINVAL, "request {i}");
        if reply != 0 {
            assert!(String::from_utf8_lossy(&msg).contains("beyond the end"));
        }
    }
    c.request(CMD_READ, 0, 5000, 99_000, 1000, &[]);
    let (error, kind, d) = c.answer(5000);
    assert_eq!((error, kind), (0, REPLY_TYPE_OFFSET_DATA));
    assert_eq!(u64::from_be_bytes(d[..8].try_into().unwrap()), 99_000);
    assert_eq!(&d[8..], &content()[99_000..]);
}

#[test]
fn a_read_only_export_refuses_writes_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server(dir.path(), false);
    let mut c = Client::ready(addr);
    c.request(CMD_WRITE, 0, 1, 0, 3, b"abc");
    assert_eq!(c.answer(1).0, EPERM);
    c.request(CMD_TRIM, 0, 2, 0, 4096, &[]);
    assert_eq!(c.answer(2).0, EPERM);
    c.request(CMD_BLOCK_STATUS, 0, 3, 0, 4096, &[]);
    let (error, kind, d) = c.answer(3);
    assert_eq!((error, kind), (0, REPLY_TYPE_BLOCK_STATUS));
    assert_eq!(d.len(), 12, "one data extent");
    c.request(CMD_FLUSH, 0, 4, 0, 0, &[]);
    assert_eq!(c.answer(4).0, 0);
    c.request(CMD_DISC, 0, 5, 0, 0, &[]);
    let mut b = [0u8; 1];
    assert_eq!(c.s.read(&mut b).unwrap(), 0);
}

#[test]
fn writes_through_the_overlay_read_back_and_the_rest_reads_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let addr = server(dir.path(), true);
    let mut c = Client::ready(addr);
    let data = vec![0xabu8; 5000];
    c.request(CMD_WRITE, 0, 1, 100, 5000, &data);
    assert_eq!(c.answer(1).0, 0);
    c.request(CMD_READ, 0, 2, 0, 12288, &[]);
    let (error, _, d) = c.answer(2);
    assert_eq!(error, 0);
    let mut want = content()[..12288].to_vec();
    want[100..5100].fill(0xab);
    assert_eq!(&d[8..], &want[..]);
    c.request(CMD_WRITE_ZEROES, 0, 3, 50_000, 10_000, &[]);
    assert_eq!(c.answer(3).0, 0);
    c.request(CMD_READ, 0, 4, 49_000, 12_000, &[]);
    let (_, _, d) = c.answer(4);
    let mut want = content()[49_000..61_000].to_vec();
    want[1000..11_000].fill(0);
    assert_eq!(&d[8..], &want[..]);
    c.request(CMD_WRITE, 0, 5, SIZE as u64 - 1, 2, b"xy");
    assert_eq!(c.answer(5).0, ENOSPC);
}
