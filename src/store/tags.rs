//! Tags and tag lists: what each `(upstream, repo, tag)` pointed at, the last `tags/list`
//! answer of each repository, and the catalog of repositories the store knows.
//!
//! Owns: the tag and tag-list operations behind the `Store` facade and the tag count.
//!
//! Must not: decide tag freshness (the cache layer compares `validated_at` with its tag
//! TTL; the TTL sweep in `policy.rs` removes expired tags) or touch blobs and manifests.

use super::error::StoreError;
use super::index::{self, TagListRecord};
use super::{StoreInner, TagKey, TagRecord};
use crate::oci::RepositoryName;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl StoreInner {
    pub(crate) fn put_tag(&self, k: &TagKey, r: &TagRecord) -> Result<(), StoreError> {
        let key = index::tag_key(&k.upstream, k.repo.as_str(), k.tag.as_str());
        let previous = self.index.tags.insert(key, index::encode_tag(r))?;
        if previous.is_none() {
            self.tag_count.fetch_add(1, Ordering::Relaxed);
            self.publish_tag_gauge();
        }
        self.index.flush()
    }

    pub(crate) fn tag(&self, k: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let key = index::tag_key(&k.upstream, k.repo.as_str(), k.tag.as_str());
        let Some(raw) = self.index.tags.get(&key)? else {
            return Ok(None);
        };
        match index::decode_tag(&raw) {
            Ok(rec) => Ok(Some(rec)),
            Err(e) => {
                self.drop_corrupt_record(&self.index.tags, &key, &e)?;
                self.tag_count.fetch_sub(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Keeps the raw JSON of the last `tags/list` answer of `upstream`/`repo`.
    pub(crate) fn put_tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
        json: &[u8],
    ) -> Result<(), StoreError> {
        let rec = TagListRecord {
            fetched_at: SystemTime::now(),
            json: Bytes::copy_from_slice(json),
        };
        let key = index::tag_list_key(upstream, repo.as_str());
        self.index.tag_lists.insert(key, rec.encode())?;
        self.index.flush()
    }

    pub(crate) fn tag_list(
        &self,
        upstream: &str,
        repo: &RepositoryName,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = index::tag_list_key(upstream, repo.as_str());
        let Some(raw) = self.index.tag_lists.get(&key)? else {
            return Ok(None);
        };
        match TagListRecord::decode(&raw) {
            Ok(rec) => Ok(Some(rec.json)),
            Err(e) => {
                self.drop_corrupt_record(&self.index.tag_lists, &key, &e)?;
                Ok(None)
            }
        }
    }

    /// Every `(upstream, repo)` with a cached tag, tag list, blob or manifest, sorted.
    pub(crate) fn repositories(&self) -> Result<Vec<(String, RepositoryName)>, StoreError> {
        let mut found: BTreeSet<(String, RepositoryName)> = BTreeSet::new();
        for tree in [&self.index.tags, &self.index.tag_lists] {
            for key in tree.iter().keys() {
                let key = key?;
                let parts = index::split_key(&key);
                if let Some([upstream, repo, ..]) = parts.as_deref() {
                    if let Ok(repo) = repo.parse() {
                        found.insert((upstream.to_string(), repo));
                    }
                }
            }
        }
        let mut add = |repos: &[String]| {
            for full in repos {
                if let Some((upstream, repo)) = full.split_once('/') {
                    if let Ok(repo) = repo.parse() {
                        found.insert((upstream.to_string(), repo));
                    }
                }
            }
        };
        for (_, rec) in self.scan_blobs()? {
            add(&rec.repos);
        }
        for (_, rec) in self.scan_manifests()? {
            add(&rec.repos);
        }
        Ok(found.into_iter().collect())
    }
}
