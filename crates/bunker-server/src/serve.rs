//! Listening and serving: the listening socket, the accept loop, TLS,
//! graceful shutdown, and a server on a thread of its own ([`spawn`]).
//!
//! Like mini-redis's `server::run`, [`run`] takes a bound listener and a
//! shutdown future. Connections are capped by a semaphore within the
//! open-file limit; each gets a header-read timeout and a write deadline
//! (`deadline`). On shutdown the server stops accepting, refuses new
//! ingest work, and gives in-flight requests `grace_secs` before they are
//! aborted (an upload cut this way commits nothing).

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::StartError;
use crate::maintenance::{reap_sessions, scheduled_gc};
use crate::state::State;
use crate::{deadline, routes};

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
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| StartError::Pem {
            what: "certificate",
            path: cert.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(StartError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| StartError::Pem {
        what: "private key",
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| StartError::Tls { source })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| StartError::CertificateMismatch { source })?;
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
    let pulls = crate::sync_jobs::start(&state);
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
                async move { Ok::<_, Infallible>(routes::handle(state, req).await) }
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
    // A run in progress on its blocking thread is refused its next chunk
    // or commit from here on, and ends.
    for p in pulls {
        p.abort();
    }
    state.begin_shutdown();
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
pub fn spawn(config: Config) -> Result<Background, StartError> {
    let listening = |source| StartError::Listen {
        addr: config.listen,
        source,
    };
    let listener = listen(config.listen).map_err(listening)?;
    let addr = listener.local_addr().map_err(listening)?;
    let (state, admin_file) = State::open(config)?;
    let admin_token = match admin_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .map_err(|e| StartError::io("reading", &f, e))?
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
        .map_err(|source| StartError::Thread { source })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_tls_files_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = tls_acceptor(&cert, &key).err().unwrap();
        assert!(
            matches!(&e, StartError::Pem { what: "certificate", path, .. } if *path == cert),
            "{e}"
        );
        assert!(e.to_string().starts_with("reading certificate "), "{e}");
        std::fs::write(&cert, "no PEM here\n").unwrap();
        let e = tls_acceptor(&cert, &key).err().unwrap();
        assert!(
            matches!(&e, StartError::NoCertificate { path } if *path == cert),
            "{e}"
        );
        assert!(e.to_string().starts_with("no certificate in "), "{e}");
    }

    #[test]
    fn a_busy_address_is_a_listen_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data: dir.path().join("data"),
            listen: taken.local_addr().unwrap(),
            ..Config::default()
        };
        let e = spawn(config).err().unwrap();
        assert!(matches!(e, StartError::Listen { .. }), "{e}");
        assert!(e.to_string().starts_with("listening on 127.0.0.1:"), "{e}");
    }
}
