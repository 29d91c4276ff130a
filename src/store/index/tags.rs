//! Tags, tag lists and the catalog of repositories in the index.
//!
//! Must not: decide tag freshness (the cache compares `validated_at` with its tag TTL; the
//! TTL sweep in `expiry.rs` says which tags expired).

use super::Index;
use crate::oci::{Digest, RepositoryName, Tag};
use crate::store::codec::{
    decode_tag, encode_tag, split_key, tag_key, tag_list_key, TagListRecord,
};
use crate::store::error::StoreError;
use crate::store::values::{SeenDigest, TagKey, TagRecord};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

impl Index {
    // ---- tags and tag lists ------------------------------------------------------------

    /// Tags in the index.
    pub fn tag_count(&self) -> u64 {
        self.tag_count.load(Ordering::Relaxed)
    }

    pub fn put_tag(&self, k: &TagKey, r: &TagRecord) -> Result<(), StoreError> {
        let key = tag_key(&k.upstream, k.repo.as_str(), k.tag.as_str());
        if self.tags.insert(key, encode_tag(r))?.is_none() {
            self.tag_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let key = tag_key(&k.upstream, k.repo.as_str(), k.tag.as_str());
        let Some(raw) = self.tags.get(&key)? else {
            return Ok(None);
        };
        match decode_tag(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt(&self.tags, &key, &e)?;
                self.tag_count.fetch_sub(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Every tag of `upstream`/`repo` with its record (unreadable ones left out).
    pub fn repo_tags(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Vec<(Tag, TagRecord)>, StoreError> {
        let mut prefix = tag_list_key(upstream, repo.as_str());
        prefix.push(0);
        let mut out = Vec::new();
        for entry in self.tags.scan_prefix(&prefix) {
            let (key, raw) = entry?;
            let tag = std::str::from_utf8(&key[prefix.len()..])
                .ok()
                .and_then(|t| t.parse::<Tag>().ok());
            if let (Some(tag), Ok(rec)) = (tag, decode_tag(&raw)) {
                out.push((tag, rec));
            }
        }
        Ok(out)
    }

    /// Marks `digest` released from cooldowns in every tag of `upstream`/`repo` that has
    /// pointed at it; returns those tags. Atomic per record (a concurrent `put_tag` of the
    /// same tag either sees the mark or is retried over).
    pub fn release_digest(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Vec<Tag>, StoreError> {
        let mut released = Vec::new();
        for (tag, _) in self.repo_tags(upstream, repo)? {
            let key = tag_key(upstream, repo.as_str(), tag.as_str());
            let mut hit = false;
            self.tags.fetch_and_update(&key, |old| {
                let old = old?;
                // Unreadable: left as it is (the reader drops it).
                let Ok(mut rec) = decode_tag(old) else {
                    return Some(old.to_vec());
                };
                if rec.seen.is_empty() {
                    rec.seen.push(SeenDigest {
                        digest: rec.digest,
                        first_seen: rec.fetched_at,
                        released: false,
                    });
                }
                hit = false;
                for s in rec.seen.iter_mut().filter(|s| s.digest == *digest) {
                    s.released = true;
                    hit = true;
                }
                Some(encode_tag(&rec))
            })?;
            if hit {
                released.push(tag);
            }
        }
        Ok(released)
    }

    /// Removes every tag for which `remove(upstream/repo, record)` says so (the record is
    /// `None` for one that cannot be decoded) and every tag whose key is unreadable.
    /// Returns how many went.
    pub fn remove_tags_where(
        &self,
        remove: impl FnMut(&str, Option<&TagRecord>) -> bool,
    ) -> Result<u64, StoreError> {
        let removed = remove_keyed_where(&self.tags, 3, decode_tag, remove)?;
        self.tag_count.fetch_sub(removed, Ordering::Relaxed);
        Ok(removed)
    }

    pub fn put_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        rec: &TagListRecord,
    ) -> Result<(), StoreError> {
        let key = tag_list_key(upstream, repo.as_str());
        self.tag_lists.insert(key, rec.encode())?;
        Ok(())
    }

    pub fn tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = tag_list_key(upstream, repo.as_str());
        let Some(raw) = self.tag_lists.get(&key)? else {
            return Ok(None);
        };
        match TagListRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec.json)),
            Err(e) => {
                self.drop_corrupt(&self.tag_lists, &key, &e)?;
                Ok(None)
            }
        }
    }

    pub fn tag_list_count(&self) -> u64 {
        self.tag_lists.len() as u64
    }

    /// Like [`remove_tags_where`](Self::remove_tags_where), for tag lists.
    pub fn remove_tag_lists_where(
        &self,
        remove: impl FnMut(&str, Option<&TagListRecord>) -> bool,
    ) -> Result<u64, StoreError> {
        remove_keyed_where(&self.tag_lists, 2, TagListRecord::decode, remove)
    }

    /// Every `(upstream, repo)` with a tag or a tag list, plus those `extra` names
    /// (`upstream/repo` each), sorted.
    pub fn repositories<'a>(
        &self,
        extra: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(String, RepositoryName)>, StoreError> {
        let mut found: BTreeSet<(String, RepositoryName)> = BTreeSet::new();
        for tree in [&self.tags, &self.tag_lists] {
            for key in tree.iter().keys() {
                let key = key?;
                if let Some([upstream, repo, ..]) = split_key(&key).as_deref() {
                    if let Ok(repo) = repo.parse() {
                        found.insert((upstream.to_string(), repo));
                    }
                }
            }
        }
        for full in extra {
            if let Some((upstream, repo)) = full.split_once('/') {
                if let Ok(repo) = repo.parse() {
                    found.insert((upstream.to_string(), repo));
                }
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// Removes the entries of a tree keyed `upstream \0 repo [\0 tag]` (`parts` parts) for
/// which `remove(upstream/repo, record)` says so, and those whose key is unreadable.
fn remove_keyed_where<R>(
    tree: &sled::Tree,
    parts: usize,
    decode: fn(&[u8]) -> Result<R, StoreError>,
    mut remove: impl FnMut(&str, Option<&R>) -> bool,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for entry in tree.iter() {
        let (key, raw) = entry?;
        let rec = decode(&raw).ok();
        let go = match split_key(&key).as_deref() {
            Some(p) if p.len() == parts => remove(&format!("{}/{}", p[0], p[1]), rec.as_ref()),
            _ => true,
        };
        if go && tree.remove(&key)?.is_some() {
            removed += 1;
        }
    }
    Ok(removed)
}
