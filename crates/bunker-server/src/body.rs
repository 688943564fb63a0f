//! Request and response bodies: the adapters between hyper's async frames
//! and the blocking store.
//!
//! A response is a full buffer ([`full`]) or a stream fed by a channel
//! ([`channel_body`]; an `Err` item aborts it, so a client never takes a
//! cut stream for a whole one). A large request body is pumped frame by
//! frame ([`pump_body`]) into a bounded channel read by a blocking
//! [`BodyReader`]: the socket is not read while the reader is behind, and a
//! body that ends without its `End` marker is an error, never the end of an
//! image. Small JSON bodies are read whole, within a byte limit and a time
//! limit ([`read_small_body`]).

use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Response body: a full buffer or a stream of frames.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A response body of one buffer.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response body fed by a channel; an `Err` item aborts the response.
pub(crate) struct ChannelBody {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
}

/// A streaming response body fed by `rx`.
pub(crate) fn channel_body(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> Body {
    ChannelBody { rx }.boxed()
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// What the async side sends to a blocking reader of a request body.
pub(crate) enum BodyItem {
    Data(Bytes),
    /// The body ended normally. Without it, a closed channel is an error:
    /// a cut connection must never look like the end of an image.
    End,
    Failed(std::io::Error),
}

/// A blocking `Read` over request body frames sent by the async side.
pub(crate) struct BodyReader {
    rx: mpsc::Receiver<BodyItem>,
    current: Bytes,
    done: bool,
}

impl BodyReader {
    pub(crate) fn new(rx: mpsc::Receiver<BodyItem>) -> BodyReader {
        BodyReader {
            rx,
            current: Bytes::new(),
            done: false,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(BodyItem::Data(b)) => self.current = b,
                Some(BodyItem::End) => self.done = true,
                Some(BodyItem::Failed(e)) => return Err(e),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the upload was cut off before its end",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Pumps a request body into `tx`, at most `max` bytes, each frame within
/// `idle`. Returns the bytes sent, or why the body failed (already sent to
/// the reader as `Failed` too).
pub(crate) async fn pump_body(
    mut body: Incoming,
    tx: mpsc::Sender<BodyItem>,
    max: u64,
    idle: Duration,
) -> Result<u64, ApiError> {
    let mut total = 0u64;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                let e = ApiError::new(
                    bunker_api::ErrorCode::Timeout,
                    format!("no data received for {} s", idle.as_secs()),
                );
                let _ = tx
                    .send(BodyItem::Failed(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        e.message.clone(),
                    )))
                    .await;
                return Err(e);
            }
            Ok(None) => {
                let _ = tx.send(BodyItem::End).await;
                return Ok(total);
            }
            Ok(Some(Err(e))) => {
                let msg = format!("reading the request body failed: {e}");
                let _ = tx
                    .send(BodyItem::Failed(std::io::Error::other(msg.clone())))
                    .await;
                return Err(ApiError::bad_request(msg));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len() as u64;
        if total > max {
            let e = ApiError::new(
                bunker_api::ErrorCode::PayloadTooLarge,
                format!("the body is larger than the server's limit of {max} bytes"),
            );
            let _ = tx
                .send(BodyItem::Failed(std::io::Error::other(e.message.clone())))
                .await;
            return Err(e);
        }
        if tx.send(BodyItem::Data(data)).await.is_err() {
            // The reader stopped (its error is the answer).
            return Ok(total);
        }
    }
}

/// Reads a body of at most `max` bytes (JSON requests).
pub(crate) async fn read_small_body(body: Incoming, max: usize) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(Duration::from_secs(60), limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            bunker_api::ErrorCode::PayloadTooLarge,
            format!("this request's body may be at most {max} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
        Err(_) => Err(ApiError::new(
            bunker_api::ErrorCode::Timeout,
            "the request body took too long",
        )),
    }
}
