//! Guards the store from the admin's own commands: `import` and `cache …` run as root on
//! a store that belongs to the service's user would leave root-owned files the daemon
//! cannot open (`Permission denied` on `LOCK`, then a crash loop). They refuse, naming the
//! command to run instead (`sudo -u sparkcr-edge sparkcr-edge …`).
//!
//! Owns: that ownership check. Must not: change ownership or privileges itself.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// `Err(message)` when this process runs as root and the store (or, if it does not exist
/// yet, the directory it would be made in) belongs to another user.
pub fn check(store: &Path, command: &str) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    check_as(euid, store, command)
}

fn check_as(euid: u32, store: &Path, command: &str) -> Result<(), String> {
    if euid != 0 {
        return Ok(());
    }
    let mut at = Some(store);
    let meta = loop {
        let Some(p) = at else { return Ok(()) };
        if let Ok(m) = std::fs::metadata(p) {
            break m;
        }
        at = p.parent().filter(|p| !p.as_os_str().is_empty());
    };
    let owner = meta.uid();
    if owner == 0 {
        return Ok(());
    }
    let user = user_name(owner).unwrap_or_else(|| format!("#{owner}"));
    let args: Vec<String> = std::env::args().skip(1).map(|a| shell_word(&a)).collect();
    Err(format!(
        "{}: the store belongs to user {user}; run as root, `{command}` would leave files that \
         user (the daemon) cannot open. Run it as the store's owner instead: \
         sudo -u {user} sparkcr-edge {}",
        store.display(),
        args.join(" ")
    ))
}

/// The login name of `uid` from /etc/passwd (system users such as the service's live there).
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_on_someone_elses_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Not root: never refused (the OS decides).
        assert!(check_as(1000, dir.path(), "import").is_ok());
        // As root (CI), give the directory to `nobody` as the package gives it to the
        // service's user.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).expect("chown");
        }
        let owner = std::fs::metadata(dir.path()).expect("meta").uid();
        let result = check_as(0, &dir.path().join("not-yet/store"), "import");
        if owner == 0 {
            assert!(result.is_ok());
        } else {
            let msg = result.expect_err("refused");
            assert!(msg.contains("sudo -u"), "{msg}");
        }
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(
            shell_word("/etc/sparkcr-edge/config.toml"),
            "/etc/sparkcr-edge/config.toml"
        );
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
