//! Responses built from values: JSON with a status, an empty `204`, and
//! the one mapping of an [`ApiError`] to its status and JSON body
//! (`{"error": {"code", "message"}}`, docs/API.md, "Errors"), with
//! `Retry-After` on every 503.

use hyper::{Response, StatusCode};

use crate::body::{full, Body};
use crate::error::ApiError;

/// What a route handler returns; an `Err` becomes [`error_response`].
pub(crate) type Reply = Result<Response<Body>, ApiError>;

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

/// `204 No Content`: a delete or abort that succeeded.
pub(crate) fn no_content() -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::NO_CONTENT;
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
