//! The `sparkcr-edge` command: parses the command line, loads the config, and runs the
//! daemon or one of the maintenance commands. Exit codes: 0 ok, 2 usage or config error,
//! 1 runtime failure.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sparkcr_edge::access;
use sparkcr_edge::bundle;
use sparkcr_edge::config::{self, Config, LogFormat};
use sparkcr_edge::daemon::{self, DaemonError};
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::prefetch::{self, edge_client::PlatformChoice};
use sparkcr_edge::server;
use sparkcr_edge::setup::{client_config, self_signed};
use sparkcr_edge::store::{Store, StoreError, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "sparkcr-edge",
    version,
    about = "Pull-through cache for container registries on a LAN"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file [default: /etc/sparkcr-edge/config.toml if it exists, else the embedded default]
    #[arg(long, short = 'c', value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ConfigArg),
    /// Check the config and print the effective config (secrets redacted).
    CheckConfig(ConfigArg),
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
    ClientConfig {
        #[arg(value_enum)]
        client: client_config::Client,
        #[command(flatten)]
        config: ConfigArg,
        /// How clients reach the edge [default: from the config's hostname and listeners]
        #[arg(long, value_name = "URL")]
        edge: Option<String>,
        /// Upstreams to configure (repeatable) [default: all configured]
        #[arg(long = "upstream", value_name = "NAME")]
        upstreams: Vec<String>,
        #[arg(long, value_enum, default_value = "path")]
        mode: client_config::Mode,
        /// Write the files to their standard paths (existing files are backed up).
        #[arg(long)]
        write: bool,
        /// Prefix for --write paths (for testing and staging).
        #[arg(long, hide = true, default_value = "/")]
        root: PathBuf,
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
enum Generated {
    /// sparkcr-edge.1 and one page per subcommand (sparkcr-edge-serve.1, ...)
    Man,
    /// bash (sparkcr-edge), zsh (_sparkcr-edge) and fish (sparkcr-edge.fish)
    Completions,
}

/// Which images, and how to reach the edge (prefetch and export).
#[derive(clap::Args)]
struct ImageSelection {
    #[command(flatten)]
    config: ConfigArg,
    /// The running edge to go through [default: the config's first listener]
    #[arg(long, value_name = "URL")]
    edge: Option<String>,
    /// A file with one image reference per line (`#` comments allowed)
    #[arg(long, value_name = "LIST")]
    file: Option<PathBuf>,
    /// Platforms of multi-platform images, e.g. linux/amd64,linux/arm64 [default: this machine's]
    #[arg(long, value_name = "OS/ARCH,...", conflicts_with = "all_platforms")]
    platform: Option<String>,
    /// Every platform of multi-platform images
    #[arg(long)]
    all_platforms: bool,
    /// Image references (nginx:1.27, ghcr.io/org/img@sha256:...)
    #[arg(value_name = "REF")]
    refs: Vec<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a new token: prints its secret once, and the [[auth.token]] block for the config.
    Create {
        /// Who holds it (shown in logs): letters, digits, '.', '_', '-', '@'
        #[arg(long)]
        name: String,
        /// Comma-separated: pull:public, pull:private, admin (the status page)
        #[arg(long, value_delimiter = ',', default_value = "pull:public", value_parser = parse_scope)]
        scopes: Vec<config::Scope>,
    },
}

fn parse_scope(s: &str) -> Result<config::Scope, String> {
    config::Scope::parse(s)
}

#[derive(Subcommand)]
enum TlsCommand {
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
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
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
        /// Only this repository: `<upstream>/<repo>` (e.g. docker.io/library/nginx) or `<repo>`.
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::HumanDuration::parse(s).map(|d| d.get())
}

/// A failure and the exit code it maps to.
enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    // First thing: the process-wide TLS crypto provider (ring), for rustls and reqwest.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(&a),
        Command::CheckConfig(a) => check_config(&a),
        Command::Cache { command } => cache_command(command),
        Command::Tls { command } => tls_command(command),
        Command::Prefetch {
            images,
            concurrency,
        } => prefetch_command(&images, concurrency),
        Command::Export { images, out } => export_command(&images, &out),
        Command::Import { config, bundle } => import_command(&config, &bundle),
        Command::Token { command } => token_command(command),
        Command::ClientConfig {
            client,
            config,
            edge,
            upstreams,
            mode,
            write,
            root,
        } => client_config_command(
            client,
            &config,
            edge.as_deref(),
            &upstreams,
            mode,
            write,
            &root,
        ),
        Command::Generate { what, out } => generate_command(what, &out),
        Command::Doctor {
            edge,
            image,
            ca,
            offline,
            root,
        } => doctor_command(&edge, image.as_deref(), ca, offline, root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("sparkcr-edge: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("sparkcr-edge: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn generate_command(what: Generated, out: &std::path::Path) -> Result<(), Failure> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::generate_to(cmd, out)
            .with_context(|| format!("cannot write man pages into {}", out.display()))?,
        Generated::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut Cli::command(), "sparkcr-edge", out)
                    .with_context(|| {
                        format!("cannot write {shell} completions into {}", out.display())
                    })?;
            }
        }
    }
    Ok(())
}

fn doctor_command(
    edge: &str,
    image: Option<&str>,
    ca_files: Vec<PathBuf>,
    offline: bool,
    root: PathBuf,
) -> Result<(), Failure> {
    let opts = sparkcr_edge::doctor::DoctorOptions {
        edge: sparkcr_edge::doctor::EdgeUrl::parse(edge).map_err(Failure::Config)?,
        root,
        image: image
            .map(prefetch::image_ref::ImageRef::parse)
            .transpose()
            .map_err(|e| Failure::Config(e.to_string()))?,
        ca_files,
        offline,
    };
    let checks = small_runtime()?.block_on(sparkcr_edge::doctor::run(&opts));
    for c in &checks {
        println!("{c}");
    }
    if sparkcr_edge::doctor::has_problem(&checks) {
        return Err(Failure::Runtime(anyhow::anyhow!(
            "{} problem(s) found; fix them in the order shown",
            checks
                .iter()
                .filter(|c| c.verdict == sparkcr_edge::doctor::Verdict::Problem)
                .count()
        )));
    }
    println!("no problems found");
    Ok(())
}

fn load_config(a: &ConfigArg) -> Result<config::LoadedConfig, Failure> {
    config::load(a.config.as_deref()).map_err(|e| Failure::Config(e.to_string()))
}

fn check_config(a: &ConfigArg) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = &loaded.config;
    if !c.server.tls_listen.is_empty() {
        server::tls::load_certified_key(&c.server.tls_cert, &c.server.tls_key).map_err(|e| {
            Failure::Config(format!(
                "{}: server.tls_cert/server.tls_key: {e}",
                loaded.origin
            ))
        })?;
    }
    print!("{}", c.to_redacted_toml());
    eprintln!("config OK ({})", loaded.origin);
    Ok(())
}

/// The edge URL from `--edge` or the config's first listener (a wildcard address means
/// this machine: 127.0.0.1).
fn edge_url(sel: &ImageSelection) -> Result<String, Failure> {
    if let Some(e) = &sel.edge {
        return Ok(e.clone());
    }
    let loaded = load_config(&sel.config)?;
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

fn small_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

fn prefetch_command(sel: &ImageSelection, concurrency: usize) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let edge = edge_url(sel)?;
    let list = requested_images(sel)?;
    let opts = prefetch::PrefetchOptions {
        edge,
        platforms: platforms(sel)?,
        concurrency,
        progress: std::io::stderr().is_terminal(),
    };
    let summary = small_runtime()?
        .block_on(prefetch::run(list, &opts))
        .map_err(|e| Failure::Runtime(e.into()))?;
    print!("{summary}");
    match summary.failures() {
        0 => Ok(()),
        n => Err(Failure::Runtime(anyhow::anyhow!(
            "{n} image(s) failed; see the table above"
        ))),
    }
}

fn export_command(sel: &ImageSelection, out: &std::path::Path) -> Result<(), Failure> {
    let edge = edge_url(sel)?;
    let list = requested_images(sel)?;
    let choice = platforms(sel)?;
    let report = small_runtime()?
        .block_on(bundle::export(list, &edge, &choice, out))
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
        n => Err(Failure::Runtime(anyhow::anyhow!(
            "{n} image(s) failed; the bundle holds the others"
        ))),
    }
}

fn import_command(a: &ConfigArg, bundle_path: &std::path::Path) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    init_logging(&loaded.config);
    let store = open_store(&loaded.config, Arc::new(Metrics::new()))?;
    let report = bundle::import(&store, bundle_path).map_err(|e| Failure::Runtime(e.into()))?;
    print!("{report}");
    if report.failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!(
            "{} entries failed verification or could not be stored",
            report.failures.len()
        )))
    }
}

fn token_command(cmd: TokenCommand) -> Result<(), Failure> {
    let TokenCommand::Create { name, mut scopes } = cmd;
    if !config::auth::is_token_name(&name) {
        return Err(Failure::Config(format!(
            "--name: expected 1 to 64 letters, digits, '.', '_', '-' or '@', got {name:?}"
        )));
    }
    scopes.sort();
    scopes.dedup();
    let new = access::token::new_secret().map_err(|e| Failure::Runtime(e.into()))?;
    let block = config::TokenConfig {
        name: name.clone(),
        hash: new.hash,
        scopes,
    };
    let scopes: Vec<String> = block
        .scopes
        .iter()
        .map(|s| format!("{:?}", s.as_str()))
        .collect();
    println!("secret: {}", new.secret);
    println!();
    println!("# The secret is shown only this once; it is the password for `docker login`,");
    println!("# `podman login` or `skopeo --creds any-name:<secret>`. Add this to the config:");
    println!("[[auth.token]]");
    println!("name = {:?}", block.name);
    println!("hash = \"{}\"", block.hash);
    println!("scopes = [{}]", scopes.join(", "));
    Ok(())
}

fn tls_command(cmd: TlsCommand) -> Result<(), Failure> {
    let TlsCommand::SelfSigned {
        config,
        hostname,
        out,
        names,
        force,
    } = cmd;
    // The certificate this makes may be the one the config names: do not require it yet.
    let loaded = config::load_checked(config.config.as_deref(), config::FileChecks::AllButTlsPair)
        .map_err(|e| Failure::Config(e.to_string()))?;
    let c = &loaded.config;
    let host = hostname.unwrap_or_else(|| c.server.hostname.clone());
    let aliases: Vec<String> = c.upstream.iter().flat_map(|u| u.aliases.clone()).collect();
    let all = self_signed::names_for(&host, &aliases, &names);
    let made = self_signed::generate(&out, &all, force).map_err(|e| match e {
        self_signed::SelfSignedError::Exists(_) | self_signed::SelfSignedError::BadName(_) => {
            Failure::Config(e.to_string())
        }
        other => Failure::Runtime(other.into()),
    })?;
    println!(
        "wrote {}, {} and {} for: {}",
        made.ca.display(),
        made.cert.display(),
        made.key.display(),
        made.names.join(", ")
    );
    println!(
        "server config: tls_cert = \"{}\", tls_key = \"{}\"\n",
        made.cert.display(),
        made.key.display()
    );
    let hosts: Vec<String> = std::iter::once(host.clone())
        .chain(aliases.iter().map(|a| format!("{a}.{host}")))
        .collect();
    let tls_port = c.server.tls_listen.first().map(|a| a.port());
    print!(
        "{}",
        self_signed::trust_instructions(&made.ca, &hosts, tls_port)
    );
    Ok(())
}

fn client_config_command(
    client: client_config::Client,
    config: &ConfigArg,
    edge: Option<&str>,
    upstreams: &[String],
    mode: client_config::Mode,
    write: bool,
    root: &std::path::Path,
) -> Result<(), Failure> {
    let loaded = load_config(config)?;
    let c = &loaded.config;
    let edge = match edge {
        Some(url) => {
            client_config::EdgeAddress::parse(url).map_err(|e| Failure::Config(e.to_string()))?
        }
        None => client_config::EdgeAddress::from_config(c),
    };
    let ups =
        client_config::upstreams_for(c, upstreams).map_err(|e| Failure::Config(e.to_string()))?;
    let setup = client_config::generate(client, &edge, &ups, mode, root)
        .map_err(|e| Failure::Config(e.to_string()))?;
    if write {
        for line in client_config::write(&setup).map_err(|e| Failure::Runtime(e.into()))? {
            println!("{line}");
        }
    } else {
        for f in &setup.files {
            println!("# ---- {} ----\n{}", f.path.display(), f.content);
        }
    }
    println!("# ---- then ----\n{}", setup.commands);
    Ok(())
}

fn open_store(c: &Config, metrics: Arc<Metrics>) -> Result<Store, Failure> {
    Store::open(StoreOptions::from_config(c), metrics).map_err(|e| match e {
        StoreError::Locked { .. } => Failure::Runtime(anyhow::anyhow!("{e}")),
        other => Failure::Runtime(anyhow::Error::new(other).context(format!(
            "cannot open the store at {}",
            c.storage.path.display()
        ))),
    })
}

fn cache_command(cmd: CacheCommand) -> Result<(), Failure> {
    let (a, action) = match &cmd {
        CacheCommand::Stats(a) => (a, "stats"),
        CacheCommand::Verify(a) => (a, "verify"),
        CacheCommand::Purge { config, .. } => (config, "purge"),
    };
    let loaded = load_config(a)?;
    init_logging(&loaded.config);
    let store = open_store(&loaded.config, Arc::new(Metrics::new()))?;
    match cmd {
        CacheCommand::Stats(_) => print!("{}", store.stats().context("cannot read store stats")?),
        CacheCommand::Verify(_) => {
            let report = store.verify().context("verify failed")?;
            print!("{report}");
        }
        CacheCommand::Purge {
            older_than, repo, ..
        } => {
            let report = store
                .purge(older_than, repo.as_deref())
                .context("purge failed")?;
            print!("{report}");
        }
    }
    tracing::debug!(action, "done");
    Ok(())
}

fn init_logging(c: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&c.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match c.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}

fn serve(a: &ConfigArg) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = loaded.config;
    init_logging(&c);
    tracing::info!(config = %loaded.origin, version = env!("CARGO_PKG_VERSION"), "starting sparkcr-edge");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sparkcr-edge")
        .build()
        .context("cannot start the async runtime")?;
    let origin = loaded.origin.to_string();
    runtime.block_on(async move {
        let daemon = daemon::start(&c, &origin).await.map_err(|e| match e {
            DaemonError::Config(m) => Failure::Config(m),
            other => Failure::Runtime(other.into()),
        })?;
        for (kind, addr) in daemon.local_addrs() {
            let scheme = match kind {
                server::ListenerKind::Http => "http",
                server::ListenerKind::Https => "https",
            };
            tracing::info!("listening on {scheme}://{addr}");
        }
        let clean = daemon
            .run_until_signalled()
            .await
            .context("cannot install signal handlers")?;
        tracing::info!(clean, "stopped");
        Ok(())
    })
}
