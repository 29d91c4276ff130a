//! Helpers that set up the LAN around the edge: client configuration snippets for Docker,
//! containerd, Podman and CRI-O, and a self-signed certificate for sites without a CA.
//!
//! Owns: generating text and files for an admin. Reads the config; must not touch the
//! store, the network or the running daemon.

pub mod client_config;
pub mod self_signed;
