//! bunker's end-to-end suites, one test binary with a module per area.
//!
//! Randomised tests are seeded; a failure prints the seed and the command
//! that reproduces it (`BUNKER_SEED=<n> cargo test ...`). The soak tier,
//! `BUNKER_SOAK=1 cargo test --release -p bunker-tests --test suite`, runs
//! every randomised fault test ten times as long.

mod cli;
mod corruption;
mod crash;
mod faults;
mod hostile;
mod races;
mod san;
mod server;
mod tls;
mod upgrade;

/// How many trials a randomised fault test runs: `ci` in CI, ten times as
/// many in the soak tier (`BUNKER_SOAK=1`).
pub fn scaled(ci: u64) -> u64 {
    if std::env::var("BUNKER_SOAK").is_ok_and(|v| v == "1") {
        ci * 10
    } else {
        ci
    }
}

/// The seed of a randomised test: `BUNKER_SEED` or the given default.
pub fn seed(default: u64) -> u64 {
    std::env::var("BUNKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
