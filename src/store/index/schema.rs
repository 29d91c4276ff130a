//! The index's schema version: stamping a new index, migrating an older one step by step,
//! refusing one written by a newer release.
//!
//! Must not: change a record's layout without a migration step here and a bump of
//! [`SCHEMA_VERSION`].

use super::{Index, META_SCHEMA_VERSION};
use crate::store::codec::{decode_tag, decode_tag_v1, encode_tag};
use crate::store::error::StoreError;
use std::path::{Path, PathBuf};

/// The schema this release writes. Version 1 is the layout of every release before the
/// index recorded a version (0.1.x): such an index is stamped as version 1 when opened.
/// A change to any tree's key or record layout bumps this and adds a step to
/// [`MIGRATIONS`].
///
/// - 2: a tag record carries the digests the tag pointed at and when each was first seen
///   (cooldowns read them); a schema-1 tag record becomes one whose history is its digest,
///   first seen when it was fetched.
pub const SCHEMA_VERSION: u32 = 2;

/// `(from, step)`: the step that turns an index of schema `from` into `from + 1`, run in
/// order when an older index is opened. Each step must be idempotent (a crash during a
/// migration runs it again at the next open) and leave the version stamp to the caller.
type Migration = fn(&Index) -> Result<(), StoreError>;
const MIGRATIONS: &[(u32, Migration)] = &[(1, tag_history)];

/// Schema 1 → 2: every tag record gains its (empty) history. A record already in the new
/// layout is left as it is; one that reads as neither is left for the reader to drop.
fn tag_history(index: &Index) -> Result<(), StoreError> {
    for entry in index.tags.iter() {
        let (key, raw) = entry?;
        if decode_tag(&raw).is_ok() {
            continue;
        }
        if let Ok(rec) = decode_tag_v1(&raw) {
            index.tags.insert(key, encode_tag(&rec))?;
        }
    }
    Ok(())
}

/// What opening the index found of its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaOpen {
    /// A new, empty index: stamped with [`SCHEMA_VERSION`].
    Created,
    /// Already at [`SCHEMA_VERSION`].
    Current,
    /// Written by an older release (`from`; 1 for an index with no stamp) and migrated.
    Migrated { from: u32 },
}

impl Index {
    pub(super) fn bring_schema_up_to_date(&self, dir: &Path) -> Result<SchemaOpen, StoreError> {
        let refuse = |detail: String| StoreError::IndexSchema {
            path: dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(dir)),
            detail,
        };
        let found = match self.meta.get(META_SCHEMA_VERSION)? {
            Some(raw) => {
                let bytes = <[u8; 4]>::try_from(&raw[..]).map_err(|_| {
                    refuse(format!(
                        "its schema version record is unreadable ({} bytes)",
                        raw.len()
                    ))
                })?;
                Some(u32::from_be_bytes(bytes))
            }
            None => None,
        };
        let from = match found {
            Some(v) if v == SCHEMA_VERSION => return Ok(SchemaOpen::Current),
            Some(v) if v > SCHEMA_VERSION => {
                return Err(refuse(format!(
                    "it was written by a newer sparkcr-edge (index schema {v}; this binary \
                     reads up to schema {SCHEMA_VERSION})"
                )))
            }
            Some(v) => v,
            None if self.is_empty() => {
                self.stamp_schema(SCHEMA_VERSION)?;
                return Ok(SchemaOpen::Created);
            }
            // Written before the index recorded its schema: the layout of schema 1.
            None => 1,
        };
        if from == 0 {
            return Err(refuse("its schema version record says 0".into()));
        }
        for version in from..SCHEMA_VERSION {
            let Some((_, step)) = MIGRATIONS.iter().find(|(v, _)| *v == version) else {
                return Err(refuse(format!(
                    "no migration from index schema {version} is known to this binary"
                )));
            };
            step(self)?;
            self.stamp_schema(version + 1)?;
        }
        self.stamp_schema(SCHEMA_VERSION)?;
        Ok(SchemaOpen::Migrated { from })
    }

    fn stamp_schema(&self, version: u32) -> Result<(), StoreError> {
        self.meta
            .insert(META_SCHEMA_VERSION, &version.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    fn is_empty(&self) -> bool {
        [
            &self.blobs,
            &self.manifests,
            &self.tags,
            &self.tag_lists,
            &self.chunk_refs,
            &self.lru,
            &self.meta,
        ]
        .iter()
        .all(|t| t.is_empty())
    }

    /// The schema version stamped in the index (for tests).
    #[cfg(test)]
    pub fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        Ok(self
            .meta
            .get(META_SCHEMA_VERSION)?
            .and_then(|raw| <[u8; 4]>::try_from(&raw[..]).ok())
            .map(u32::from_be_bytes))
    }
}
