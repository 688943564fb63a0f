//! A local file as a [`Source`]: protocol tests, and a baseline for
//! benchmarks. Reports the whole file as data.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Extent, Source, SourceError};

pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    pub fn new(file: File) -> std::io::Result<FileSource> {
        let size = file.metadata()?.len();
        Ok(FileSource { file, size })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| SourceError::Failed(format!("reading at byte {offset}: {e}")))
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, SourceError> {
        Ok(vec![Extent {
            offset,
            len,
            zero: false,
        }])
    }
}
