//! Deterministic test data for bunker, shared by the CLI's `demo`, the
//! benchmarks, the tools and every test suite.
//!
//! - [`image`]: SAN-like block-device images (day 0 plus daily mutations),
//!   streamable at GB/s.
//! - [`noise`]: seeded incompressible bytes.
//!
//! Both are pure functions of their seed: the same seed gives the same bytes
//! on every machine and in every version, so seeded tests and pinned
//! fixtures keep their meaning. A change to either output is a change to
//! every benchmark figure and fixture made from it.

pub mod image;
mod noise;

pub use noise::{fill_noise, noise};
