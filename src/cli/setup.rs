//! Setting things up: `token create` (a client token and its config block), `tls
//! self-signed` (a private CA and server certificate) and `client-config` (what Docker,
//! containerd, Podman and CRI-O need to pull through this edge).
//!
//! Must not: make secrets, certificates or client files itself (`sparkcr_edge::access`
//! and `sparkcr_edge::setup` do); this module only chooses and prints.

use super::args::{ClientConfigArgs, TlsCommand, TokenCommand};
use super::{load_config_without_tls_pair, Failure};
use sparkcr_edge::access;
use sparkcr_edge::config;
use sparkcr_edge::setup::{client_config, self_signed};
use std::path::PathBuf;

pub fn token(cmd: TokenCommand) -> Result<(), Failure> {
    let TokenCommand::Create { name, mut scopes } = cmd;
    if !config::auth::is_token_name(&name) {
        return Err(Failure::Config(format!(
            "--name: expected 1 to 64 letters, digits, '.', '_', '-' or '@', got {name:?}"
        )));
    }
    scopes.sort();
    scopes.dedup();
    let new = access::token::new_secret().map_err(|e| Failure::Runtime(e.into()))?;
    let token = config::TokenConfig {
        name,
        hash: new.hash,
        scopes,
    };
    let block = token
        .to_config_block()
        .map_err(|e| Failure::runtime(format!("cannot render the [[auth.token]] block: {e}")))?;
    println!("secret: {}", new.secret);
    println!();
    println!("# The secret is shown only this once; it is the password for `docker login`,");
    println!("# `podman login` or `skopeo --creds any-name:<secret>`. Add this to the config:");
    print!("{block}");
    Ok(())
}

pub fn tls(cmd: TlsCommand) -> Result<(), Failure> {
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
    let made = self_signed::generate(&out, &all, replace).map_err(|e| {
        if e.is_usage_error() {
            Failure::Config(e.to_string())
        } else {
            Failure::Runtime(e.into())
        }
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

pub fn client_config(args: &ClientConfigArgs) -> Result<(), Failure> {
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
    let loaded = load_config_without_tls_pair(config)?;
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
