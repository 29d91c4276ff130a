//! Record encodings of the index: the versioned binary form of every value and key the
//! sled trees hold (a leading [`RECORD_VERSION`] byte, then fixed-width big-endian integers
//! and length-prefixed byte strings). Decoding never panics: anything malformed is a
//! [`StoreError::Corrupt`].
//!
//! Owns: [`BlobRecord`], [`ManifestRecord`], [`TagListRecord`], [`ChunkCount`], the tag
//! record's encoding, and the key layouts (digests, chunk ids, LRU keys, tag keys).
//!
//! Must not: open sled or touch any tree (that is `index/`), or decide policy.

use super::chunks::{ChunkId, ChunkRef};
use super::error::StoreError;
use super::values::{SeenDigest, TagRecord, TAG_HISTORY};
use crate::oci::Digest;
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The leading byte of every record this version writes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// The two kinds of content that take budget and age out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ItemKind {
    Blob,
    Manifest,
}

impl ItemKind {
    fn tag_byte(self) -> u8 {
        match self {
            ItemKind::Blob => b'b',
            ItemKind::Manifest => b'm',
        }
    }

    fn from_tag_byte(b: u8) -> Option<ItemKind> {
        match b {
            b'b' => Some(ItemKind::Blob),
            b'm' => Some(ItemKind::Manifest),
            _ => None,
        }
    }

    /// The `kind` label of metrics and the word in reports.
    pub fn label(self) -> &'static str {
        match self {
            ItemKind::Blob => "blob",
            ItemKind::Manifest => "manifest",
        }
    }
}

/// The index entry of a visible blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlobRecord {
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    pub created: SystemTime,
    pub last_access: SystemTime,
    /// `upstream/repo` names it was requested through.
    pub repos: Vec<String>,
}

/// The index entry of a manifest (manifests are small and live in the index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ManifestRecord {
    pub media_type: String,
    pub bytes: Bytes,
    pub created: SystemTime,
    pub last_access: SystemTime,
    pub repos: Vec<String>,
}

/// The last `tags/list` answer of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TagListRecord {
    pub fetched_at: SystemTime,
    pub json: Bytes,
}

/// How many committed blob chunk slots name a chunk, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkCount {
    pub refcount: u32,
    pub len: u32,
}

/// Microseconds since the epoch (0 for earlier times).
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(crate) fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Appends fields of a record after the version byte.
struct RecordWriter(Vec<u8>);

impl RecordWriter {
    fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(RECORD_VERSION);
        RecordWriter(buf)
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn time(&mut self, t: SystemTime) {
        self.u64(micros(t));
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    fn bytes(&mut self, b: &[u8]) {
        // Records are built from values the store accepted; none reaches 4 GiB.
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn strings(&mut self, list: &[String]) {
        self.u32(u32::try_from(list.len()).unwrap_or(u32::MAX));
        for s in list {
            self.bytes(s.as_bytes());
        }
    }
}

/// Reads fields of a record, failing with [`StoreError::Corrupt`] on any surprise.
struct RecordReader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> RecordReader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Result<Self, StoreError> {
        match buf.split_first() {
            Some((&RECORD_VERSION, rest)) => Ok(RecordReader { buf: rest, what }),
            Some((v, _)) => Err(StoreError::Corrupt(format!(
                "{what} record has unknown version {v}"
            ))),
            None => Err(StoreError::Corrupt(format!("{what} record is empty"))),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(StoreError::Corrupt(format!(
                "{} record is truncated",
                self.what
            )));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn time(&mut self) -> Result<SystemTime, StoreError> {
        Ok(from_micros(self.u64()?))
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| {
            StoreError::Corrupt(format!("{} record has a non-UTF-8 string", self.what))
        })
    }
    fn strings(&mut self) -> Result<Vec<String>, StoreError> {
        let n = self.u32()? as usize;
        // Each string takes at least its 4-byte length: bound the allocation by the input.
        if n > self.buf.len() / 4 {
            return Err(StoreError::Corrupt(format!(
                "{} record is truncated",
                self.what
            )));
        }
        (0..n).map(|_| self.string()).collect()
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    fn end(self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "{} record has {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

impl BlobRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = RecordWriter::new(40 + self.chunks.len() * 36);
        w.u64(self.size);
        w.time(self.created);
        w.time(self.last_access);
        w.u32(u32::try_from(self.chunks.len()).unwrap_or(u32::MAX));
        for c in &self.chunks {
            w.raw(c.id.as_bytes());
            w.u32(c.len);
        }
        w.strings(&self.repos);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<BlobRecord, StoreError> {
        let mut r = RecordReader::new(buf, "blob")?;
        let size = r.u64()?;
        let created = r.time()?;
        let last_access = r.time()?;
        let n = r.u32()? as usize;
        if n > r.buf.len() / 36 {
            return Err(StoreError::Corrupt("blob record is truncated".into()));
        }
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            let id = ChunkId::from_bytes(r.array()?);
            let len = r.u32()?;
            chunks.push(ChunkRef { id, len });
        }
        let repos = r.strings()?;
        r.end()?;
        let total: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        if total != size {
            return Err(StoreError::Corrupt(format!(
                "blob record says {size} bytes but its chunks hold {total}"
            )));
        }
        Ok(BlobRecord {
            size,
            chunks,
            created,
            last_access,
            repos,
        })
    }
}

impl ManifestRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = RecordWriter::new(32 + self.media_type.len() + self.bytes.len());
        w.time(self.created);
        w.time(self.last_access);
        w.bytes(self.media_type.as_bytes());
        w.bytes(&self.bytes);
        w.strings(&self.repos);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<ManifestRecord, StoreError> {
        let mut r = RecordReader::new(buf, "manifest")?;
        let created = r.time()?;
        let last_access = r.time()?;
        let media_type = r.string()?;
        let bytes = Bytes::copy_from_slice(r.bytes()?);
        let repos = r.strings()?;
        r.end()?;
        Ok(ManifestRecord {
            media_type,
            bytes,
            created,
            last_access,
            repos,
        })
    }
}

/// A tag record (index schema 2): digest, fetched, validated, media type, then the
/// history: a count and, per digest, the digest, when first seen and a released flag.
pub(crate) fn encode_tag(t: &TagRecord) -> Vec<u8> {
    let seen = &t.seen[t.seen.len().saturating_sub(TAG_HISTORY)..];
    let mut w = RecordWriter::new(68 + t.media_type.len() + 41 * seen.len());
    w.raw(t.digest.as_bytes());
    w.time(t.fetched_at);
    w.time(t.validated_at);
    w.bytes(t.media_type.as_bytes());
    w.u32(seen.len() as u32);
    for s in seen {
        w.raw(s.digest.as_bytes());
        w.time(s.first_seen);
        w.raw(&[u8::from(s.released)]);
    }
    w.0
}

pub(crate) fn decode_tag(buf: &[u8]) -> Result<TagRecord, StoreError> {
    let (mut rec, mut r) = decode_tag_head(buf)?;
    let n = r.u32()? as usize;
    if n > TAG_HISTORY {
        return Err(StoreError::Corrupt(format!(
            "tag record remembers {n} digests (at most {TAG_HISTORY})"
        )));
    }
    for _ in 0..n {
        let digest = Digest::from_bytes(r.array()?);
        let first_seen = r.time()?;
        let [released] = r.array()?;
        rec.seen.push(SeenDigest {
            digest,
            first_seen,
            released: released != 0,
        });
    }
    r.end()?;
    Ok(rec)
}

/// A tag record as index schema 1 wrote it (no history); read only by the migration.
pub(crate) fn decode_tag_v1(buf: &[u8]) -> Result<TagRecord, StoreError> {
    let (rec, r) = decode_tag_head(buf)?;
    r.end()?;
    Ok(rec)
}

fn decode_tag_head(buf: &[u8]) -> Result<(TagRecord, RecordReader<'_>), StoreError> {
    let mut r = RecordReader::new(buf, "tag")?;
    let digest = Digest::from_bytes(r.array()?);
    let fetched_at = r.time()?;
    let validated_at = r.time()?;
    let media_type = r.string()?;
    let rec = TagRecord {
        digest,
        media_type,
        fetched_at,
        validated_at,
        seen: Vec::new(),
    };
    Ok((rec, r))
}

impl TagListRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = RecordWriter::new(8 + self.json.len());
        w.time(self.fetched_at);
        w.raw(&self.json);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<TagListRecord, StoreError> {
        let mut r = RecordReader::new(buf, "tag list")?;
        let fetched_at = r.time()?;
        let json = Bytes::copy_from_slice(r.rest());
        Ok(TagListRecord { fetched_at, json })
    }
}

impl ChunkCount {
    pub fn encode(&self) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[0] = RECORD_VERSION;
        out[1..5].copy_from_slice(&self.refcount.to_be_bytes());
        out[5..9].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<ChunkCount, StoreError> {
        let mut r = RecordReader::new(buf, "chunk refcount")?;
        let refcount = r.u32()?;
        let len = r.u32()?;
        r.end()?;
        Ok(ChunkCount { refcount, len })
    }
}

/// The 32-byte key of a digest.
pub(crate) fn digest_from_key(key: &[u8]) -> Option<Digest> {
    <[u8; 32]>::try_from(key).ok().map(Digest::from_bytes)
}

pub(crate) fn chunk_id_from_key(key: &[u8]) -> Option<ChunkId> {
    <[u8; 32]>::try_from(key).ok().map(ChunkId::from_bytes)
}

pub(crate) const LRU_KEY_LEN: usize = 8 + 1 + 32;

pub(crate) fn lru_key(last_access: SystemTime, kind: ItemKind, d: &Digest) -> [u8; LRU_KEY_LEN] {
    let mut k = [0u8; LRU_KEY_LEN];
    k[..8].copy_from_slice(&micros(last_access).to_be_bytes());
    k[8] = kind.tag_byte();
    k[9..].copy_from_slice(d.as_bytes());
    k
}

pub(crate) fn parse_lru_key(k: &[u8]) -> Option<(u64, ItemKind, Digest)> {
    if k.len() != LRU_KEY_LEN {
        return None;
    }
    let at = u64::from_be_bytes(k[..8].try_into().ok()?);
    let kind = ItemKind::from_tag_byte(k[8])?;
    Some((at, kind, digest_from_key(&k[9..])?))
}

/// `upstream \0 repo \0 tag` (none of them may contain NUL).
pub(crate) fn tag_key(upstream: &str, repo: &str, tag: &str) -> Vec<u8> {
    [upstream.as_bytes(), repo.as_bytes(), tag.as_bytes()].join(&0u8)
}

pub(crate) fn tag_list_key(upstream: &str, repo: &str) -> Vec<u8> {
    [upstream.as_bytes(), repo.as_bytes()].join(&0u8)
}

/// The `(upstream, repo, tag?)` parts of a tag or tag-list key.
pub(crate) fn split_key(key: &[u8]) -> Option<Vec<&str>> {
    key.split(|&b| b == 0)
        .map(|part| std::str::from_utf8(part).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(us: u64) -> SystemTime {
        from_micros(us)
    }

    #[test]
    fn records_round_trip() {
        let blob = BlobRecord {
            size: 7,
            chunks: vec![
                ChunkRef {
                    id: ChunkId::of(b"a"),
                    len: 3,
                },
                ChunkRef {
                    id: ChunkId::of(b"b"),
                    len: 4,
                },
            ],
            created: t(1),
            last_access: t(2),
            repos: vec!["docker.io/library/nginx".into()],
        };
        assert_eq!(BlobRecord::decode(&blob.encode()).ok(), Some(blob.clone()));
        let m = ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            bytes: Bytes::from_static(b"{}"),
            created: t(5),
            last_access: t(6),
            repos: vec![],
        };
        assert_eq!(ManifestRecord::decode(&m.encode()).ok(), Some(m));
        let mut tag = TagRecord {
            digest: Digest::of(b"x"),
            media_type: "m".into(),
            fetched_at: t(7),
            validated_at: t(8),
            seen: vec![
                SeenDigest {
                    digest: Digest::of(b"w"),
                    first_seen: t(3),
                    released: false,
                },
                SeenDigest {
                    digest: Digest::of(b"x"),
                    first_seen: t(7),
                    released: true,
                },
            ],
        };
        assert_eq!(decode_tag(&encode_tag(&tag)).ok(), Some(tag.clone()));
        // Schema 1 wrote no history: the migration reads it, the current decoder refuses.
        let v1 = &encode_tag(&TagRecord {
            seen: Vec::new(),
            ..tag.clone()
        });
        let v1 = &v1[..v1.len() - 4];
        assert!(decode_tag(v1).is_err());
        assert_eq!(decode_tag_v1(v1).ok().map(|r| r.digest), Some(tag.digest));
        // A history longer than a record keeps is cut to its newest entries.
        tag.seen = (0..20u64)
            .map(|i| SeenDigest {
                digest: Digest::of(&i.to_be_bytes()),
                first_seen: t(i),
                released: false,
            })
            .collect();
        let kept = decode_tag(&encode_tag(&tag))
            .map(|r| r.seen)
            .unwrap_or_default();
        assert_eq!(kept.len(), TAG_HISTORY);
        assert_eq!(kept.last().map(|s| s.first_seen), Some(t(19)));
        let c = ChunkCount {
            refcount: 3,
            len: 9,
        };
        assert_eq!(ChunkCount::decode(&c.encode()).ok(), Some(c));
        let key = lru_key(t(42), ItemKind::Manifest, &Digest::of(b"m"));
        assert_eq!(
            parse_lru_key(&key),
            Some((42, ItemKind::Manifest, Digest::of(b"m")))
        );
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let blob = BlobRecord {
            size: 3,
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"a"),
                len: 3,
            }],
            created: t(1),
            last_access: t(2),
            repos: vec!["r".into()],
        }
        .encode();
        for cut in 0..blob.len() {
            assert!(BlobRecord::decode(&blob[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_version = blob.clone();
        bad_version[0] = 99;
        assert!(matches!(
            BlobRecord::decode(&bad_version),
            Err(StoreError::Corrupt(_))
        ));
        let mut trailing = blob.clone();
        trailing.push(0);
        assert!(BlobRecord::decode(&trailing).is_err());
        let mut wrong_size = blob;
        wrong_size[8] = 4; // size field's low byte
        assert!(BlobRecord::decode(&wrong_size).is_err());
        assert!(ManifestRecord::decode(&[1, 0, 0]).is_err());
        assert!(decode_tag(&[]).is_err());
        assert!(parse_lru_key(b"short").is_none());
    }

    #[test]
    fn ordering_of_lru_keys_follows_time() {
        let d = Digest::of(b"z");
        let older = lru_key(t(1_000), ItemKind::Blob, &d);
        let newer = lru_key(t(2_000), ItemKind::Blob, &Digest::of(b"a"));
        assert!(older < newer);
        assert_eq!(
            split_key(&tag_key("u", "a/b", "t")),
            Some(vec!["u", "a/b", "t"])
        );
    }
}
