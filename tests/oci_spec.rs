//! The OCI distribution spec v1.1 (`spec.md` of opencontainers/distribution-spec), pull and
//! content-discovery requirements, run against the edge with Debian's registry:2 as the
//! upstream, in three routing forms: the mirror form (`/v2/<name>/...`, the default
//! upstream), the path-prefix form (`/v2/<host>/<name>/...`) and containerd's `?ns=<host>`
//! form. Each test cites the spec section it checks.

mod common;
use common::edge_config::{edge_for, EdgeConfig, Upstream};
use common::fake_upstream::FakeUpstream;
use common::images::*;
use common::registry2::*;
use common::*;
use std::time::Duration;

const LAN: &str = "registry.test";

/// The spec's error-code table ("Error Codes", code-1 to code-14).
const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

fn edge_config(reg: &Registry2, tag_ttl: &str) -> String {
    let upstream = |name: &str| {
        Upstream::new(name, reg.url())
            .connect_timeout("1s")
            .read_timeout("5s")
    };
    EdgeConfig::new("{dir}/data")
        .hostname("edge.test")
        .chunk_size("1MiB")
        .tag_ttl(tag_ttl)
        .upstream(upstream("docker.io").default())
        .upstream(upstream(LAN))
        .to_toml()
}

/// One routing form: how `<name>` is written, and the URL of `/v2/<name>/<rest>`.
struct Form {
    label: &'static str,
    /// `<name>` as the client writes it in the path.
    name: &'static str,
    /// The repository on registry:2.
    base: String,
    query: &'static str,
    /// The upstream the form resolves to (echoed in `OCI-Namespace`).
    upstream: &'static str,
}

impl Form {
    fn url(&self, rest: &str) -> String {
        let (rest, extra) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut url = format!("{}/v2/{}/{rest}", self.base, self.name);
        let params: Vec<&str> = extra
            .into_iter()
            .chain((!self.query.is_empty()).then_some(self.query))
            .collect();
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        url
    }
}

fn forms(edge: &Edge) -> Vec<Form> {
    let base = format!("http://{}", edge.http[0]);
    vec![
        Form {
            label: "mirror form (default upstream, library/ added)",
            name: "busybox",
            base: base.clone(),
            query: "",
            upstream: "docker.io",
        },
        Form {
            label: "/v2/<host>/ form",
            name: "registry.test/team/app",
            base: base.clone(),
            query: "",
            upstream: LAN,
        },
        Form {
            label: "?ns= form",
            name: "team/app",
            base,
            query: "ns=registry.test",
            upstream: LAN,
        },
    ]
}

async fn seed(reg: &Registry2) -> PushedImage {
    let mut image = None;
    for repo in ["library/busybox", "team/app"] {
        image = Some(
            push_image(
                reg,
                repo,
                Some("v1"),
                Format::Oci,
                7,
                "amd64",
                &[3000, 5000],
            )
            .await,
        );
    }
    image.expect("pushed")
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    let body = r.bytes().await.expect("body");
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Checks an OCI error body ("Error Codes"): `{"errors":[{code,message,detail?}]}`, the code
/// from the spec's table, plain-sentence text (no Rust `Debug` output).
fn assert_error_body(body: &[u8], code: &str, what: &str) {
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let e = &v["errors"][0];
    assert_eq!(e["code"], code, "{what}: {v}");
    assert!(SPEC_CODES.contains(&code), "{code} is in the spec's table");
    assert!(e["message"].is_string(), "{what}: message: {v}");
    let text = format!("{} {}", e["message"], e["detail"]);
    for debug_marker in ["Some(", "None", "Error {", "kind:", "\\\\"] {
        assert!(!text.contains(debug_marker), "{what}: Debug text in {text}");
    }
}

/// Sends `request` and checks that it is answered with `status` and an OCI error body with
/// `code`.
async fn expect_error(request: reqwest::RequestBuilder, status: u16, code: &str, what: &str) {
    let r = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.status(), status, "{what}");
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what}: body: {e}"));
    assert_error_body(&body, code, what);
}

/// "Pulling manifests", "Pulling blobs", "Checking if content exists in the registry": GET
/// and HEAD of a manifest by tag and by digest answer 200 with `Docker-Content-Digest`,
/// `Content-Type` as pushed and `Content-Length`; blobs answer 200 with the exact bytes, HEAD
/// with their size; `Range` (RFC 9110 section 14, which the spec says registries SHOULD
/// support) answers 206 with `Content-Range`, and 416 when unsatisfiable. In all three forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_manifests_and_blobs_in_every_form() {
    let reg = Registry2::start();
    let image = seed(&reg).await;
    let edge = Edge::start(&edge_config(&reg, "10m"));
    let c = client();
    for form in forms(&edge) {
        let l = form.label;
        for reference in ["v1", image.manifest_digest.as_str()] {
            let r = c
                .get(form.url(&format!("manifests/{reference}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET manifest");
            assert_eq!(r.status(), 200, "{l}: GET manifests/{reference}");
            assert_eq!(
                r.headers()["docker-content-digest"],
                image.manifest_digest.as_str(),
                "{l}"
            );
            assert_eq!(
                r.headers()["oci-namespace"],
                form.upstream,
                "{l}: OCI-Namespace echoed"
            );
            assert_eq!(r.headers()["content-type"], OCI_MANIFEST, "{l}");
            let body = r.bytes().await.expect("body");
            assert_eq!(
                body.as_ref(),
                image.manifest.as_slice(),
                "{l}: byte-exact manifest"
            );

            let r = c
                .head(form.url(&format!("manifests/{reference}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("HEAD manifest");
            assert_eq!(r.status(), 200, "{l}: HEAD manifests/{reference}");
            assert_eq!(
                r.headers()["docker-content-digest"],
                image.manifest_digest.as_str()
            );
            assert_eq!(
                r.headers()["content-length"],
                image.manifest.len().to_string().as_str(),
                "{l}"
            );
        }
        for (digest, bytes) in &image.blobs {
            let r = c
                .get(form.url(&format!("blobs/{digest}")))
                .send()
                .await
                .expect("GET blob");
            assert_eq!(r.status(), 200, "{l}: GET blob");
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
            let body = r.bytes().await.expect("blob body");
            assert_eq!(sha256_digest(&body), *digest, "{l}: blob bytes");

            let r = c
                .head(form.url(&format!("blobs/{digest}")))
                .send()
                .await
                .expect("HEAD blob");
            assert_eq!(r.status(), 200, "{l}: HEAD blob");
            assert_eq!(
                r.headers()["content-length"],
                bytes.len().to_string().as_str()
            );
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        }
        let (digest, bytes) = &image.blobs[1];
        let r = c
            .get(form.url(&format!("blobs/{digest}")))
            .header("range", "bytes=10-99")
            .send()
            .await
            .expect("Range GET");
        assert_eq!(r.status(), 206, "{l}: Range");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 10-99/{}", bytes.len()).as_str(),
            "{l}"
        );
        assert_eq!(
            r.bytes().await.expect("range body").as_ref(),
            &bytes[10..100],
            "{l}"
        );
        let r = c
            .get(form.url(&format!("blobs/{digest}")))
            .header("range", format!("bytes={}-", bytes.len() + 5))
            .send()
            .await
            .expect("unsatisfiable Range");
        assert_eq!(r.status(), 416, "{l}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{}", bytes.len()).as_str(),
            "{l}"
        );
    }
}

/// "Pulling manifests" / "Pulling blobs" / "Checking if content exists": content that is not
/// in the repository MUST be `404 Not Found`, for GET and HEAD. A reference that is neither
/// a tag nor a digest (`<tag-or-digest>` "MUST NOT be in any other format") is 404
/// MANIFEST_UNKNOWN and never reaches the upstream; a digest the upstream does not know is
/// 404 BLOB_UNKNOWN / MANIFEST_UNKNOWN; an unknown repository's tag list is 404 NAME_UNKNOWN.
/// Every error body follows "Error Codes".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_is_404_with_spec_error_bodies() {
    let reg = Registry2::start();
    seed(&reg).await;
    let edge = Edge::start(&edge_config(&reg, "10m"));
    let c = client();
    let missing = format!("sha256:{}", "e".repeat(64));
    for form in forms(&edge) {
        let l = form.label;
        let before = reg.count_requests("GET", "INVALID") + reg.count_requests("HEAD", "INVALID");
        for (rest, code) in [
            (
                "manifests/.INVALID_MANIFEST_NAME".to_string(),
                "MANIFEST_UNKNOWN",
            ),
            ("manifests/sha256:INVALID".to_string(), "MANIFEST_UNKNOWN"),
            ("manifests/nosuchtag".to_string(), "MANIFEST_UNKNOWN"),
            (format!("manifests/{missing}"), "MANIFEST_UNKNOWN"),
            (format!("blobs/{missing}"), "BLOB_UNKNOWN"),
        ] {
            let r = c.get(form.url(&rest)).send().await.expect("GET");
            assert_eq!(r.status(), 404, "{l}: GET {rest}");
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_error_body(
                &r.bytes().await.expect("body"),
                code,
                &format!("{l}: {rest}"),
            );
            let r = c.head(form.url(&rest)).send().await.expect("HEAD");
            assert_eq!(r.status(), 404, "{l}: HEAD {rest}");
            assert!(
                r.bytes().await.expect("head body").is_empty(),
                "HEAD has no body"
            );
        }
        assert_eq!(
            reg.count_requests("GET", "INVALID") + reg.count_requests("HEAD", "INVALID"),
            before,
            "{l}: malformed references are answered without an upstream request"
        );
        let r = c
            .get(form.url("blobs/sha256:abc"))
            .send()
            .await
            .expect("bad digest");
        assert_eq!(r.status(), 400, "{l}: an invalid digest in a blob URL");
        assert_error_body(&r.bytes().await.expect("body"), "DIGEST_INVALID", l);
    }
    let base = format!("http://{}", edge.http[0]);
    expect_error(
        c.get(format!("{base}/v2/nosuch/repo/tags/list")),
        404,
        "NAME_UNKNOWN",
        "unknown repository",
    )
    .await;
    expect_error(
        c.get(format!("{base}/v2/nosuch.example/a/manifests/v1")),
        404,
        "NAME_UNKNOWN",
        "unknown upstream",
    )
    .await;
    expect_error(
        c.get(format!("{base}/v2/a/b/nothing")),
        404,
        "UNSUPPORTED",
        "no such endpoint",
    )
    .await;
    expect_error(
        c.delete(format!("{base}/v2/busybox/manifests/v1")),
        405,
        "UNSUPPORTED",
        "read-only",
    )
    .await;

    // The upstream down, nothing cached: 503, still a code from the table.
    drop(reg);
    expect_error(
        c.get(format!("{base}/v2/busybox/manifests/other")),
        503,
        "MANIFEST_UNKNOWN",
        "upstream down",
    )
    .await;
}

/// "Listing Tags": `name` is `<name>`, tags in lexical order; `n` limits the answer and a
/// `Link: <...>; rel="next"` (RFC 5988) leads to the rest, in the client's own URL form;
/// `last` starts after that tag; `n=0` is an empty list without `Link`. When the upstream is
/// down (and the list is older than `tag_ttl`) the last answer is served, marked stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_name_n_last_link_and_stale() {
    let mut reg = Registry2::start();
    let image = seed(&reg).await;
    let tags = ["a1", "b2", "c3", "d4", "v1"];
    for repo in ["library/busybox", "team/app"] {
        for t in &tags[..4] {
            reg.push_manifest(repo, t, OCI_MANIFEST, &image.manifest)
                .await;
        }
    }
    // tag_ttl 1 s: a list is answered from memory within it (#26), stale after it.
    let edge = Edge::start(&edge_config(&reg, "1s"));
    let c = client();
    for form in forms(&edge) {
        let l = form.label;
        let r = c.get(form.url("tags/list")).send().await.expect("tags");
        assert_eq!(r.status(), 200, "{l}");
        assert!(
            r.headers().get("link").is_none(),
            "{l}: whole list, no Link"
        );
        let v: serde_json::Value = json(r).await;
        assert_eq!(v["name"], form.name, "{l}: name as the client wrote it");
        assert_eq!(v["tags"], serde_json::json!(tags), "{l}");

        // Follow Link headers with n=2: [a1 b2] [c3 d4] [v1].
        let mut url = form.url("tags/list?n=2");
        let mut pages = Vec::new();
        for _ in 0..5 {
            let r = c.get(&url).send().await.expect("page");
            assert_eq!(r.status(), 200, "{l}: {url}");
            let link = r
                .headers()
                .get("link")
                .map(|v| v.to_str().expect("link").to_string());
            let v: serde_json::Value = json(r).await;
            pages.push(v["tags"].clone());
            let Some(link) = link else { break };
            assert!(link.ends_with("; rel=\"next\""), "{l}: {link}");
            let target = link
                .trim_start_matches('<')
                .split('>')
                .next()
                .expect("link target");
            assert!(
                target.starts_with(&format!("/v2/{}/tags/list?", form.name)),
                "{l}: Link in the client's form: {target}"
            );
            if !form.query.is_empty() {
                assert!(
                    target.contains(form.query),
                    "{l}: keeps {}: {target}",
                    form.query
                );
            }
            url = format!("{}{target}", form.base);
        }
        assert_eq!(
            pages,
            vec![
                serde_json::json!(["a1", "b2"]),
                serde_json::json!(["c3", "d4"]),
                serde_json::json!(["v1"])
            ],
            "{l}"
        );
        let r = c.get(form.url("tags/list?n=0")).send().await.expect("n=0");
        assert!(r.headers().get("link").is_none(), "{l}: n=0 has no Link");
        let v: serde_json::Value = json(r).await;
        assert_eq!(v["tags"], serde_json::json!([]), "{l}: n=0");
        let v = c
            .get(form.url("tags/list?last=b2"))
            .send()
            .await
            .expect("last");
        let v = json(v).await;
        assert_eq!(
            v["tags"],
            serde_json::json!(["c3", "d4", "v1"]),
            "{l}: last"
        );
    }

    reg.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for form in forms(&edge) {
        let r = c
            .get(form.url("tags/list?n=2"))
            .send()
            .await
            .expect("stale");
        assert_eq!(
            r.status(),
            200,
            "{}: served from the last answer",
            form.label
        );
        assert_eq!(r.headers()["x-cache"], "STALE", "{}", form.label);
        assert!(r.headers().get("warning").is_some(), "{}", form.label);
        let v: serde_json::Value = json(r).await;
        assert_eq!(v["tags"], serde_json::json!(["a1", "b2"]));
        assert_eq!(v["name"], form.name);
    }
}

/// "Listing Tags" with an upstream that paginates: the edge follows the upstream's `Link`
/// headers and hands out its own, never the upstream's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tag_pages_are_followed_and_links_are_the_edges() {
    let up = FakeUpstream::start().await;
    up.set_tags(&["t5", "t1", "t3", "t2", "t4"]);
    let edge = edge_for(&up);
    let r = reqwest::get(edge.url("/v2/team/app/tags/list?n=3"))
        .await
        .expect("tags");
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().expect("link").to_string();
    assert_eq!(link, "</v2/team/app/tags/list?n=3&last=t3>; rel=\"next\"");
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["name"], "team/app");
    assert_eq!(v["tags"], serde_json::json!(["t1", "t2", "t3"]));
    assert_eq!(
        up.requests_containing("/tags/list").len(),
        3,
        "all three upstream pages read"
    );
}

fn index_of(descriptors: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": descriptors,
    }))
    .expect("index json")
}

/// "Listing Referrers" against an upstream with the referrers API: the index is forwarded
/// (200, `Content-Type: application/vnd.oci.image.index.v1+json`), filtered by
/// `artifactType` with `OCI-Filters-Applied: artifactType`, kept under the subject digest
/// and served stale when the upstream fails; an invalid digest is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_from_an_upstream_with_the_api() {
    let up = FakeUpstream::start().await;
    let subject = format!("sha256:{}", "a".repeat(64));
    let sbom = format!("sha256:{}", "b".repeat(64));
    let sig = format!("sha256:{}", "c".repeat(64));
    up.set_referrers(
        &subject,
        index_of(serde_json::json!([
            {"mediaType": OCI_MANIFEST, "digest": sbom, "size": 10, "artifactType": "application/vnd.example.sbom"},
            {"mediaType": OCI_MANIFEST, "digest": sig, "size": 11, "artifactType": "application/vnd.example.sig"},
        ])),
    );
    let edge = edge_for(&up);
    let c = client();
    let r = c
        .get(edge.url(&format!("/v2/team/app/referrers/{subject}")))
        .send()
        .await
        .expect("referrers");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    assert!(r.headers().get("oci-filters-applied").is_none());
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["manifests"].as_array().map(Vec::len), Some(2), "{v}");

    let r = c
        .get(edge.url(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application%2Fvnd.example.sig"
        )))
        .send()
        .await
        .expect("filtered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["manifests"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["manifests"][0]["digest"], sig.as_str());

    // A subject without referrers: an empty index, never 404.
    let other = format!("sha256:{}", "d".repeat(64));
    let r = c
        .get(edge.url(&format!("/v2/team/app/referrers/{other}")))
        .send()
        .await
        .expect("none");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["manifests"], serde_json::json!([]));

    expect_error(
        c.get(edge.url("/v2/team/app/referrers/sha256:xyz")),
        400,
        "DIGEST_INVALID",
        "bad subject",
    )
    .await;

    // Upstream failing (tag_ttl is 0 in edge_for, so every request revalidates): stale.
    up.set_manifest_status(Some(503));
    let r = c
        .get(edge.url(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application/vnd.example.sbom"
        )))
        .send()
        .await
        .expect("stale");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "STALE");
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["manifests"][0]["digest"], sbom.as_str());
    let r = c
        .get(edge.url(&format!("/v2/team/app/referrers/{other}x")))
        .send()
        .await
        .expect("x");
    assert_eq!(r.status(), 400, "still parsed before anything else");
}

/// Pushes an artifact whose `subject` is `subject_digest` with the `oras` Python client (the
/// PyPI `oras` package; Debian has no `oras`). Returns the artifact manifest's digest.
fn oras_push_with_subject(reg: &Registry2, repo: &str, subject_digest: &str) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sbom.json");
    std::fs::write(&file, b"{\"sbom\":true}").expect("write");
    let script = format!(
        r#"
import oras.client, oras.oci, oras.provider, requests, sys
c = oras.client.OrasClient(hostname="{host}", insecure=True)
m = requests.get("http://{host}/v2/{repo}/manifests/{subject}", headers={{"Accept": "{oci}"}})
m.raise_for_status()
subject = oras.oci.Subject(mediaType="{oci}", digest="{subject}", size=len(m.content))
r = c.push(target="{host}/{repo}:sbom", files=["{file}:application/vnd.example.sbom.layer"], subject=subject, disable_path_validation=True)
print(r.status_code)
"#,
        host = reg.host(),
        subject = subject_digest,
        oci = OCI_MANIFEST,
        file = file.display(),
    );
    // scripts/test installs oras into target/test-venv; else the system python3 must have it.
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    let python = if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".to_string()
    };
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(&script)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "oras push failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(String::new())
}

/// "Listing Referrers" with registry:2 (which has no referrers API) and an artifact pushed
/// by `oras` with a `subject`: the edge answers from the referrers tag schema ("Backwards
/// Compatibility", "Referrers Tag Schema": tag `sha256-<hex>`), and with an empty index
/// (200) while that tag does not exist; the artifact's manifest, with its `subject`, is
/// served byte-exact; `artifactType` filtering; stale when registry:2 is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_with_registry2_and_oras() {
    let mut reg = Registry2::start();
    let image = seed(&reg).await;
    let edge = Edge::start(&edge_config(&reg, "1s"));
    let c = client();
    let subject = image.manifest_digest.clone();
    let forms = forms(&edge);
    for form in &forms {
        let r = c
            .get(form.url(&format!("referrers/{subject}")))
            .send()
            .await
            .expect("referrers");
        assert_eq!(r.status(), 200, "{}: no referrers yet", form.label);
        assert_eq!(r.headers()["content-type"], OCI_INDEX);
        let v: serde_json::Value = json(r).await;
        assert_eq!(v["manifests"], serde_json::json!([]), "{}", form.label);
    }

    assert!(
        oras_push_with_subject(&reg, "team/app", &subject).is_some(),
        "oras (PyPI) pushes an artifact with a subject"
    );
    // The artifact as registry:2 holds it (oras-py does not maintain the tag schema; a
    // client following the spec's fallback does, as here).
    let artifact = c
        .get(format!("{}/v2/team/app/manifests/sbom", reg.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("artifact")
        .bytes()
        .await
        .expect("artifact bytes");
    let artifact_json: serde_json::Value = serde_json::from_slice(&artifact).expect("manifest");
    assert_eq!(
        artifact_json["subject"]["digest"],
        subject.as_str(),
        "oras set the subject"
    );
    let artifact_digest = sha256_digest(&artifact);
    let artifact_type = artifact_json["artifactType"]
        .as_str()
        .or(artifact_json["config"]["mediaType"].as_str())
        .unwrap_or("application/vnd.unknown")
        .to_string();
    let schema_tag = format!("sha256-{}", subject.trim_start_matches("sha256:"));
    reg.push_manifest(
        "team/app",
        &schema_tag,
        OCI_INDEX,
        &index_of(serde_json::json!([
            {"mediaType": OCI_MANIFEST, "digest": artifact_digest, "size": artifact.len(), "artifactType": artifact_type},
        ])),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past tag_ttl
    for form in &forms[1..] {
        let r = c
            .get(form.url(&format!("referrers/{subject}")))
            .send()
            .await
            .expect("referrers");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = json(r).await;
        assert_eq!(
            v["manifests"][0]["digest"],
            artifact_digest.as_str(),
            "{}: {v}",
            form.label
        );

        let r = c
            .get(form.url(&format!(
                "referrers/{subject}?artifactType={}",
                artifact_type.replace('/', "%2F").replace('+', "%2B")
            )))
            .send()
            .await
            .expect("filtered");
        assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
        let v: serde_json::Value = json(r).await;
        assert_eq!(
            v["manifests"].as_array().map(Vec::len),
            Some(1),
            "{}",
            form.label
        );
        let r = c
            .get(form.url(&format!(
                "referrers/{subject}?artifactType=application/other"
            )))
            .send()
            .await
            .expect("filtered out");
        let v: serde_json::Value = json(r).await;
        assert_eq!(v["manifests"], serde_json::json!([]), "{}", form.label);

        // The artifact itself, subject and all, byte-exact through the edge.
        let r = c
            .get(form.url(&format!("manifests/{artifact_digest}")))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("artifact via edge");
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.expect("bytes"), artifact, "{}", form.label);
    }

    let r = c
        .get(forms[2].url("manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("tag");
    assert_eq!(r.headers()["x-cache"], "MISS");
    reg.stop();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = c
        .get(forms[2].url("manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("stale tag");
    assert_eq!(r.status(), 200, "a tag past its TTL is served stale");
    assert_eq!(r.headers()["x-cache"], "STALE");
    let r = c
        .get(forms[2].url(&format!("referrers/{subject}")))
        .send()
        .await
        .expect("stale");
    assert_eq!(r.status(), 200, "served stale with registry:2 stopped");
    assert_eq!(r.headers()["x-cache"], "STALE");
    let v: serde_json::Value = json(r).await;
    assert_eq!(v["manifests"][0]["digest"], artifact_digest.as_str());
}

/// "Pulling blobs" / "Pulling manifests": content is addressed by `<name>` *and* digest, and
/// content not in the repository MUST be 404. Bytes cached under one repository are served
/// under another only after the upstream confirms that repository has them (a HEAD); the
/// bytes themselves are not fetched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_by_digest_only_under_a_repository_that_has_it() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Oci,
        9,
        "amd64",
        &[4000],
    )
    .await;
    let edge = Edge::start(&edge_config(&reg, "10m"));
    let c = client();
    let base = format!("http://{}/v2/{LAN}", edge.http[0]);
    let (layer, _) = &image.blobs[1];
    let manifest = &image.manifest_digest;
    for path in [
        format!("team/app/blobs/{layer}"),
        format!("team/app/manifests/{manifest}"),
    ] {
        let r = c
            .get(format!("{base}/{path}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("first pull");
        assert_eq!(r.status(), 200, "{path}");
    }
    for (path, code) in [
        (format!("team/other/blobs/{layer}"), "BLOB_UNKNOWN"),
        (
            format!("team/other/manifests/{manifest}"),
            "MANIFEST_UNKNOWN",
        ),
    ] {
        let r = c
            .get(format!("{base}/{path}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("other repository");
        assert_eq!(
            r.status(),
            404,
            "{path}: the upstream's team/other does not have it"
        );
        assert_error_body(&r.bytes().await.expect("body"), code, &path);
    }
    // Now team/other has the same image upstream: served from the cache after a HEAD.
    push_image(
        &reg,
        "team/other",
        Some("v1"),
        Format::Oci,
        9,
        "amd64",
        &[4000],
    )
    .await;
    let r = c
        .get(format!("{base}/team/other/blobs/{layer}"))
        .send()
        .await
        .expect("confirmed");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert_eq!(sha256_digest(&r.bytes().await.expect("body")), *layer);
    assert_eq!(
        reg.count_requests("GET", &format!("/blobs/{layer}")),
        1,
        "the layer's bytes crossed from the upstream once"
    );
    assert!(reg.count_requests("HEAD", &format!("team/other/blobs/{layer}")) >= 1);
    let r = c
        .get(format!("{base}/team/other/manifests/{manifest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("manifest confirmed");
    assert_eq!(
        r.status(),
        200,
        "manifest by digest after the upstream confirmed it"
    );
    assert_eq!(
        r.bytes().await.expect("body").as_ref(),
        image.manifest.as_slice()
    );
    assert_eq!(
        edge.metric("sparkcr_edge_repo_confirmations_total{kind=\"manifest\"}")
            .await,
        2.0
    );
    // Seen now: the next request asks nobody.
    let heads = reg.count_requests("HEAD", &format!("team/other/blobs/{layer}"));
    let r = c
        .get(format!("{base}/team/other/blobs/{layer}"))
        .send()
        .await
        .expect("seen");
    assert_eq!(r.status(), 200);
    assert_eq!(
        reg.count_requests("HEAD", &format!("team/other/blobs/{layer}")),
        heads
    );
    assert_eq!(
        edge.metric("sparkcr_edge_repo_confirmations_total{kind=\"blob\"}")
            .await,
        2.0,
        "one HEAD for the 404, one for the confirmation"
    );
}

/// Routing: an upstream whose name has a port is reachable in the path-prefix form through
/// its path alias (`EDGE/lan/team/app`, a reference containers/image accepts; skopeo pulls
/// it), and with `server.strict_host` a `Host` that names neither the edge nor one of its
/// alias hosts is 404 NAME_UNKNOWN ("Pulling manifests": `<name>` unknown to the registry)
/// instead of being answered by the default upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_alias_and_strict_host() {
    let reg = Registry2::start();
    let image = push_image(
        &reg,
        "team/app",
        Some("v1"),
        Format::Oci,
        11,
        "amd64",
        &[2000],
    )
    .await;
    let edge = EdgeConfig::new("{dir}/data")
        .hostname("edge.test")
        .upstream(
            Upstream::new("registry.lan:5000", reg.url())
                .aliases(&["lan"], &["lan"])
                .default(),
        )
        .start();
    let c = client();
    let e = edge.http[0];
    let r = c
        .get(format!("http://{e}/v2/lan/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("path alias");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    let (ok, out) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{e}/lan/team/app:v1"),
    ]);
    assert!(
        ok,
        "skopeo (containers/image) accepts EDGE/lan/team/app: {out}"
    );
    for (host, status) in [
        ("edge.test", 200),
        ("lan.edge.test:5000", 200),
        ("localhost", 200),
        ("nosuch.edge.test", 404),
        ("elsewhere.example", 404),
    ] {
        let r = c
            .get(format!("http://{e}/v2/team/app/manifests/v1"))
            .header("host", host)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("host");
        assert_eq!(r.status(), status, "Host: {host}");
        if status == 404 {
            assert_error_body(&r.bytes().await.expect("body"), "NAME_UNKNOWN", host);
        }
    }
}

/// distribution-spec's namespace: a client may name the upstream in an `OCI-Namespace`
/// request header (after a host in the path, before `?ns=`); every routed response echoes
/// it; a namespace that names no configured upstream is refused and nothing is dialed
/// (the default upstream here is a listener that must see no connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_namespace_routes_and_unknown_namespaces_dial_nothing() {
    let reg = Registry2::start();
    let image = seed(&reg).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let trap = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let edge = Edge::start(
        &EdgeConfig::new("{dir}/data")
            .hostname("edge.test")
            .upstream(Upstream::new("docker.io", format!("http://{trap}")).default())
            .upstream(Upstream::new(LAN, reg.url()))
            .to_toml(),
    );
    let c = client();
    let base = format!("http://{}", edge.http[0]);
    // The header routes to the LAN upstream.
    let r = c
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .header("oci-namespace", LAN)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["oci-namespace"], LAN);
    assert_eq!(
        r.headers()["docker-content-digest"],
        image.manifest_digest.as_str()
    );
    // Unknown namespaces, by header and by ns=: NAME_UNKNOWN, nothing dialed.
    for request in [
        c.get(format!("{base}/v2/team/app/manifests/v1"))
            .header("oci-namespace", "unknown.example"),
        c.get(format!(
            "{base}/v2/team/app/manifests/v1?ns=unknown.example"
        )),
    ] {
        expect_error(request, 404, "NAME_UNKNOWN", "an unknown namespace").await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the edge dialed the default upstream for an unknown namespace"
    );
}

/// `Cache-Status` (RFC 9211), named by `server.name`: a miss then a hit for a blob and a
/// tag, a stale tag and an unreachable miss while registry:2 is stopped, and a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_status_names_this_edge_for_hit_miss_stale_and_denied() {
    let mut reg = Registry2::start();
    let image = seed(&reg).await;
    let private = Registry2::start();
    let config = EdgeConfig::new("{dir}/data")
        .hostname("edge.test")
        .tag_ttl("1s")
        .upstream(
            Upstream::new("docker.io", reg.url())
                .default()
                .connect_timeout("1s"),
        )
        .upstream(Upstream::new(LAN, private.url()).private())
        .to_toml();
    let config = config.replacen(
        "hostname = \"edge.test\"",
        "hostname = \"edge.test\"\nname = \"edge-a\"",
        1,
    );
    assert!(config.contains("name = \"edge-a\""), "{config}");
    let edge = Edge::start(&config);
    let c = client();
    let base = format!("http://{}", edge.http[0]);
    let status = |r: &reqwest::Response| {
        r.headers()
            .get("cache-status")
            .map(|v| v.to_str().expect("ascii").to_string())
    };
    let blob = format!("{base}/v2/library/busybox/blobs/{}", image.blobs[0].0);
    let tag = format!("{base}/v2/library/busybox/manifests/v1");
    let get = |url: &str| c.get(url).header("accept", OCI_MANIFEST).send();
    for (url, what) in [(&blob, "blob"), (&tag, "tag")] {
        let first = get(url).await.expect("GET");
        assert_eq!(
            status(&first).as_deref(),
            Some("edge-a; fwd=uri-miss"),
            "{what}: first"
        );
        assert_eq!(
            first.headers()["x-cache"],
            "MISS",
            "X-Cache is kept for old scripts"
        );
        drop(first.bytes().await);
        edge.wait_fills_settled().await;
        let again = get(url).await.expect("GET");
        assert_eq!(
            status(&again).as_deref(),
            Some("edge-a; hit"),
            "{what}: again"
        );
    }
    // registry:2 stopped: the tag (past tag_ttl) is served stale; an uncached blob is 503.
    reg.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = get(&tag).await.expect("GET");
    assert_eq!(stale.status(), 200);
    assert_eq!(
        status(&stale).as_deref(),
        Some("edge-a; hit; fwd=stale; detail=upstream-unreachable")
    );
    let uncached = c
        .get(format!(
            "{base}/v2/library/busybox/blobs/{}",
            image.blobs[1].0
        ))
        .send()
        .await
        .expect("GET");
    assert_eq!(uncached.status(), 503);
    assert_eq!(
        status(&uncached).as_deref(),
        Some("edge-a; fwd=uri-miss; detail=upstream-unreachable")
    );
    // A private upstream asked anonymously: refused, and said so.
    let denied = c
        .get(format!("{base}/v2/{LAN}/team/app/manifests/v1"))
        .send()
        .await
        .expect("GET");
    assert!(
        matches!(denied.status().as_u16(), 401 | 403),
        "{}",
        denied.status()
    );
    assert_eq!(status(&denied).as_deref(), Some("edge-a; detail=denied"));
}
