//! The errors of a sync, by what the caller does next: retry later
//! (`Source`, `Target` with [`TargetError::Failed`], `Io`), fix the
//! credentials or scope (`Forbidden`), or investigate the source, which
//! sent something wrong (`BadSource`): nothing wrong was stored.

/// What a [`crate::Target`] answered when it did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// It refused what the source sent: bytes that do not hash to their
    /// id, a manifest entry naming a chunk it does not hold or with
    /// another length, a malformed frame. The source is damaged or lying.
    #[error("{0}")]
    Refused(String),
    /// The target's token may not do this (role, or a name outside its
    /// scope).
    #[error("{0}")]
    Forbidden(String),
    /// Anything else (unreachable, interrupted, full): retry later.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Reading from the source failed (unreachable, token, interrupted).
    #[error("source: {0}")]
    Source(bunker_client::Error),
    /// The source sent something wrong for `snapshot`; the target stored
    /// nothing wrong and made no snapshot of it.
    #[error("{snapshot}: the source sent bad data: {reason}")]
    BadSource { snapshot: String, reason: String },
    /// The target's token may not copy `snapshot` (role or scope).
    #[error("{snapshot}: the target refused: {message}")]
    Forbidden { snapshot: String, message: String },
    /// The target failed; run the sync again (it resends only what is
    /// still missing).
    #[error("target: {message}")]
    Target { message: String },
    /// The target's repository was created with smaller chunks than the
    /// source cuts: it would refuse every larger chunk, so nothing is
    /// copied.
    #[error(
        "the target stores chunks of at most {target_max} bytes and the source's reach \
         {source_max}: replicate into a repository created with the same chunk size \
         (bunker serve --chunk-size)"
    )]
    ChunkSize { source_max: u64, target_max: u64 },
    /// Displays `what`; the cause is the error's source.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<bunker_client::Error> for SyncError {
    fn from(e: bunker_client::Error) -> SyncError {
        SyncError::Source(e)
    }
}

impl SyncError {
    /// A target's answer while copying `snapshot`.
    pub(crate) fn target(snapshot: &str, e: TargetError) -> SyncError {
        match e {
            TargetError::Refused(reason) => SyncError::BadSource {
                snapshot: snapshot.to_string(),
                reason: format!("the target refused it: {reason}"),
            },
            TargetError::Forbidden(message) => SyncError::Forbidden {
                snapshot: snapshot.to_string(),
                message,
            },
            TargetError::Failed(message) => SyncError::Target {
                message: format!("{snapshot}: {message}"),
            },
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> SyncError {
        SyncError::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the data was found wrong (the CLI's verification exit code).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, SyncError::BadSource { .. })
            || matches!(self, SyncError::Source(e) if e.kind() == bunker_client::ErrorKind::Verification)
    }
}
