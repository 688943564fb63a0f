//! Data generators and benchmark drivers for bunker.
//!
//! - [`image`]: deterministic, streamable SAN-like block-device images (day 0 plus
//!   daily mutations) used to benchmark deduplication realistically. The
//!   `bunker-gen` binary writes them to files or stdout.

pub mod image;
pub mod rss;
