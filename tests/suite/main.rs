//! bunker's end-to-end suites, one test binary with a module per area.
//!
//! Randomised tests are seeded; a failure prints the seed and the command
//! that reproduces it (`BUNKER_SEED=<n> cargo test ...`).

mod cli;
mod corruption;
mod crash;
mod faults;
mod races;
mod san;
mod server;
mod tls;
mod upgrade;

/// The seed of a randomised test: `BUNKER_SEED` or the given default.
pub fn seed(default: u64) -> u64 {
    std::env::var("BUNKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
