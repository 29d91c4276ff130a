//! The command-line grammar: every subcommand, flag, default and help text, as clap
//! derive types. `generate` builds the man pages and completions from these same types.
//!
//! Owns: what the command line accepts and how each value is parsed (the value parsers
//! here turn strings into typed values at the edge).
//!
//! Must not: do anything with the values (the command modules beside it do), or load a
//! config.

use clap::{Parser, Subcommand};
use sparkcr_edge::config;
use sparkcr_edge::setup::client_config;
use sparkcr_edge::store::PurgeFilter;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "sparkcr-edge",
    version,
    about = "Pull-through cache for container registries on a LAN"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print, for each image, the [[policy]] block that decides a pull of it (allow or
    /// deny); exit 1 when any is denied.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Images as clients name them (nginx:1.27, ghcr.io/org/app@sha256:...)
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Release a digest from [[policy]] cooldowns now, on the running edge (through its
    /// admin API: from auth.admin_cidrs, loopback by default). A tag releases the digest
    /// it points at.
    Release {
        #[command(flatten)]
        config: ConfigArg,
        /// The running edge [default: the config's first listener]
        #[arg(long, value_name = "URL")]
        edge: Option<String>,
        /// Extra CA certificate (PEM) for an HTTPS edge
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Why (logged by the edge with the release)
        #[arg(long, required = true)]
        reason: String,
        /// The image: nginx@sha256:..., ghcr.io/org/app:1.2 (a tag: its newest digest)
        #[arg(value_name = "IMAGE")]
        image: String,
    },
}

#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Config file [default: /etc/sparkcr-edge/config.toml if it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ConfigArg),
    /// Check the config (and the certificate pair it names) and print the effective config
    /// (secrets redacted).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Print nothing unless something is wrong (for systemd's ExecStartPre=).
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Inspect or maintain the store of a stopped daemon.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Pull images into a running edge's cache (air-gapped warm-up).
    Prefetch {
        #[command(flatten)]
        images: ImageSelection,
        /// Blobs fetched at once
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Write images from a running edge into an OCI image layout tar.
    Export {
        #[command(flatten)]
        images: ImageSelection,
        /// The bundle to write
        #[arg(long, value_name = "BUNDLE.tar")]
        out: PathBuf,
    },
    /// Load an exported bundle into the store of a stopped daemon (every digest verified).
    Import {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_name = "BUNDLE.tar")]
        bundle: PathBuf,
        /// Repoint tags the store already has with another digest to the bundle's (without
        /// it they are kept, and listed)
        #[arg(long)]
        replace_tags: bool,
        /// Only list the tags the import would create or change; write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// TLS helpers.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Access tokens for clients (`docker login` passwords).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print (or write) the client configuration for this edge.
    ClientConfig(ClientConfigArgs),
    /// Search the audit trail: who pulled what, when, and what the cache did. Reads the
    /// files named by `[audit] path` (and their rotations), so it works while the daemon runs.
    Audit(AuditArgs),
    /// What the config's [[policy]] decides for images.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Man pages or shell completions from these definitions (run by scripts/package).
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        /// Directory to write into (created if missing)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// On a client machine: check that Docker, containerd, Podman and CRI-O pull through
    /// the edge (configs, restarts, logins, certificate, a manifest); reads only.
    Doctor {
        /// The edge as clients reach it, e.g. https://edge.lan or http://10.0.0.5:5000
        #[arg(long, value_name = "URL")]
        edge: String,
        /// An image whose manifest must resolve through the edge, e.g. busybox:latest
        #[arg(long, value_name = "REF")]
        image: Option<String>,
        /// Extra CA certificate (PEM) to trust for the edge (repeatable)
        #[arg(long = "ca", value_name = "FILE")]
        ca: Vec<PathBuf>,
        /// Only the files; do not contact the edge
        #[arg(long)]
        offline: bool,
        /// Where the client's file system starts (for checking a copy or a fixture)
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Generated {
    /// sparkcr-edge.1 and one page per subcommand (sparkcr-edge-serve.1, ...)
    Man,
    /// bash (sparkcr-edge), zsh (_sparkcr-edge) and fish (sparkcr-edge.fish)
    Completions,
}

/// `client-config` arguments.
#[derive(clap::Args)]
pub struct ClientConfigArgs {
    #[arg(value_enum)]
    pub client: client_config::Client,
    #[command(flatten)]
    pub config: ConfigArg,
    /// How clients reach the edge [default: from the config's hostname and listeners]
    #[arg(long, value_name = "URL")]
    pub edge: Option<String>,
    /// Upstreams to configure (repeatable) [default: all configured]
    #[arg(long = "upstream", value_name = "NAME")]
    pub upstreams: Vec<String>,
    #[arg(long, value_enum, default_value = "path")]
    pub mode: client_config::Mode,
    /// Write the files to their standard paths (existing files are backed up).
    #[arg(long)]
    pub write: bool,
    /// docker: an edge token's secret; adds the ~/.docker/config.json `auths` entries
    /// that make Docker send it (to the mirror and to the edge's own host)
    #[arg(
        long,
        env = "SPARKCR_EDGE_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub token: Option<String>,
    /// docker: the user name sent with --token (any name works; it shows in the edge's logs)
    #[arg(long, default_value = "sparkcr-edge", requires = "token")]
    pub token_user: String,
    /// Prefix for --write paths (for testing and staging).
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}

/// Which images, and how to reach the edge (prefetch and export).
#[derive(clap::Args)]
pub struct ImageSelection {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The running edge to go through [default: the config's first listener]
    #[arg(long, value_name = "URL")]
    pub edge: Option<String>,
    /// A file with one image reference per line (`#` comments allowed)
    #[arg(long, value_name = "LIST")]
    pub file: Option<PathBuf>,
    /// Platforms of multi-platform images, e.g. linux/amd64,linux/arm64 [default: this machine's]
    #[arg(long, value_name = "OS/ARCH,...", conflicts_with = "all_platforms")]
    pub platform: Option<String>,
    /// Every platform of multi-platform images
    #[arg(long)]
    pub all_platforms: bool,
    /// Extra CA certificate(s), PEM, for an HTTPS edge (besides the system's trust store),
    /// e.g. /etc/sparkcr-edge/tls/ca.pem
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Image references (nginx:1.27, ghcr.io/org/img@sha256:...)
    #[arg(value_name = "REF")]
    pub refs: Vec<String>,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a new token: prints its secret once, and the [[auth.token]] block for the config.
    Create {
        /// Who holds it (shown in logs): letters, digits, '.', '_', '-', '@'
        #[arg(long)]
        name: String,
        /// Comma-separated: pull:public, pull:private, admin (the status page), push (to
        /// upstreams with push = true)
        #[arg(long, value_delimiter = ',', default_value = "pull:public", value_parser = parse_scope)]
        scopes: Vec<config::Scope>,
    },
}

fn parse_scope(s: &str) -> Result<config::Scope, String> {
    config::Scope::parse(s)
}

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Make a private CA and a server certificate covering the host name and alias hosts.
    SelfSigned {
        #[command(flatten)]
        config: ConfigArg,
        /// The edge's host name [default: server.hostname from the config]
        #[arg(long)]
        hostname: Option<String>,
        /// Output directory for ca.pem, cert.pem and key.pem
        #[arg(long, default_value = "/etc/sparkcr-edge/tls")]
        out: PathBuf,
        /// Extra DNS names or IP addresses (repeatable)
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Replace the server certificate and key, issued from the existing CA (clients
        /// that trust ca.pem need no change)
        #[arg(long)]
        force: bool,
        /// Make a new CA as well (every client must then trust the new ca.pem)
        #[arg(long)]
        new_ca: bool,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Blobs, manifests, tags, chunks, bytes stored and the budget.
    Stats(ConfigArg),
    /// Re-hash every chunk and blob; report and drop corrupt blobs.
    Verify(ConfigArg),
    /// Remove cached content.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        /// Only content not accessed for this long (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Only this repository: `<upstream>/<repo>` (e.g. docker.io/library/nginx) or `<repo>`
        /// (any upstream; a one-word name also matches Docker Hub's library/<name>).
        #[arg(long, value_name = "REPO")]
        repo: Option<PurgeFilter>,
        /// Everything (required when neither --older-than nor --repo is given).
        #[arg(long, conflicts_with_all = ["older_than", "repo"])]
        all: bool,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::HumanDuration::parse(s).map(|d| d.get())
}

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The audit file to read [default: the config's audit.path]
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Repository: `repo`, `upstream/repo`, or a Docker Hub short name such as `busybox`
    #[arg(long, value_name = "NAME")]
    pub repo: Option<String>,
    /// Tag, as the client asked for it
    #[arg(long)]
    pub tag: Option<String>,
    /// Digest, or a prefix of one (`sha256:ab12`, or the hex alone)
    #[arg(long)]
    pub digest: Option<String>,
    /// Client address or network (`10.0.0.5`, `10.0.0.0/24`)
    #[arg(long, value_name = "ADDR", value_parser = parse_client)]
    pub client: Option<ipnet::IpNet>,
    /// Upstream name (`docker.io`, `ghcr.io`, ...)
    #[arg(long)]
    pub upstream: Option<String>,
    /// From this time: RFC 3339 (`2026-12-07T09:00:00Z`) or a time ago (`2h`, `7d`)
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub since: Option<std::time::SystemTime>,
    /// Up to this time: RFC 3339 or a time ago
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    pub until: Option<std::time::SystemTime>,
    /// Only the newest N records
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The records as JSON lines (as they are in the file)
    #[arg(long)]
    pub json: bool,
}

/// A client address (one host) or network.
fn parse_client(s: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    s.parse()
        .map_err(|_| format!("expected an IP address or a network such as 10.0.0.0/24, got {s:?}"))
}

/// A point in time: RFC 3339, or a duration before now.
fn parse_when(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        format!("expected a time such as 2026-12-07T09:00:00Z or a time ago such as 2h or 7d, got {s:?}")
    })?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("{s} ago is before 1970"))
}
