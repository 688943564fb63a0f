//! The status page: `GET /` and its script and style under `/ui/`, files
//! embedded in the binary from `crates/bunker-server/ui/` (no build step,
//! nothing fetched from elsewhere).
//!
//! The files hold no data and need no token: the page asks for the token,
//! keeps it in the browser's session storage and reads the JSON API with
//! it (`/v1/stats`, `/v1/status`, `/v1/sync`), so it shows only what that
//! token may see. Every answer carries a Content-Security-Policy that lets
//! the page load nothing but these files and talk to nothing but this
//! server, with no inline script or style; the script inserts every value
//! from the server as text (`textContent`, `setAttribute`), never as HTML.
//! Both halves of that contract are tested below.

use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Response};

use crate::body::{full, Body};

/// Where the script and the style are served; the page names them.
pub(crate) const PREFIX: &str = "ui";

pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The file at `segs` (a path split at `/`, without the leading one): the
/// page for `/`, its script and style under `/ui/`; `None` for any other
/// path.
fn file(segs: &[&str]) -> Option<(&'static str, &'static str)> {
    match segs {
        [""] => Some((INDEX, "text/html; charset=utf-8")),
        [PREFIX, "app.js"] => Some((SCRIPT, "text/javascript; charset=utf-8")),
        [PREFIX, "app.css"] => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The file at `segs` for a `GET`; `None` for another path, `Some(Err)`
/// for another method.
pub(crate) fn answer(method: &Method, segs: &[&str]) -> Option<Result<Response<Body>, ()>> {
    let (text, content_type) = file(segs)?;
    if method != Method::GET {
        return Some(Err(()));
    }
    let mut r = Response::new(full(text));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The files change only with the binary, and their names do not: ask
    // the browser to check before reusing a copy.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    Some(Ok(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response<Body>, name: &str) -> &'a str {
        r.headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn every_file_carries_the_security_headers_and_its_type() {
        for (path, ty) in [
            ("", "text/html; charset=utf-8"),
            ("ui/app.js", "text/javascript; charset=utf-8"),
            ("ui/app.css", "text/css; charset=utf-8"),
        ] {
            let segs: Vec<&str> = path.split('/').collect();
            let r = answer(&Method::GET, &segs).unwrap().unwrap();
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(header(&r, "content-type"), ty, "{path}");
            assert_eq!(header(&r, "x-frame-options"), "DENY");
            assert_eq!(header(&r, "x-content-type-options"), "nosniff");
            assert_eq!(header(&r, "referrer-policy"), "no-referrer");
            assert_eq!(header(&r, "cache-control"), "no-cache");
            let csp = header(&r, "content-security-policy");
            for directive in [
                "default-src 'self'",
                "script-src 'self'",
                "style-src 'self'",
                "connect-src 'self'",
                "frame-ancestors 'none'",
                "base-uri 'none'",
                "form-action 'none'",
            ] {
                assert!(csp.contains(directive), "{path}: {directive} missing");
            }
            assert!(!csp.contains("unsafe"), "{path}: {csp}");
        }
    }

    #[test]
    fn other_paths_and_methods_are_not_served() {
        assert!(answer(&Method::GET, &["ui", "other.js"]).is_none());
        assert!(answer(&Method::GET, &["ui"]).is_none());
        assert!(answer(&Method::GET, &["v1", "stats"]).is_none());
        assert!(matches!(answer(&Method::POST, &[""]), Some(Err(()))));
        assert!(matches!(
            answer(&Method::DELETE, &["ui", "app.js"]),
            Some(Err(()))
        ));
    }

    /// The page: one script, loaded from this server; no inline script,
    /// handler or style for the CSP to block or a reviewer to miss.
    #[test]
    fn page_has_no_inline_script_handler_or_style() {
        let lower = INDEX.to_ascii_lowercase();
        assert_eq!(lower.matches("<script").count(), 1);
        assert!(lower.contains("<script src=\"/ui/app.js\""));
        assert!(lower.contains("href=\"/ui/app.css\""));
        assert!(!lower.contains("style="), "inline style");
        assert!(!lower.contains("<style"), "inline style");
        assert!(!lower.contains("javascript:"));
        for (i, _) in lower.match_indices(" on") {
            let rest = &lower[i + 3..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                !rest[word.len()..].starts_with('='),
                "inline handler on{word}="
            );
        }
        for external in ["http://", "https://", "//cdn"] {
            assert!(!lower.contains(external), "{external} in the page");
        }
    }

    /// The script: values reach the page as text. None of the ways to
    /// parse a string as HTML or code appears in it.
    #[test]
    fn script_never_parses_strings_as_html_or_code() {
        // The SVG namespace is a name, not a place the page fetches from.
        let script = SCRIPT.replace("'http://www.w3.org/2000/svg'", "");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "Function(",
            "createContextualFragment",
            "DOMParser",
            "srcdoc",
            "setTimeout('",
            "setTimeout(\"",
            "setAttribute('on",
            "setAttribute('style",
            "setAttribute('href",
            "localStorage",
            "document.cookie",
            "location.hash",
            "http://",
            "https://",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
        assert!(SCRIPT.contains("textContent"));
        assert!(SCRIPT.contains("sessionStorage"));
        // The token goes in the Authorization header and nowhere else.
        assert!(SCRIPT.contains("Authorization: 'Bearer ' + token"));
        assert!(!SCRIPT.contains("?token") && !SCRIPT.contains("token="));
    }
}
