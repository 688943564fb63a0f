//! The bunker client: talks to a bunker server over its HTTP API.
//!
//! - [`Client::backup`] chunks and hashes the source locally on all cores
//!   with the server's chunker parameters, asks which chunks are missing,
//!   uploads only those (zstd), and commits the manifest with the
//!   whole-stream BLAKE3. The manifest goes through a temporary file, so a
//!   10 TB image needs no 400 MB of memory.
//! - [`Client::restore`] fetches a snapshot in parallel byte ranges, writes
//!   them with positioned writes (zero runs become holes in files), and
//!   checks the whole-image BLAKE3 at the end; the server has already
//!   checked every chunk's BLAKE3 before sending it. A file target is
//!   written beside its name and renamed into place only once verified.
//! - [`Client::restore_delta`] writes a snapshot over an existing file or
//!   block device, reading it once and fetching only the chunks whose
//!   bytes differ (`delta.rs`).
//!
//! The server is not trusted with sizes: every allocation is bounded by the
//! repository's largest chunk or by what was asked for, and every read
//! gives up when the server sends nothing for the read timeout
//! ([`DEFAULT_READ_TIMEOUT`]), except the answers of verify, gc and prune,
//! which come only when the server's work is done.
//!
//! Errors say what is wrong and what to do (`error.rs`); [`Error::kind`]
//! classifies them for exit codes.

mod backup;
mod changed;
mod copy;
mod delta;
mod error;
mod new_blocks;
mod output;
mod random;
mod restore;

use std::time::Duration;

use bunker_api::{Info, Snapshot, SnapshotList};

pub use backup::{BackupOptions, BackupProgress, BackupReport};
pub use changed::{ChangedReport, Source};
pub use copy::{Committed, Frame};
pub use delta::DeltaReport;
pub use error::{Error, ErrorKind, Result, ServerCode};
pub use restore::{RestoreProgress, RestoreReport, Target};

/// How long a read may wait for the server to send anything, by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to one server with one token.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
    read_timeout: Option<Duration>,
}

impl Client {
    /// `server` is like `http://127.0.0.1:7711`.
    pub fn new(server: &str, token: Option<String>) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_idle_connections_per_host(16)
            .build()
            .into();
        Client {
            agent,
            base: server.trim_end_matches('/').to_string(),
            token: token.map(|t| t.trim().to_string()),
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
        }
    }

    /// How long any read may wait for the server to send something (`None`:
    /// forever). Applies to every request but verify, gc and prune.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Like [`Client::new`], trusting the PEM certificates in `ca_pem`
    /// (a private CA or a self-signed server certificate) instead of the
    /// public roots.
    pub fn with_ca(server: &str, token: Option<String>, ca_pem: &[u8]) -> Result<Client> {
        let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(Error::BadCaCertificate {
                    reason: e.to_string(),
                })),
            })
            .collect::<Result<_>>()?;
        if certs.is_empty() {
            return Err(Error::BadCaCertificate {
                reason: "no certificate in the CA file".into(),
            });
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        let mut c = Client::new(server, token);
        c.agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .max_idle_connections_per_host(16)
            .tls_config(tls)
            .build()
            .into();
        Ok(c)
    }

    pub fn server(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// With the read timeout: a server that stops sending is an error, not
    /// a hang.
    fn timed<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        self.auth(req)
            .config()
            .timeout_per_read(self.read_timeout)
            .build()
    }

    pub(crate) fn get(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.timed(self.agent.get(&self.url(path)))
    }

    pub(crate) fn post(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.timed(self.agent.post(&self.url(path)))
    }

    /// A request whose answer comes only when the server's work is done
    /// (verify, gc, prune): it may take hours, so no read timeout.
    fn post_untimed(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.auth(self.agent.post(&self.url(path)))
    }

    pub(crate) fn put(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.timed(self.agent.put(&self.url(path)))
    }

    pub(crate) fn delete(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.timed(self.agent.delete(&self.url(path)))
    }

    /// A read of a response body that failed: the server stalled past the
    /// read timeout, or the transfer was cut.
    pub(crate) fn read_error(&self, what: &str, e: std::io::Error) -> Error {
        match ureq::Error::from(e) {
            ureq::Error::Timeout(ureq::Timeout::PerRead) => self.timed_out(what),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                self.timed_out(what)
            }
            other => Error::Interrupted(format!("{what}: {other}")),
        }
    }

    pub(crate) fn timed_out(&self, what: &str) -> Error {
        Error::TimedOut {
            what: what.to_string(),
            after: self.read_timeout.unwrap_or_default(),
        }
    }

    /// Turns a transport error or an error status into an [`Error`].
    pub(crate) fn check(
        &self,
        r: Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<http::Response<ureq::Body>> {
        let mut resp = r.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        if status < 400 {
            return Ok(resp);
        }
        let body: Option<error::AnswerBody> = resp.body_mut().read_json().ok();
        Err(Error::from_answer(status, body))
    }

    pub(crate) fn transport(&self, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::AddrNotAvailable
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) || io.to_string().contains("lookup") =>
            {
                Error::Unreachable {
                    url: self.base.clone(),
                    reason: io.to_string(),
                }
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => Error::Unreachable {
                url: self.base.clone(),
                reason: e.to_string(),
            },
            ureq::Error::Timeout(ureq::Timeout::PerRead) => self.timed_out("answering"),
            ureq::Error::Io(io) => Error::Interrupted(io.to_string()),
            other => Error::Interrupted(other.to_string()),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        r: Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T> {
        let mut resp = self.check(r)?;
        resp.body_mut().read_json().map_err(|e| match e {
            ureq::Error::Timeout(ureq::Timeout::PerRead) => self.timed_out("sending its answer"),
            e => Error::Interrupted(format!("reading the server's answer: {e}")),
        })
    }

    pub fn info(&self) -> Result<Info> {
        self.json(self.get("/v1/info").call())
    }

    pub fn health(&self) -> Result<()> {
        self.check(self.agent.get(&self.url("/healthz")).call())
            .map(|_| ())
    }

    /// Snapshots of `name`, or of every name the token may see.
    pub fn list(&self, name: Option<&str>) -> Result<Vec<Snapshot>> {
        let path = match name {
            Some(n) => format!("/v1/snapshots/{n}"),
            None => "/v1/snapshots".to_string(),
        };
        Ok(self.json::<SnapshotList>(self.get(&path).call())?.snapshots)
    }

    /// `name@id`, or the latest of `name`.
    pub fn snapshot(&self, name: &str, id: Option<u64>) -> Result<Snapshot> {
        let id = id.map_or("latest".to_string(), |i| i.to_string());
        self.json(self.get(&format!("/v1/snapshots/{name}/{id}")).call())
    }

    pub fn delete_snapshot(&self, name: &str, id: u64) -> Result<()> {
        self.check(self.delete(&format!("/v1/snapshots/{name}/{id}")).call())
            .map(|_| ())
    }

    pub fn verify(&self, req: &bunker_api::VerifyRequest) -> Result<bunker_api::VerifyReport> {
        self.json(self.post_untimed("/v1/verify").send_json(req))
    }

    pub fn prune(&self, req: &bunker_api::PruneRequest) -> Result<bunker_api::PruneResult> {
        self.json(self.post_untimed("/v1/prune").send_json(req))
    }

    pub fn gc(&self, req: &bunker_api::GcRequest) -> Result<bunker_api::GcReport> {
        self.json(self.post_untimed("/v1/gc").send_json(req))
    }

    /// Reports a restore drill of `name@id` for the server to record.
    pub fn report_drill(
        &self,
        name: &str,
        id: u64,
        result: &bunker_api::DrillResult,
    ) -> Result<Option<bunker_api::Check>> {
        self.json(
            self.post(&format!("/v1/snapshots/{name}/{id}/drill"))
                .send_json(result),
        )
    }

    /// Asks the server to drill `name@id` (the latest when `id` is None)
    /// itself: it reads and verifies every chunk and the image's BLAKE3,
    /// and records the result as verified by the server. Takes as long as
    /// reading the snapshot on the server.
    pub fn server_drill(&self, name: &str, id: Option<u64>) -> Result<bunker_api::ServerDrill> {
        let id = id.map_or("latest".to_string(), |i| i.to_string());
        self.json(
            self.post(&format!("/v1/snapshots/{name}/{id}/drill"))
                .send_json(&bunker_api::ServerDrillRequest {
                    verify: bunker_api::Verifier::Server,
                }),
        )
    }

    pub fn stats(&self) -> Result<bunker_api::Stats> {
        self.json(self.get("/v1/stats").call())
    }

    /// The server's scheduled pull jobs (`GET /v1/sync`; admin and reader
    /// tokens).
    pub fn sync_jobs(&self) -> Result<Vec<bunker_api::SyncJob>> {
        Ok(self
            .json::<bunker_api::SyncJobs>(self.get("/v1/sync").call())?
            .jobs)
    }

    pub fn create_token(&self, req: &bunker_api::TokenRequest) -> Result<bunker_api::TokenCreated> {
        self.json(self.post("/v1/tokens").send_json(req))
    }

    pub fn tokens(&self) -> Result<Vec<bunker_api::TokenInfo>> {
        Ok(self
            .json::<bunker_api::TokenList>(self.get("/v1/tokens").call())?
            .tokens)
    }

    pub fn revoke_token(&self, id: &str) -> Result<()> {
        self.check(self.delete(&format!("/v1/tokens/{id}")).call())
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let e = Client::with_ca("https://127.0.0.1:1", None, b"not pem")
            .err()
            .unwrap();
        assert!(matches!(&e, Error::BadCaCertificate { .. }));
        assert_eq!(e.to_string(), "no certificate in the CA file");
        assert_eq!(e.kind(), ErrorKind::Other);
    }
}
