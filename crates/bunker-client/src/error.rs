//! The client's errors, by what the user does next.
//!
//! A server's error answer (`{"error": {"code", "message"}}`, docs/API.md)
//! becomes one [`Error`]: 401, 403 and 404 have their own variants, every
//! other status is [`Error::Api`] with the code typed as [`ServerCode`].
//! A code this client does not know (a newer server's) is kept as sent
//! rather than lost, so the message still names it; code that acts on a
//! code matches the known [`ErrorCode`]s only. [`Error::kind`] is what the
//! CLI's exit codes are made of.

use std::fmt;
use std::time::Duration;

use bunker_api::ErrorCode;
use serde::de::IntoDeserializer;
use serde::Deserialize;

/// What went wrong, by what the user does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Verification,
    Other,
}

/// The `code` of a server's error answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerCode {
    /// A code of the API this client speaks.
    Known(ErrorCode),
    /// A code this client does not know (a newer server's), as sent.
    Unknown(String),
    /// The answer had no JSON error body (a proxy's page, a cut body).
    Missing,
}

impl ServerCode {
    /// Reads a code as the server wrote it: the same names as the wire
    /// format of [`ErrorCode`], because it is that format's own parser.
    pub fn parse(code: &str) -> ServerCode {
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            code.into_deserializer();
        match ErrorCode::deserialize(de) {
            Ok(known) => ServerCode::Known(known),
            Err(_) => ServerCode::Unknown(code.to_string()),
        }
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCode::Known(code) => f.write_str(code.as_str()),
            ServerCode::Unknown(code) => f.write_str(code),
            ServerCode::Missing => f.write_str("unknown"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot reach the bunker server at {url}: {reason} (is it running? check --server or BUNKER_SERVER)")]
    Unreachable { url: String, reason: String },
    #[error(
        "the server refused the token: {message} (check --token, --token-file or BUNKER_TOKEN)"
    )]
    Unauthorized { message: String },
    #[error("not allowed: {message}")]
    Forbidden { message: String },
    #[error("{message}")]
    NotFound { message: String },
    #[error("server error {status} ({code}): {message}")]
    Api {
        status: u16,
        code: ServerCode,
        message: String,
    },
    #[error("verification failed: {0}")]
    Verification(String),
    /// Displays `what`; the cause is the error's source (printed by `{:#}`).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the transfer was interrupted: {0} (run the command again; a backup does not send again the chunks the server already has)")]
    Interrupted(String),
    /// The server sent nothing for the read timeout.
    #[error("the server sent nothing for {} s while {what} (it may be overloaded or stuck: run the command again, or allow longer with --timeout)", .after.as_secs_f64())]
    TimedOut { what: String, after: Duration },
    /// What was asked cannot be done with this server or snapshot (a
    /// changed-extent backup against a base without block hashes).
    #[error("{0}")]
    Unsupported(String),
    /// The certificates given to [`crate::Client::with_ca`] cannot be used
    /// (not PEM, or no certificate in it): fix the CA file.
    #[error("{reason}")]
    BadCaCertificate { reason: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Verification(_) => ErrorKind::Verification,
            Error::Api {
                code: ServerCode::Known(ErrorCode::CorruptData | ErrorCode::HashMismatch),
                ..
            } => ErrorKind::Verification,
            _ => ErrorKind::Other,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// The error an answer with an error `status` (400 or more) stands
    /// for; `body` is its JSON error body, if it had one.
    pub(crate) fn from_answer(status: u16, body: Option<AnswerBody>) -> Error {
        let (code, message) = match body {
            Some(b) => (ServerCode::parse(&b.error.code), b.error.message),
            None => (ServerCode::Missing, format!("HTTP {status}")),
        };
        match status {
            401 => Error::Unauthorized { message },
            403 => Error::Forbidden { message },
            404 => Error::NotFound { message },
            _ => Error::Api {
                status,
                code,
                message,
            },
        }
    }
}

/// An error answer's body as sent: `bunker_api::ErrorBody` with the code
/// left a string, so an unknown code does not make the whole body
/// unreadable.
#[derive(Deserialize)]
pub(crate) struct AnswerBody {
    error: AnswerDetail,
}

#[derive(Deserialize)]
struct AnswerDetail {
    code: String,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, json: &str) -> Error {
        Error::from_answer(status, Some(serde_json::from_str(json).unwrap()))
    }

    #[test]
    fn every_known_code_parses_to_itself() {
        let codes = [
            ErrorCode::BadRequest,
            ErrorCode::InvalidName,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Timeout,
            ErrorCode::Conflict,
            ErrorCode::Busy,
            ErrorCode::PayloadTooLarge,
            ErrorCode::HeadersTooLarge,
            ErrorCode::RangeNotSatisfiable,
            ErrorCode::HashMismatch,
            ErrorCode::MissingChunk,
            ErrorCode::TooManyStreams,
            ErrorCode::Overloaded,
            ErrorCode::ShuttingDown,
            ErrorCode::InsufficientStorage,
            ErrorCode::CorruptData,
            ErrorCode::Internal,
        ];
        for code in codes {
            assert_eq!(ServerCode::parse(code.as_str()), ServerCode::Known(code));
            assert_eq!(ServerCode::Known(code).to_string(), code.as_str());
        }
    }

    #[test]
    fn a_newer_servers_code_is_kept_with_its_message() {
        let e = answer(
            503,
            r#"{"error": {"code": "tape_loading", "message": "wait for the tape"}}"#,
        );
        assert!(matches!(
            &e,
            Error::Api { status: 503, code: ServerCode::Unknown(c), message }
                if c == "tape_loading" && message == "wait for the tape"
        ));
        assert_eq!(
            e.to_string(),
            "server error 503 (tape_loading): wait for the tape"
        );
        assert_eq!(e.kind(), ErrorKind::Other);
    }

    #[test]
    fn an_answer_without_a_body_reads_as_before() {
        let e = Error::from_answer(502, None);
        assert!(matches!(
            e,
            Error::Api {
                status: 502,
                code: ServerCode::Missing,
                ..
            }
        ));
        assert_eq!(e.to_string(), "server error 502 (unknown): HTTP 502");
    }

    #[test]
    fn statuses_with_their_own_variant() {
        let body = r#"{"error": {"code": "not_found", "message": "not found: snapshot vol1@99"}}"#;
        assert!(matches!(answer(401, body), Error::Unauthorized { .. }));
        assert!(matches!(answer(403, body), Error::Forbidden { .. }));
        let e = answer(404, body);
        assert!(
            matches!(&e, Error::NotFound { message } if message == "not found: snapshot vol1@99")
        );
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    /// The CLI's exit codes 3 and 4 come from these kinds.
    #[test]
    fn kinds_by_code() {
        let api = |status: u16, code: &str| {
            answer(
                status,
                &format!(r#"{{"error": {{"code": "{code}", "message": "m"}}}}"#),
            )
        };
        assert_eq!(api(500, "corrupt_data").kind(), ErrorKind::Verification);
        assert_eq!(api(422, "hash_mismatch").kind(), ErrorKind::Verification);
        for (status, code) in [
            (422, "missing_chunk"),
            (500, "internal"),
            (409, "busy"),
            (400, "invalid_name"),
            (507, "insufficient_storage"),
            (500, "corrupt"),
        ] {
            assert_eq!(api(status, code).kind(), ErrorKind::Other, "{code}");
        }
        assert_eq!(
            Error::Verification("x".into()).kind(),
            ErrorKind::Verification
        );
        assert_eq!(
            Error::BadCaCertificate { reason: "x".into() }.kind(),
            ErrorKind::Other
        );
    }
}
