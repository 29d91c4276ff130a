//! File-backed frames: a read-only `mmap(2)` of a byte range of a file, handed out as a
//! [`Bytes`] that user space never has to copy, and the lookup that lets a plain-TCP socket
//! writer send such a frame with `sendfile(2)` from the file's page cache instead of
//! copying it (see `server::sendfile`).
//!
//! Owns: creating mapped frames ([`map_range`]) and the process-wide table of live
//! mappings ([`find`]), keyed by address, that a writer consults for the slices it is asked
//! to write.
//!
//! Must not: map anything a caller could change under the mapping. Callers map only bytes
//! that are already written and never rewritten or truncated: chunk files are immutable
//! once named, and fills only ever append (a mapping covers bytes whose `write` returned).
//! Unlinking a mapped file is fine: the mapping and the open file keep the pages alive.
//!
//! A leaf: imports nothing of the crate.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

/// A frame no larger than this is read into memory rather than mapped (one syscall
/// instead of two, and no page-table work).
pub const MAP_THRESHOLD: usize = 64 << 10;

/// Where the bytes of a live mapping come from.
struct Region {
    len: usize,
    file: Arc<File>,
    file_offset: u64,
}

fn regions() -> &'static Mutex<BTreeMap<usize, Region>> {
    static REGIONS: OnceLock<Mutex<BTreeMap<usize, Region>>> = OnceLock::new();
    REGIONS.get_or_init(|| Mutex::new(BTreeMap::new()))
}

fn lock_regions() -> std::sync::MutexGuard<'static, BTreeMap<usize, Region>> {
    regions().lock().unwrap_or_else(|p| p.into_inner())
}

/// Owns one mapping; unregisters it before unmapping.
struct Mapping {
    map: memmap2::Mmap,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        lock_regions().remove(&(self.map.as_ptr() as usize));
    }
}

fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
    })
}

/// Bytes `offset..offset+len` of `file`. Small ranges are read into memory; larger ones
/// are mapped (the caller guarantees those bytes exist and never change; see the module
/// doc). An empty range is an empty `Bytes`.
pub fn map_range(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    if len <= MAP_THRESHOLD {
        return read_range(file, offset, len);
    }
    // A mapping past the end of the file would fault (SIGBUS) when read: refuse it.
    let file_len = file.metadata()?.len();
    if offset + len as u64 > file_len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "file has {file_len} bytes, {} asked for",
                offset + len as u64
            ),
        ));
    }
    let aligned = offset - offset % page_size();
    let lead = (offset - aligned) as usize;
    // SAFETY: the mapped bytes are already written and are never modified or truncated
    // while mapped (the module's contract with every caller); the mapping is read-only.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(aligned)
            .len(lead + len)
            .map(file.as_ref())?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let start = map.as_ptr() as usize;
    lock_regions().insert(
        start,
        Region {
            len: lead + len,
            file: Arc::clone(file),
            file_offset: aligned,
        },
    );
    let frame = Bytes::from_owner(Mapping { map });
    Ok(frame.slice(lead..))
}

/// Reads `len` bytes at `offset` into a fresh buffer (never zero-filled first).
pub fn read_range(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let mut done = 0usize;
    while done < len {
        let at = i64::try_from(offset + done as u64)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: the pointer and length stay within `buf`'s spare capacity; pread writes
        // at most `len - done` bytes there, and only what it reports is marked initialized.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(done).cast(),
                len - done,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ends {} bytes short of the range", len - done),
            ));
        }
        done += n as usize;
        // SAFETY: pread initialized `done` bytes.
        unsafe { buf.set_len(done) };
    }
    Ok(Bytes::from(buf))
}

/// Where `ptr..ptr+len` comes from, if it lies inside one live mapping: the file and the
/// file offset of `ptr`.
pub fn find(ptr: *const u8, len: usize) -> Option<(Arc<File>, u64)> {
    let addr = ptr as usize;
    let regions = lock_regions();
    let (start, region) = regions.range(..=addr).next_back()?;
    let inside = addr + len <= start + region.len;
    inside.then(|| {
        (
            Arc::clone(&region.file),
            region.file_offset + (addr - start) as u64,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(content: &[u8]) -> (tempfile::TempDir, Arc<File>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(content))
            .expect("write");
        let file = Arc::new(File::open(&path).expect("open"));
        (dir, file)
    }

    #[test]
    fn mapped_and_read_ranges_have_the_file_bytes() {
        let content: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, file) = file_with(&content);
        for (offset, len) in [(0, 10), (4095, 70_000), (5000, 300_000), (599_990, 10)] {
            let b = map_range(&file, offset, len).expect("range");
            assert_eq!(&b[..], &content[offset as usize..offset as usize + len]);
        }
        assert!(map_range(&file, 599_995, 10).is_err(), "past the end");
    }

    #[test]
    fn live_mappings_are_found_until_dropped() {
        let content = vec![7u8; 200_000];
        let (_dir, file) = file_with(&content);
        let frame = map_range(&file, 10_000, 150_000).expect("map");
        let inner = frame.slice(1000..2000);
        let (_, at) = find(inner.as_ptr(), inner.len()).expect("inside the mapping");
        assert_eq!(at, 11_000);
        assert!(
            find(frame.as_ptr(), frame.len() + 5000).is_none(),
            "runs past it"
        );
        let addr = frame.as_ptr();
        drop(inner);
        drop(frame);
        assert!(find(addr, 1).is_none(), "gone with its last Bytes");
        let small = map_range(&file, 0, 100).expect("read");
        assert!(
            find(small.as_ptr(), small.len()).is_none(),
            "small reads are not mapped"
        );
    }
}
