//! `prefetch` and `export`: which images (references and `--file` lists), which
//! platforms, and which running edge to go through; then the library's prefetch or export
//! and a summary.
//!
//! Must not: parse image references or talk to the edge itself (`sparkcr_edge::prefetch`
//! and `sparkcr_edge::bundle` do).

use super::args::{ConfigArg, ImageSelection};
use super::{load_config_without_tls_pair, small_runtime, Failure};
use sparkcr_edge::bundle;
use sparkcr_edge::prefetch::{self, edge_client::PlatformChoice};
use std::path::Path;

/// The edge URL from `--edge` or the config's first listener (a wildcard address means
/// this machine: 127.0.0.1).
pub(super) fn edge_url(edge: Option<&String>, config: &ConfigArg) -> Result<String, Failure> {
    if let Some(e) = edge {
        return Ok(e.clone());
    }
    let loaded = load_config_without_tls_pair(config)?;
    let s = &loaded.config.server;
    let (scheme, addr) = match (s.listen.first(), s.tls_listen.first()) {
        (Some(a), _) => ("http", *a),
        (None, Some(a)) => ("https", *a),
        (None, None) => {
            return Err(Failure::Config(
                "no listener in the config; pass --edge URL".into(),
            ))
        }
    };
    let host = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv6() => "[::1]".to_string(),
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("{scheme}://{host}:{}", addr.port()))
}

fn requested_images(sel: &ImageSelection) -> Result<Vec<prefetch::RequestedImage>, Failure> {
    let mut list = Vec::new();
    if let Some(f) = &sel.file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Failure::Config(format!("{}: cannot read the list: {e}", f.display())))?;
        list.extend(prefetch::read_list(f, &text));
    }
    list.extend(prefetch::from_args(&sel.refs));
    if list.is_empty() {
        return Err(Failure::Config(
            "no images: give references or --file LIST".into(),
        ));
    }
    Ok(list)
}

fn platforms(sel: &ImageSelection) -> Result<PlatformChoice, Failure> {
    match (&sel.platform, sel.all_platforms) {
        (_, true) => Ok(PlatformChoice::All),
        (Some(p), false) => PlatformChoice::parse(p).map_err(Failure::Config),
        (None, false) => Ok(PlatformChoice::host()),
    }
}

/// Which platforms of multi-platform images a command takes, in words.
fn platform_note(sel: &ImageSelection, choice: &PlatformChoice) -> String {
    match choice {
        PlatformChoice::All => "platforms: all of each multi-platform image".into(),
        PlatformChoice::Some(list) => {
            let names: Vec<String> = list
                .iter()
                .map(|(os, arch, variant)| match variant {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                })
                .collect();
            let whose = if sel.platform.is_some() {
                "as asked"
            } else {
                "this machine's; --platform or --all-platforms for others"
            };
            format!(
                "platforms: {} ({whose}) of each multi-platform image",
                names.join(", ")
            )
        }
    }
}

pub fn prefetch(sel: &ImageSelection, concurrency: usize) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let edge = edge_url(sel.edge.as_ref(), &sel.config)?;
    let list = requested_images(sel)?;
    let opts = prefetch::PrefetchOptions {
        edge,
        platforms: platforms(sel)?,
        concurrency,
        ca: sel.ca.clone(),
        progress: std::io::stderr().is_terminal(),
    };
    let summary = small_runtime()?
        .block_on(prefetch::run(list, &opts))
        .map_err(|e| Failure::Runtime(e.into()))?;
    print!("{summary}");
    match summary.failures() {
        0 => Ok(()),
        n => Err(Failure::runtime(format!(
            "{n} image(s) failed; see the table above"
        ))),
    }
}

pub fn export(sel: &ImageSelection, out: &Path) -> Result<(), Failure> {
    let edge = edge_url(sel.edge.as_ref(), &sel.config)?;
    let list = requested_images(sel)?;
    let choice = platforms(sel)?;
    println!("{}", platform_note(sel, &choice));
    let report = small_runtime()?
        .block_on(bundle::export(list, &edge, &choice, sel.ca.as_deref(), out))
        .map_err(|e| Failure::Runtime(e.into()))?;
    for (image, error) in &report.images {
        match error {
            None => println!("exported {image}"),
            Some(e) => println!("FAILED   {image}: {e}"),
        }
    }
    println!(
        "{}: {} blobs, {}",
        out.display(),
        report.blobs,
        prefetch::human(report.bytes)
    );
    match report.failures() {
        0 => Ok(()),
        n => Err(Failure::runtime(format!(
            "{n} image(s) failed; the bundle holds the others"
        ))),
    }
}
