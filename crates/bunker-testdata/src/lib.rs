//! Deterministic test data for bunker, shared by the CLI's `demo`, the
//! benchmarks, the tools and every test suite, and (feature `stores`) the
//! real services tests run against.
//!
//! - [`image`]: SAN-like block-device images (day 0 plus daily mutations),
//!   streamable at GB/s.
//! - [`noise`]: seeded incompressible bytes.
//! - `stores` (feature `stores`): SeaweedFS and moto started on free ports
//!   of 127.0.0.1, and a fault-injecting proxy in front of one; the one
//!   harness of bunker-s3's tests and the end-to-end suite.
//!
//! The data generators are pure functions of their seed: the same seed gives the same bytes
//! on every machine and in every version, so seeded tests and pinned
//! fixtures keep their meaning. A change to either output is a change to
//! every benchmark figure and fixture made from it.

pub mod image;
mod noise;

pub use noise::{fill_noise, noise};
#[cfg(feature = "stores")]
pub mod stores;
