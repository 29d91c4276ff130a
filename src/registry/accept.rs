//! `Accept` headers: every header line is read (skopeo sends six), split on commas,
//! parameters dropped, order kept, duplicates removed.
//!
//! Owns: that reading. Must not: choose a manifest (the cache does, from this list).

use http::HeaderMap;

/// The media types a client accepts, in the order it listed them.
pub fn accepted_media_types(headers: &HeaderMap) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in headers.get_all(http::header::ACCEPT) {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let media = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !media.is_empty() && media.len() <= 255 && !out.contains(&media) {
                out.push(media);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_line_and_item() {
        let mut h = HeaderMap::new();
        h.append(
            "accept",
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .expect("v"),
        );
        h.append(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9, */*"
                .parse()
                .expect("v"),
        );
        h.append(
            "accept",
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .expect("v"),
        );
        assert_eq!(
            accepted_media_types(&h),
            vec![
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "*/*"
            ]
        );
    }
}
