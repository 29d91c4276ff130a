//! Docker's auth handshake with a real dockerd (Debian's `docker.io`), run in a network
//! namespace of this test's own that has only `lo`: dockerd cannot fall back to Docker Hub
//! there, so a pull that does not go through the edge fails instead of hiding the failure.
//!
//! The edge has `[[auth.token]]` entries and answers 401 with a Bearer challenge only (as
//! Docker Hub does). Checked: an anonymous `docker pull` as a `registry-mirrors` entry over
//! HTTPS (the edge's CA in `certs.d/<host>:<port>/`) and in the path-prefix form
//! `EDGE/<upstream>/<repo>`; `docker login` with a token secret; with anonymous access off,
//! a pull without login fails saying to log in, and works after `docker login`; `docker push`
//! with a `push` token to a private upstream with `push = true` (the bearer flow for
//! `pull,push`, session uploads), byte-exact on registry:2 and written through to the edge.

mod common;
use common::images::*;
use common::registry2::*;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn edge_config(reg: &Registry2, cert: &Path, key: &Path, anonymous: bool, token: &str) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n\
         [storage]\npath = \"{{dir}}/data\"\nchunk_size = \"1MiB\"\n[audit]\npath = \"{{dir}}/audit.jsonl\"\n[auth]\nanonymous = {anonymous}\n{token}\n\
         [[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n\
         [[upstream]]\nname = \"registry.test\"\nurl = \"{url}\"\n\
         [[upstream]]\nname = \"lan.test\"\nurl = \"{url}\"\nprivate = true\npush = true\n",
        cert = cert.display(),
        key = key.display(),
        url = reg.url()
    )
}

/// dockerd in the current (test-owned) network namespace and a private mount namespace in
/// which `certs` is `/etc/docker/certs.d`. Killed on drop.
struct Dockerd {
    child: Child,
    sock: String,
    config: tempfile::TempDir,
    _root: tempfile::TempDir,
}

impl Dockerd {
    fn start(certs: &Path, mirror: &str) -> Dockerd {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path().display().to_string();
        let script = format!(
            "mkdir -p /etc/docker/certs.d && mount --bind {certs} /etc/docker/certs.d && \
             exec dockerd --data-root {r}/data --exec-root {r}/exec --pidfile {r}/pid -H unix://{r}/sock \
             --iptables=false --ip6tables=false --bridge=none --storage-driver=vfs --registry-mirror {mirror}",
            certs = certs.display()
        );
        let log = std::fs::File::create(root.path().join("dockerd.log")).expect("log");
        let child = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run dockerd (Debian package docker.io) under unshare");
        let d = Dockerd {
            child,
            sock: format!("unix://{r}/sock"),
            config: tempfile::tempdir().expect("docker config dir"),
            _root: root,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.docker(&["info"], None).0 != 0 {
            assert!(
                Instant::now() < deadline,
                "dockerd did not come up: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._root.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon; (exit code, stdout + stderr).
    fn docker(&self, args: &[&str], stdin: Option<&str>) -> (i32, String) {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(&self.sock)
            .args(args)
            .env("DOCKER_CONFIG", self.config.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let Ok(mut child) = cmd.spawn() else {
            return (-1, "docker CLI not found".into());
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write as _;
            let _ = pipe.write_all(text.as_bytes());
        }
        match child.wait_with_output() {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => (-1, e.to_string()),
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd stop its containerd; then make sure.
        // SAFETY: kill(2) on the pid of a child this struct spawned.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Moves this test's thread (and every thread and process it starts from now on) into a
/// new network namespace, with only `lo`, up.
fn enter_private_netns() {
    // SAFETY: unshare(2) affects only the calling thread's namespaces.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET) needs root: {}",
        std::io::Error::last_os_error()
    );
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip (iproute2)");
    assert!(up.success(), "ip link set lo up");
    let links = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(
        links.lines().count(),
        1,
        "only lo in the namespace: {links}"
    );
}

#[test]
fn docker_pulls_anonymously_and_logs_in_with_bearer_only_challenges() {
    // Like tests/containerd.rs: namespaces and dockerd need root (CI runs as root, and
    // scripts/test installs docker.io).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/usr/sbin/dockerd").exists() {
        eprintln!("SKIPPED: dockerd in a network namespace needs root and Debian's docker.io");
        return;
    }
    enter_private_netns();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let reg = Registry2::start();
        let hub = push_image(
            &reg,
            "library/busybox",
            Some("v1"),
            Format::Docker,
            31,
            "amd64",
            &[20_000],
        )
        .await;
        let lan = push_image(
            &reg,
            "team/app",
            Some("v1"),
            Format::Docker,
            32,
            "amd64",
            &[30_000],
        )
        .await;
        let ca = TestCa::new();
        let tls = tempfile::tempdir().expect("tls dir");
        let (cert, key) = ca.write_leaf(tls.path(), &["127.0.0.1", "localhost"]);
        let (secret, token) = create_token("docker", "pull:public");
        let (push_secret, push_token) = create_token("ci", "push,pull:private");
        let tokens = format!("{token}\n{push_token}");
        let open = Edge::start(&edge_config(&reg, &cert, &key, true, &tokens));
        let closed = Edge::start(&edge_config(&reg, &cert, &key, false, &tokens));
        let open_addr = format!("127.0.0.1:{}", open.https[0].port());
        let closed_addr = format!("127.0.0.1:{}", closed.https[0].port());

        // The edge's CA where Docker looks for it: certs.d/<host>:<port>/ca.crt.
        let certs = tempfile::tempdir().expect("certs.d");
        for a in [&open_addr, &closed_addr] {
            std::fs::create_dir_all(certs.path().join(a)).expect("mkdir");
            std::fs::write(certs.path().join(a).join("ca.crt"), ca.pem()).expect("ca");
        }
        let dockerd = Dockerd::start(certs.path(), &format!("https://{open_addr}"));

        // registry-mirrors, anonymous: only the edge can answer in this namespace.
        let (code, out) = dockerd.docker(&["pull", "busybox:v1"], None);
        assert_eq!(
            code,
            0,
            "anonymous pull through the mirror: {out}\n{}",
            open.log_text()
        );
        assert!(out.contains(&hub.manifest_digest), "{out}");
        assert!(
            reg.count_requests("GET", &hub.blobs[1].0) >= 1,
            "the layer came from registry:2 through the edge"
        );
        // The audit trail names the tag Docker asked for and the digest it resolved to.
        let audit = open.dir.path().join("audit.jsonl");
        let source = ["--file", audit.to_str().expect("path")];
        let by_tag = wait_audit(&source, &["--repo", "busybox", "--tag", "v1"], 1);
        assert!(
            by_tag
                .iter()
                .any(|r| r["digest"] == hub.manifest_digest.as_str()
                    && r["kind"] == "manifest"
                    && r["user_agent"]
                        .as_str()
                        .is_some_and(|ua| ua.contains("docker/"))),
            "a record of docker's manifest request by tag: {by_tag:?}"
        );
        let layer = wait_audit(&source, &["--digest", &hub.blobs[1].0], 1);
        assert!(
            layer
                .iter()
                .any(|r| r["kind"] == "blob" && r["status"] == 200 && r["result"] == "complete"),
            "a record of the layer's GET: {layer:?}"
        );

        // Path-prefix form: EDGE/<upstream>/<repo>.
        let image = format!("{open_addr}/registry.test/team/app:v1");
        let (code, out) = dockerd.docker(&["pull", &image], None);
        assert_eq!(code, 0, "anonymous pull, path-prefix form: {out}");
        assert!(out.contains(&lan.manifest_digest), "{out}");

        // docker login with a token secret (Docker fetches a token from the edge's realm).
        let (code, out) = dockerd.docker(
            &["login", &open_addr, "-u", "ci", "--password-stdin"],
            Some(&secret),
        );
        assert_eq!(code, 0, "docker login: {out}");
        assert!(out.contains("Login Succeeded"), "{out}");

        // Anonymous access off: the pull fails and says to log in; after login it works.
        let closed_image = format!("{closed_addr}/docker.io/library/busybox:v1");
        let (code, out) = dockerd.docker(&["pull", &closed_image], None);
        assert_ne!(code, 0, "no anonymous pulls: {out}");
        assert!(out.contains("log in"), "the error says to log in: {out}");
        let (code, out) = dockerd.docker(
            &["login", &closed_addr, "-u", "ci", "--password-stdin"],
            Some(&secret),
        );
        assert_eq!(code, 0, "docker login: {out}");
        let (code, out) = dockerd.docker(&["pull", &closed_image], None);
        assert_eq!(code, 0, "pull after login: {out}\n{}", closed.log_text());

        // docker push through the edge to the private upstream `lan.test` (`push = true`),
        // logged in with a `push` token: Docker's bearer flow asks the edge's token endpoint
        // for `pull,push`, HEADs the blobs, tries a mount from the repository it pulled
        // from (another upstream: a normal upload), PATCHes and PUTs.
        let pushed = format!("{open_addr}/lan.test/team/pushed:v1");
        let (code, out) = dockerd.docker(&["tag", &image, &pushed], None);
        assert_eq!(code, 0, "docker tag: {out}");
        let (code, out) = dockerd.docker(
            &["login", &open_addr, "-u", "ci", "--password-stdin"],
            Some(&push_secret),
        );
        assert_eq!(code, 0, "docker login with the push token: {out}");
        let (code, out) = dockerd.docker(&["push", &pushed], None);
        assert_eq!(code, 0, "docker push: {out}\n{}", open.log_text());
        let digest = out
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("docker push prints the manifest digest: {out}"))
            .to_string();
        // On the upstream, byte-exact: the manifest docker pushed, and every layer.
        let http = reqwest::Client::new();
        let r = http
            .get(format!("{}/v2/team/pushed/manifests/v1", reg.url()))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .expect("GET the pushed manifest from registry:2");
        assert_eq!(r.status(), 200);
        let manifest = r.bytes().await.expect("manifest body");
        assert_eq!(
            sha256_digest(&manifest),
            digest,
            "the upstream has what docker pushed"
        );
        let parsed: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest JSON");
        let mut blobs = vec![parsed["config"]["digest"]
            .as_str()
            .expect("config digest")
            .to_string()];
        for layer in parsed["layers"].as_array().expect("layers") {
            blobs.push(layer["digest"].as_str().expect("layer digest").to_string());
        }
        // Docker pushes the layers it holds (recompressed, so digests of their own).
        for blob in &blobs {
            let r = http
                .get(format!("{}/v2/team/pushed/blobs/{blob}", reg.url()))
                .send()
                .await
                .expect("GET a pushed blob from registry:2");
            assert_eq!(r.status(), 200, "{blob} is on the upstream");
            let bytes = r.bytes().await.expect("blob body");
            assert_eq!(
                &sha256_digest(&bytes),
                blob,
                "{blob} byte-exact on the upstream"
            );
        }
        // Written through: the blobs are hits on the edge, without asking the upstream.
        // registry:2's access log reaches us through a reader thread: wait for the lines
        // of the GETs above before counting.
        let before = reg
            .wait_requests("GET", "/v2/team/pushed/blobs/", blobs.len())
            .await;
        assert_eq!(before, blobs.len(), "one direct GET per blob so far");
        for blob in &blobs {
            let r = http
                .get(format!(
                    "http://{}/v2/lan.test/team/pushed/blobs/{blob}",
                    open.http[0]
                ))
                .basic_auth("ci", Some(&push_secret))
                .send()
                .await
                .expect("GET through the edge");
            assert_eq!(r.status(), 200, "{blob} through the edge");
            assert_eq!(r.headers()["x-cache"], "HIT", "{blob} was written through");
            let bytes = r.bytes().await.expect("blob body");
            assert_eq!(&sha256_digest(&bytes), blob);
        }
        // (a GET the edge made would be logged by now, or within this pause)
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(reg.count_requests("GET", "/v2/team/pushed/blobs/"), before);
        drop(dockerd);
    });
}
