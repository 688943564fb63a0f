//! A counting TCP proxy in front of an S3 endpoint: the requests a server
//! sends, by kind, and the bytes it gets back.
//!
//! Requests are parsed only far enough to classify them (request line,
//! `Content-Length`); bytes pass through unchanged in both directions, so
//! the server sees the store exactly as without it. A request with a
//! chunked body ends the counting on its connection (object_store sends
//! lengths; a `chunked` one shows up as `unparsed`). Its threads live until
//! the process exits.
//!
//! With a [`Link`] it also behaves like a network between a server and its
//! object store: each request waits `latency` before it goes on, and the
//! answers of all connections share `bytes_per_sec`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Requests by what they cost on an S3 bill, and the bytes answered.
#[derive(Clone, Copy, Default, Debug)]
pub struct Counts {
    pub put: u64,
    pub get: u64,
    pub head: u64,
    pub list: u64,
    pub delete: u64,
    /// Create, part, complete, abort (and their listing).
    pub multipart: u64,
    pub unparsed: u64,
    /// Bytes from the store to the server (all responses).
    pub down_bytes: u64,
}

impl Counts {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            put: self.put - earlier.put,
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
            multipart: self.multipart - earlier.multipart,
            unparsed: self.unparsed - earlier.unparsed,
            down_bytes: self.down_bytes - earlier.down_bytes,
        }
    }

    pub fn requests(&self) -> u64 {
        self.put + self.get + self.head + self.list + self.delete + self.multipart + self.unparsed
    }

    fn count(&mut self, method: &str, target: &str) {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let has = |k: &str| {
            query
                .split('&')
                .any(|p| p == k || p.starts_with(&format!("{k}=")))
        };
        // `/bucket` alone (path style) is a bucket-level request: a listing.
        let bucket_level = target
            .split('?')
            .next()
            .unwrap_or("")
            .trim_matches('/')
            .split('/')
            .count()
            <= 1;
        let slot = match method {
            _ if has("uploadId") || has("uploads") => &mut self.multipart,
            "GET" if has("list-type") || bucket_level => &mut self.list,
            "GET" => &mut self.get,
            "HEAD" => &mut self.head,
            "PUT" => &mut self.put,
            "DELETE" => &mut self.delete,
            "POST" if has("delete") => &mut self.delete,
            _ => &mut self.unparsed,
        };
        *slot += 1;
    }
}

pub struct Proxy {
    /// `http://127.0.0.1:PORT`: give this to the server as its endpoint.
    pub url: String,
    counts: Arc<Mutex<Counts>>,
}

/// A network to shape the proxy's traffic like.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Added before each request goes on (round trip and first byte).
    pub latency: Duration,
    /// Shared by the answers on all connections.
    pub bytes_per_sec: u64,
}

/// When the link is next free to send: answers queue behind each other,
/// so an idle link saves up no burst.
struct Pace {
    link: Link,
    next_free: Mutex<Instant>,
}

impl Pace {
    /// Waits until `n` more bytes have had their time on the link.
    fn send(&self, n: usize) {
        let due = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let took = Duration::from_secs_f64(n as f64 / self.link.bytes_per_sec as f64);
            *next = (*next).max(Instant::now()) + took;
            *next
        };
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards every connection to
    /// `upstream` (`http://HOST:PORT`).
    pub fn start(upstream: &str) -> anyhow::Result<Proxy> {
        Proxy::start_over(upstream, None)
    }

    /// [`Proxy::start`], shaped like `link` when there is one.
    pub fn start_over(upstream: &str, link: Option<Link>) -> anyhow::Result<Proxy> {
        let pace = link.map(|link| {
            Arc::new(Pace {
                link,
                next_free: Mutex::new(Instant::now()),
            })
        });
        let to = upstream
            .strip_prefix("http://")
            .with_context(|| format!("{upstream} is not an http:// endpoint"))?
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(store) = TcpStream::connect(&to) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = store.set_nodelay(true);
                let (Ok(client2), Ok(store2)) = (client.try_clone(), store.try_clone()) else {
                    continue;
                };
                let (c1, c2) = (c.clone(), c.clone());
                let (p1, p2) = (pace.clone(), pace.clone());
                std::thread::spawn(move || requests(client, store, &c1, p1.as_deref()));
                std::thread::spawn(move || responses(store2, client2, &c2, p2.as_deref()));
            }
        });
        Ok(Proxy { url, counts })
    }

    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Client to store: one request head at a time, counted, then its body.
fn requests(client: TcpStream, mut store: TcpStream, counts: &Mutex<Counts>, pace: Option<&Pace>) {
    let mut from = BufReader::with_capacity(256 << 10, client);
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            match from.read_until(b'\n', &mut head) {
                Ok(0) | Err(_) => {
                    let _ = store.shutdown(Shutdown::Write);
                    return;
                }
                Ok(_) => {}
            }
        }
        let text = String::from_utf8_lossy(&head);
        let mut first = text.lines().next().unwrap_or("").split_whitespace();
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let header = |name: &str| {
            text.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let body_len: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        {
            let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
            match chunked {
                true => c.unparsed += 1,
                false => c.count(method, target),
            }
        }
        if let Some(pace) = pace {
            std::thread::sleep(pace.link.latency);
        }
        if store.write_all(&head).is_err() {
            return;
        }
        let copied = match chunked {
            true => std::io::copy(&mut from, &mut store).map(|_| false),
            false => {
                std::io::copy(&mut (&mut from).take(body_len), &mut store).map(|n| n == body_len)
            }
        };
        if !matches!(copied, Ok(true)) {
            let _ = store.shutdown(Shutdown::Write);
            return;
        }
    }
}

/// Store to client, unchanged, counting the bytes.
fn responses(
    mut store: TcpStream,
    mut client: TcpStream,
    counts: &Mutex<Counts>,
    pace: Option<&Pace>,
) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match store.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                counts.lock().unwrap_or_else(|e| e.into_inner()).down_bytes += n as u64;
                if let Some(pace) = pace {
                    pace.send(n);
                }
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn requests_are_classified_by_their_bill_line() {
        let mut c = Counts::default();
        c.count("PUT", "/b/p/packs/00/00/1.pack");
        c.count("PUT", "/b/p/packs/00/00/2.pack?partNumber=1&uploadId=x");
        c.count("POST", "/b/p/packs/00/00/2.pack?uploads");
        c.count("GET", "/b?list-type=2&prefix=p%2F");
        c.count("GET", "/b/p/packs/00/00/1.pack");
        c.count("HEAD", "/b/p/config");
        c.count("DELETE", "/b/p/packs/00/00/1.pack");
        c.count("GET", "/b?uploads");
        assert_eq!(
            (c.put, c.get, c.head, c.list, c.delete, c.multipart),
            (1, 1, 1, 1, 1, 3)
        );
    }
}
