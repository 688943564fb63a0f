//! The `bunker` command line: one subcommand per file in `cmd/`. Thin: the
//! work is done by bunker-server, bunker-client and bunker-store.
//!
//! Exit codes (also in `bunker --help` and docs/CLI.md):
//! - 0 success
//! - 1 failure (server unreachable, refused token, I/O, interrupted transfer)
//! - 2 usage error
//! - 3 not found (unknown snapshot or name)
//! - 4 verification failed (damaged or wrong data)

mod cmd;
mod output;
#[cfg(test)]
mod reference;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bunker",
    version,
    about = "Deduplicating backup server for block-device images",
    propagate_version = true,
    after_long_help = LONG_HELP
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
    /// Server URL; https:// for TLS.
    #[arg(
        long,
        global = true,
        env = "BUNKER_SERVER",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7711"
    )]
    server: String,
    /// API token.
    #[arg(long, global = true, env = "BUNKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the API token (e.g. <data>/admin.token; surrounding
    /// whitespace is trimmed); wins over --token and BUNKER_TOKEN.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// PEM certificate(s) to trust for an https server with a private CA or
    /// a self-signed certificate (instead of the public roots).
    #[arg(long, global = true, env = "BUNKER_CA_CERT", hide_env_values = true)]
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
        hide_env_values = true,
        default_value_t = bunker_client::DEFAULT_READ_TIMEOUT.as_secs(),
        value_name = "SECS"
    )]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the backup server.
    #[command(after_long_help = cmd::serve::LONG_HELP)]
    Serve(cmd::serve::Args),
    /// Back up a file, block device or stdin (-) as a new snapshot.
    #[command(after_long_help = cmd::backup::LONG_HELP)]
    Backup(cmd::backup::Args),
    /// Restore a snapshot to a file, block device or stdout (-), verified.
    #[command(after_long_help = cmd::restore::LONG_HELP)]
    Restore(cmd::restore::Args),
    /// Serve snapshots over NBD: attach any snapshot as a block device now.
    #[command(after_long_help = cmd::export::LONG_HELP)]
    Export(cmd::export::Args),
    /// Show a snapshot as a read-only file DIR/NAME@ID.img (FUSE), to
    /// loop-mount and copy files out of without restoring it.
    #[command(after_long_help = cmd::mount::LONG_HELP)]
    Mount(cmd::mount::Args),
    /// List snapshots.
    #[command(after_long_help = cmd::snapshots::LONG_HELP)]
    Snapshots(cmd::snapshots::Args),
    /// Restore drill: restore to nowhere, verify everything, report timing.
    #[command(after_long_help = cmd::drill::LONG_HELP)]
    Drill(cmd::drill::Args),
    /// Apply a retention policy (admin); removes manifests only.
    #[command(after_long_help = cmd::prune::LONG_HELP)]
    Prune(cmd::prune::Args),
    /// Garbage collection (admin): free the space of chunks no snapshot
    /// references; runs beside backups.
    #[command(after_long_help = cmd::gc::LONG_HELP)]
    Gc(cmd::gc::Args),
    /// Repository figures: sizes, dedup and compression.
    #[command(after_long_help = cmd::snapshots::STATS_LONG_HELP)]
    Stats,
    /// Scrub: verify every chunk, the index and every manifest (admin);
    /// names damaged chunks and the snapshots they break. Exit 4 on damage.
    #[command(after_long_help = cmd::verify::LONG_HELP)]
    Verify(cmd::verify::Args),
    /// Offline repairs on a data directory (stop the server first).
    #[command(after_long_help = cmd::verify::REPAIR_LONG_HELP)]
    Repair(cmd::verify::RepairArgs),
    /// Copy snapshots from another server to this one, sending only the
    /// chunks it lacks (replication).
    #[command(after_long_help = cmd::sync::LONG_HELP)]
    Sync(cmd::sync::Args),
    /// Create, list and revoke API tokens (admin).
    #[command(subcommand, after_long_help = cmd::token::LONG_HELP)]
    Token(cmd::token::Command),
    /// Create or inspect a repository key file (encryption at rest; local,
    /// no server).
    #[command(subcommand, after_long_help = cmd::key::LONG_HELP)]
    Key(cmd::key::Command),
    /// End-to-end demo on a temporary embedded server.
    #[command(after_long_help = cmd::demo::LONG_HELP)]
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
        Command::Export(args) => cmd::export::run(&g, args),
        Command::Mount(args) => cmd::mount::run(&g, args),
        Command::Snapshots(args) => cmd::snapshots::run(&g, args),
        Command::Drill(args) => cmd::drill::run(&g, args),
        Command::Prune(args) => cmd::prune::run(&g, args),
        Command::Gc(args) => cmd::gc::run(&g, args),
        Command::Stats => cmd::snapshots::stats(&g),
        Command::Verify(args) => cmd::verify::verify(&g, args),
        Command::Repair(args) => cmd::verify::repair(&g, args),
        Command::Sync(args) => cmd::sync::run(&g, args),
        Command::Token(c) => cmd::token::run(&g, c),
        Command::Key(c) => cmd::key::run(g.json, c),
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
                bunker_client::Client::with_ca(&self.server, token, &pem)?
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

/// The rest of `bunker --help`, after the options; also in docs/CLI.md.
const LONG_HELP: &str = r##"The options go before or after the command. serve and demo accept them but
ignore them. Logs go to stderr; RUST_LOG filters them (default info).
Progress bars are drawn on stderr only when it is a terminal. GB/s figures
are 10^9 bytes per second.

The client connects with a 10 s timeout. Every read gives up after --timeout
seconds without a byte from the server (exit 1: the server sent nothing for
60 s while sending bytes 0..4194304 of vol1@2 ...), except the answers of
verify, gc and prune, which come only when their work is done. Over https://
it trusts the Mozilla root set built into the binary (webpki-roots), or only
the certificates given with --ca-cert; SSL_CERT_FILE is not read.

Exit codes:
  0  success
  1  failure: server unreachable, token refused (401), not allowed (403),
     other HTTP errors (400, 409, 413, 503, 507, …), local I/O (unreadable
     source, target exists, disk full), interrupted transfer (including an
     upload session the server lost to a restart)
  2  usage error: bad or missing arguments, a malformed NAME@ID, an unknown
     --role (reported by the argument parser)
  3  not found: an unknown snapshot, id, name (for latest) or token id
  4  verification failed: a chunk whose bytes do not match its id, a chunk
     the server reports damaged (corrupt_data), a whole-image BLAKE3
     mismatch, a size mismatch, or the server's hash_mismatch

Error messages:

Every failure is one line on stderr, bunker: <message> (a usage error is
the argument parser's error: line and exit 2). What a user meets,
from real runs (paths and hashes shortened):

  nothing listens at --server (exit 1):
      cannot reach the bunker server at http://127.0.0.1:1: Connection
      refused (os error 111) (is it running? check --server or
      BUNKER_SERVER)
  host name does not resolve (exit 1):
      the transfer was interrupted: failed to lookup address information:
      Name or service not known (run the command again; chunks already sent
      are not sent twice)
  wrong or revoked token (exit 1):
      the server refused the token: unknown or revoked token (check --token,
      --token-file or BUNKER_TOKEN)
  no token (exit 1):
      the server refused the token: missing token: send 'Authorization:
      Bearer <token>' (check --token, --token-file or BUNKER_TOKEN)
  token file missing (exit 1):
      reading the token file /etc/bunker.token: No such file or directory
      (os error 2)
  role too weak (exit 1):
      not allowed: a reader token may not create snapshots
  name outside the token's scope (exit 1):
      not allowed: snapshot name "vol9" is outside this token's scope
  unknown snapshot name (exit 3):
      not found: snapshots of "nosuch"
  unknown id (exit 3):
      not found: snapshot vol1@99
  writer asks for latest of a name it never wrote (exit 3):
      no snapshot of "db-1" created by this token
  invalid name (exit 1):
      server error 400 (invalid_name): snapshot name "bad name" may only
      contain A-Z, a-z, 0-9, '.', '_' and '-'
  malformed reference (exit 2, from the argument parser):
      error: invalid value 'vol1@x' for '<SNAPSHOT>': "vol1@x": the part
      after @ must be a snapshot id or 'latest'
  unreadable backup source (exit 1):
      cannot read the backup source /nonexistent.img (check the path and
      permissions): No such file or directory (os error 2)
  restore target exists (exit 1):
      restored.img exists: refusing to overwrite it; pass --force to replace
      it
  restore target is not a file or block device (exit 1):
      /dev/null: is neither a regular file nor a block device
  restore target is a symbolic link to a file (exit 1):
      latest.img: is a symbolic link; a restore follows links only to block
      devices: give the path of the file itself
  restore to a block device without --force (exit 1):
      /dev/sdb: is a block device: a restore overwrites it in place; pass
      --force to do so
  block device smaller than the image (exit 1):
      /dev/sdb: holds 1048576 bytes, the image is 3145728: refusing to write
      a truncated image
  block device mounted (exit 1):
      /dev/sdb: is in use (mounted, or held by another program): refusing to
      write to it
  restore disk full (exit 1):
      writing /mnt/small/r.img.bunker-partial: the disk is full (free space
      or restore elsewhere): No space left on device (os error 28)
  server stalls (exit 1):
      the server sent nothing for 60 s while sending the manifest (it may be
      overloaded or stuck: run the command again, or allow longer with
      --timeout)
  server sends a chunk longer than the repository allows (exit 4):
      verification failed: manifest entry 0 is a chunk of 2097152 bytes
      (bytes 0..2097152); the repository's chunks are at most 1048576 bytes
  repository disk full (exit 1):
      server error 507 (insufficient_storage): the repository's disk is
      full; nothing acknowledged was affected, free space or run gc
  all ingest slots busy (exit 1):
      server error 503 (too_many_streams): all 8 ingest streams are busy;
      retry later
  server died mid-transfer (exit 1):
      the transfer was interrupted: Peer disconnected (run the command
      again; chunks already sent are not sent twice)
  damaged chunk in the repository (exit 4):
      verification failed: the server reports chunk e9df…25e1 (bytes
      1719581..2041453) damaged: corrupt data in
      packs/01/00/0000000000000001.pack at offset 1339742 (chunk e9df…25e1):
      record checksum mismatch
  image hash differs (exit 4):
      verification failed: the restored image hashes to cac2…, the
      snapshot's BLAKE3 is 89fd…

Server messages never contain filesystem paths outside the data directory;
pack paths are relative to it."##;
