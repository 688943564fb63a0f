//! bunker's HTTP server.
//!
//! # Brief overview
//! [`State::open`] opens (or creates) the repository in the data directory,
//! or on a bucket (`[storage]`, [`connect_remote`]), and the token store
//! beside it; [`run`] serves a bound listener until a
//! shutdown future resolves, then stops accepting and gives in-flight
//! requests a grace period. Each request is authenticated ([`tokens`]),
//! routed (`routes`), and its errors mapped to a stable JSON error
//! ([`error`]).
//!
//! The modules, in the order a request meets them:
//! - `serve`: the listening socket, accept loop, TLS, graceful shutdown,
//!   and [`spawn`] (a server on its own thread);
//! - `state`: [`State`], what every handler shares, and the guards that
//!   hold its limits ([`limits`] holds the quotas and budgets themselves);
//! - `routes`: the route table, authentication, roles, one file per
//!   resource;
//! - `body` and `reply`: request and response bodies, JSON and error
//!   responses;
//! - `convert`: the API's view of the store's values;
//! - `restore`: verified, streamed restores within a memory budget;
//!   `deadline`: the write deadline on every connection;
//! - `ui`: the status page (`GET /`), embedded files served without a
//!   token; the data it shows comes from the JSON routes;
//! - `maintenance`: scheduled GC and expiry of idle upload sessions;
//! - [`sync_jobs`]: scheduled pull jobs (`[[sync]]`) and their status;
//!   `sync_target` runs one, writing through the session protocol's checks;
//! - [`tokens`], [`admin_token`], [`checks`], [`sessions`], [`metrics`],
//!   [`config`]: the server's own state and settings; on a bucket,
//!   [`mirror`] copies tokens and checks to it and [`lease`] keeps a
//!   second server off it.
//!
//! Raw uploads stream the request body through a bounded channel into the
//! store's ingest pipeline on a blocking thread (the socket is not read
//! while the pipeline is behind); restores decode chunks ahead of the
//! client within a memory budget and hold no thread while it is slow
//! (`restore`). Memory per ingest stream: the store's 67 MiB plus at
//! most 32 body frames; buffered chunk uploads and `missing` queries share
//! `body_memory_bytes`, restores `restore_memory_bytes`. What one token may
//! hold at once is capped ([`limits`]), and a client that accepts no
//! response bytes for `write_timeout_secs` is disconnected (`deadline`).
//!
//! Guarantees: an upload that does not finish (disconnect, timeout, shutdown,
//! a hash mismatch) commits nothing; restores never send a byte of a chunk
//! that failed verification (the response is aborted instead); no error
//! message carries a filesystem path; slots, quotas, budgets and gauges are
//! held by guards, so a request dropped midway gives them back.

pub mod admin_token;
mod body;
pub mod checks;
pub mod config;
mod convert;
mod deadline;
pub mod error;
pub mod lease;
pub mod limits;
mod maintenance;
pub mod metrics;
pub mod mirror;
mod reply;
mod restore;
pub(crate) mod routes;
mod serve;
pub mod sessions;
mod state;
pub mod sync_jobs;
mod sync_target;
pub mod tokens;
mod ui;

pub use body::Body;
pub use config::Config;
pub use error::{SaveError, StartError};
pub use serve::{listen, run, spawn, tls_acceptor, Background, LISTEN_BACKLOG};
pub use state::{connect_remote, hold_remote, load_key, IngestSlot, State, BODY_MEMORY_WAIT};
