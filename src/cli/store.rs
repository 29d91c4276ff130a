//! The commands on a stopped daemon's store: `cache stats|verify|purge` and `import`.
//! Each checks that it runs as the store's owner, opens the store (the daemon must be
//! stopped: the store is locked while it runs) and prints the store's report.
//!
//! Must not: touch the store's files or decide what a purge removes (the store does).

use super::args::{CacheCommand, ConfigArg};
use super::{init_logging, load_config_without_tls_pair, Failure};
use anyhow::Context as _;
use sparkcr_edge::bundle::{self, ImportOptions};
use sparkcr_edge::config::Config;
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::setup::store_owner;
use sparkcr_edge::store::{Store, StoreOptions};
use std::path::Path;
use std::sync::Arc;

/// The store the config names; a message that does not name the store gets its path.
fn open_store(c: &Config, metrics: Arc<Metrics>) -> Result<Store, Failure> {
    Store::open(StoreOptions::from_config(c), metrics).map_err(|e| {
        if e.names_the_store() {
            Failure::runtime(e)
        } else {
            Failure::Runtime(anyhow::Error::new(e).context(format!(
                "cannot open the store at {}",
                c.storage.path.display()
            )))
        }
    })
}

pub fn cache(cmd: CacheCommand) -> Result<(), Failure> {
    let (a, action) = match &cmd {
        CacheCommand::Stats(a) => (a, "stats"),
        CacheCommand::Verify(a) => (a, "verify"),
        CacheCommand::Purge { config, .. } => (config, "purge"),
    };
    if let CacheCommand::Purge {
        older_than: None,
        repo: None,
        all: false,
        ..
    } = &cmd
    {
        return Err(Failure::Config(
            "cache purge: say what to remove: --older-than DURATION, --repo NAME, or --all for \
             the whole cache"
                .into(),
        ));
    }
    let loaded = load_config_without_tls_pair(a)?;
    let _log = init_logging(&loaded.config);
    store_owner::check(&loaded.config.storage.path, action).map_err(Failure::Config)?;
    let store = open_store(&loaded.config, Arc::new(Metrics::new()))?;
    match cmd {
        CacheCommand::Stats(_) => print!("{}", store.stats().context("cannot read store stats")?),
        CacheCommand::Verify(_) => {
            let report = store.verify().context("verify failed")?;
            print!("{report}");
            if !report.is_clean() {
                return Err(Failure::runtime(
                    "verify found corrupt content (listed above); what was dropped is fetched \
                     again on the next pull",
                ));
            }
        }
        CacheCommand::Purge {
            older_than, repo, ..
        } => {
            let report = store
                .purge(older_than, repo.as_ref())
                .context("purge failed")?;
            if let Some(filter) = &repo {
                println!("  matching {filter}");
            }
            print!("{report}");
        }
    }
    tracing::debug!(action, "done");
    Ok(())
}

pub fn import(a: &ConfigArg, bundle_path: &Path, options: ImportOptions) -> Result<(), Failure> {
    let loaded = load_config_without_tls_pair(a)?;
    let _log = init_logging(&loaded.config);
    store_owner::check(&loaded.config.storage.path, "import").map_err(Failure::Config)?;
    let store = open_store(&loaded.config, Arc::new(Metrics::new()))?;
    let report =
        bundle::import(&store, bundle_path, options).map_err(|e| Failure::Runtime(e.into()))?;
    print!("{report}");
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "{} entries failed verification or could not be stored",
            report.failures.len()
        )))
    }
}
