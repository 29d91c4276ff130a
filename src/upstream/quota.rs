//! An upstream's pull quota, as it announces it in response headers: Docker Hub's
//! `ratelimit-limit: 100;w=21600` / `ratelimit-remaining: 87;w=21600`, and the IETF
//! draft's `RateLimit-Limit: 100` / `RateLimit-Remaining: 87` / `RateLimit-Reset: 60`
//! (header names are case-insensitive, so both forms are the same headers).
//!
//! Owns: reading those headers. Must not: decide anything from them (the cache may, from
//! what `/metrics` and the status page show).

use reqwest::header::HeaderMap;

/// What an upstream said about its quota in one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Requests the window allows, when said.
    pub limit: Option<u64>,
    /// Requests left in the window.
    pub remaining: u64,
    /// The window's length (`;w=` seconds), when said.
    pub window_seconds: Option<u64>,
    /// Seconds until the window resets (`RateLimit-Reset`), when said.
    pub reset_seconds: Option<u64>,
}

/// The quota in `headers`; `None` without a readable `RateLimit-Remaining`.
pub fn read(headers: &HeaderMap) -> Option<Quota> {
    let remaining = headers.get("ratelimit-remaining")?.to_str().ok()?;
    let (remaining, window_r) = number_and_window(remaining)?;
    let limit = headers
        .get("ratelimit-limit")
        .and_then(|v| v.to_str().ok())
        .and_then(number_and_window);
    let reset_seconds = headers
        .get("ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    Some(Quota {
        limit: limit.map(|(n, _)| n),
        remaining,
        window_seconds: window_r.or(limit.and_then(|(_, w)| w)),
        reset_seconds,
    })
}

/// `87` or `87;w=21600` (parameters other than `w` ignored).
fn number_and_window(text: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = text.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "w").then(|| v.trim().parse().ok()).flatten()
    });
    Some((n, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn docker_hubs_and_the_ietf_drafts_forms() {
        let hub = headers(&[
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "87;w=21600"),
            ("docker-ratelimit-source", "192.0.2.1"),
        ]);
        assert_eq!(
            read(&hub),
            Some(Quota {
                limit: Some(100),
                remaining: 87,
                window_seconds: Some(21600),
                reset_seconds: None
            })
        );
        let ietf = headers(&[
            ("RateLimit-Limit", "10"),
            ("RateLimit-Remaining", "4"),
            ("RateLimit-Reset", "60"),
        ]);
        assert_eq!(
            read(&ietf),
            Some(Quota {
                limit: Some(10),
                remaining: 4,
                window_seconds: None,
                reset_seconds: Some(60)
            })
        );
        assert_eq!(read(&headers(&[("ratelimit-limit", "100;w=60")])), None);
        assert_eq!(read(&headers(&[("ratelimit-remaining", "lots")])), None);
        assert_eq!(
            read(&headers(&[("ratelimit-remaining", " 5 ; x=1 ; w = 30 ")]))
                .map(|q| (q.remaining, q.window_seconds)),
            Some((5, Some(30)))
        );
    }
}
