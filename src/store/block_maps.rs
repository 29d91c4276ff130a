//! Mappings of the files of a blob being filled, shared by all of its readers: each file is
//! mapped in aligned blocks once a block is fully written, and the most recently used
//! blocks are kept, so readers that follow a fill from its files slice one mapping instead
//! of each mapping (and unmapping) every frame it reads.
//!
//! Why: a mapping per read costs an `mmap`, a `munmap` and, in a threaded process, a TLB
//! shootdown interrupt to every other core running the daemon. With 32 clients on one cold
//! 256 MiB blob that was about a third of the daemon's CPU (measured: 8,000 mappings for
//! 8 GiB sent and 2.5–2.7 CPU-s; with the blocks shared, 1,000 mappings and 1.85–1.9 CPU-s).
//!
//! Owns: which blocks are mapped and for how long. Must not: map a byte that is not written
//! yet (a mapping past a file's end faults), or decide which file holds which bytes (that is
//! [`super::growing`]).

use crate::mapped;
use bytes::Bytes;
use std::fs::File;
use std::io;
use std::sync::Arc;

/// Files are mapped in blocks of this many bytes, at file offsets that are multiples of it.
pub(super) const BLOCK: u64 = 4 << 20;
/// Blocks kept mapped (least recently used dropped first). A reader over TLS touches the
/// pages it encrypts, and the kept mappings count them in the daemon's RSS until dropped.
const KEPT: usize = 16;

struct Block {
    /// The file's key (its extent's start in the blob) and the block's index in it.
    file: u64,
    index: u64,
    bytes: Bytes,
    used: u64,
}

/// The kept block mappings of one growing blob's files.
#[derive(Default)]
pub(super) struct BlockMaps {
    blocks: Vec<Block>,
    tick: u64,
}

/// Where a read lies in a file, and how much of that file is written.
pub(super) struct FileRead<'a> {
    pub file: &'a Arc<File>,
    /// Identifies the file among the blob's files.
    pub key: u64,
    /// Offset of the read in the file, and its length.
    pub offset: u64,
    pub len: u64,
    /// Bytes of the file written so far (all of them readable).
    pub written: u64,
    /// The file takes no more bytes, so its last block may be shorter than [`BLOCK`].
    pub complete: bool,
}

impl BlockMaps {
    /// The bytes of `read` (at most to the end of its block) from a kept or new block
    /// mapping; `None` when its block is not fully written yet (the caller reads it some
    /// other way).
    pub(super) fn read(&mut self, read: &FileRead<'_>) -> Option<io::Result<Bytes>> {
        let index = read.offset / BLOCK;
        let start = index * BLOCK;
        let end = if read.complete {
            (start + BLOCK).min(read.written)
        } else {
            start + BLOCK
        };
        if end > read.written || read.offset >= end {
            return None;
        }
        self.tick += 1;
        let tick = self.tick;
        let bytes = match self
            .blocks
            .iter_mut()
            .find(|b| b.file == read.key && b.index == index)
        {
            Some(b) => {
                b.used = tick;
                b.bytes.clone()
            }
            None => {
                let bytes = match mapped::map_range(read.file, start, (end - start) as usize) {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e)),
                };
                if self.blocks.len() >= KEPT {
                    if let Some(oldest) =
                        (0..self.blocks.len()).min_by_key(|&i| self.blocks[i].used)
                    {
                        self.blocks.swap_remove(oldest);
                    }
                }
                self.blocks.push(Block {
                    file: read.key,
                    index,
                    bytes: bytes.clone(),
                    used: tick,
                });
                bytes
            }
        };
        let from = (read.offset - start) as usize;
        let to = (read.offset + read.len).min(end) - start;
        Some(Ok(bytes.slice(from..to as usize)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(len: usize) -> (tempfile::TempDir, Arc<File>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&content))
            .expect("write");
        let f = Arc::new(File::open(&path).expect("open"));
        (dir, f, content)
    }

    fn read<'a>(
        file: &'a Arc<File>,
        offset: u64,
        len: u64,
        written: u64,
        complete: bool,
    ) -> FileRead<'a> {
        FileRead {
            file,
            key: 0,
            offset,
            len,
            written,
            complete,
        }
    }

    #[test]
    fn readers_of_one_block_share_its_mapping() {
        let len = 3 * BLOCK as usize;
        let (_d, f, content) = file_with(len);
        let mut maps = BlockMaps::default();
        let a = maps
            .read(&read(&f, 100, 1 << 20, len as u64, false))
            .expect("mappable")
            .expect("map");
        let b = maps
            .read(&read(&f, 200, 1 << 20, len as u64, false))
            .expect("mappable")
            .expect("map");
        assert_eq!(&a[..], &content[100..100 + (1 << 20)]);
        assert_eq!(&b[..], &content[200..200 + (1 << 20)]);
        assert_eq!(
            a.as_ptr() as usize + 100,
            b.as_ptr() as usize,
            "one mapping, two slices"
        );
        // A read is cut at its block's end.
        let c = maps
            .read(&read(&f, BLOCK - 10, 1 << 20, len as u64, false))
            .expect("mappable")
            .expect("map");
        assert_eq!(&c[..], &content[BLOCK as usize - 10..BLOCK as usize]);
    }

    #[test]
    fn a_block_not_fully_written_is_not_mapped() {
        let (_d, f, content) = file_with(BLOCK as usize + 1000);
        let mut maps = BlockMaps::default();
        let written = BLOCK + 1000;
        assert!(
            maps.read(&read(&f, BLOCK, 500, written, false)).is_none(),
            "still growing"
        );
        let tail = maps
            .read(&read(&f, BLOCK, 5000, written, true))
            .expect("complete file")
            .expect("map");
        assert_eq!(
            &tail[..],
            &content[BLOCK as usize..],
            "clipped at the file's end"
        );
        assert!(
            maps.read(&read(&f, written, 10, written, true)).is_none(),
            "past the end"
        );
    }

    #[test]
    fn kept_blocks_are_bounded_and_a_dropped_one_is_mapped_again() {
        let blocks = KEPT as u64 + 2;
        let (_d, f, content) = file_with((blocks * BLOCK) as usize);
        let mut maps = BlockMaps::default();
        for i in 0..blocks {
            let b = maps
                .read(&read(&f, i * BLOCK, 10, blocks * BLOCK, true))
                .expect("mappable")
                .expect("map");
            assert_eq!(
                &b[..],
                &content[(i * BLOCK) as usize..(i * BLOCK) as usize + 10]
            );
        }
        assert_eq!(maps.blocks.len(), KEPT);
        let again = maps
            .read(&read(&f, 0, 10, blocks * BLOCK, true))
            .expect("mappable")
            .expect("map");
        assert_eq!(&again[..], &content[..10]);
        assert_eq!(maps.blocks.len(), KEPT);
    }
}
