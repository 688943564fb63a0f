//! The server's errors, by what the caller does next.
//!
//! - [`ApiError`]: a request failed. It goes back to the client as a stable
//!   code, a status and a message for people (`crate::reply` builds the
//!   response). Store errors are mapped here and nowhere else; messages
//!   never carry filesystem paths (the data directory is replaced by
//!   `<data>`, and I/O errors are reported without their path and logged in
//!   full).
//! - [`StartError`]: the server cannot start (repository, bucket, token
//!   store, admin token, TLS files, configuration, listening socket). The operator
//!   fixes what it names and starts again; it names paths, since only the
//!   operator sees it.
//! - [`SaveError`]: a server state file (`tokens.json`, `checks.json`)
//!   could not be saved while serving; the caller reports it (500) or logs
//!   it.
//!
//! Store errors are boxed: they are large, and these travel by `Result`.
//! Like `bunker_store::Error`, each message includes its source's, and the
//! source is kept too: print one or the other, not both (the CLI prints
//! these with `anyhow::Error::msg`, which does not repeat the chain).

use std::net::SocketAddr;
use std::path::PathBuf;

use bunker_api::ErrorCode;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Internal, message)
    }

    /// Maps a store error; `data_dir` is scrubbed from the message.
    pub fn from_store(e: bunker_store::Error, data_dir: &str) -> ApiError {
        use bunker_store::Error as E;
        let scrub = |m: String| {
            if data_dir.is_empty() {
                m
            } else {
                m.replace(data_dir, "<data>")
            }
        };
        let (code, message) = match &e {
            E::NotFound { .. } => (ErrorCode::NotFound, e.to_string()),
            E::AlreadyExists { .. } => (ErrorCode::Conflict, e.to_string()),
            E::Invalid(m) => (ErrorCode::BadRequest, m.clone()),
            E::StreamHashMismatch { .. } | E::ChunkHashMismatch { .. } => (ErrorCode::HashMismatch, e.to_string()),
            E::NoSpace { .. } => (
                ErrorCode::InsufficientStorage,
                "the repository's disk is full; nothing acknowledged was affected, free space or delete snapshots you no longer need".to_string(),
            ),
            E::Corrupt { .. } => (ErrorCode::CorruptData, e.to_string()),
            E::Busy(m) => (ErrorCode::Busy, m.clone()),
            E::Unavailable { .. } => {
                tracing::warn!("{e}");
                (ErrorCode::StoreUnavailable, e.to_string())
            }
            E::Remote { .. } => {
                tracing::error!("{e}");
                (ErrorCode::StoreRefused, e.to_string())
            }
            E::Source(io) => (ErrorCode::BadRequest, format!("upload interrupted: {io}")),
            E::Io { source, .. } => {
                tracing::error!("{e}");
                (ErrorCode::Internal, format!("I/O error in the repository: {source}"))
            }
            _ => {
                tracing::error!("{e}");
                (ErrorCode::Internal, e.to_string())
            }
        };
        ApiError {
            code,
            message: scrub(message),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The repository cannot be opened or created.
    #[error("opening the repository at {}: {source}", path.display())]
    Repository {
        path: PathBuf,
        #[source]
        source: Box<bunker_store::Error>,
    },
    /// The key file (`--key-file`, `[encryption] key_file`) cannot be
    /// read or is not a key file.
    #[error("key file: {source}")]
    KeyFile {
        #[source]
        source: bunker_crypt::Error,
    },
    /// The key file is wrapped with a passphrase and none was given.
    #[error(
        "key file: {source}; give the passphrase with --key-passphrase-file FILE, \
         [encryption] passphrase_file or the environment variable {}",
        bunker_crypt::wrap::PASSPHRASE_ENV
    )]
    KeyPassphrase {
        #[source]
        source: bunker_crypt::Error,
    },
    /// `chunk_size` is not a usable chunk size, or not the one the
    /// existing repository was created with.
    #[error("chunk_size: {reason}")]
    ChunkSize { reason: String },
    /// The `[storage]` settings (or `--s3` flags) are not usable.
    #[error("storage settings: {reason}")]
    Storage { reason: String },
    /// The bucket does not answer as it should (unreachable endpoint, wrong
    /// credentials, missing bucket), or the repository in it cannot be
    /// opened; `store` names bucket, prefix and endpoint.
    #[error("object storage {store}: {source}")]
    Bucket {
        store: String,
        #[source]
        source: Box<bunker_store::Error>,
    },
    /// Another server holds the lease on the bucket (or it cannot be
    /// taken): `reason` names the holder's host and pid and when its lease
    /// expires, and what the operator may do (`--s3-break-lease`).
    #[error("object storage {store}: {reason}")]
    Lease { store: String, reason: String },
    /// Temp files left by a crash beside a server state file cannot be
    /// removed.
    #[error("removing stale temp files of {}: {source}", path.display())]
    StaleTemps {
        path: PathBuf,
        #[source]
        source: Box<bunker_store::Error>,
    },
    /// A file or directory the server needs cannot be read, written,
    /// renamed or synced; `doing` says which ("reading", "syncing
    /// directory", ...).
    #[error("{doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A server state file is not valid JSON of its kind.
    #[error("{} is damaged: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A server state file written by a newer build.
    #[error("{} has version {found}, this build reads version {supported}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A symbolic link where the admin secret goes: never followed.
    #[error(
        "{} is a symbolic link: refusing to write the admin secret through it; remove it and start again",
        path.display()
    )]
    AdminTokenIsLink { path: PathBuf },
    /// Something other than a regular file where the admin secret goes.
    #[error(
        "{} is not a regular file: refusing to replace it with the admin secret; remove it and start again",
        path.display()
    )]
    AdminTokenNotFile { path: PathBuf },
    /// The first admin token could not be made (no randomness, or its
    /// hash could not be saved).
    #[error("{}", source.message)]
    FirstAdmin {
        #[source]
        source: ApiError,
    },
    /// A PEM file (certificate chain or private key) cannot be read.
    #[error("reading {what} {}: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("no certificate in {}", path.display())]
    NoCertificate { path: PathBuf },
    /// The certificate chain and private key do not make a TLS server.
    #[error("certificate and key do not fit: {source}")]
    CertificateMismatch {
        #[source]
        source: rustls::Error,
    },
    /// rustls refused its own defaults (a build without a usable crypto
    /// provider).
    #[error("{source}")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    /// The configuration file is not valid TOML of [`crate::Config`]'s keys.
    #[error("{source}")]
    Config {
        #[source]
        source: toml::de::Error,
    },
    /// The `[[sync]]` tables parse but do not make a set of jobs.
    #[error("{reason}")]
    SyncJob { reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The thread of a [`crate::spawn`]ed server could not be started.
    #[error("starting the server thread: {source}")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    pub(crate) fn io(
        doing: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> StartError {
        StartError::Io {
            doing,
            path: path.into(),
            source,
        }
    }
}

/// A server state file could not be saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SaveError {
    #[error("saving {file}: {source}")]
    Write {
        file: &'static str,
        #[source]
        source: Box<bunker_store::Error>,
    },
    #[error("encoding {file}: {source}")]
    Encode {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
}
