//! The `bunker` command line: one subcommand per file in `cmd/`. Thin: the
//! work is done by bunker-server, bunker-client and bunker-store.
//!
//! Exit codes (also in the README):
//! - 0 success
//! - 1 failure (server unreachable, refused token, I/O, interrupted transfer)
//! - 2 usage error
//! - 3 not found (unknown snapshot or name)
//! - 4 verification failed (damaged or wrong data)

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bunker",
    version,
    about = "Deduplicating backup server for block-device images",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every client command shares.
#[derive(clap::Args, Clone)]
pub struct Global {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "BUNKER_SERVER",
        default_value = "http://127.0.0.1:7711"
    )]
    server: String,
    /// API token.
    #[arg(long, global = true, env = "BUNKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token (e.g. <data>/admin.token); wins over
    /// BUNKER_TOKEN.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for an https server with a private CA.
    #[arg(long, global = true, env = "BUNKER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds the server may send nothing before a command gives up (0:
    /// wait forever). verify, gc and prune wait for the server's work
    /// without limit.
    #[arg(
        long,
        global = true,
        env = "BUNKER_TIMEOUT",
        default_value_t = bunker_client::DEFAULT_READ_TIMEOUT.as_secs(),
        value_name = "SECS"
    )]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the backup server.
    Serve(cmd::serve::Args),
    /// Back up a file, block device or stdin (-) as a new snapshot.
    Backup(cmd::backup::Args),
    /// Restore a snapshot to a file, block device or stdout (-), verified.
    Restore(cmd::restore::Args),
    /// List snapshots.
    Snapshots(cmd::snapshots::Args),
    /// Restore drill: restore to nowhere, verify everything, report timing.
    Drill(cmd::drill::Args),
    /// Apply a retention policy (admin); removes manifests only.
    Prune(cmd::prune::Args),
    /// Garbage collection (admin): free the space of chunks no snapshot
    /// references; runs beside backups.
    Gc(cmd::gc::Args),
    /// Repository figures: sizes, dedup and compression.
    Stats,
    /// Scrub: verify every chunk, the index and every manifest (admin);
    /// names damaged chunks and the snapshots they break. Exit 4 on damage.
    Verify(cmd::verify::Args),
    /// Offline repairs on a data directory (stop the server first).
    Repair(cmd::verify::RepairArgs),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(cmd::token::Command),
    /// End-to-end demo on a temporary embedded server.
    Demo(cmd::demo::Args),
}

/// A failure with the exit code it maps to.
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Failure {
        let error: anyhow::Error = e.into();
        let code = match error
            .downcast_ref::<bunker_client::Error>()
            .map(|e| e.kind())
        {
            Some(bunker_client::ErrorKind::NotFound) => 3,
            Some(bunker_client::ErrorKind::Verification) => 4,
            _ => 1,
        };
        Failure { code, error }
    }
}

impl Failure {
    pub fn with_code(code: u8, error: anyhow::Error) -> Failure {
        Failure { code, error }
    }
}

pub type CmdResult = Result<(), Failure>;

/// Parses the command line, runs the command, and maps failure to an exit
/// code with a one-line message on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = cli.global;
    let result = match cli.command {
        Command::Serve(args) => cmd::serve::run(args).map_err(Failure::from),
        Command::Backup(args) => cmd::backup::run(&g, args),
        Command::Restore(args) => cmd::restore::run(&g, args),
        Command::Snapshots(args) => cmd::snapshots::run(&g, args),
        Command::Drill(args) => cmd::drill::run(&g, args),
        Command::Prune(args) => cmd::prune::run(&g, args),
        Command::Gc(args) => cmd::gc::run(&g, args),
        Command::Stats => cmd::snapshots::stats(&g),
        Command::Verify(args) => cmd::verify::verify(&g, args),
        Command::Repair(args) => cmd::verify::repair(&g, args),
        Command::Token(c) => cmd::token::run(&g, c),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("bunker: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

impl Global {
    /// A client for `--server` with the token from `--token`, `--token-file`
    /// or `BUNKER_TOKEN`.
    pub fn client(&self) -> anyhow::Result<bunker_client::Client> {
        let token = match (&self.token_file, &self.token) {
            (None, Some(t)) => Some(t.clone()),
            (Some(f), _) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| anyhow::anyhow!("reading the token file {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let mut client = match &self.ca_cert {
            None => bunker_client::Client::new(&self.server, token),
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    anyhow::anyhow!("reading the CA certificate {}: {e}", ca.display())
                })?;
                bunker_client::Client::with_ca(&self.server, token, &pem)
                    .map_err(anyhow::Error::msg)?
            }
        };
        client.set_read_timeout(
            (self.timeout > 0).then(|| std::time::Duration::from_secs(self.timeout)),
        );
        Ok(client)
    }
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`).
pub(crate) fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
