use super::query::{files_of, read, AuditQuery};
use super::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn subject(repo: &str, tag: Option<&str>, digest: &str) -> AuditSubject {
    AuditSubject {
        kind: SubjectKind::Manifest,
        who: "ci".into(),
        upstream: "docker.io".into(),
        repository: repo.into(),
        tag: tag.map(str::to_string),
        digest: Some(digest.into()),
        media_type: Some("application/vnd.oci.image.index.v1+json".into()),
        range: None,
        cache: Some("hit"),
        decision: None,
    }
}

fn record(
    repo: &str,
    tag: Option<&str>,
    digest: &str,
    client: &str,
    at: SystemTime,
) -> AuditRecord {
    subject(repo, tag, digest).into_record(&RequestFacts {
        at,
        client: client.parse().expect("ip"),
        user_agent: Some("containerd/v2.1.0\u{7}"),
        method: "GET",
        status: 200,
        bytes: 1234,
        seconds: 0.00123,
        result: "complete",
    })
}

#[test]
fn a_record_round_trips_through_its_json_line_and_keeps_no_control_characters() {
    let r = record(
        "library/busybox",
        Some("v1"),
        "sha256:aa",
        "10.0.0.5",
        SystemTime::now(),
    );
    let line = serde_json::to_string(&r).expect("json");
    assert!(!line.contains('\n'));
    let back: AuditRecord = serde_json::from_str(&line).expect("parse");
    assert_eq!(back, r);
    assert_eq!(back.user_agent.as_deref(), Some("containerd/v2.1.0?"));
    assert_eq!(back.ms, 1.2);
    assert_eq!(back.reference(), "v1@sha256:aa");
    assert!(back.at().is_some(), "{}", back.time);
    // Absent fields are left out, not written as null.
    assert!(
        !line.contains("range") && !line.contains("decision"),
        "{line}"
    );
}

fn settings(path: std::path::PathBuf, max_size: u64, keep: u32) -> AuditFileSettings {
    AuditFileSettings {
        path,
        max_size,
        keep,
        written: prometheus::IntCounter::new("written", "written").expect("counter"),
        dropped: prometheus::IntCounter::new("dropped", "dropped").expect("counter"),
    }
}

fn open(dir: &std::path::Path, max_size: u64, keep: u32) -> AuditFile {
    AuditFile::open(settings(dir.join("audit.jsonl"), max_size, keep)).expect("open")
}

#[test]
fn records_are_written_as_lines_with_mode_0640_and_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.jsonl");
    let now = SystemTime::now();
    let file = open(dir.path(), 1 << 20, 3);
    file.write(&record(
        "library/busybox",
        Some("v1"),
        "sha256:aa",
        "10.0.0.5",
        now,
    ));
    drop(file);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    // A restart appends to the same file.
    let file = open(dir.path(), 1 << 20, 3);
    file.write(&record("team/app", None, "sha256:bb", "10.0.0.6", now));
    drop(file);
    let all = read(&path, &AuditQuery::default()).expect("read");
    assert_eq!(all.records.len(), 2);
    assert_eq!(all.records[0].repository, "library/busybox");
    assert_eq!(all.records[1].repository, "team/app");
    assert_eq!(all.unreadable_lines, 0);
}

#[test]
fn the_file_is_rotated_before_it_passes_max_size_and_the_oldest_beyond_keep_goes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.jsonl");
    let now = SystemTime::now();
    let one = serde_json::to_vec(&record("r/00", None, "sha256:00", "10.0.0.1", now))
        .expect("json")
        .len() as u64
        + 1;
    // Room for three records per file, two rotations kept: of 20 records, the newest 8
    // (two in the current file, three in each rotation) remain.
    let file = open(dir.path(), one * 3 + 2, 2);
    for i in 0..20 {
        file.write(&record(
            &format!("r/{i:02x}"),
            None,
            "sha256:00",
            "10.0.0.1",
            now,
        ));
    }
    drop(file);
    assert_eq!(
        files_of(&path),
        vec![
            dir.path().join("audit.jsonl.2"),
            dir.path().join("audit.jsonl.1"),
            path.clone()
        ]
    );
    assert!(!dir.path().join("audit.jsonl.3").exists());
    for f in files_of(&path) {
        let len = std::fs::metadata(&f).expect("meta").len();
        assert!(len <= one * 3 + 2, "{} is {len} bytes", f.display());
    }
    let all = read(&path, &AuditQuery::default()).expect("read");
    let repos: Vec<_> = all.records.iter().map(|r| r.repository.as_str()).collect();
    let expected: Vec<String> = (12..20).map(|i| format!("r/{i:02x}")).collect();
    assert_eq!(repos, expected);
}

#[test]
fn a_record_reaches_the_file_within_a_second_while_the_writer_runs() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.jsonl");
    let file = open(dir.path(), 1 << 20, 1);
    file.write(&record(
        "team/app",
        Some("v2"),
        "sha256:cc",
        "10.0.0.7",
        SystemTime::now(),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while std::time::Instant::now() < deadline {
        seen = read(&path, &AuditQuery::default()).map_or(0, |r| r.records.len());
        if seen == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        seen, 1,
        "the record is on disk while the file is still open"
    );
    assert_eq!((file.written(), file.dropped()), (1, 0));
}

#[test]
fn a_path_in_a_missing_directory_is_refused_with_the_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("no/such/audit.jsonl");
    let e = AuditFile::open(settings(path.clone(), 1 << 20, 1))
        .err()
        .expect("refused");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");
}

#[test]
fn queries_select_by_repository_tag_digest_client_and_time() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("audit.jsonl");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let hour = Duration::from_secs(3600);
    let file = open(dir.path(), 1 << 20, 1);
    file.write(&record(
        "library/busybox",
        Some("v1"),
        "sha256:aa11",
        "10.0.0.5",
        t0,
    ));
    file.write(&record(
        "library/busybox",
        None,
        "sha256:bb22",
        "10.0.1.9",
        t0 + hour,
    ));
    file.write(&record(
        "team/payments",
        Some("latest"),
        "sha256:cc33",
        "10.0.0.5",
        t0 + 2 * hour,
    ));
    drop(file);
    // A line being written (no newline yet, cut JSON) is skipped and counted.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"time\":\"20"))
        .expect("append");
    let repos = |q: AuditQuery| {
        let got = read(&path, &q).expect("read");
        assert_eq!(got.unreadable_lines, 1);
        got.records
            .iter()
            .map(|r| format!("{}:{}", r.repository, r.reference()))
            .collect::<Vec<_>>()
    };
    let q = |f: fn(&mut AuditQuery)| {
        let mut q = AuditQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(repos(q(|_| {})).len(), 3);
    // Short Docker Hub names, upstream/repo, and the plain repository all name it.
    for name in ["busybox", "docker.io/library/busybox", "library/busybox"] {
        let query = AuditQuery {
            repository: Some(name.into()),
            ..AuditQuery::default()
        };
        assert_eq!(repos(query).len(), 2, "{name}");
    }
    assert_eq!(
        repos(q(|q| q.tag = Some("latest".into()))),
        vec!["team/payments:latest@sha256:cc33"]
    );
    assert_eq!(
        repos(q(|q| q.digest = Some("bb2".into()))),
        vec!["library/busybox:sha256:bb22"]
    );
    assert_eq!(repos(q(|q| q.digest = Some("sha256:aa".into()))).len(), 1);
    assert_eq!(
        repos(q(|q| q.client = Some("10.0.0.0/24".parse().expect("net")))).len(),
        2
    );
    let between = AuditQuery {
        since: Some(t0 + hour / 2),
        until: Some(t0 + hour + hour / 2),
        ..AuditQuery::default()
    };
    assert_eq!(repos(between), vec!["library/busybox:sha256:bb22"]);
    assert_eq!(
        repos(q(|q| q.limit = Some(1))),
        vec!["team/payments:latest@sha256:cc33"]
    );
}
