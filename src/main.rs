//! The `sparkcr-edge` command: parses the command line, loads the config, and runs the
//! daemon or one of the maintenance commands. Exit codes: 0 ok, 2 usage or config error,
//! 1 runtime failure.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sparkcr_edge::access;
use sparkcr_edge::bundle;
use sparkcr_edge::config::{self, Config};
use sparkcr_edge::daemon::{self, DaemonError};
use sparkcr_edge::logging;
use sparkcr_edge::metrics::Metrics;
use sparkcr_edge::prefetch::{self, edge_client::PlatformChoice};
use sparkcr_edge::server;
use sparkcr_edge::setup::store_owner;
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

/// `client-config` arguments.
#[derive(clap::Args)]
struct ClientConfigArgs {
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
    /// docker: an edge token's secret; adds the ~/.docker/config.json `auths` entries
    /// that make Docker send it (to the mirror and to the edge's own host)
    #[arg(
        long,
        env = "SPARKCR_EDGE_TOKEN",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    token: Option<String>,
    /// docker: the user name sent with --token (any name works; it shows in the edge's logs)
    #[arg(long, default_value = "sparkcr-edge", requires = "token")]
    token_user: String,
    /// Prefix for --write paths (for testing and staging).
    #[arg(long, hide = true, default_value = "/")]
    root: PathBuf,
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
    /// Extra CA certificate(s), PEM, for an HTTPS edge (besides the system's trust store),
    /// e.g. /etc/sparkcr-edge/tls/ca.pem
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
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
        /// Only this repository: `<upstream>/<repo>` (e.g. docker.io/library/nginx) or `<repo>`
        /// (any upstream; a one-word name also matches Docker Hub's library/<name>).
        #[arg(long, value_name = "REPO")]
        repo: Option<String>,
        /// Everything (required when neither --older-than nor --repo is given).
        #[arg(long, conflicts_with_all = ["older_than", "repo"])]
        all: bool,
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
        Command::CheckConfig { config, quiet } => check_config(&config, quiet),
        Command::Cache { command } => cache_command(command),
        Command::Tls { command } => tls_command(command),
        Command::Prefetch {
            images,
            concurrency,
        } => prefetch_command(&images, concurrency),
        Command::Export { images, out } => export_command(&images, &out),
        Command::Import { config, bundle } => import_command(&config, &bundle),
        Command::Token { command } => token_command(command),
        Command::ClientConfig(args) => client_config_command(&args),
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
            eprintln!("{}sparkcr-edge: {msg}", error_prefix());
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("{}sparkcr-edge: {e:#}", error_prefix());
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

/// `<3>` (error priority) when stderr is the journal, so `journalctl -p err` shows why the
/// command failed.
fn error_prefix() -> &'static str {
    if logging::stderr_is_journal() {
        "<3>"
    } else {
        ""
    }
}

fn load_config(a: &ConfigArg) -> Result<config::LoadedConfig, Failure> {
    config::load(a.config.as_deref()).map_err(|e| Failure::Config(e.to_string()))
}

fn check_config(a: &ConfigArg, quiet: bool) -> Result<(), Failure> {
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
    if !quiet {
        print!("{}", c.to_redacted_toml());
        eprintln!("config OK ({})", loaded.origin);
    }
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
        ca: sel.ca.clone(),
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
        n => Err(Failure::Runtime(anyhow::anyhow!(
            "{n} image(s) failed; the bundle holds the others"
        ))),
    }
}

fn import_command(a: &ConfigArg, bundle_path: &std::path::Path) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let _log = init_logging(&loaded.config);
    store_owner::check(&loaded.config.storage.path, "import").map_err(Failure::Config)?;
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
        new_ca,
    } = cmd;
    // The certificate this makes may be the one the config names: do not require it yet.
    let loaded = config::load_checked(config.config.as_deref(), config::FileChecks::AllButTlsPair)
        .map_err(|e| Failure::Config(e.to_string()))?;
    let c = &loaded.config;
    let host = hostname.unwrap_or_else(|| c.server.hostname.clone());
    let aliases: Vec<String> = c.upstream.iter().flat_map(|u| u.aliases.clone()).collect();
    let all = self_signed::names_for(&host, &aliases, &names);
    let replace = match (force, new_ca) {
        (_, true) => self_signed::Replace::Everything,
        (true, false) => self_signed::Replace::ServerCertificate,
        (false, false) => self_signed::Replace::Nothing,
    };
    let made = self_signed::generate(&out, &all, replace).map_err(|e| match e {
        self_signed::SelfSignedError::Exists(_)
        | self_signed::SelfSignedError::BadName(_)
        | self_signed::SelfSignedError::NoCaKey(_)
        | self_signed::SelfSignedError::BadCa(..) => Failure::Config(e.to_string()),
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
    if !made.new_ca {
        println!(
            "issued from the existing CA {}: clients that trust it need no change; \
             `systemctl reload sparkcr-edge` makes the daemon use the new certificate",
            made.ca.display()
        );
        return Ok(());
    }
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

fn client_config_command(args: &ClientConfigArgs) -> Result<(), Failure> {
    let client = args.client;
    let edge = args.edge.as_deref();
    let token = args.token.as_deref().map(|t| (args.token_user.as_str(), t));
    let (config, upstreams, mode, write, root) = (
        &args.config,
        &args.upstreams,
        args.mode,
        args.write,
        &args.root,
    );
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
    let mut setup = client_config::generate(client, &edge, &ups, mode, root)
        .map_err(|e| Failure::Config(e.to_string()))?;
    if let Some((user, secret)) = token {
        if client != client_config::Client::Docker {
            return Err(Failure::Config(
                "--token is for `client-config docker`; containerd, Podman and CRI-O take \
                 credentials with `ctr --user`, `podman login` and auth.json"
                    .into(),
            ));
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        setup
            .files
            .push(client_config::docker_auth(&edge, user, secret, root, &home));
    }
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
        StoreError::Locked { .. } | StoreError::IndexSchema { .. } => {
            Failure::Runtime(anyhow::anyhow!("{e}"))
        }
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
    let loaded = load_config(a)?;
    let _log = init_logging(&loaded.config);
    store_owner::check(&loaded.config.storage.path, action).map_err(Failure::Config)?;
    let store = open_store(&loaded.config, Arc::new(Metrics::new()))?;
    match cmd {
        CacheCommand::Stats(_) => print!("{}", store.stats().context("cannot read store stats")?),
        CacheCommand::Verify(_) => {
            let report = store.verify().context("verify failed")?;
            print!("{report}");
            if !report.is_clean() {
                return Err(Failure::Runtime(anyhow::anyhow!(
                    "verify found corrupt content (listed above); what was dropped is fetched \
                     again on the next pull"
                )));
            }
        }
        CacheCommand::Purge {
            older_than, repo, ..
        } => {
            let filters = match &repo {
                Some(r) => purge_filters(r),
                None => vec![],
            };
            let report = if filters.is_empty() {
                store.purge(older_than, None).context("purge failed")?
            } else {
                let mut total = sparkcr_edge::store::PurgeReport::default();
                for f in &filters {
                    let r = store.purge(older_than, Some(f)).context("purge failed")?;
                    total.blobs += r.blobs;
                    total.manifests += r.manifests;
                    total.tags += r.tags;
                    total.tag_lists += r.tag_lists;
                    total.bytes += r.bytes;
                    total.detached += r.detached;
                    total.skipped_in_use += r.skipped_in_use;
                }
                total
            };
            if !filters.is_empty() {
                println!("  matching {}", filters.join(" or "));
            }
            print!("{report}");
        }
    }
    tracing::debug!(action, "done");
    Ok(())
}

/// The store's names for a `--repo` filter, normalised the way routing names them: Docker
/// Hub's one-word names live under `library/`, its aliases are `docker.io`.
fn purge_filters(repo: &str) -> Vec<String> {
    let repo = repo.trim().trim_matches('/');
    let (first, rest) = match repo.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (repo, None),
    };
    let is_host = first.contains('.') || first.contains(':') || first == "localhost";
    match rest {
        Some(r) if is_host => {
            let host = match first {
                "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                    "docker.io"
                }
                h => h,
            };
            if host == "docker.io" && !r.contains('/') {
                vec![format!("docker.io/library/{r}")]
            } else {
                vec![format!("{host}/{r}")]
            }
        }
        // `library/nginx`, `org/img`: that repository under any upstream.
        Some(_) => vec![repo.to_string()],
        // `nginx`: a one-word repository anywhere, and Docker Hub's library/nginx.
        None => vec![repo.to_string(), format!("docker.io/library/{repo}")],
    }
}

fn init_logging(c: &Config) -> logging::LogGuard {
    logging::init(&c.log)
}

fn serve(a: &ConfigArg) -> Result<(), Failure> {
    let loaded = load_config(a)?;
    let c = loaded.config;
    let _log = init_logging(&c);
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
            // A sandbox that keeps the store read-only is a setup mistake, like a config
            // error: exit 2, which the unit does not restart.
            other => match read_only_hint(&other, &c.storage.path) {
                Some(hint) => Failure::Config(format!("{hint} ({other})")),
                None => Failure::Runtime(other.into()),
            },
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

/// When the store failed on a read-only file system under systemd, the unit's sandbox
/// (`ProtectSystem=strict`) is the likely cause: say so and how to fix it.
fn read_only_hint(e: &(dyn std::error::Error + 'static), path: &std::path::Path) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut read_only = false;
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            read_only |= io.raw_os_error() == Some(libc::EROFS);
        }
        cur = err.source();
    }
    if !read_only {
        return None;
    }
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let why = if under_systemd {
        "the systemd unit's sandbox (ProtectSystem=strict) lets the daemon write only its \
         state directory /var/lib/sparkcr-edge"
    } else {
        "the file system is mounted read-only"
    };
    Some(format!(
        "storage.path {} is on a read-only file system: {why}; to keep the cache there, add a \
         drop-in with `systemctl edit sparkcr-edge` containing \"[Service]\" and \
         \"ReadWritePaths={}\", then `systemctl restart sparkcr-edge`",
        path.display(),
        path.display()
    ))
}
