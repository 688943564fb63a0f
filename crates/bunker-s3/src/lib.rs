//! bunker's packs and repository objects on S3-compatible object storage.
//!
//! Brief overview: [`S3Config`] says where the bucket is (`s3://BUCKET/PREFIX`,
//! endpoint, region, credentials, retries, timeouts, part size, cache);
//! [`Bucket::connect`] builds the client and checks the bucket answers;
//! [`S3Packs`] is the engine's `PackBackend` over it (sealed packs as
//! objects, staging and a bounded read cache on local disk) and [`S3Meta`]
//! its `MetaBackend` (config, manifests and the other small files as
//! objects). Layout under the prefix:
//!
//! ```text
//! PREFIX/packs/<aa>/<bb>/<id>.pack   sealed packs (aa, bb: low bytes of the id)
//! PREFIX/<key>                      MetaBackend keys: config, snapshots/..., tombstones
//! ```
//!
//! The local data directory holds `staging/` (packs being written, and
//! `staging/uploads/`, the journal of multipart uploads in progress) and
//! `cache/` (disposable). Modules:
//! - `config`: [`S3Config`], serde-deserialisable from the server's TOML.
//! - `bridge`: the crate's own tokio runtime, so any thread may call in.
//! - `bucket`: the client, the in-flight bound, `check`.
//! - `error`: object store failures as `bunker_store::Error`, by what the
//!   caller does next (`NotFound`, `Remote`, `Unavailable`).
//! - `upload`: a file to an object; multipart above the part size, create-only
//!   for packs, aborted on failure, journalled.
//! - `cache`: the bounded block cache in front of ranged GETs.
//! - `window`: read-ahead of announced records, coalesced GETs served
//!   from memory.
//! - `packs`, `meta`: the two backends.
//!
//! Errors are the engine's own `bunker_store::Error`, since the backends
//! answer through its traits.
//!
//! Leaked multipart uploads: object_store cannot list a bucket's multipart
//! uploads, so the crate journals each upload id locally and aborts what is
//! journalled on open. Uploads whose journal was lost with the server's
//! disk are only reclaimed by a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`, e.g. after 1 day): docs/OPERATIONS.md,
//! "Object storage", says how to set it.

mod bridge;
mod bucket;
mod cache;
mod config;
mod error;
mod meta;
mod packs;
mod upload;
mod window;

pub use bucket::Bucket;
pub use config::{S3Config, Secret};
pub use meta::S3Meta;
pub use packs::S3Packs;
