//! Chunk files: the bytes of blobs, one file per distinct fixed-size chunk, named by the
//! blake3 hash of its content: `<path>/chunks/<2 hex>/<2 hex>/<64 hex>`.
//!
//! Owns: chunk naming ([`ChunkId`]), the write protocol (a temp file under `<path>/tmp/`
//! written with ordinary buffered writes, renamed into place when its content and so its
//! name are known, its writeback optionally started at once ([`ChunkFiles::start_writeback`]),
//! and made durable later, once per blob, by [`ChunkFiles::sync_placed`]: fsync of each
//! file and of each directory entry), spool files, ranged reads, unlinking,
//! and walking the chunk and temp directories for recovery.
//!
//! Must not: decide whether a chunk may be unlinked (refcounts and pins live in the index
//! and the budget), touch the sled index, or hold any lock of the store.

use super::error::{IoContext, StoreError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

/// The blake3 hash of a chunk's content; its file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);

impl ChunkId {
    /// The id of `content`.
    pub fn of(content: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(content).as_bytes())
    }

    pub fn from_bytes(raw: [u8; 32]) -> ChunkId {
        ChunkId(raw)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &hex::encode(self.0)[..12])
    }
}

impl FromStr for ChunkId {
    type Err = hex::FromHexError;

    fn from_str(s: &str) -> Result<ChunkId, Self::Err> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(hex::FromHexError::InvalidStringLength);
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(s, &mut raw)?;
        Ok(ChunkId(raw))
    }
}

/// One chunk of a blob, in blob order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// What a walk of `chunks/` found.
pub(crate) struct ChunkScan {
    /// Well-named chunk files and their sizes.
    pub files: HashMap<ChunkId, u64>,
    /// Files that are not named like chunks or are in the wrong directory.
    pub strays: Vec<PathBuf>,
}

/// The chunk and temp directories of one store.
pub(crate) struct ChunkFiles {
    root: PathBuf,
    tmp: PathBuf,
    /// Fan-out directories (first two bytes of the id) known to exist durably.
    durable_dirs: Mutex<HashSet<u16>>,
    /// The last chunks read, whole (see [`ChunkFiles::whole`]).
    recent: Mutex<RecentChunks>,
}

/// How many whole chunks [`ChunkFiles::whole`] keeps. Mappings cost address space, not
/// memory: their pages are resident only while something reads them (TLS encrypting).
const RECENT_CHUNKS: usize = 16;

/// Recently read chunks, least recently used evicted.
#[derive(Default)]
struct RecentChunks {
    chunks: HashMap<ChunkId, (Bytes, u64)>,
    tick: u64,
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

impl ChunkFiles {
    /// Creates `<store>/chunks` and `<store>/tmp` if needed.
    pub fn open(store_path: &Path) -> Result<ChunkFiles, StoreError> {
        let root = store_path.join("chunks");
        let tmp = store_path.join("tmp");
        for dir in [&root, &tmp] {
            if !dir.is_dir() {
                fs::create_dir_all(dir).ctx("create directory", dir)?;
                fsync_dir(store_path)?;
            }
        }
        Ok(ChunkFiles {
            root,
            tmp,
            durable_dirs: Mutex::new(HashSet::new()),
            recent: Mutex::new(RecentChunks::default()),
        })
    }

    /// The directory of temp and spool files (`<store>/tmp`).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// `chunks/<2 hex>/<2 hex>/<64 hex>`.
    pub fn path(&self, id: &ChunkId) -> PathBuf {
        let name = id.to_string();
        self.root.join(&name[0..2]).join(&name[2..4]).join(name)
    }

    /// Whether the chunk file exists with exactly `len` bytes.
    pub fn exists_with_len(&self, id: &ChunkId, len: u32) -> bool {
        fs::metadata(self.path(id)).is_ok_and(|m| m.is_file() && m.len() == u64::from(len))
    }

    /// Makes sure `chunks/<ab>/<cd>` exists and its creation is durable.
    fn ensure_fanout_dir(&self, id: &ChunkId) -> Result<PathBuf, StoreError> {
        let key = u16::from_be_bytes([id.0[0], id.0[1]]);
        let name = id.to_string();
        let outer = self.root.join(&name[0..2]);
        let inner = outer.join(&name[2..4]);
        let known = self
            .durable_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key);
        if !known {
            fs::create_dir_all(&inner).ctx("create directory", &inner)?;
            fsync_dir(&outer)?;
            fsync_dir(&self.root)?;
            self.durable_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
        }
        Ok(inner)
    }

    /// A new, empty file under `tmp/` for a chunk being assembled (opened for reading and
    /// writing), and its path.
    pub fn create_temp(&self) -> Result<(File, PathBuf), StoreError> {
        let tmp = self
            .tmp
            .join(format!("{:016x}.part", rand::random::<u64>()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create temp chunk file", &tmp)?;
        Ok((file, tmp))
    }

    /// A file under `tmp/` that is unlinked at once: it lives while it is open, and a crash
    /// leaves nothing behind. For blobs that pass through without being stored.
    pub fn create_spool(&self) -> Result<File, StoreError> {
        let (file, path) = self.create_temp()?;
        fs::remove_file(&path).ctx("unlink spool file", &path)?;
        Ok(file)
    }

    /// Moves the assembled temp file `tmp` into place as chunk `id`. Not durable yet: see
    /// [`sync_placed`](Self::sync_placed).
    pub fn place(&self, tmp: &Path, id: &ChunkId) -> Result<(), StoreError> {
        let dir = self.ensure_fanout_dir(id)?;
        let dest = dir.join(id.to_string());
        fs::rename(tmp, &dest).ctx("rename chunk file into", &dest)
    }

    /// Starts writing `file`'s dirty pages to disk without waiting for them
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the fsync of
    /// [`sync_placed`](Self::sync_placed) later finds little left to do. Only a hint: a
    /// failure is ignored (the fsync still makes the file durable or reports the error).
    pub fn start_writeback(file: &File) {
        use std::os::fd::AsRawFd;
        // SAFETY: `file` is an open descriptor for the duration of the call; the call only
        // reads its arguments.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    /// Makes chunks `ids` durable: each file's data (`file` when the caller holds it open,
    /// else opened by name) and each directory entry. After this, they survive a crash.
    pub fn sync_placed<'a>(
        &self,
        chunks: impl Iterator<Item = (&'a ChunkId, Option<&'a File>)>,
    ) -> Result<(), StoreError> {
        let mut dirs: HashSet<PathBuf> = HashSet::new();
        for (id, open) in chunks {
            let path = self.path(id);
            match open {
                Some(f) => f.sync_data().ctx("fsync chunk file", &path)?,
                None => File::open(&path)
                    .and_then(|f| f.sync_data())
                    .ctx("fsync chunk file", &path)?,
            }
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            fsync_dir(&dir)?;
        }
        Ok(())
    }

    /// Writes `content` as chunk `id` and makes it durable (for tests).
    #[cfg(test)]
    pub fn write(&self, id: &ChunkId, content: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let (mut file, tmp) = self.create_temp()?;
        let written = (|| {
            file.write_all(content).ctx("write temp chunk file", &tmp)?;
            self.place(&tmp, id)?;
            self.sync_placed(std::iter::once((id, Some(&file))))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }

    /// Opens chunk `id` for reading.
    pub fn open_chunk(&self, id: &ChunkId) -> Result<File, StoreError> {
        let path = self.path(id);
        File::open(&path).ctx("open chunk file", &path)
    }

    fn lock_recent(&self) -> std::sync::MutexGuard<'_, RecentChunks> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// All `len` bytes of chunk `id` as one file-backed frame (a read-only mapping; small
    /// chunks read into memory). The last chunks asked for are kept, so a hot blob is
    /// served without an `open` or `mmap` per request; content-addressed files never
    /// change, and [`remove`](Self::remove) forgets a chunk before unlinking it.
    pub fn whole(&self, id: &ChunkId, len: u32) -> Result<Bytes, StoreError> {
        {
            let mut recent = self.lock_recent();
            recent.tick += 1;
            let tick = recent.tick;
            if let Some((b, used)) = recent.chunks.get_mut(id) {
                *used = tick;
                return Ok(b.clone());
            }
        }
        let path = self.path(id);
        let file = std::sync::Arc::new(self.open_chunk(id)?);
        let bytes =
            crate::mapped::map_range(&file, 0, len as usize).ctx("map chunk file", &path)?;
        let mut recent = self.lock_recent();
        if recent.chunks.len() >= RECENT_CHUNKS {
            let oldest = recent
                .chunks
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                recent.chunks.remove(&k);
            }
        }
        let tick = recent.tick;
        recent.chunks.insert(*id, (bytes.clone(), tick));
        Ok(bytes)
    }

    /// Bytes `offset..offset+len` of chunk `id`.
    pub fn read_range(&self, id: &ChunkId, offset: u32, len: u32) -> Result<Bytes, StoreError> {
        let path = self.path(id);
        let file = self.open_chunk(id)?;
        crate::mapped::read_range(&file, u64::from(offset), len as usize)
            .ctx("read chunk file", &path)
    }

    /// Unlinks chunk `id`; a missing file is not an error.
    pub fn remove(&self, id: &ChunkId) -> Result<(), StoreError> {
        // A kept mapping would hold the file (and its disk space) after the unlink.
        self.lock_recent().chunks.remove(id);
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove chunk file", &path, e)),
        }
    }

    /// Removes everything under `tmp/`; returns how many entries went.
    pub fn clear_tmp(&self) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.tmp).ctx("list", &self.tmp)? {
            let entry = entry.ctx("list", &self.tmp)?;
            let path = entry.path();
            let is_dir = entry.file_type().ctx("stat", &path)?.is_dir();
            if is_dir {
                fs::remove_dir_all(&path).ctx("remove", &path)?;
            } else {
                fs::remove_file(&path).ctx("remove", &path)?;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Walks `chunks/`: every well-placed chunk file with its size, and everything else.
    pub fn scan(&self) -> Result<ChunkScan, StoreError> {
        let mut scan = ChunkScan {
            files: HashMap::new(),
            strays: Vec::new(),
        };
        for outer in fs::read_dir(&self.root).ctx("list", &self.root)? {
            let outer = outer.ctx("list", &self.root)?;
            let outer_path = outer.path();
            if !outer.file_type().ctx("stat", &outer_path)?.is_dir() {
                scan.strays.push(outer_path);
                continue;
            }
            for inner in fs::read_dir(&outer_path).ctx("list", &outer_path)? {
                let inner = inner.ctx("list", &outer_path)?;
                let inner_path = inner.path();
                if !inner.file_type().ctx("stat", &inner_path)?.is_dir() {
                    scan.strays.push(inner_path);
                    continue;
                }
                for file in fs::read_dir(&inner_path).ctx("list", &inner_path)? {
                    let file = file.ctx("list", &inner_path)?;
                    let path = file.path();
                    let meta = file.metadata().ctx("stat", &path)?;
                    let id = file
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<ChunkId>().ok());
                    match id {
                        Some(id) if meta.is_file() && self.path(&id) == path => {
                            scan.files.insert(id, meta.len());
                        }
                        _ => scan.strays.push(path),
                    }
                }
            }
        }
        Ok(scan)
    }

    /// Removes a stray file or directory found by [`scan`](Self::scan).
    pub fn remove_stray(&self, path: &Path) -> Result<(), StoreError> {
        let result = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("remove stray file", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fan_out_and_parse_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ChunkFiles::open(dir.path()).expect("open");
        let id = ChunkId::of(b"hello");
        let path = files.path(&id);
        let hex = id.to_string();
        assert_eq!(hex.len(), 64);
        assert!(path.ends_with(format!("chunks/{}/{}/{hex}", &hex[..2], &hex[2..4])));
        assert_eq!(hex.parse::<ChunkId>().ok(), Some(id));
        assert!(hex.to_uppercase().parse::<ChunkId>().is_err());
        assert!("abc".parse::<ChunkId>().is_err());
    }

    #[test]
    fn write_read_remove_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ChunkFiles::open(dir.path()).expect("open");
        let content = b"0123456789".repeat(100);
        let id = ChunkId::of(&content);
        files.write(&id, &content).expect("write");
        assert!(files.exists_with_len(&id, 1000));
        assert!(!files.exists_with_len(&id, 999));
        assert_eq!(
            files.read_range(&id, 5, 10).expect("read").as_ref(),
            b"5678901234"
        );
        assert!(files.read_range(&id, 995, 10).is_err(), "past the end");
        fs::write(dir.path().join("chunks").join("junk"), b"x").expect("junk");
        let scan = files.scan().expect("scan");
        assert_eq!(scan.files.get(&id), Some(&1000));
        assert_eq!(scan.strays.len(), 1);
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
        files.remove(&id).expect("remove");
        files.remove(&id).expect("second remove is fine");
        assert!(!files.exists_with_len(&id, 1000));
    }

    #[test]
    fn whole_chunks_are_kept_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ChunkFiles::open(dir.path()).expect("open");
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        let id = ChunkId::of(&content);
        files.write(&id, &content).expect("write");
        let a = files.whole(&id, 300_000).expect("whole");
        assert!(a == content);
        let b = files.whole(&id, 300_000).expect("again");
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same mapping, kept");
        files.remove(&id).expect("remove");
        assert!(
            files.whole(&id, 300_000).is_err(),
            "forgotten with the file"
        );
        for i in 0..(RECENT_CHUNKS as u32 + 4) {
            let c = vec![i as u8; 70_000];
            let cid = ChunkId::of(&c);
            files.write(&cid, &c).expect("write");
            files.whole(&cid, 70_000).expect("whole");
        }
        assert!(files.lock_recent().chunks.len() <= RECENT_CHUNKS, "bounded");
    }
}
