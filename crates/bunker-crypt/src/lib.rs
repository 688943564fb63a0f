//! Encryption at rest for bunker.
//!
//! # Brief overview
//! - [`key`]: the repository key (256 bits), its id (a hash of the key, safe
//!   to print and to store beside the data) and the key file that holds it
//!   (docs/FORMAT.md, "Key file").
//! - [`seal`]: sealing and opening one object (a record payload, a pack
//!   trailer, a manifest) with AES-256-GCM under a per-purpose subkey, a
//!   fresh random nonce per object, and the object's identity as associated
//!   data, so a sealed object moved to another place fails to open
//!   (docs/FORMAT.md, "Sealed objects").
//! - [`wrap`]: the key sealed under a passphrase (argon2id) for escrow, and
//!   [`load_key_file`], which reads a key file of either kind
//!   (docs/FORMAT.md, "Wrapped key file").
//!
//! Guarantees: opening never returns bytes that were not sealed under this
//! key, for this purpose and this identity; a damaged or moved object is
//! [`Error::Damaged`], never wrong bytes. The key's bytes never appear in
//! `Debug` output or error messages; only its id does.
//!
//! Nothing here does I/O except reading and writing key files (and a
//! passphrase file).

mod error;
pub mod key;
pub mod seal;
pub mod wrap;

pub use error::Error;
pub use key::{Key, KeyId};
pub use seal::{Purpose, Sealer, OVERHEAD};
pub use wrap::{load_key_file, KdfParams, KeyFileKind, Passphrase};

pub type Result<T, E = Error> = std::result::Result<T, E>;
