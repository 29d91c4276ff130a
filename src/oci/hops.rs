//! The `Via` chain of the client request being served: the hops it already passed, plus
//! this edge. The registry sets it around the work of one request ([`scope`]); the cache
//! carries it into the fill task that request starts; the upstream client sends it on
//! every request it makes meanwhile. An edge that finds its own id in a request's `Via`
//! refuses it, so a loop of edges (A → B → A) ends at the first repeat instead of going
//! round.
//!
//! Owns: the task-local value and its bounds (at most [`MAX_VIA`] bytes, visible ASCII).
//! Must not: decide what a loop is (the registry does) or do I/O.

use std::future::Future;
use std::sync::Arc;

/// Longest `Via` chain carried on; a longer incoming chain is dropped (only this edge's
/// hop is sent), so a client cannot make upstream requests carry kilobytes of headers.
pub const MAX_VIA: usize = 1024;

tokio::task_local! {
    static VIA: Option<Arc<str>>;
}

/// The pseudonym an edge with id `edge_id` goes by in `Via` (no host name or address is
/// revealed): `sparkcr-edge-<id>`.
pub fn pseudonym(edge_id: &str) -> String {
    format!("sparkcr-edge-{edge_id}")
}

/// This edge's hop in `Via`: `1.1 <pseudonym>`.
pub fn own_hop(edge_id: &str) -> String {
    format!("1.1 {}", pseudonym(edge_id))
}

/// Whether `via` (a request's `Via` header values) names the pseudonym `ours`.
pub fn names(via: &[&str], ours: &str) -> bool {
    via.iter()
        .flat_map(|v| v.split(','))
        .any(|hop| hop.split_whitespace().nth(1) == Some(ours))
}

/// The `Via` to send upstream for a request that arrived with `incoming` (its `Via`
/// header values, in order) at an edge whose own hop is `ours` (`1.1 <pseudonym>`);
/// `ours` itself (no copy) when there is no usable chain.
pub fn outgoing(incoming: &[&str], ours: &Arc<str>) -> Arc<str> {
    if incoming.is_empty() {
        return Arc::clone(ours);
    }
    let chain = incoming
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let usable = !chain.is_empty()
        && chain.len() + ours.len() + 2 <= MAX_VIA
        && chain.bytes().all(|b| (0x20..0x7f).contains(&b));
    if usable {
        Arc::from(format!("{chain}, {ours}"))
    } else {
        Arc::clone(ours)
    }
}

/// Runs `f` with `via` as the chain its upstream requests carry.
pub async fn scope<F: Future>(via: Option<Arc<str>>, f: F) -> F::Output {
    VIA.scope(via, f).await
}

/// The chain set by the innermost [`scope`] around the running task, if any.
pub fn current() -> Option<Arc<str>> {
    VIA.try_with(|v| v.clone()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_grows_by_our_hop_within_bounds() {
        let ours: Arc<str> = Arc::from("1.1 sparkcr-edge-b");
        assert!(
            Arc::ptr_eq(&outgoing(&[], &ours), &ours),
            "no copy without a chain"
        );
        assert_eq!(
            &*outgoing(&["1.1 sparkcr-edge-a", " 1.1 proxy "], &ours),
            "1.1 sparkcr-edge-a, 1.1 proxy, 1.1 sparkcr-edge-b"
        );
        let long = "x".repeat(MAX_VIA);
        assert_eq!(&*outgoing(&[&long], &ours), &*ours, "too long: only ours");
        assert_eq!(
            &*outgoing(&["1.1 a\u{7f}"], &ours),
            &*ours,
            "not visible ASCII"
        );
    }

    #[test]
    fn a_chain_names_a_pseudonym_only_as_a_hop() {
        let ours = pseudonym("b");
        assert_eq!(own_hop("b"), "1.1 sparkcr-edge-b");
        assert!(names(&["1.1 sparkcr-edge-a, 1.1 sparkcr-edge-b"], &ours));
        assert!(names(
            &["1.1 sparkcr-edge-a", "HTTP/1.1 sparkcr-edge-b (x)"],
            &ours
        ));
        assert!(!names(
            &["1.1 sparkcr-edge-bb", "1.0 sparkcr-edge-a"],
            &ours
        ));
        assert!(!names(&[], &ours));
    }

    #[tokio::test]
    async fn the_chain_is_seen_inside_its_scope_only() {
        assert_eq!(current(), None);
        let via: Arc<str> = Arc::from("1.1 sparkcr-edge-a");
        let inside = scope(Some(via.clone()), async { current() }).await;
        assert_eq!(inside, Some(via));
        assert_eq!(current(), None);
    }
}
