//! `bunker serve`: open (or create) the repository and serve the HTTP API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    /// Data directory: the repository and the server's tokens.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TOML file with any of the settings below (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Concurrent ingest streams before 503.
    #[arg(long)]
    max_streams: Option<usize>,
    /// Largest upload, bytes.
    #[arg(long)]
    max_body_bytes: Option<u64>,
    /// Seconds a request body may send nothing before it is cut.
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Seconds in-flight requests get after SIGTERM/SIGINT.
    #[arg(long)]
    grace_secs: Option<u64>,
    /// Average chunk size of a new repository (64KiB to 1MiB, a power of
    /// two; default 256KiB). An existing repository keeps its own: a
    /// different value is refused.
    #[arg(long, value_parser = bunker_testdata::image::parse_size)]
    chunk_size: Option<u64>,
    /// Repository key file (`bunker key create`), or its passphrase-wrapped
    /// copy (`bunker key export`): a new repository is created encrypted
    /// with it, an existing one must have been; without it the repository
    /// must be clear.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// For a passphrase-wrapped --key-file (`bunker key export`): a file
    /// whose first line is the passphrase (default: the environment
    /// variable BUNKER_KEY_PASSPHRASE).
    #[arg(long)]
    key_passphrase_file: Option<PathBuf>,
    #[command(flatten)]
    s3: super::settings::S3Args,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::init_logging();
    let mut config = super::settings::load(args.config.as_deref(), &args.s3)?;
    if let Some(v) = args.data {
        config.data = v;
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if let Some(v) = args.max_streams {
        config.max_streams = v;
    }
    if let Some(v) = args.max_body_bytes {
        config.max_body_bytes = v;
    }
    if let Some(v) = args.idle_timeout_secs {
        config.idle_timeout_secs = v;
    }
    if let Some(v) = args.grace_secs {
        config.grace_secs = v;
    }
    if let Some(v) = args.chunk_size {
        config.chunk_size = Some(v);
    }
    if let Some(v) = args.key_file {
        config.encryption.key_file = Some(v);
    }
    if let Some(v) = args.key_passphrase_file {
        config.encryption.passphrase_file = Some(v);
    }
    // `bunker_server::StartError` names its cause in its message: `Error::msg`
    // keeps `{:#}` from printing the cause a second time.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(bunker_server::tls_acceptor(c, k).map_err(anyhow::Error::msg)?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let listen = config.listen;
    let (state, admin_file) = bunker_server::State::open(config).map_err(anyhow::Error::msg)?;
    if let Some(f) = admin_file {
        tracing::info!(
            "first start: an admin token was written to {} (mode 0600)",
            f.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let listener = bunker_server::listen(listen)
            .and_then(tokio::net::TcpListener::from_std)
            .with_context(|| format!("listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Watched before the listening line: a SIGTERM sent as soon as it
        // is read must stop the server cleanly, not by the default action.
        let shutdown = shutdown_signal();
        let mut out = std::io::stdout().lock();
        writeln!(out, "bunker listening on {scheme}://{addr}")?;
        out.flush()?;
        drop(out);
        bunker_server::run(listener, state.clone(), tls, shutdown).await?;
        anyhow::Ok(())
    });
    // Requests still running after the grace period are cut here; their
    // uploads commit nothing.
    runtime.shutdown_timeout(Duration::from_secs(10));
    if let Err(e) = state.repo.close() {
        tracing::warn!("closing the repository: {e}");
    }
    result
}

/// Resolves at SIGTERM or SIGINT. Both are watched from the call on, not
/// from the first poll; call it inside the runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let watched =
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
    async move {
        match watched {
            Ok((mut term, mut int)) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            },
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM and SIGINT: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// The rest of `bunker serve --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"The TOML keys and defaults, TLS, shutdown and the data directory are in
docs/OPERATIONS.md."##;
