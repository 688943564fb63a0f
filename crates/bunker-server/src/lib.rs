//! bunker's HTTP server.
//!
//! # Brief overview
//! [`State::open`] opens (or creates) the repository in the data directory
//! and the token store beside it; [`run`] serves a bound listener until a
//! shutdown future resolves, then stops accepting and gives in-flight
//! requests a grace period. Each request is authenticated ([`tokens`]),
//! routed ([`routes`]), and its errors mapped to a stable JSON error
//! ([`error`]).
//!
//! Raw uploads stream the request body through a bounded channel into the
//! store's ingest pipeline on a blocking thread (the socket is not read
//! while the pipeline is behind); restores decode chunks ahead of the
//! client within a memory budget and hold no thread while it is slow
//! (`restore`). Memory per ingest stream: the store's 67 MiB plus at
//! most 32 body frames; buffered chunk uploads and `missing` queries share
//! `body_memory_bytes`, restores `restore_memory_bytes`. What one token may
//! hold at once is capped ([`limits`]), and a client that accepts no
//! response bytes for `write_timeout_secs` is disconnected (`deadline`).
//!
//! Guarantees: an upload that does not finish (disconnect, timeout, shutdown,
//! a hash mismatch) commits nothing; restores never send a byte of a chunk
//! that failed verification (the response is aborted instead); no error
//! message carries a filesystem path; slots, quotas, budgets and gauges are
//! held by guards, so a request dropped midway gives them back.

pub mod admin_token;
pub mod checks;
pub mod config;
mod deadline;
pub mod error;
pub mod limits;
pub mod metrics;
mod restore;
mod routes;
pub mod sessions;
pub mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

pub use config::Config;
use error::ApiError;
use limits::{Budget, Quota, QuotaGuard};
use metrics::Metrics;
use sessions::Sessions;
use tokens::TokenStore;

/// Response body: a full buffer or a stream of frames.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Everything a request handler may touch.
pub struct State {
    pub config: Config,
    pub repo: bunker_store::Repository,
    pub tokens: TokenStore,
    /// Last verify and drill per snapshot.
    pub checks: checks::Checks,
    pub sessions: Sessions,
    pub metrics: Metrics,
    streams: Arc<Semaphore>,
    /// One server-side drill at a time: it reads on every core.
    server_drills: Semaphore,
    /// Ingest slots per token.
    stream_quota: Arc<Quota>,
    restores: restore::Restores,
    /// Buffered chunk uploads and `missing` queries.
    bodies: Budget,
    shutting_down: AtomicBool,
    data_dir: String,
}

impl State {
    /// Opens the repository at `config.data` (creating it on first start)
    /// and the token store in `<data>/server/`. On first start writes an
    /// admin token to `<data>/admin.token` (mode 0600) and returns its path
    /// (see [`admin_token`]).
    pub fn open(config: Config) -> Result<(Arc<State>, Option<PathBuf>), String> {
        let repo = bunker_store::Repository::open_or_create(
            &config.data,
            bunker_store::CreateOptions::default(),
        )
        .map_err(|e| format!("opening the repository at {}: {e}", config.data.display()))?;
        // The repository lock is ours: no other server writes these now.
        for file in ["tokens.json", "checks.json"] {
            bunker_store::remove_stale_temps_of(&config.data.join("server").join(file))
                .map_err(|e| format!("removing stale temp files of {file}: {e}"))?;
        }
        let (tokens, admin_file) = admin_token::open_or_init(&config.data)?;
        tokens.warn_narrowed_scopes(&repo);
        let checks = checks::Checks::open(&config.data.join("server"))?;
        let data_dir = std::fs::canonicalize(&config.data)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| config.data.display().to_string());
        Ok((
            Arc::new(State {
                streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
                server_drills: Semaphore::new(1),
                stream_quota: Quota::new(config.max_streams_per_token),
                restores: restore::Restores {
                    budget: Budget::new(
                        config
                            .restore_memory_bytes
                            .max(u64::from(repo.chunker_params().max_len)),
                    ),
                    quota: Quota::new(config.max_restores_per_token),
                },
                bodies: Budget::new(config.body_memory_bytes),
                config,
                repo,
                tokens,
                checks,
                sessions: Sessions::default(),
                metrics: Metrics::default(),
                shutting_down: AtomicBool::new(false),
                data_dir,
            }),
            admin_file,
        ))
    }

    pub(crate) fn store_error(&self, e: bunker_store::Error) -> ApiError {
        ApiError::from_store(e, &self.data_dir)
    }

    /// 503 once shutdown has begun: no new ingest work is started.
    pub(crate) fn accepting(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                bunker_api::ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    /// An ingest slot (a raw upload or an open upload session) for token
    /// `p`, or 503 when all are taken or `p` holds its share.
    pub(crate) fn stream_permit(&self, p: &tokens::Principal) -> Result<IngestSlot, ApiError> {
        self.accepting()?;
        let quota = self.stream_quota.take(p.id).ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "this token already holds {} ingest streams (max_streams_per_token); \
                     retry when one ends",
                    self.stream_quota.per_token()
                ),
            )
        })?;
        let stream = self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "all {} ingest streams are busy; retry later",
                    self.config.max_streams
                ),
            )
        })?;
        Ok(IngestSlot {
            _stream: stream,
            _quota: quota,
        })
    }

    /// A place among `p`'s restores, or 503 when it has
    /// `max_restores_per_token` running.
    pub(crate) fn restore_permit(&self, p: &tokens::Principal) -> Result<QuotaGuard, ApiError> {
        self.restores.quota.take(p.id).ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "this token already has {} restores in progress \
                     (max_restores_per_token); retry when one ends",
                    self.restores.quota.per_token()
                ),
            )
        })
    }

    /// `n` bytes of the request-body budget, waiting a moment for them; 503
    /// if they do not come free.
    pub(crate) async fn body_memory(
        &self,
        n: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.bodies.take(n, BODY_MEMORY_WAIT).await.ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::Overloaded,
                format!(
                    "the server's {} bytes for request bodies (body_memory_bytes) are in use; \
                     retry later",
                    self.bodies.bytes()
                ),
            )
        })
    }
}

/// How long a chunk upload or `missing` query waits for body memory
/// before it gets 503.
pub const BODY_MEMORY_WAIT: Duration = Duration::from_secs(2);

/// An ingest slot: one of `max_streams`, and one of its token's
/// `max_streams_per_token`. Both are given back when it is dropped.
pub struct IngestSlot {
    _stream: tokio::sync::OwnedSemaphorePermit,
    _quota: QuotaGuard,
}

/// One unit of a metrics gauge while it lives: held by the work itself,
/// so the gauge falls back however the work ends (a request future dropped
/// midway included).
pub(crate) struct Counted {
    state: Arc<State>,
    gauge: fn(&Metrics) -> &std::sync::atomic::AtomicI64,
}

impl Counted {
    pub(crate) fn new(
        state: &Arc<State>,
        gauge: fn(&Metrics) -> &std::sync::atomic::AtomicI64,
    ) -> Counted {
        gauge(&state.metrics).fetch_add(1, Ordering::Relaxed);
        Counted {
            state: state.clone(),
            gauge,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.gauge)(&self.state.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections served at once: `configured`, within the open-file limit
/// (raised to its hard maximum first: every connection is a file, and
/// idle or slow clients must not starve the rest), less 256 files for
/// packs, index runs and manifests.
fn connection_limit(configured: usize) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut files = getrlimit(Resource::Nofile);
    // No hard maximum: ask for what Linux allows by default (nr_open).
    let target = files.maximum.unwrap_or(1 << 20);
    if files.current.is_some_and(|c| c < target) {
        files.current = Some(target);
        if let Err(e) = setrlimit(Resource::Nofile, files) {
            tracing::debug!("cannot raise the open-file limit: {e}");
        }
    }
    let files = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let fit = usize::try_from(files.saturating_sub(256)).unwrap_or(usize::MAX);
    if fit < configured {
        tracing::warn!(
            configured,
            serving = fit.max(1),
            "the open-file limit allows fewer connections than max_connections"
        );
    }
    configured.min(fit).max(1)
}

/// Connections the kernel queues for us before `accept` (it clamps this to
/// `net.core.somaxconn`). std and tokio ask for 128 and 1024: a burst of
/// clients larger than that has SYNs dropped and retried a second later.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds a non-blocking listening socket on `addr` with `LISTEN_BACKLOG`.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Loads a rustls server config from PEM files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("reading private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `listener` until `shutdown` resolves; then stops accepting and
/// waits up to the configured grace period for in-flight requests. Requests
/// still running after it are aborted when the runtime stops (an upload cut
/// this way commits nothing).
pub async fn run(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(connection_limit(
        state.config.max_connections,
    )));
    let reaper = tokio::spawn(reap_sessions(state.clone()));
    let collector =
        (state.config.gc_interval_secs > 0).then(|| tokio::spawn(scheduled_gc(state.clone())));
    let header_timeout = Duration::from_secs(state.config.header_timeout_secs.max(1));
    let write_timeout = state.config.write_timeout();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.map_err(std::io::Error::other)?,
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = deadline::WriteDeadline::new(stream, write_timeout);
        let state = state.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(state, req).await) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(64 << 10)
                .max_buf_size(256 << 10);
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            let conn = http.serve_connection(TokioIo::new(tls_stream), svc);
                            if let Err(e) = watcher.watch(conn).await {
                                tracing::debug!(%peer, "connection ended: {e}");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    reaper.abort();
    if let Some(c) = collector {
        c.abort();
    }
    state.shutting_down.store(true, Ordering::Relaxed);
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight requests",
        state.config.grace()
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all requests finished"),
        _ = tokio::time::sleep(state.config.grace()) => tracing::warn!("grace period over: aborting the requests still running"),
    }
    Ok(())
}

/// Runs GC every `gc_interval_secs` (a run already in progress, from
/// `POST /v1/gc`, makes this one skip).
async fn scheduled_gc(state: Arc<State>) {
    let every = Duration::from_secs(state.config.gc_interval_secs);
    loop {
        tokio::time::sleep(every).await;
        let st = state.clone();
        let opts = bunker_store::GcOptions {
            rewrite_below: state.config.gc_rewrite_below,
            dry_run: false,
        };
        match tokio::task::spawn_blocking(move || routes::run_gc(&st, &opts)).await {
            Ok(Ok(r)) => tracing::info!(
                reclaimed = r.bytes_reclaimed,
                seconds = r.seconds,
                "scheduled GC finished"
            ),
            Ok(Err(e)) => tracing::warn!("scheduled GC: {e}"),
            Err(e) => tracing::error!("scheduled GC task failed: {e}"),
        }
    }
}

async fn reap_sessions(state: Arc<State>) {
    let idle = Duration::from_secs(state.config.session_idle_secs);
    loop {
        tokio::time::sleep(Duration::from_secs(5).min(idle)).await;
        let n = state.sessions.expire(idle);
        if n > 0 {
            tracing::info!(sessions = n, "expired idle upload sessions");
        }
    }
}

async fn handle(state: Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let started = Instant::now();
    let (route, result) = routes::dispatch(&state, req).await;
    let resp = result.unwrap_or_else(|e| {
        state.metrics.error(e.code.as_str());
        if e.code.status() >= 500 {
            tracing::warn!(route, "{e}");
        }
        error_response(&e)
    });
    state
        .metrics
        .observe(route, resp.status().as_u16(), started.elapsed());
    resp
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error_response(e: &ApiError) -> Response<Body> {
    let body = bunker_api::ErrorBody {
        error: bunker_api::ErrorDetail {
            code: e.code,
            message: e.message.clone(),
        },
    };
    let status = StatusCode::from_u16(e.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &body);
    if e.code.status() == 503 {
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("5"),
        );
    }
    r
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
    mut body: hyper::body::Incoming,
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

pub(crate) fn not_allowed() -> ApiError {
    ApiError::new(
        bunker_api::ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

pub(crate) type Reply = Result<Response<Body>, ApiError>;

/// A server running on its own thread and runtime (the demo, benchmarks).
/// Dropping it shuts it down gracefully and waits for it.
pub struct Background {
    pub url: String,
    /// The admin token written on first start, if this start created it.
    pub admin_token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Opens the repository and serves it on `config.listen` (port 0 picks
/// one) in the background.
pub fn spawn(config: Config) -> Result<Background, String> {
    let listener =
        listen(config.listen).map_err(|e| format!("listening on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (state, admin_file) = State::open(config)?;
    let admin_token = match admin_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| format!("reading {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("bunker-server".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("starting the server runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async {
                match TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = run(l, state.clone(), None, async {
                            let _ = rx.await;
                        })
                        .await
                        {
                            tracing::error!("server stopped: {e}");
                        }
                    }
                    Err(e) => tracing::error!("server listener: {e}"),
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(10));
            if let Err(e) = state.repo.close() {
                tracing::warn!("closing the repository: {e}");
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(Background {
        url: format!("http://{addr}"),
        admin_token,
        stop: Some(tx),
        thread: Some(thread),
    })
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
