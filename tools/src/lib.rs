//! Benchmark drivers and data tools for bunker.
//!
//! The images they generate come from `bunker-testdata` (the `bunker-gen`
//! binary writes them to files or stdout); this crate holds what only the
//! drivers need, such as [`rss`].

pub mod rss;
