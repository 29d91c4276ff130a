//! Warming an edge before it goes into an air-gapped network: `prefetch` through a running
//! edge from a real registry:2, then pulls by tag with the upstream gone; `export` from one
//! edge and `import` into a fresh one, pulled with the upstream down.

mod common;
use common::images::*;
use common::registry2::*;
use common::*;

const UP: &str = "airgap.test";

fn config(reg: &Registry2, data: &std::path::Path) -> String {
    format!(
        "builtin_upstreams = false\n[server]\nlisten = [\"127.0.0.1:0\"]\n[storage]\npath = \"{}\"\n[cache]\ntag_ttl = \"0\"\n\
         [[upstream]]\nname = \"{UP}\"\nurl = \"{}\"\nconnect_timeout = \"1s\"\n",
        data.display(),
        reg.url()
    )
}

fn skopeo_pull(edge: &Edge, image: &str, dest: &std::path::Path) -> String {
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", "--retry-times", "0"])
        .arg(format!("docker://{}/{UP}/{image}", edge.http[0]))
        .arg(format!("dir:{}", dest.display()))
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    sha256_digest(&std::fs::read(dest.join("manifest.json")).expect("manifest"))
}

async fn seed(reg: &Registry2) -> Vec<(String, String)> {
    let oci = push_image(
        reg,
        "team/app",
        Some("oci"),
        Format::Oci,
        61,
        "amd64",
        &[40_000, 900],
    )
    .await;
    let docker = push_image(
        reg,
        "team/tool",
        Some("1.0"),
        Format::Docker,
        62,
        "amd64",
        &[70_000],
    )
    .await;
    let (_, children) = push_multi_platform(reg, "team/multi", "v2", Format::Oci, 63).await;
    // skopeo pulls the amd64 child of the index.
    vec![
        ("team/app:oci".into(), oci.manifest_digest),
        ("team/tool:1.0".into(), docker.manifest_digest),
        ("team/multi:v2".into(), children[0].manifest_digest.clone()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_then_pull_with_the_upstream_gone() {
    let mut reg = Registry2::start();
    let images = seed(&reg).await;
    let data = tempfile::tempdir().expect("data");
    let edge = Edge::start(&config(&reg, data.path()));
    let list = data.path().join("images.txt");
    std::fs::write(
        &list,
        format!("# images for the site\n{UP}/team/app:oci\n{UP}/team/tool:1.0\n\nthis is not a reference\n{UP}/team/multi:v2   # index\n"),
    )
    .expect("list");
    let edge_url = format!("http://{}", edge.http[0]);
    let (code, out, err) = run_cli(
        &[
            "prefetch",
            "--edge",
            &edge_url,
            "--file",
            list.to_str().expect("p"),
            "--concurrency",
            "3",
        ],
        &[],
    );
    assert_eq!(code, 1, "one broken line fails the run: {out}{err}");
    assert!(
        out.contains(&format!("{}:5", list.display())) && out.contains("FAILED"),
        "names the line: {out}"
    );
    assert!(out.contains("3 of 4 images ready"), "{out}");
    assert!(err.contains("1 image(s) failed"), "{err}");

    // A re-run fetches nothing new: everything is already cached.
    let (code, out, _) = run_cli(
        &[
            "prefetch",
            "--edge",
            &edge_url,
            &format!("{UP}/team/app:oci"),
            &format!("{UP}/team/tool:1.0"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 B fetched"), "{out}");

    reg.stop();
    let dest = tempfile::tempdir().expect("dest");
    for (i, (image, digest)) in images.iter().enumerate() {
        let got = skopeo_pull(&edge, image, &dest.path().join(format!("p{i}")));
        assert_eq!(&got, digest, "{image} by tag, upstream down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_into_a_fresh_edge() {
    let mut reg = Registry2::start();
    let images = seed(&reg).await;
    let data1 = tempfile::tempdir().expect("data1");
    let edge1 = Edge::start(&config(&reg, data1.path()));
    let bundle = data1.path().join("bundle.tar");
    let refs: Vec<String> = images.iter().map(|(i, _)| format!("{UP}/{i}")).collect();
    let mut args = vec![
        "export".to_string(),
        "--edge".into(),
        format!("http://{}", edge1.http[0]),
        "--out".into(),
        bundle.display().to_string(),
    ];
    args.extend(refs.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The name the export once used for its temp file, planted as a symlink to a file
    // the export must not touch.
    let victim = data1.path().join("victim");
    std::fs::write(&victim, b"keep me").expect("victim");
    std::os::unix::fs::symlink(&victim, data1.path().join("bundle.tar.partial")).expect("symlink");
    let (code, out, err) = run_cli(&args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(bundle.exists());
    assert_eq!(std::fs::read(&victim).expect("victim"), b"keep me");
    let leftovers: Vec<_> = std::fs::read_dir(data1.path())
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bundle.tar."))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    drop(edge1);
    reg.stop();

    // A fresh edge's store, filled from the bundle while it is stopped.
    let data2 = tempfile::tempdir().expect("data2");
    let cfg_dir = tempfile::tempdir().expect("cfg");
    let cfg = cfg_dir.path().join("config.toml");
    std::fs::write(&cfg, config(&reg, data2.path())).expect("config");
    let (code, out, err) = run_cli(
        &[
            "import",
            "--config",
            cfg.to_str().expect("p"),
            bundle.to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tags                 3"), "{out}");
    let edge2 = Edge::start(&config(&reg, data2.path()));
    let dest = tempfile::tempdir().expect("dest");
    for (i, (image, digest)) in images.iter().enumerate() {
        let got = skopeo_pull(&edge2, image, &dest.path().join(format!("i{i}")));
        assert_eq!(&got, digest, "{image} from the imported bundle");
    }
    drop(edge2);
    // A corrupted bundle is refused entry by entry, and says so.
    let mut bytes = std::fs::read(&bundle).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = data1.path().join("bad.tar");
    std::fs::write(&bad, bytes).expect("write");
    let data3 = tempfile::tempdir().expect("data3");
    std::fs::write(&cfg, config(&reg, data3.path())).expect("config");
    let (code, out, _) = run_cli(
        &[
            "import",
            "--config",
            cfg.to_str().expect("p"),
            bad.to_str().expect("p"),
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
}
