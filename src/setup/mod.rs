//! Helpers that set up the LAN around the edge: client configuration snippets for Docker,
//! containerd, Podman and CRI-O, a self-signed certificate for sites without a CA, and the
//! check that keeps root-run store commands from leaving files the daemon cannot open.
//!
//! Owns: generating text and files for an admin. Reads the config; must not touch the
//! store's contents, the network or the running daemon.

pub mod client_config;
pub mod self_signed;
pub mod store_owner;
