//! A growing blob's side door for bytes past its prefix: a fill that fetches pieces out of
//! order holds the bytes that arrived ahead of the prefix (the cache's reorder buffer),
//! and lends them to readers waiting there through [`BytesAhead`]; and readers say where
//! they wait ([`Want`]), so the fill can start the piece they need next.
//!
//! Rules: bytes read ahead are the source's bytes at their offset, not yet hashed, like the
//! prefix's bytes before the end; the growing blob never hands out the blob's last byte
//! this way (it waits for the digest as always), and stops lending once the blob ended.
//!
//! Owns: the lender's slot and the readers' wanted offsets. Must not: hold or order bytes
//! (the lender does), or decide which piece starts (the fill does).

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes of a blob that arrived ahead of its prefix, readable at their offsets.
pub trait BytesAhead: Send + Sync {
    /// Up to `max` bytes from blob offset `pos`, if they have arrived (`None`: not yet, or
    /// already part of the prefix).
    fn read_ahead(&self, pos: u64, max: usize) -> Option<Bytes>;
}

/// The lender of a growing blob and its readers' wanted offsets.
#[derive(Default)]
pub(super) struct Ahead {
    lender: Mutex<Option<Arc<dyn BytesAhead>>>,
    /// Offsets past the prefix readers wait at, with how many wait at each.
    wants: Arc<Mutex<BTreeMap<u64, usize>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ahead {
    pub fn lend(&self, lender: Option<Arc<dyn BytesAhead>>) {
        *lock(&self.lender) = lender;
    }

    /// Up to `max` bytes at `pos` from the lender, if there is one and it has them.
    pub fn read(&self, pos: u64, max: usize) -> Option<Bytes> {
        let lender = lock(&self.lender).clone()?;
        lender
            .read_ahead(pos, max)
            .filter(|b| !b.is_empty() && b.len() <= max)
    }

    /// A reader waits at `pos` until the guard is dropped.
    pub fn want(&self, pos: u64) -> Want {
        *lock(&self.wants).entry(pos).or_insert(0) += 1;
        Want {
            pos,
            wants: Arc::clone(&self.wants),
        }
    }

    /// The offsets readers wait at, at or past `from`, lowest first.
    pub fn wanted_from(&self, from: u64) -> Vec<u64> {
        lock(&self.wants).range(from..).map(|(&p, _)| p).collect()
    }

    /// Whether a reader waits at or past `from`.
    pub fn any_wanted_from(&self, from: u64) -> bool {
        lock(&self.wants).range(from..).next().is_some()
    }
}

/// A reader waiting at an offset (see [`Ahead::want`]); dropped when it stops waiting.
pub struct Want {
    pos: u64,
    wants: Arc<Mutex<BTreeMap<u64, usize>>>,
}

impl Drop for Want {
    fn drop(&mut self) {
        let mut wants = lock(&self.wants);
        if let Some(n) = wants.get_mut(&self.pos) {
            *n -= 1;
            if *n == 0 {
                wants.remove(&self.pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u64, Bytes);

    impl BytesAhead for Fixed {
        fn read_ahead(&self, pos: u64, max: usize) -> Option<Bytes> {
            let from = pos.checked_sub(self.0)? as usize;
            (from < self.1.len()).then(|| self.1.slice(from..self.1.len().min(from + max)))
        }
    }

    #[test]
    fn reads_go_to_the_lender_while_there_is_one() {
        let a = Ahead::default();
        assert_eq!(a.read(10, 4), None, "no lender");
        a.lend(Some(Arc::new(Fixed(10, Bytes::from_static(b"abcdef")))));
        assert_eq!(a.read(12, 3).as_deref(), Some(&b"cde"[..]));
        assert_eq!(a.read(9, 3), None);
        assert_eq!(a.read(16, 3), None, "past what arrived");
        a.lend(None);
        assert_eq!(a.read(12, 3), None, "lending stopped");
    }

    #[test]
    fn wants_count_readers_until_they_stop_waiting() {
        let a = Ahead::default();
        let one = a.want(100);
        let two = a.want(100);
        let three = a.want(7);
        assert_eq!(a.wanted_from(0), vec![7, 100]);
        assert_eq!(a.wanted_from(8), vec![100]);
        assert!(a.any_wanted_from(100) && !a.any_wanted_from(101));
        drop(one);
        assert_eq!(a.wanted_from(8), vec![100], "one still waits there");
        drop((two, three));
        assert!(a.wanted_from(0).is_empty());
        assert!(!a.any_wanted_from(0));
    }
}
