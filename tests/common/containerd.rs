//! A private containerd (Debian's package: own root, state and socket under a temp dir,
//! CRI disabled) and `ctr` against it. Needs root; `start_containerd` returns `None` (and
//! says SKIPPED) without it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    child: Child,
    pub sock: String,
    _dir: tempfile::TempDir,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_containerd() -> Option<Containerd> {
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/bin/containerd").exists() {
        eprintln!("SKIPPED: containerd needs root and Debian's containerd package");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let sock = format!("{d}/containerd.sock");
    let config = format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{sock}\"\n[debug]\n  level = \"warn\"\n"
    );
    std::fs::write(dir.path().join("config.toml"), config).expect("config");
    let child = Command::new("containerd")
        .arg("--config")
        .arg(dir.path().join("config.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start containerd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Containerd {
        child,
        sock,
        _dir: dir,
    })
}

pub fn ctr(c: &Containerd, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("ctr");
    cmd.arg("-a").arg(&c.sock).args(args);
    super::outcome(cmd, "ctr")
}

/// `ctr -n <ns> images pull --hosts-dir <hosts> --snapshotter native <reference>`.
pub fn ctr_pull(c: &Containerd, ns: &str, hosts: &Path, reference: &str) -> (bool, String) {
    let hosts = hosts.to_str().expect("hosts dir path is UTF-8");
    ctr(
        c,
        &[
            "-n",
            ns,
            "images",
            "pull",
            "--hosts-dir",
            hosts,
            "--snapshotter",
            "native",
            reference,
        ],
    )
}
