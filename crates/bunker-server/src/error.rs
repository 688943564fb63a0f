//! Errors as the API reports them: a stable code, a status and a message
//! for people. Store errors are mapped here and nowhere else; messages never
//! carry filesystem paths (the data directory is replaced by `<data>`, and
//! I/O errors are reported without their path and logged in full).

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
