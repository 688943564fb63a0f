//! The whole-image BLAKE3 of a volume from the chaining values of its
//! aligned blocks, so a backup that reads only the changed blocks still
//! records the true BLAKE3 of every byte of the image.
//!
//! BLAKE3 is a binary tree over 1 KiB chunks in which the left subtree of
//! every node holds the largest power-of-two number of chunks that is less
//! than the node's. An aligned block of `block_len` bytes (a power of two,
//! at least 1 KiB) is therefore a complete subtree of the image's tree, and
//! so is the last, partial block. Its chaining value (CV) depends only on
//! its bytes and its offset. Given the CVs of every block, the root follows
//! by merging them exactly as BLAKE3 merges chunk CVs ([`TreeStack`], the
//! same lazy stack as the reference implementation). A changed-extent
//! backup (`bunker-changes`) takes the CVs of unchanged blocks from the
//! base snapshot's block hashes and hashes only the blocks it reads; the result equals `blake3::hash` of the
//! whole image (tested against it for every length shape).
//!
//! An image no longer than one block has no non-root subtree to reuse:
//! its hash is that of its bytes ([`BlockHasher`] handles both cases).

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::Hasher;

/// Smallest block: one BLAKE3 chunk.
pub const MIN_BLOCK_LEN: u64 = blake3::CHUNK_LEN as u64;

/// True when `block_len` can be used: a power of two of at least 1 KiB.
pub fn valid_block_len(block_len: u64) -> bool {
    block_len >= MIN_BLOCK_LEN && block_len.is_power_of_two()
}

/// Number of whole blocks whose CVs an image of `len` bytes needs: none
/// when the image fits in one block (it is hashed from its bytes).
pub fn full_blocks(len: u64, block_len: u64) -> u64 {
    if len <= block_len {
        0
    } else {
        len / block_len
    }
}

/// Where the bytes that are hashed directly begin: after the last whole
/// block, or 0 for an image of at most one block.
pub fn tail_start(len: u64, block_len: u64) -> u64 {
    full_blocks(len, block_len) * block_len
}

/// The CV of block `index` (`bytes` is the whole block).
pub fn block_cv(block_len: u64, index: u64, bytes: &[u8]) -> ChainingValue {
    debug_assert_eq!(bytes.len() as u64, block_len);
    let mut hasher = Hasher::new();
    hasher.set_input_offset(index * block_len);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// The CV of the tail: the bytes after the last whole block, which start
/// at `offset` (a multiple of the block length).
pub fn tail_cv(offset: u64, bytes: &[u8]) -> ChainingValue {
    let mut hasher = Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// Merges block CVs, pushed in image order, into the root hash.
#[derive(Clone, Debug, Default)]
pub struct TreeStack {
    stack: Vec<ChainingValue>,
    leaves: u64,
}

impl TreeStack {
    pub fn new() -> TreeStack {
        TreeStack::default()
    }

    /// Adds the next whole block's CV.
    pub fn push(&mut self, cv: ChainingValue) {
        self.merge_complete();
        self.stack.push(cv);
        self.leaves += 1;
    }

    /// Merges the subtrees that the leaves so far complete. Done only
    /// before another leaf arrives: until then the top might still be the
    /// root's right child, which is merged differently.
    fn merge_complete(&mut self) {
        let keep = self.leaves.count_ones() as usize;
        while self.stack.len() > keep {
            let right = self.stack.pop().expect("stack longer than keep");
            let left = self.stack.pop().expect("a merge needs two subtrees");
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
    }

    /// Blocks pushed so far.
    pub fn blocks(&self) -> u64 {
        self.leaves
    }

    /// The root, with `tail` the CV of a final partial block (`None` when
    /// the image ends on a block boundary). At least two leaves (whole
    /// blocks plus tail) are needed: a one-block image is hashed from its
    /// bytes.
    pub fn finish(mut self, tail: Option<ChainingValue>) -> Option<blake3::Hash> {
        let mut right = match tail {
            Some(cv) => {
                self.merge_complete();
                cv
            }
            None => self.stack.pop()?,
        };
        let mut left = self.stack.pop()?;
        while let Some(next) = self.stack.pop() {
            right = merge_subtrees_non_root(&left, &right, Mode::Hash);
            left = next;
        }
        Some(merge_subtrees_root(&left, &right, Mode::Hash))
    }
}

/// Hashes an image streamed in order, producing the CV of every whole
/// block (for the snapshot to keep) and the whole-image BLAKE3.
#[derive(Clone, Debug)]
pub struct BlockHasher {
    block_len: u64,
    /// Bytes hashed so far.
    len: u64,
    current: Hasher,
    /// Block 0's hasher, kept for an image of exactly one block, whose
    /// hash is the root of that block rather than a merge.
    first: Option<Hasher>,
    tree: TreeStack,
    /// Hash large pieces on the rayon pool ([`BlockHasher::on_all_cores`]).
    parallel: bool,
}

impl BlockHasher {
    /// `block_len` must satisfy [`valid_block_len`].
    pub fn new(block_len: u64) -> BlockHasher {
        assert!(
            valid_block_len(block_len),
            "invalid block length {block_len}"
        );
        BlockHasher {
            block_len,
            len: 0,
            current: Hasher::new(),
            first: None,
            tree: TreeStack::new(),
            parallel: false,
        }
    }

    /// Hashes pieces of 128 KiB or more on the rayon pool: for a caller
    /// that has the cores to spare (the client). The server's ingest keeps
    /// the default, one thread overlapped with its cutting and storing
    /// stages, which already use the pool.
    #[cfg(feature = "rayon")]
    pub fn on_all_cores(mut self) -> BlockHasher {
        self.parallel = true;
        self
    }

    /// Hashes the next bytes; `on_block` receives each whole block's index
    /// and CV as it completes.
    pub fn update(&mut self, mut data: &[u8], mut on_block: impl FnMut(u64, ChainingValue)) {
        while !data.is_empty() {
            let in_block = self.len % self.block_len;
            if in_block == 0 && self.len > 0 {
                self.current = Hasher::new();
                self.current.set_input_offset(self.len);
            }
            let take = ((self.block_len - in_block) as usize).min(data.len());
            let (now, rest) = data.split_at(take);
            self.update_block(now);
            self.len += take as u64;
            data = rest;
            if self.len % self.block_len == 0 {
                let index = self.len / self.block_len - 1;
                let cv = self.current.finalize_non_root();
                if index == 0 {
                    self.first = Some(self.current.clone());
                }
                self.tree.push(cv);
                on_block(index, cv);
            }
        }
    }

    #[cfg(feature = "rayon")]
    fn update_block(&mut self, bytes: &[u8]) {
        if self.parallel && bytes.len() >= 128 * 1024 {
            self.current.update_rayon(bytes);
        } else {
            self.current.update(bytes);
        }
    }

    #[cfg(not(feature = "rayon"))]
    fn update_block(&mut self, bytes: &[u8]) {
        self.current.update(bytes);
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The BLAKE3 of everything hashed.
    pub fn finalize(self) -> blake3::Hash {
        self.finalize_with_tail().0
    }

    /// The BLAKE3 of everything hashed, and the tail's chaining value that
    /// block hashes keep beside the whole blocks' (`None` when the image
    /// ends on a block boundary or fits in one block).
    pub fn finalize_with_tail(self) -> (blake3::Hash, Option<ChainingValue>) {
        if self.len <= self.block_len {
            let root = match self.first {
                Some(first) => first.finalize(),
                None => self.current.finalize(),
            };
            return (root, None);
        }
        let tail = (self.len % self.block_len != 0).then(|| self.current.finalize_non_root());
        let root = self
            .tree
            .finish(tail)
            .expect("an image longer than a block has two leaves");
        (root, tail)
    }

    pub fn block_len(&self) -> u64 {
        self.block_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// The root from stored CVs plus a tail, as a changed-extent backup
    /// computes it.
    fn from_blocks(data: &[u8], block_len: u64) -> blake3::Hash {
        let len = data.len() as u64;
        if len <= block_len {
            return blake3::hash(data);
        }
        let mut tree = TreeStack::new();
        for index in 0..full_blocks(len, block_len) {
            let at = (index * block_len) as usize;
            tree.push(block_cv(
                block_len,
                index,
                &data[at..at + block_len as usize],
            ));
        }
        let start = tail_start(len, block_len);
        let tail = (start < len).then(|| tail_cv(start, &data[start as usize..]));
        tree.finish(tail).unwrap()
    }

    #[test]
    fn every_length_shape_gives_the_blake3_of_the_image() {
        let block = 2048u64;
        let data = bytes(11 * 2048 + 700, 7);
        for len in [
            0usize, 1, 1023, 1024, 1025, 2047, 2048, 2049, 4096, 4097, 6144, 8192, 8193, 16384,
            16385, 20480, 23228,
        ] {
            let want = blake3::hash(&data[..len]);
            assert_eq!(from_blocks(&data[..len], block), want, "len {len}");
            let mut hasher = BlockHasher::new(block);
            let mut seen = 0;
            hasher.update(&data[..len], |index, cv| {
                assert_eq!(index, seen);
                let at = (index * block) as usize;
                assert_eq!(cv, block_cv(block, index, &data[at..at + block as usize]));
                seen += 1;
            });
            assert_eq!(seen, len as u64 / block);
            assert_eq!(hasher.finalize(), want, "streamed, len {len}");
        }
    }

    proptest! {
        #[test]
        fn any_length_block_and_split_matches_blake3(
            len in 0usize..40_000,
            shift in 10u32..14,
            split in 1usize..9000,
            seed in any::<u64>(),
        ) {
            let block = 1u64 << shift;
            let data = bytes(len, seed);
            let want = blake3::hash(&data);
            prop_assert_eq!(from_blocks(&data, block), want);
            let mut hasher = BlockHasher::new(block);
            for piece in data.chunks(split) {
                hasher.update(piece, |_, _| {});
            }
            prop_assert_eq!(hasher.finalize(), want);
        }
    }

    #[test]
    fn block_lengths_must_be_powers_of_two_of_a_chunk_or_more() {
        assert!(valid_block_len(1024));
        assert!(valid_block_len(16 << 20));
        assert!(!valid_block_len(512));
        assert!(!valid_block_len(3 << 20));
    }
}
