//! bunker's end-to-end suites, one test binary with a module per area
//! (the hostile-HTTP load test is its own binary, `tests/hostile.rs`, so
//! it runs alone and its latency figures are the server's, not the other
//! suites').
//!
//! Randomised tests are seeded; a failure prints the seed and the command
//! that reproduces it (`BUNKER_SEED=<n> cargo test ...`). The soak tier,
//! `BUNKER_SOAK=1 cargo test --release -p bunker-tests`, runs
//! every randomised fault test ten times as long.

mod blocks;
mod changed;
mod cli;
mod corruption;
mod crash;
mod crypt;
mod delta;
mod disk;
mod encrypted;
mod faults;
mod mount;
mod nbd;
mod nbdsrc;
mod races;
mod restore;
mod s3;
mod s3_faults;
mod s3_server;
mod san;
mod server;
mod status_page;
mod sync;
mod sync_jobs;
mod sync_kills;
mod tls;
mod upgrade;

pub use bunker_tests::{scaled, seed};

use std::process::{Command, Output};

use bunker_tests::server::Server;

/// Runs the `bunker` program against `server` as its admin.
pub(crate) fn bunker(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bunker-e2e"))
        .args(args)
        .env("BUNKER_SERVER", &server.url)
        .env("BUNKER_TOKEN", &server.admin)
        .output()
        .expect("run bunker")
}

/// The raw manifest of `name@id` (40-byte entries), as the admin reads it.
pub(crate) fn manifest(server: &Server, name: &str, id: impl std::fmt::Display) -> Vec<u8> {
    ureq::get(format!("{}/v1/snapshots/{name}/{id}/manifest", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .read_to_vec()
        .unwrap()
}

/// `GET /v1/info` as the admin reads it.
pub(crate) fn info(server: &Server) -> serde_json::Value {
    ureq::get(format!("{}/v1/info", server.url))
        .header("authorization", format!("Bearer {}", server.admin))
        .call()
        .unwrap()
        .into_body()
        .read_json()
        .unwrap()
}

/// The JSON a successful `bunker --json` printed; fails the test on any
/// other exit, with its stderr.
pub(crate) fn ok_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON output")
}
