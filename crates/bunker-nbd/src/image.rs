//! A snapshot image as a [`Source`]: what `bunker export` serves.

use bunker_image::{Image, ImageError};

use crate::{Extent, Source, SourceError};

impl Source for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        Image::read_at(self, offset, buf).map_err(source_error)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        Ok(Image::extents(self, offset, len)
            .map_err(source_error)?
            .into_iter()
            .map(|e| Extent {
                offset: e.offset,
                len: e.len,
                zero: e.zero,
            })
            .collect())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let _ = Image::prefetch(self, offset, len);
    }

    /// The repository's average chunk length, rounded down to a power of
    /// two: a request that size touches one or two chunks.
    fn preferred_block(&self) -> u32 {
        let avg = self.chunk_sizes().avg.clamp(4096, 32 << 20);
        1 << (63 - avg.leading_zeros())
    }
}

fn source_error(e: ImageError) -> SourceError {
    match e {
        ImageError::Damaged { offset, .. } => SourceError::Damaged {
            offset,
            message: e.to_string(),
        },
        e => SourceError::Failed(e.to_string()),
    }
}
