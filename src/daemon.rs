//! The composition root: builds a running daemon from a config (store, upstreams, access,
//! cache, registry API, listeners) and runs it until a shutdown signal, in the shape of
//! mini-redis's `server::run(listener, shutdown)`, so tests can drive a whole daemon
//! in-process.
//!
//! Owns: the order things start and stop in, and the process-wide setup a daemon needs
//! (the open-files limit), and what to do about a daemon that cannot start
//! ([`DaemonError::hint`]). Must not: parse the command line or print (that is the
//! binary's `cli/`), or implement any layer's behaviour.

use crate::access::{Access, AccessError};
use crate::audit::{AuditFile, AuditFileSettings};
use crate::cache::{Cache, CacheSettings, PieceRule};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::policy::{Policy, PolicyGate};
use crate::registry::{RegistryApi, UpstreamTable};
use crate::server::{self, App, ListenerKind, Server, ServerError};
use crate::store::{Store, StoreError, StoreOptions, Upkeep};
use crate::upstream::{RateLimit, Upstream};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Test hook: milliseconds a verified blob fill waits before its commit.
pub const HOLD_COMMIT_ENV: &str = "SPARKCR_EDGE_TEST_HOLD_COMMIT_MS";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A mistake in the config (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    Access(#[from] AccessError),
    #[error("{0}")]
    Server(ServerError),
    #[error("a startup task failed: {0}")]
    Task(String),
}

impl DaemonError {
    /// What to do when the daemon cannot start for a reason in the machine's setup rather
    /// than its config, or `None`: today, a store on a read-only file system, which under
    /// systemd (`under_systemd`) is the unit's sandbox. Running again cannot fix such an
    /// error, so it is a setup mistake like a config error.
    pub fn hint(&self, under_systemd: bool) -> Option<String> {
        let DaemonError::Store { path, source } = self else {
            return None;
        };
        if !source.is_read_only_file_system() {
            return None;
        }
        let why = if under_systemd {
            "the systemd unit's sandbox (ProtectSystem=strict) lets the daemon write only its \
             state directory /var/lib/sparkcr-edge"
        } else {
            "the file system is mounted read-only"
        };
        Some(format!(
            "storage.path {path} is on a read-only file system: {why}; to keep the cache there, \
             add a drop-in with `systemctl edit sparkcr-edge` containing \"[Service]\" and \
             \"ReadWritePaths={path}\", then `systemctl restart sparkcr-edge`"
        ))
    }
}

/// A daemon with its listeners bound, ready to serve.
pub struct Daemon {
    server: Server,
    app: Arc<App>,
    cache: Arc<Cache>,
    store: Store,
    upkeep: Upkeep,
    grace: Duration,
    /// The status page's per-minute counter snapshots; stopped with the daemon.
    sampler: server::status::Sampler,
    /// The `[[policy]]` in force (replaced on reload, see [`Daemon::reload_policy_with`]).
    policy: Arc<PolicyGate>,
}

/// Raises the soft open-files limit to the hard one (a fill holds one descriptor per chunk
/// file its readers may still read).
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The shared tier and the cluster's peers, if configured (the tier's probe, and with
/// `catch_up` its catch-up from `store`, run with the runtime).
fn build_tiers(
    config: &Config,
    origin: &str,
    metrics: &Arc<Metrics>,
    store: &Store,
) -> Result<crate::cache::Tiers, DaemonError> {
    let shared = match &config.storage.shared {
        Some(cfg) => {
            let tier = crate::shared::SharedTier::from_config(cfg, metrics.clone())
                .map_err(|e| DaemonError::Config(format!("{origin}: {e}")))?;
            tier.spawn_probe();
            tier.spawn_catch_up(store.clone());
            Some(tier)
        }
        None => None,
    };
    let cluster = crate::shared::peers::Cluster::from_config(&config.cluster, metrics.clone())
        .map_err(|e| DaemonError::Config(format!("{origin}: {e}")))?;
    Ok(crate::cache::Tiers { shared, cluster })
}

/// This edge's name in `Cache-Status`: `server.name`, else the host name and the first 6
/// characters of the edge's id (kept in the store), so boxes made from one image differ.
fn edge_name(config: &Config, edge_id: &str) -> String {
    match &config.server.name {
        Some(name) => name.clone(),
        None => format!("{}-{}", config.server.hostname, &edge_id[..6]),
    }
}

/// Builds everything `config` describes and binds the listeners. `origin` names the
/// config file in error messages.
pub async fn start(config: &Config, origin: &str) -> Result<Daemon, DaemonError> {
    raise_nofile_limit();
    let metrics = Arc::new(Metrics::new());
    let store = {
        let (opts, m) = (StoreOptions::from_config(config), metrics.clone());
        let path = config.storage.path.display().to_string();
        tokio::task::spawn_blocking(move || Store::open(opts, m))
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))?
            .map_err(|source| DaemonError::Store { path, source })?
    };
    let edge_id = store.edge_id().map_err(|source| DaemonError::Store {
        path: config.storage.path.display().to_string(),
        source,
    })?;
    let via = crate::oci::hops::own_hop(&edge_id);
    let mut upstreams = Vec::new();
    // `[outbound] max_rate`: one bucket shared by every upstream's blob downloads.
    let edge_rate = config.outbound.max_rate.map(RateLimit::new);
    for u in &config.upstream {
        let up = Upstream::from_config_via(
            u,
            &config.outbound,
            edge_rate.as_ref(),
            Some(&via),
            metrics.clone(),
        )
        .map_err(|e| DaemonError::Config(format!("{origin}: upstream {:?}: {e}", u.name)))?;
        upstreams.push(up);
    }
    let hold_commit = std::env::var(HOLD_COMMIT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    let settings = CacheSettings {
        tag_ttl: config.cache.tag_ttl.get(),
        private_upstreams: config
            .upstream
            .iter()
            .filter(|u| u.private)
            .map(|u| u.name.clone())
            .collect(),
        hold_commit,
        follower_stall: config.cache.follower_stall.get(),
        pieces: PieceRule::with_in_flight(config.cache.fill_pieces as usize),
        unread_grace: CacheSettings::DEFAULT_UNREAD_GRACE,
        quota_reserves: config
            .upstream
            .iter()
            .filter(|u| u.quota_reserve > 0)
            .map(|u| (u.name.clone(), u.quota_reserve))
            .collect(),
    };
    let access = Arc::new(Access::from_config(config, metrics.clone())?);
    let tiers = build_tiers(config, origin, &metrics, &store)?;
    let cache =
        Arc::new(Cache::new(store.clone(), upstreams, settings, metrics.clone()).with_tiers(tiers));
    let upkeep = store.spawn_upkeep();
    let edge_name = edge_name(config, &edge_id);
    tracing::info!(name = %edge_name, id = %edge_id, "this edge's name in Cache-Status, and its id in Via");
    let policy = Policy::from_config(&config.policy)
        .map_err(|e| DaemonError::Config(format!("{origin}: {e}")))?;
    if !policy.is_empty() {
        tracing::info!(blocks = policy.len(), "[[policy]] in force");
    }
    let policy = Arc::new(PolicyGate::new(policy, metrics.policy_denials.clone()));
    let mut api = RegistryApi::new(UpstreamTable::from_config(config), cache.clone(), access)
        .with_edge_name(&edge_name)
        .with_edge_id(&edge_id)
        .with_policy(policy.clone());
    if config.upstream.iter().any(|u| u.push && u.private) {
        api = api.with_pushes(push_side(config, &store, &cache, &metrics));
    }
    let mut app = App::new(api, metrics.clone());
    if let Some(path) = &config.audit.path {
        let file = AuditFile::open(AuditFileSettings {
            path: path.clone(),
            max_size: config.audit.max_size.get(),
            keep: config.audit.keep,
            written: metrics.audit_records.with_label_values(&["written"]),
            dropped: metrics.audit_records.with_label_values(&["dropped"]),
        })
        .map_err(|e| {
            DaemonError::Config(format!(
                "{origin}: audit.path: {e}; create the directory (writable by the service user) or change audit.path"
            ))
        })?;
        app = app.with_audit_file(Arc::new(file));
    }
    let app = Arc::new(app);
    let sampler = server::status::spawn_sampler(app.clone());
    let server = Server::bind(&config.server, app.clone())
        .await
        .map_err(|e| match e {
            ServerError::Tls(t) => {
                DaemonError::Config(format!("{origin}: server.tls_cert/server.tls_key: {t}"))
            }
            other => DaemonError::Server(other),
        })?;
    Ok(Daemon {
        server,
        app,
        cache,
        store,
        upkeep,
        grace: config.server.shutdown_grace.get(),
        sampler,
        policy,
    })
}

/// The push side: the upstreams with `push = true` and `[push]`'s limits.
fn push_side(
    config: &Config,
    store: &Store,
    cache: &Cache,
    metrics: &Arc<Metrics>,
) -> Arc<crate::cache::push::Pushes> {
    let upstreams = config
        .upstream
        .iter()
        .filter(|u| u.push && u.private)
        .filter_map(|u| cache.upstream_named(&u.name).cloned())
        .collect();
    let settings = crate::cache::push::PushSettings {
        max_upload_size: config.push.max_upload_size.get(),
        session_timeout: config.push.session_timeout.get(),
        max_uploads_per_token: config.push.max_uploads_per_token,
    };
    crate::cache::push::Pushes::new(store.clone(), upstreams, settings, metrics.clone())
}

impl Daemon {
    /// The addresses bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.server.local_addrs()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// On SIGHUP, also loads the config again with `load` and puts its `[[policy]]` in
    /// force for every request from then on. A config that does not load, or a policy that
    /// does not compile, leaves the one in force and says why (in the log and systemd's
    /// status line). Other keys take effect only on a restart.
    pub fn reload_policy_with(
        self,
        load: impl Fn() -> Result<Config, String> + Send + Sync + 'static,
    ) -> Self {
        let gate = self.policy.clone();
        self.app.on_reload(Box::new(move || {
            let loaded = load().and_then(|c| Policy::from_config(&c.policy).map_err(|e| e.to_string()));
            match loaded {
                Ok(policy) => {
                    let n = policy.len();
                    gate.replace(policy);
                    tracing::info!(blocks = n, "SIGHUP: [[policy]] reloaded");
                    format!("policy reloaded ({n} blocks)")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: config not reloaded; the policy in force stays");
                    format!("policy not reloaded: {e}")
                }
            }
        }));
        self
    }

    /// Serves until `shutdown` resolves, then drains for `server.shutdown_grace`; returns
    /// whether every connection finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> bool {
        let Daemon {
            server,
            app,
            cache,
            store,
            upkeep,
            grace,
            sampler,
            policy: _,
        } = self;
        app.set_ready(true);
        let clean = server.serve(shutdown, grace).await;
        drop(sampler);
        Self::stop_store(&cache, store, upkeep, grace).await;
        clean
    }

    /// [`run`](Self::run) until SIGTERM or SIGINT, reloading the certificate on SIGHUP and
    /// telling systemd (`Type=notify`) what it does.
    pub async fn run_until_signalled(self) -> std::io::Result<bool> {
        self.app.set_ready(true);
        server::notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
        tracing::info!("ready to serve");
        let clean = server::serve_until_signalled(self.server, self.grace).await?;
        let Daemon {
            cache,
            store,
            upkeep,
            grace,
            sampler,
            ..
        } = self;
        drop(sampler);
        Self::stop_store(&cache, store, upkeep, grace).await;
        Ok(clean)
    }

    /// After the connections drained: lets running blob fills finish (a blob whose bytes
    /// all arrived is committed, not thrown away; at most `grace` more), then stops the
    /// store's upkeep and flushes recency.
    async fn stop_store(cache: &Cache, store: Store, upkeep: Upkeep, grace: Duration) {
        let running = cache.fills_running();
        if running > 0 {
            tracing::info!(
                fills = running,
                "waiting for blob fills to finish before stopping"
            );
            if !cache.fills_settled(grace).await {
                tracing::warn!(
                    fills = cache.fills_running(),
                    "blob fills still running at the end of shutdown_grace; their blobs are not kept"
                );
            }
        }
        drop(upkeep);
        let _ = tokio::task::spawn_blocking(move || store.flush_access()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_error(errno: i32) -> DaemonError {
        DaemonError::Store {
            path: "/srv/cache".into(),
            source: StoreError::Io {
                op: "create",
                path: "/srv/cache/index".into(),
                source: std::io::Error::from_raw_os_error(errno),
            },
        }
    }

    #[test]
    fn a_read_only_store_says_how_to_open_the_sandbox() {
        let e = store_error(libc::EROFS);
        let hint = e.hint(true).expect("a hint");
        assert!(hint.contains("storage.path /srv/cache"), "{hint}");
        assert!(hint.contains("ProtectSystem=strict"), "{hint}");
        assert!(hint.contains("ReadWritePaths=/srv/cache"), "{hint}");
        let hint = e.hint(false).expect("a hint");
        assert!(hint.contains("mounted read-only"), "{hint}");
    }

    #[test]
    fn other_failures_have_no_hint() {
        assert!(store_error(libc::EACCES).hint(true).is_none());
        assert!(DaemonError::Config("x".into()).hint(true).is_none());
        assert!(DaemonError::Task("x".into()).hint(false).is_none());
    }
}
