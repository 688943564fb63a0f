//! Block hashes files (docs/FORMAT.md, "Block hashes"): the layout lives
//! in `bunker_chunk::blocks_file`, shared with the server and the client;
//! this wraps its decoders in the store's errors.

pub use bunker_chunk::blocks_file::{
    BlocksHeader, CV_LEN, DEFAULT_BLOCK_LEN, FOOTER_LEN, HEADER_LEN,
};

use crate::{Error, Result};

/// The header of `file`, checked.
pub fn decode_header(file: &str, b: &[u8]) -> Result<BlocksHeader> {
    BlocksHeader::decode(b)
        .map_err(|reason| Error::corrupt(file, format!("block hashes: {reason}")))
}

/// The checksum the footer of `file` holds.
pub fn decode_footer(file: &str, b: &[u8]) -> Result<u64> {
    bunker_chunk::blocks_file::decode_footer(b)
        .map_err(|reason| Error::corrupt(file, format!("block hashes: {reason}")))
}
