//! The composition root: builds a running daemon from a config (store, upstreams, access,
//! cache, registry API, listeners) and runs it until a shutdown signal, in the shape of
//! mini-redis's `server::run(listener, shutdown)`, so tests can drive a whole daemon
//! in-process.
//!
//! Owns: the order things start and stop in, and the process-wide setup a daemon needs
//! (the open-files limit). Must not: parse the command line or print (that is `main`), or
//! implement any layer's behaviour.

use crate::access::{Access, AccessError};
use crate::cache::{Cache, CacheSettings};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{RegistryApi, UpstreamTable};
use crate::server::{self, App, ListenerKind, Server, ServerError};
use crate::store::{Store, StoreError, StoreOptions, Upkeep};
use crate::upstream::Upstream;
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
    let mut upstreams = Vec::new();
    for u in &config.upstream {
        let up = Upstream::from_config(u, &config.outbound, metrics.clone())
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
    };
    let access = Arc::new(Access::from_config(config, metrics.clone())?);
    let tiers = build_tiers(config, origin, &metrics, &store)?;
    let cache =
        Arc::new(Cache::new(store.clone(), upstreams, settings, metrics.clone()).with_tiers(tiers));
    let upkeep = store.spawn_upkeep();
    let mut api = RegistryApi::new(UpstreamTable::from_config(config), cache.clone(), access);
    if config.upstream.iter().any(|u| u.push && u.private) {
        api = api.with_pushes(push_side(config, &store, &cache, &metrics));
    }
    let app = Arc::new(App::new(api, metrics));
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
