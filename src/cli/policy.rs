//! `policy check`: what the config's `[[policy]]` decides for the images named, the way a
//! running edge decides a pull of them (the same config file, the same matching).
//!
//! `policy release`: asks the running edge, through its admin API, to release a digest
//! from cooldowns early.
//!
//! Must not: match anything itself (`sparkcr_edge::policy` does) or touch the store (the
//! daemon holds it; it releases).

use super::args::{ConfigArg, PolicyCommand};
use super::images::edge_url;
use super::{load_config_without_tls_pair, load_policy, small_runtime, Failure};
use sparkcr_edge::config::CooldownMode;
use sparkcr_edge::policy::Verdict;
use sparkcr_edge::prefetch::edge_client::EdgeClient;
use sparkcr_edge::prefetch::image_ref::ImageRef;
use sparkcr_edge::registry::RELEASE_PATH;
use std::path::Path;

pub fn run(command: PolicyCommand) -> Result<(), Failure> {
    match command {
        PolicyCommand::Check { config, images } => check(&config, &images),
        PolicyCommand::Release {
            config,
            edge,
            ca,
            reason,
            image,
        } => release(&config, edge.as_ref(), ca.as_deref(), &reason, &image),
    }
}

/// Asks the running edge to release `image` from cooldowns.
fn release(
    config: &ConfigArg,
    edge: Option<&String>,
    ca: Option<&Path>,
    reason: &str,
    image: &str,
) -> Result<(), Failure> {
    let image = ImageRef::parse(image).map_err(|e| Failure::Config(e.to_string()))?;
    let url = edge_url(edge, config)?;
    let client = EdgeClient::new(&url, ca).map_err(|e| Failure::runtime(e.to_string()))?;
    let body = serde_json::json!({
        "upstream": image.registry,
        "repository": image.repo.as_str(),
        "reference": image.reference.to_string(),
        "reason": reason,
    });
    let answer = small_runtime()?
        .block_on(client.admin_post(RELEASE_PATH, &body))
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let field = |k: &str| answer.get(k).and_then(|v| v.as_str()).unwrap_or("?");
    let tags: Vec<&str> = answer
        .get("tags")
        .and_then(|t| t.as_array())
        .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
        .unwrap_or_default();
    println!(
        "released {} of {}/{} from cooldowns (tags that pointed at it: {})",
        field("digest"),
        field("upstream"),
        field("repository"),
        tags.join(", ")
    );
    Ok(())
}

fn check(config: &ConfigArg, images: &[String]) -> Result<(), Failure> {
    let loaded = load_config_without_tls_pair(config)?;
    let policy = load_policy(&loaded)?;
    let mut denied = 0;
    for input in images {
        let image = ImageRef::parse(input).map_err(|e| Failure::Config(e.to_string()))?;
        let known = loaded
            .config
            .upstream
            .iter()
            .any(|u| u.name == image.registry);
        let what = format!("{}/{}", image.registry, image.repo);
        let line = match policy.decide(&image.registry, image.repo.as_str()) {
            Verdict::DeniedBy(block) => {
                denied += 1;
                format!("{what}: denied by block \"{block}\"")
            }
            Verdict::AllowedBy {
                block,
                cooldown,
                signature,
            } => {
                let mut line = format!("{what}: allowed by block \"{block}\"");
                if let Some(c) = cooldown {
                    line += &format!(
                        "; a tag's new digests are held back for {} ({} mode)",
                        humantime::format_duration(c.period),
                        match c.mode {
                            CooldownMode::Open => "open",
                            CooldownMode::Closed => "closed",
                        }
                    );
                }
                if let Some(s) = signature {
                    line += &format!("; only images signed by {}", s.keys.names());
                }
                line
            }
            Verdict::Open => format!("{what}: allowed (no block fits)"),
        };
        if known {
            println!("{line}");
        } else {
            println!(
                "{line}; but no upstream named {} is configured, so the edge does not serve it",
                image.registry
            );
        }
    }
    match denied {
        0 => Ok(()),
        n => Err(Failure::runtime(format!(
            "{n} of {} images are denied by the policy in {}",
            images.len(),
            loaded.origin
        ))),
    }
}
