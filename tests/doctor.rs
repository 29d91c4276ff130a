//! `sparkcr-edge doctor` on fixture trees (`--root`) of a client machine, against a real
//! edge that wants a login: for Docker, containerd and Podman/CRI-O each a good setup and
//! the usual slips (file in the wrong place, daemon not restarted, wrong host, no login),
//! each with the verdict and exit code expected. Daemon start times come from a fixture
//! `/proc` (systemd is only asked when the root is `/`).

mod common;

use base64::Engine as _;
use common::edge_config::{EdgeConfig, Upstream};
use common::fake_upstream::FakeUpstream;
use common::{run_cli, Edge};
use sha2::{Digest as _, Sha256};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "spk_doctor_secret_for_tests_only";

struct Fixture {
    dir: tempfile::TempDir,
    now: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            now: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        };
        // Booted 1000 s ago.
        f.write(
            "proc/stat",
            &format!("cpu 0 0 0 0\nbtime {}\n", f.now - 1000),
        );
        f
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, path: &str, text: &str) {
        let p = self.root().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
    }

    /// `path` last changed `ago` seconds ago.
    fn changed(&self, path: &str, ago: u64) {
        let f = std::fs::File::options()
            .write(true)
            .open(self.root().join(path))
            .expect("open");
        f.set_modified(UNIX_EPOCH + Duration::from_secs(self.now - ago))
            .expect("set mtime");
    }

    /// A process `name` that started `ago` seconds ago.
    fn process(&self, pid: u32, name: &str, ago: u64) {
        // SAFETY: sysconf reads a constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let since_boot = (1000 - ago) * ticks;
        let fields = vec!["0"; 18].join(" ");
        self.write(&format!("proc/{pid}/comm"), &format!("{name}\n"));
        self.write(
            &format!("proc/{pid}/stat"),
            &format!("{pid} ({name}) S {fields} {since_boot} 0 0\n"),
        );
    }

    fn docker_login(&self, key: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{SECRET}"));
        self.write(
            "root/.docker/config.json",
            &format!("{{\"auths\":{{\"{key}\":{{\"auth\":\"{auth}\"}}}}}}"),
        );
    }

    fn containers_login(&self, key: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("x:{SECRET}"));
        self.write(
            "run/containers/0/auth.json",
            &format!("{{\"auths\":{{\"{key}\":{{\"auth\":\"{auth}\"}}}}}}"),
        );
    }

    /// Runs doctor; (exit code, stdout).
    fn doctor(&self, edge: &str, image: Option<&str>) -> (i32, String) {
        let root = self.root().display().to_string();
        let mut args = vec!["doctor", "--edge", edge, "--root", &root];
        if let Some(i) = image {
            args.extend(["--image", i]);
        }
        let (code, out, err) = run_cli(&args, &[]);
        eprintln!("--- doctor {args:?}\n{out}{err}");
        (code, out)
    }
}

fn edge() -> (FakeUpstream, Edge, String) {
    let rt = tokio::runtime::Handle::current();
    let up = rt.block_on(FakeUpstream::start());
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    up.add_manifest("v1", manifest);
    // The manifest's config blob, so real clients can fetch the whole image.
    up.add_blob(b"{}".to_vec());
    let hash = format!("sha256:{}", hex::encode(Sha256::digest(SECRET.as_bytes())));
    let edge = EdgeConfig::new("{dir}/data")
        .anonymous(false)
        .token("ci", &hash, &["pull:public"])
        .upstream(Upstream::new("fault.test", up.url()).default())
        .start();
    let url = format!("http://{}", edge.http[0]);
    (up, edge, url)
}

/// The lines with verdict `verdict` for `subject`.
fn lines<'a>(out: &'a str, verdict: &str, subject: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(verdict) && w.next() == Some(subject)
        })
        .collect()
}

fn docker_good(f: &Fixture, edge: &str, authority: &str) {
    f.write(
        "etc/docker/daemon.json",
        &format!("{{\"registry-mirrors\":[\"{edge}\"],\"insecure-registries\":[\"{authority}\"]}}"),
    );
    f.changed("etc/docker/daemon.json", 100);
    f.process(100, "dockerd", 10);
    f.docker_login(authority);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_setups() {
    let (_up, _edge, url) = tokio::task::block_in_place(edge);
    let authority = url.trim_start_matches("http://").to_string();

    let good = Fixture::new();
    docker_good(&good, &url, &authority);
    let (code, out) = good.doctor(&url, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no problems found"));
    assert_eq!(lines(&out, "ok", "docker").len(), 4, "{out}");
    assert!(
        lines(&out, "ok", "edge")
            .iter()
            .any(|l| l.contains("wants a login")),
        "{out}"
    );
    assert!(
        lines(&out, "skip", "containerd").len() == 1
            && lines(&out, "skip", "podman/crio").len() == 1,
        "{out}"
    );

    // Wrong path: daemon.json in /etc/docker.d (dockerd reads only /etc/docker/daemon.json).
    let wrong_path = Fixture::new();
    docker_good(&wrong_path, &url, &authority);
    std::fs::create_dir_all(wrong_path.root().join("etc/docker.d")).expect("mkdir");
    std::fs::rename(
        wrong_path.root().join("etc/docker/daemon.json"),
        wrong_path.root().join("etc/docker.d/daemon.json"),
    )
    .expect("move");
    wrong_path.write("usr/bin/dockerd", "");
    let (code, out) = wrong_path.doctor(&url, None);
    assert_eq!(code, 1, "{out}");
    let p = lines(&out, "problem", "docker");
    assert!(
        p.len() == 1
            && p[0].contains("daemon.json does not exist")
            && p[0].contains("client-config docker"),
        "{out}"
    );

    // Not restarted: the file changed after dockerd started.
    let stale = Fixture::new();
    docker_good(&stale, &url, &authority);
    stale.changed("etc/docker/daemon.json", 5);
    stale.process(100, "dockerd", 300);
    let (code, out) = stale.doctor(&url, None);
    assert_eq!(code, 1, "{out}");
    let p = lines(&out, "problem", "docker");
    assert!(
        p.len() == 1 && p[0].contains("before") && p[0].contains("systemctl restart docker"),
        "{out}"
    );

    // Wrong host: the mirror is another machine.
    let wrong_host = Fixture::new();
    docker_good(&wrong_host, &url, &authority);
    wrong_host.write(
        "etc/docker/daemon.json",
        &format!("{{\"registry-mirrors\":[\"http://mirror.example:5000\"],\"insecure-registries\":[\"{authority}\"]}}"),
    );
    wrong_host.changed("etc/docker/daemon.json", 100);
    let (code, out) = wrong_host.doctor(&url, None);
    assert_eq!(code, 1, "{out}");
    let p = lines(&out, "problem", "docker");
    assert!(
        p.len() == 1 && p[0].contains("mirror.example:5000, not at"),
        "{out}"
    );

    // Missing login: logged in to the edge's host, but without its port.
    let no_login = Fixture::new();
    docker_good(&no_login, &url, &authority);
    no_login.docker_login("127.0.0.1");
    let (code, out) = no_login.doctor(&url, None);
    assert_eq!(code, 1, "{out}");
    let p = lines(&out, "problem", "docker");
    assert!(
        p.len() == 1
            && p[0].contains("must match exactly")
            && p[0].contains(&format!("docker login {authority}")),
        "{out}"
    );
    std::fs::remove_file(no_login.root().join("root/.docker/config.json")).expect("rm");
    let (code, out) = no_login.doctor(&url, None);
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "docker")
            .iter()
            .any(|l| l.contains("no login for")),
        "{out}"
    );
}

fn containerd_good(f: &Fixture, url: &str) {
    f.write(
        "etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
    );
    f.changed("etc/containerd/config.toml", 100);
    f.write(
        "etc/containerd/certs.d/fault.test/hosts.toml",
        &format!("server = \"https://fault.test\"\n\n[host.\"{url}/v2/fault.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"),
    );
    f.process(200, "containerd", 10);
}

fn podman_good(f: &Fixture, authority: &str) {
    f.write("usr/bin/crio", "");
    f.write(
        "etc/containers/registries.conf.d/50-sparkcr-edge.conf",
        &format!("[[registry]]\nprefix = \"fault.test\"\nlocation = \"fault.test\"\n\n[[registry.mirror]]\nlocation = \"{authority}/fault.test\"\ninsecure = true\n"),
    );
    f.changed("etc/containers/registries.conf.d/50-sparkcr-edge.conf", 100);
    f.process(300, "crio", 10);
    f.containers_login(authority);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_and_podman_setups() {
    let (_up, _edge, url) = tokio::task::block_in_place(edge);
    let authority = url.trim_start_matches("http://").to_string();
    let image = "fault.test/team/app:v1";

    let good = Fixture::new();
    containerd_good(&good, &url);
    podman_good(&good, &authority);
    let (code, out) = good.doctor(&url, Some(image));
    assert_eq!(code, 0, "{out}");
    assert!(
        lines(&out, "ok", "edge")
            .iter()
            .any(|l| l.contains("resolves through the edge to sha256:")),
        "{out}"
    );
    assert!(
        lines(&out, "ok", "containerd")
            .iter()
            .any(|l| l.contains("fault.test goes through")),
        "{out}"
    );
    assert!(
        lines(&out, "ok", "podman/crio")
            .iter()
            .any(|l| l.contains("mirrored at")),
        "{out}"
    );
    // The verdicts are real clients': skopeo (containers/image, as Podman and CRI-O) and,
    // where it can run (root), containerd's ctr pull with exactly these files.
    // `fault.test` itself does not exist, so success means the edge answered.
    let conf = "etc/containers/registries.conf.d/50-sparkcr-edge.conf";
    let skopeo = |f: &Fixture| {
        common::skopeo(&[
            "--registries-conf",
            &f.root().join(conf).display().to_string(),
            "inspect",
            "--raw",
            "--authfile",
            &f.root()
                .join("run/containers/0/auth.json")
                .display()
                .to_string(),
            &format!("docker://{image}"),
        ])
    };
    let ctrd = common::containerd::start_containerd();
    let ctr_fetch = |f: &Fixture| {
        ctrd.as_ref().map(|c| {
            common::containerd::ctr(
                c,
                &[
                    "content",
                    "fetch",
                    "--hosts-dir",
                    &f.root()
                        .join("etc/containerd/certs.d")
                        .display()
                        .to_string(),
                    "--user",
                    &format!("x:{SECRET}"),
                    image,
                ],
            )
        })
    };
    let (ok, text) = skopeo(&good);
    assert!(
        ok && text.contains("schemaVersion"),
        "skopeo, good setup: {text}"
    );
    if let Some((ok, text)) = ctr_fetch(&good) {
        assert!(ok, "ctr, good setup: {text}");
    }

    // Wrong path: containerd's config_path names another directory; Podman's file is not *.conf.
    let wrong_path = Fixture::new();
    containerd_good(&wrong_path, &url);
    podman_good(&wrong_path, &authority);
    wrong_path.write(
        "etc/containerd/config.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/registry.d\"\n",
    );
    std::fs::rename(
        wrong_path
            .root()
            .join("etc/containers/registries.conf.d/50-sparkcr-edge.conf"),
        wrong_path
            .root()
            .join("etc/containers/registries.conf.d/50-sparkcr-edge.toml"),
    )
    .expect("rename");
    let (code, out) = wrong_path.doctor(&url, Some(image));
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "containerd")
            .iter()
            .any(|l| l.contains("config_path points elsewhere")),
        "{out}"
    );
    assert!(
        lines(&out, "problem", "podman/crio")
            .iter()
            .any(|l| l.contains("only *.conf files")),
        "{out}"
    );

    // Not restarted: config.toml and the drop-in changed after containerd and crio started.
    let stale = Fixture::new();
    containerd_good(&stale, &url);
    podman_good(&stale, &authority);
    stale.changed("etc/containerd/config.toml", 5);
    stale.changed("etc/containers/registries.conf.d/50-sparkcr-edge.conf", 5);
    stale.process(200, "containerd", 300);
    stale.process(300, "crio", 300);
    let (code, out) = stale.doctor(&url, Some(image));
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "containerd")
            .iter()
            .any(|l| l.contains("systemctl restart containerd")),
        "{out}"
    );
    assert!(
        lines(&out, "problem", "podman/crio")
            .iter()
            .any(|l| l.contains("systemctl restart crio")),
        "{out}"
    );

    // Wrong host: both point at another machine.
    let wrong_host = Fixture::new();
    containerd_good(&wrong_host, "http://mirror.example:5000");
    podman_good(&wrong_host, "mirror.example:5000");
    wrong_host.containers_login(&authority);
    let (code, out) = wrong_host.doctor(&url, Some(image));
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "containerd")
            .iter()
            .any(|l| l.contains("not to http://127.0.0.1")),
        "{out}"
    );
    assert!(
        lines(&out, "problem", "podman/crio")
            .iter()
            .any(|l| l.contains("point elsewhere")),
        "{out}"
    );
    let (ok, text) = skopeo(&wrong_host);
    assert!(
        !ok,
        "skopeo cannot pull through the wrong host either: {text}"
    );
    if let Some((ok, text)) = ctr_fetch(&wrong_host) {
        assert!(!ok, "nor ctr: {text}");
    }

    // Missing login: the edge refuses the manifest, and says why.
    let no_login = Fixture::new();
    containerd_good(&no_login, &url);
    podman_good(&no_login, &authority);
    std::fs::remove_file(no_login.root().join("run/containers/0/auth.json")).expect("rm");
    let (code, out) = no_login.doctor(&url, Some(image));
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "podman/crio")
            .iter()
            .any(|l| l.contains("no login for") && l.contains("podman login")),
        "{out}"
    );
    assert!(
        lines(&out, "problem", "edge")
            .iter()
            .any(|l| l.contains("refused") && l.contains("no stored login")),
        "{out}"
    );
    no_login.write("run/containers/0/auth.json", "{\"auths\":{}}");
    let (ok, text) = skopeo(&no_login);
    assert!(!ok, "skopeo is refused without the login too: {text}");

    // An image from a registry no config sends to the edge.
    let (code, out) = good.doctor(&url, Some("quay.io/org/tool:1"));
    assert_eq!(code, 1, "{out}");
    assert!(
        lines(&out, "problem", "containerd")
            .iter()
            .any(|l| l.contains("no certs.d/quay.io/hosts.toml")),
        "{out}"
    );
}
