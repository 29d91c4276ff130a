//! Single flight: one fill per key however many requests ask. A primitive with no I/O.
//!
//! [`FlightTable::claim`] gives the first request for a key the [`Leader`] role and every
//! other one a [`Follower`]. The leader announces what the fill produces (`T`, a handle
//! readers follow) with [`Leader::started`], or a failure with [`Leader::fail`]. A leader
//! dropped before either (its task died or was cancelled) leaves the flight
//! [`Landing::Abandoned`]: followers then claim again, and one of them leads a new fill.
//! A flight leaves the table when its leader drops, unless the leader asked to
//! [`linger`](Leader::linger): the entry then holds the handle weakly, and requests that
//! arrive while any reader still holds it join it instead of starting over. A follower
//! that finds the started fill stalled [evicts](FlightTable::evict_started) it, and the
//! next claim leads a new one.
//!
//! Owns: the table and every state of a flight. Must not: fetch, read or write anything,
//! or know what `T` is.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use tokio::sync::watch;

/// How a flight ended its start.
#[derive(Debug)]
pub(super) enum Landing<T, E> {
    /// The fill is under way (or done): follow the handle.
    Started(Arc<T>),
    /// The fill could not start; every follower gets the same answer.
    Failed(E),
    /// The leader went away before saying either; claim again.
    Abandoned,
}

impl<T, E: Clone> Clone for Landing<T, E> {
    fn clone(&self) -> Self {
        match self {
            Landing::Started(h) => Landing::Started(Arc::clone(h)),
            Landing::Failed(e) => Landing::Failed(e.clone()),
            Landing::Abandoned => Landing::Abandoned,
        }
    }
}

enum Phase<T, E> {
    Starting,
    Landed(Landing<T, E>),
}

struct Flight<T, E> {
    phase: Mutex<Phase<T, E>>,
    landed: watch::Sender<bool>,
}

impl<T, E: Clone> Flight<T, E> {
    fn land(&self, landing: Landing<T, E>) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*phase, Phase::Starting) {
            *phase = Phase::Landed(landing);
            drop(phase);
            self.landed.send_replace(true);
        }
    }

    fn landing(&self) -> Option<Landing<T, E>> {
        match &*self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Starting => None,
            Phase::Landed(l) => Some(l.clone()),
        }
    }
}

enum Slot<T, E> {
    Live(Arc<Flight<T, E>>),
    Lingering(Weak<T>),
}

/// The flights under way, by key.
pub(super) struct FlightTable<K, T, E> {
    slots: Arc<Mutex<HashMap<K, Slot<T, E>>>>,
}

impl<K, T, E> Default for FlightTable<K, T, E> {
    fn default() -> Self {
        FlightTable {
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The role a request got.
pub(super) enum Claim<K: Eq + Hash + Clone, T, E: Clone> {
    Leader(Leader<K, T, E>),
    Follower(Follower<T, E>),
}

fn lock<K, T, E>(m: &Mutex<HashMap<K, Slot<T, E>>>) -> MutexGuard<'_, HashMap<K, Slot<T, E>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Eq + Hash + Clone, T, E: Clone> FlightTable<K, T, E> {
    /// Leader if no fill for `key` is under way (or lingering), else a follower of it.
    pub fn claim(&self, key: &K) -> Claim<K, T, E> {
        let mut slots = lock(&self.slots);
        match slots.get(key) {
            Some(Slot::Live(f)) => {
                let abandoned = matches!(f.landing(), Some(Landing::Abandoned));
                if !abandoned {
                    return Claim::Follower(Follower {
                        flight: Arc::clone(f),
                        rx: f.landed.subscribe(),
                    });
                }
            }
            Some(Slot::Lingering(weak)) => {
                if let Some(handle) = weak.upgrade() {
                    let flight = Arc::new(Flight {
                        phase: Mutex::new(Phase::Landed(Landing::Started(handle))),
                        landed: watch::channel(true).0,
                    });
                    let rx = flight.landed.subscribe();
                    return Claim::Follower(Follower { flight, rx });
                }
            }
            None => {}
        }
        let flight = Arc::new(Flight {
            phase: Mutex::new(Phase::Starting),
            landed: watch::channel(false).0,
        });
        slots.insert(key.clone(), Slot::Live(Arc::clone(&flight)));
        Claim::Leader(Leader {
            key: key.clone(),
            flight,
            slots: Arc::clone(&self.slots),
            linger: None,
        })
    }

    /// Whether a flight for `key` is under way (or lingering with a live handle).
    pub fn contains(&self, key: &K) -> bool {
        match lock(&self.slots).get(key) {
            Some(Slot::Live(_)) => true,
            Some(Slot::Lingering(w)) => w.strong_count() > 0,
            None => false,
        }
    }

    /// Removes `key`'s flight if it started with `handle` (a follower takes over a stalled
    /// fill): the next claim leads a new flight, while the old leader goes on unaware.
    /// Whether it was still there.
    pub fn evict_started(&self, key: &K, handle: &Arc<T>) -> bool {
        let mut slots = lock(&self.slots);
        let started_with_handle = match slots.get(key) {
            Some(Slot::Live(f)) => {
                matches!(f.landing(), Some(Landing::Started(h)) if Arc::ptr_eq(&h, handle))
            }
            Some(Slot::Lingering(w)) => w.upgrade().is_some_and(|h| Arc::ptr_eq(&h, handle)),
            None => false,
        };
        if started_with_handle {
            slots.remove(key);
        }
        started_with_handle
    }

    /// Flights under way or lingering with a live handle.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|s| match s {
                Slot::Live(_) => true,
                Slot::Lingering(w) => w.strong_count() > 0,
            })
            .count()
    }
}

/// The one request that runs the fill for its key.
pub(super) struct Leader<K: Eq + Hash + Clone, T, E: Clone> {
    key: K,
    flight: Arc<Flight<T, E>>,
    slots: Arc<Mutex<HashMap<K, Slot<T, E>>>>,
    linger: Option<Weak<T>>,
}

impl<K: Eq + Hash + Clone, T, E: Clone> Leader<K, T, E> {
    /// The fill started: followers get `handle`.
    pub fn started(&self, handle: Arc<T>) {
        self.flight.land(Landing::Started(handle));
    }

    /// The fill could not start: followers get `why`.
    pub fn fail(self, why: E) {
        self.flight.land(Landing::Failed(why));
    }

    /// A follower of this leader's own flight (for the request that became the leader).
    pub fn follower(&self) -> Follower<T, E> {
        Follower {
            flight: Arc::clone(&self.flight),
            rx: self.flight.landed.subscribe(),
        }
    }

    /// When this leader goes, keep `handle` joinable while anyone else holds it.
    pub fn linger(&mut self, handle: &Arc<T>) {
        self.linger = Some(Arc::downgrade(handle));
    }
}

impl<K: Eq + Hash + Clone, T, E: Clone> Drop for Leader<K, T, E> {
    fn drop(&mut self) {
        self.flight.land(Landing::Abandoned);
        let mut slots = lock(&self.slots);
        let ours =
            matches!(slots.get(&self.key), Some(Slot::Live(f)) if Arc::ptr_eq(f, &self.flight));
        if ours {
            match self.linger.take() {
                Some(w) if w.strong_count() > 0 => {
                    slots.insert(self.key.clone(), Slot::Lingering(w));
                }
                _ => {
                    slots.remove(&self.key);
                }
            }
        }
        // Lingering entries whose readers are all gone go too.
        slots.retain(|_, s| match s {
            Slot::Live(_) => true,
            Slot::Lingering(w) => w.strong_count() > 0,
        });
    }
}

/// A request that joined a fill someone else leads.
pub(super) struct Follower<T, E> {
    flight: Arc<Flight<T, E>>,
    rx: watch::Receiver<bool>,
}

impl<T, E: Clone> Follower<T, E> {
    /// Waits until the leader says how the start went.
    pub async fn landing(mut self) -> Landing<T, E> {
        loop {
            if let Some(l) = self.flight.landing() {
                return l;
            }
            if self.rx.changed().await.is_err() {
                return self.flight.landing().unwrap_or(Landing::Abandoned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Table = FlightTable<&'static str, String, String>;

    fn leader(t: &Table, key: &'static str) -> Leader<&'static str, String, String> {
        match t.claim(&key) {
            Claim::Leader(l) => l,
            Claim::Follower(_) => panic!("expected to lead {key}"),
        }
    }

    fn follower(t: &Table, key: &'static str) -> Follower<String, String> {
        match t.claim(&key) {
            Claim::Follower(f) => f,
            Claim::Leader(_) => panic!("expected to follow {key}"),
        }
    }

    #[tokio::test]
    async fn joiners_follow_the_one_leader() {
        let t = Table::default();
        let l = leader(&t, "a");
        let own = l.follower();
        let f1 = follower(&t, "a");
        let f2 = follower(&t, "a");
        let _other = leader(&t, "b");
        let waiting = tokio::spawn(f1.landing());
        tokio::task::yield_now().await;
        l.started(Arc::new("handle".into()));
        match waiting.await.expect("task") {
            Landing::Started(h) => assert_eq!(*h, "handle"),
            other => panic!("got {other:?}"),
        }
        assert!(matches!(f2.landing().await, Landing::Started(_)));
        assert!(matches!(own.landing().await, Landing::Started(_)));
        assert!(t.contains(&"a"));
        // Joiners after the start get the same handle at once.
        assert!(matches!(
            follower(&t, "a").landing().await,
            Landing::Started(_)
        ));
        drop(l);
        assert_eq!(t.len(), 1, "a left with its leader; b is still under way");
        let _again = leader(&t, "a");
    }

    #[tokio::test]
    async fn failures_reach_every_follower() {
        let t = Table::default();
        let l = leader(&t, "a");
        let f = follower(&t, "a");
        l.fail("upstream said 404".into());
        match f.landing().await {
            Landing::Failed(e) => assert_eq!(e, "upstream said 404"),
            other => panic!("got {other:?}"),
        }
        let _next = leader(&t, "a");
    }

    #[tokio::test]
    async fn a_dead_leader_is_abandoned_and_a_follower_takes_over() {
        let t = Table::default();
        let l = leader(&t, "a");
        let f = follower(&t, "a");
        let waiting = tokio::spawn(f.landing());
        // The leader's task dies (a panic or a cancelled future drops it).
        let task = tokio::spawn(async move {
            let _l = l;
            panic!("fill task died");
        });
        assert!(task.await.is_err());
        assert!(matches!(waiting.await.expect("task"), Landing::Abandoned));
        let _new = leader(&t, "a");
        assert_eq!(t.len(), 1);
    }

    #[tokio::test]
    async fn a_lingering_handle_is_joined_until_its_last_reader_goes() {
        let t = Table::default();
        let mut l = leader(&t, "a");
        let handle = Arc::new(String::from("spooled"));
        l.started(Arc::clone(&handle));
        l.linger(&handle);
        drop(l);
        match follower(&t, "a").landing().await {
            Landing::Started(h) => assert!(Arc::ptr_eq(&h, &handle)),
            other => panic!("got {other:?}"),
        }
        drop(handle);
        let _fresh = leader(&t, "a");
    }

    #[tokio::test]
    async fn an_evicted_flight_makes_way_for_a_new_leader_and_its_old_leader_leaves_it_be() {
        let t = Table::default();
        let old = leader(&t, "a");
        let stalled = Arc::new(String::from("stalled"));
        old.started(Arc::clone(&stalled));
        assert!(!t.evict_started(&"a", &Arc::new(String::from("other"))));
        assert!(t.evict_started(&"a", &stalled));
        assert!(!t.evict_started(&"a", &stalled), "only once");
        let new = leader(&t, "a");
        let f = follower(&t, "a");
        drop(old);
        new.started(Arc::new(String::from("fresh")));
        match f.landing().await {
            Landing::Started(h) => assert_eq!(*h, "fresh"),
            other => panic!("got {other:?}"),
        }
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_leader_that_never_started_cannot_linger_into_a_later_flight() {
        let t = Table::default();
        let first = leader(&t, "a");
        drop(first);
        let second = leader(&t, "a");
        let f = follower(&t, "a");
        drop(second);
        // The follower's flight is abandoned; the table is empty again.
        assert_eq!(t.len(), 0);
        drop(f);
    }
}
