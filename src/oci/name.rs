//! Repository names, tags and references, per the OCI distribution spec grammar:
//!
//! ```text
//! name      = component ("/" component)*          (at most 255 characters)
//! component = [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       = [a-zA-Z0-9_] [a-zA-Z0-9._-]{0,127}
//! reference = tag | digest
//! ```

use super::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted (the limit registry:2 and Docker Hub apply).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name \"{0}\" does not match [a-z0-9]+((.|_|__|-+)[a-z0-9]+)*(/...)*")]
    BadName(String),
    #[error("tag \"{0}\" does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    BadTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository name such as `library/nginx` or `org/team/img`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Path components, e.g. `["library", "nginx"]`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// A new name with `prefix/` in front (e.g. Docker Hub's `library/`).
    pub fn prefixed(&self, prefix: &str) -> Result<RepositoryName, NameError> {
        format!("{prefix}/{}", self.0).parse()
    }

    /// The name without its first component, or `None` for a one-component name.
    pub fn strip_first(&self) -> Option<RepositoryName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepositoryName(rest.to_string()))
    }
}

fn is_component(c: &str) -> bool {
    // [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepositoryName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !s.split('/').all(is_component) {
            return Err(NameError::BadName(s.chars().take(80).collect()));
        }
        Ok(RepositoryName(s.to_string()))
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({})", self.0)
    }
}

/// A tag such as `latest` or `1.27-alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
        let rest_ok = b
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-');
        if !first_ok || !rest_ok || b.len() > 128 {
            return Err(NameError::BadTag(s.chars().take(80).collect()));
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "nginx",
            "library/nginx",
            "a/b/c",
            "my-org/my__img",
            "a.b_c--d/e",
            "ghcr.io",
            "0",
        ] {
            assert!(ok.parse::<RepositoryName>().is_ok(), "{ok} should parse");
        }
        for bad in [
            "",
            "Nginx",
            "a//b",
            "/a",
            "a/",
            "a..b",
            "a___b",
            "-a",
            "a-",
            "a b",
            "..",
            "a/../b",
            "a%2fb",
            "localhost:5000",
        ] {
            assert!(
                bad.parse::<RepositoryName>().is_err(),
                "{bad:?} should fail"
            );
        }
        assert_eq!(
            "a".repeat(256).parse::<RepositoryName>(),
            Err(NameError::TooLong)
        );
    }

    #[test]
    fn tags_and_references() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_1.2-rc.3".parse::<Tag>().is_ok());
        assert!(".x".parse::<Tag>().is_err());
        assert!("-x".parse::<Tag>().is_err());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }

    #[test]
    fn prefix_and_strip() {
        let n: RepositoryName = "ghcr.io/org/img".parse().expect("valid");
        assert_eq!(
            n.strip_first().map(|x| x.to_string()).as_deref(),
            Some("org/img")
        );
        let one: RepositoryName = "nginx".parse().expect("valid");
        assert_eq!(
            one.prefixed("library").expect("valid").as_str(),
            "library/nginx"
        );
        assert!(one.strip_first().is_none());
    }
}
