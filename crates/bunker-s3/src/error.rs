//! What an object store failure means for the engine.
//!
//! Policy, by what the caller does next: a missing object is
//! `Error::NotFound` (GC and verify take only that as "gone"); a refusal
//! that retrying cannot fix (credentials, permissions, no such bucket, a
//! request the service does not support) is `Error::Remote`; everything
//! that may pass (5xx, SlowDown, 429, timeouts, refused or dropped
//! connections), reported once object_store's bounded retries are spent,
//! is `Error::Unavailable`. Both name the endpoint and bucket. A create
//! that finds the object there is `Error::AlreadyExists`, for the caller
//! to judge.

use bunker_store::Error;
use object_store::client::HttpError;

/// Maps `e`, from an operation on `what` (a key, for messages), at `store`
/// (`s3://bucket/prefix at endpoint`).
pub(crate) fn map(store: &str, what: &str, e: object_store::Error) -> Error {
    let text = chain(&e);
    let remote = |reason: String| Error::Remote {
        store: store.to_string(),
        reason,
    };
    match e {
        // A missing bucket answers 404 too, for every key in it.
        object_store::Error::NotFound { .. } if text.contains("NoSuchBucket") => {
            remote(format!("the bucket does not exist ({what}): {text}"))
        }
        object_store::Error::NotFound { .. } => Error::NotFound {
            what: format!("{what} in {store}"),
        },
        object_store::Error::AlreadyExists { .. }
        | object_store::Error::Precondition { .. }
        | object_store::Error::NotModified { .. } => Error::AlreadyExists {
            what: format!("{what} in {store}"),
        },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => remote(format!(
            "access denied ({what}): check the credentials and the bucket policy: {text}"
        )),
        object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. }
        | object_store::Error::UnknownConfigurationKey { .. }
        | object_store::Error::InvalidPath { .. } => remote(format!("{what}: {text}")),
        _ if is_transient(&e, &text) => Error::Unavailable {
            store: store.to_string(),
            reason: format!("{what}: {text}"),
        },
        _ => remote(format!("{what}: {text}")),
    }
}

/// Transport failures, and statuses that say "later": 5xx, 429, SlowDown.
fn is_transient(e: &object_store::Error, text: &str) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<HttpError>() || s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    if text.contains("SlowDown") || text.contains("InternalError") {
        return true;
    }
    // The status is only reachable as text: object_store does not export
    // its retry error type.
    match status(text) {
        Some(code) => code >= 500 || code == 429 || code == 408,
        None => matches!(e, object_store::Error::JoinError { .. }),
    }
}

/// The HTTP status in a "Server returned non-2xx status code: 503 ..." text.
fn status(text: &str) -> Option<u16> {
    let (_, after) = text.split_once("status code: ")?;
    after.get(..3)?.parse().ok()
}

/// The error and its sources in one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: msg.to_string().into(),
        }
    }

    #[test]
    fn errors_map_by_what_the_caller_does_next() {
        let store = "s3://b at http://h";
        let e = map(
            store,
            "k",
            generic("Server returned non-2xx status code: 503 Service Unavailable: SlowDown"),
        );
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let e = map(
            store,
            "k",
            generic("Server returned non-2xx status code: 400 Bad Request: InvalidArgument"),
        );
        assert!(matches!(e, Error::Remote { .. }), "{e:?}");
        let e = map(
            store,
            "k",
            object_store::Error::NotFound {
                path: "k".into(),
                source:
                    "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>"
                        .into(),
            },
        );
        assert!(
            matches!(e, Error::Remote { ref store, .. } if store.contains("s3://b")),
            "{e:?}"
        );
        let e = map(
            store,
            "k",
            object_store::Error::NotFound {
                path: "k".into(),
                source: "404 NoSuchKey".into(),
            },
        );
        assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
        let e = map(
            store,
            "k",
            object_store::Error::PermissionDenied {
                path: "k".into(),
                source: "403".into(),
            },
        );
        assert!(matches!(e, Error::Remote { .. }), "{e:?}");
    }
}
