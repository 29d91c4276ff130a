//! The open connections, by client address, and who gets a slot when they run short
//! (`server.max_connections`).
//!
//! Under the cap a connection is admitted. At the cap, a newcomer is not simply refused:
//! when the address holding the most connections is not the newcomer's own and holds more
//! than it, that address's longest-idle connection (no request in flight: an idle
//! keep-alive, or one that has not sent its first request yet) is told to close and the
//! newcomer takes its slot. So one client holding thousands of idle keep-alive connections
//! cannot keep everyone else out, while many nodes behind one SNAT address still share
//! whatever the others leave. Only when no such connection exists is the newcomer refused
//! (503). The table may run over the cap by the connections told to close that have not
//! closed yet (they close within `header_read_timeout`).
//!
//! Owns: the table and the choice of whom to close. Must not: read requests or write
//! responses (the connection task closes itself when told).

use super::limits::ConnActivity;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Every open connection, by id.
pub struct ConnTable {
    max: usize,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Open connections per address, not counting those told to close.
    per_address: HashMap<IpAddr, usize>,
    /// Connections told to close that are still open.
    closing: usize,
}

struct Entry {
    address: IpAddr,
    activity: Arc<ConnActivity>,
    close: Arc<Notify>,
    closing: bool,
}

/// A connection's slot: the connection is in the table until this drops.
pub struct ConnSlot {
    table: Arc<ConnTable>,
    id: u64,
    /// Requests in flight on the connection (the table reads it to find idle ones).
    pub activity: Arc<ConnActivity>,
    /// Notified when the connection must close to make room for another address.
    pub close: Arc<Notify>,
}

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Under the cap.
    Free,
    /// At the cap: an idle connection of the address holding the most was told to close.
    MadeRoom,
}

impl ConnTable {
    pub fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            max: max.max(1),
            inner: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new connection from `address`, or `None` (refuse it: 503).
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Option<(ConnSlot, Admission)> {
        let mut t = self.lock();
        let open = t.conns.len() - t.closing;
        let admission = if open < self.max {
            Admission::Free
        } else {
            let victim = t.idle_victim(address)?;
            if let Some(e) = t.conns.get_mut(&victim) {
                e.closing = true;
                e.close.notify_one();
                let a = e.address;
                t.closing += 1;
                t.forget_address(a);
            }
            Admission::MadeRoom
        };
        let id = t.next_id;
        t.next_id += 1;
        let activity = ConnActivity::new();
        let close = Arc::new(Notify::new());
        t.conns.insert(
            id,
            Entry {
                address,
                activity: activity.clone(),
                close: close.clone(),
                closing: false,
            },
        );
        *t.per_address.entry(address).or_insert(0) += 1;
        Some((
            ConnSlot {
                table: Arc::clone(self),
                id,
                activity,
                close,
            },
            admission,
        ))
    }

    /// Open connections (counting those told to close).
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.lock().conns.len()
    }

    fn release(&self, id: u64) {
        let mut t = self.lock();
        if let Some(e) = t.conns.remove(&id) {
            if e.closing {
                t.closing -= 1;
            } else {
                t.forget_address(e.address);
            }
        }
    }
}

impl Table {
    fn forget_address(&mut self, address: IpAddr) {
        if let Some(n) = self.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&address);
            }
        }
    }

    /// The longest-idle connection of the address holding the most, when that is not
    /// `newcomer` and holds more than it.
    fn idle_victim(&self, newcomer: IpAddr) -> Option<u64> {
        let mine = self.per_address.get(&newcomer).copied().unwrap_or(0);
        let mut holders: Vec<(IpAddr, usize)> = self
            .per_address
            .iter()
            .filter(|(a, n)| **a != newcomer && **n > mine + 1)
            .map(|(a, n)| (*a, *n))
            .collect();
        // The biggest holder first; the next one when the biggest has nothing idle.
        holders.sort_by_key(|h| std::cmp::Reverse(h.1));
        holders.into_iter().find_map(|(address, _)| {
            self.conns
                .iter()
                .filter(|(_, e)| e.address == address && !e.closing)
                .filter_map(|(id, e)| e.activity.idle_for().map(|idle| (idle, *id)))
                .max()
                .map(|(_, id)| id)
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.table.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn under_the_cap_everyone_is_admitted() {
        let t = ConnTable::new(3);
        let slots: Vec<_> = (0..3).map(|i| t.admit(ip(i)).expect("a slot")).collect();
        assert!(slots.iter().all(|(_, a)| *a == Admission::Free));
        assert_eq!(t.open(), 3);
        drop(slots);
        assert_eq!(t.open(), 0);
    }

    #[tokio::test]
    async fn a_hog_gives_up_an_idle_connection_to_another_address() {
        let t = ConnTable::new(4);
        let hog: Vec<_> = (0..4).map(|_| t.admit(ip(1)).expect("a slot")).collect();
        // The hog cannot push itself further.
        assert!(t.admit(ip(1)).is_none());
        let (newcomer, how) = t.admit(ip(2)).expect("room is made");
        assert_eq!(how, Admission::MadeRoom);
        use futures_util::FutureExt as _;
        let told: Vec<bool> = hog
            .iter()
            .map(|(s, _)| s.close.notified().now_or_never().is_some())
            .collect();
        assert_eq!(
            told.iter().filter(|t| **t).count(),
            1,
            "exactly one told to close"
        );
        drop(hog);
        drop(newcomer);
        assert_eq!(t.open(), 0);
    }

    #[tokio::test]
    async fn busy_connections_are_never_closed_for_room() {
        let t = ConnTable::new(2);
        let a = t.admit(ip(1)).expect("a");
        let b = t.admit(ip(1)).expect("b");
        let _busy = (a.0.activity.begin(), b.0.activity.begin());
        assert!(t.admit(ip(2)).is_none(), "nothing idle: refused");
    }

    #[tokio::test]
    async fn addresses_that_share_fairly_are_not_taken_from() {
        let t = ConnTable::new(4);
        let _held: Vec<_> = [1, 1, 2, 2]
            .into_iter()
            .map(|i| t.admit(ip(i)).expect("slot"))
            .collect();
        // 10.0.0.3 holds none, the others two each: room is made.
        let _third = t.admit(ip(3)).expect("room is made");
        // Now no address holds more than one above 10.0.0.2: nothing is taken for it.
        assert!(t.admit(ip(2)).is_none());
    }
}
