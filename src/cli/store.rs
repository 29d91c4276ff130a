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
        CacheCommand::Stats(_) => {
            print!("{}", store.stats().context("cannot read store stats")?);
            let saved = store.savings().context("cannot read what the edge saved")?;
            print!(
                "{}",
                savings_text(&saved.summary(sparkcr_edge::metrics::activity::unix_now()))
            );
        }
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
    let policy = super::load_policy(&loaded)?;
    let report = bundle::import_with_policy(&store, bundle_path, options, &policy)
        .map_err(|e| Failure::Runtime(e.into()))?;
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

/// What the edge saved the WAN, as `cache stats` prints it: one line per window, then one
/// per upstream.
fn savings_text(s: &sparkcr_edge::store::SavingsSummary) -> String {
    use bytesize::ByteSize;
    use std::fmt::Write;
    let mut out = String::from("WAN saved (bytes from the cache or another client's fill; upstream requests avoided; clients collapsed):\n");
    let since = s.since.map_or_else(
        || "nothing yet".to_string(),
        |t| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
            )
            .to_string()
        },
    );
    for (label, v) in [
        ("today (UTC)", &s.today),
        ("last 7 days", &s.last_7_days),
        (&*format!("since {since}"), &s.total),
    ] {
        let _ = writeln!(
            out,
            "  {label:<32} {:>10}  {:>8} requests  {:>6} collapsed",
            ByteSize(v.bytes).to_string(),
            v.requests,
            v.collapsed
        );
    }
    for u in &s.upstreams {
        let _ = writeln!(
            out,
            "  {:<32} {:>10} today, {:>10} in 7 days, {:>10} in all",
            u.upstream,
            ByteSize(u.today.bytes).to_string(),
            ByteSize(u.last_7_days.bytes).to_string(),
            ByteSize(u.total.bytes).to_string()
        );
    }
    out
}
