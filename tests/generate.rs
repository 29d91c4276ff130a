//! `sparkcr-edge generate man|completions` (hidden; run by scripts/package): man pages
//! that man(1) renders without warnings, one per subcommand, and bash/zsh/fish completions
//! that know every subcommand.

mod common;

use common::run_cli;

#[test]
fn man_pages_render_and_cover_every_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("man");
    let (code, _, err) = run_cli(
        &["generate", "man", "--out", &out.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let main = std::fs::read_to_string(out.join("sparkcr-edge.1")).expect("sparkcr-edge.1");
    assert!(
        main.starts_with(".ie") || main.contains(".TH sparkcr-edge 1"),
        "{main}"
    );
    for sub in [
        "serve",
        "check-config",
        "doctor",
        "prefetch",
        "client-config",
        "tls-self-signed",
    ] {
        let page = out.join(format!("sparkcr-edge-{sub}.1"));
        assert!(page.is_file(), "no page for {sub}");
        let rendered = std::process::Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output();
        if let Ok(r) = rendered {
            assert!(r.status.success(), "man -l {}", page.display());
            assert!(
                String::from_utf8_lossy(&r.stderr).trim().is_empty(),
                "man warns about {}: {}",
                page.display(),
                String::from_utf8_lossy(&r.stderr)
            );
            // Bold and underline come as `c\x08c`: keep the last of each pair.
            let text: String = String::from_utf8_lossy(&r.stdout)
                .split('\x08')
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part
                    } else {
                        part.get(1..).unwrap_or("")
                    }
                })
                .collect();
            assert!(text.contains("SYNOPSIS"), "{text}");
        }
    }
    assert!(
        main.contains("doctor"),
        "the main page lists the subcommands"
    );
    assert!(
        !out.join("sparkcr-edge-generate.1").exists(),
        "generate is hidden"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run_cli(
        &[
            "generate",
            "completions",
            "--out",
            &dir.path().display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let bash = std::fs::read_to_string(dir.path().join("sparkcr-edge.bash")).expect("bash");
    assert!(bash.contains("complete -F") && bash.contains("doctor") && bash.contains("--edge"));
    let zsh = std::fs::read_to_string(dir.path().join("_sparkcr-edge")).expect("zsh");
    assert!(zsh.starts_with("#compdef sparkcr-edge"));
    let fish = std::fs::read_to_string(dir.path().join("sparkcr-edge.fish")).expect("fish");
    assert!(fish.contains("complete -c sparkcr-edge") && fish.contains("client-config"));
    // bash itself accepts the script.
    if let Ok(r) = std::process::Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("sparkcr-edge.bash"))
        .output()
    {
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}
