//! # sparkcr-edge
//!
//! A pull-through cache for container registries, for one box on a LAN. Docker,
//! containerd, Podman and CRI-O pull through it; every layer crosses the WAN once.
//!
//! ## Map of the crate
//!
//! Layers; imports run down these arrows only:
//!
//! ```text
//! main (CLI)  ->  daemon  ->  server  ->  registry  ->  cache  ->  store
//!                               |            |            |---->  shared  ->  store, upstream
//!                               |            |            \---->  upstream
//!                               \------------+-->  access
//!                                            \---->  policy  ->  config
//! config, metrics, oci, mapped: leaf modules read by all, importing none of the others
//! audit: read by server, registry and the CLI; imports only oci
//! ```
//!
//! `daemon` is the composition root and imports every layer to build it. One import skips
//! a layer, on purpose: `server`'s status page reads the cache's and the store's read-only
//! views (fills under way, upstream endpoints, store totals), since that report is about
//! them. `registry` reaches the upstream client only through `cache` (pulls through its
//! sources, pushes through [`cache::push`]).
//!
//! - [`daemon`]: the composition root: builds a daemon from a config and runs it until a
//!   shutdown signal.
//! - [`server`]: listeners (HTTP and HTTPS via rustls, h2 + HTTP/1.1), certificate reload,
//!   graceful shutdown, request logging, `/metrics`, `/healthz`, `/readyz`, the status page.
//! - [`access`]: who may use the edge: client networks, token secrets (HTTP Basic) and
//!   the edge's own bearer tokens, scopes (`pull:public`, `pull:private`, `push`, `admin`),
//!   the anonymous per-address quota; it counts every refusal it makes. Used by `server`
//!   (networks, the status page) and `registry` (everything else).
//! - [`policy`]: what may be pulled through the edge at all: the `[[policy]]` blocks
//!   (allow or deny by upstream and repository glob, first fit wins; an allowing block's
//!   cooldown and trusted signing keys), swapped whole on SIGHUP. Used by `registry`'s
//!   front door, after `access`, which hands the allowing block's rules to the cache.
//! - [`registry`]: the OCI distribution API (spec 1.1): the read API (manifests, blobs, tag
//!   lists, referrers, the catalog) and the push API for upstreams with `push = true`;
//!   every request authenticated, routed and authorized once before it is served; routing
//!   of every client's URL form to an upstream and repository, references, OCI error JSON
//!   (the cache's pull and push failures mapped to OCI errors once).
//! - [`cache`]: policy between the API and the bytes: hit or miss, tag TTL and revalidation,
//!   serve-stale, single-flight blob fills that stream to every waiting client (one fill
//!   registry; a stalled fill is taken over), which routes may see content fetched
//!   through a private upstream, and the trust gate on manifests (cooldowns,
//!   signatures). Content comes only through its source seams (`BlobSource`,
//!   `ManifestSource`), so it runs in-process without sockets in tests.
//!   Its `push` module holds push-through sessions, written through to the store, and
//!   classifies their failures as the cache classifies a pull's.
//! - [`store`]: sled index plus blake3-named chunk files; sha256-verified blobs, LRU byte
//!   budget, TTL, crash recovery, a versioned index schema. Each part keeps its state
//!   private: the index its trees, the budget its lock.
//! - [`shared`]: the shared tier behind the local store (an S3-compatible bucket several
//!   edges share, tested on Ceph RGW) and cluster single flight between peer edges; used
//!   by `cache`.
//! - [`upstream`]: HTTP client to upstream registries (reqwest + rustls), token and Basic
//!   auth, redirects to blob CDNs, outbound proxies (HTTP, SOCKS5), ordered endpoints with
//!   failover, short rate limits waited out.
//! - [`audit`]: the audit trail: one record per manifest or blob request (who, which tag
//!   and the digest it resolved to, what the cache did, bytes, duration, refusals), a
//!   JSON-lines file with rotation, and the reader behind `sparkcr-edge audit`.
//! - [`config`]: the TOML schema, defaults, environment overrides, validation.
//! - [`metrics`]: every Prometheus metric, in one registry per daemon.
//! - [`oci`]: digests, repository names, tags, references, media types, routing targets
//!   (upstream + repository) and their store keys, byte ranges.
//! - [`mapped`]: file-backed `Bytes` frames (read-only mappings of chunk files) and the
//!   lookup that lets plain-HTTP connections send them with `sendfile(2)`.
//!
//! Beside the daemon, for the commands an admin runs (they use the layers above only
//! through their public interfaces):
//!
//! - [`prefetch`]: warms a running edge through its own registry API (`sparkcr-edge prefetch`).
//! - [`bundle`]: OCI image layout tars for air-gapped sites (`export` over the API, `import`
//!   into a stopped daemon's store).
//! - [`doctor`]: checks a client machine's runtime configs, logins and reach of the edge
//!   (`sparkcr-edge doctor`); reads only.
//! - [`logging`]: the command's tracing subscriber, with journald priorities under systemd.
//! - [`setup`]: client configuration snippets (`client-config`) and self-signed
//!   certificates (`tls self-signed`).
//!
//! The longer map, with the one file that owns each concept, is `docs/architecture.md`.

pub mod access;
pub mod audit;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod logging;
pub mod mapped;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod prefetch;
pub mod registry;
pub mod server;
pub mod setup;
pub mod shared;
pub mod store;
pub mod upstream;
