//! `policy check`: what the config's `[[policy]]` decides for the images named, the way a
//! running edge decides a pull of them (the same config file, the same matching).
//!
//! Must not: match anything itself (`sparkcr_edge::policy` does) or talk to a daemon.

use super::args::PolicyCommand;
use super::{load_config_without_tls_pair, load_policy, Failure};
use sparkcr_edge::policy::Verdict;
use sparkcr_edge::prefetch::image_ref::ImageRef;

pub fn run(command: PolicyCommand) -> Result<(), Failure> {
    let PolicyCommand::Check { config, images } = command;
    let loaded = load_config_without_tls_pair(&config)?;
    let policy = load_policy(&loaded)?;
    let mut denied = 0;
    for input in &images {
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
            Verdict::AllowedBy(block) => format!("{what}: allowed by block \"{block}\""),
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
