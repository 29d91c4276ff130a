//! Parsing of `WWW-Authenticate` headers (RFC 7235 challenges) as registries send them.
//!
//! Owns: turning one header value into a list of [`Challenge`]s: `Bearer realm="..",
//! service="..",scope=".."` (Docker Hub, ghcr.io, quay.io), `Basic realm=".."`, several
//! challenges in one header, quoted strings with backslash escapes and commas inside quotes.
//!
//! Must not: panic, allocate without bound relative to the input, or do any I/O. The input
//! comes from the network and is fuzzed; garbage yields fewer (or no) challenges, never an
//! error.

use std::collections::BTreeMap;

/// One authentication challenge: a scheme and its parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    /// The auth scheme, lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameters with lowercased names; values as sent (quotes and escapes removed).
    /// A parameter given twice keeps its first value.
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// The value of parameter `name` (give it lowercased).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn is_bearer(&self) -> bool {
        self.scheme == "bearer"
    }

    pub fn is_basic(&self) -> bool {
        self.scheme == "basic"
    }
}

/// Every challenge in every `WWW-Authenticate` header of `headers` (a 401's), in order.
pub fn of_headers(headers: &reqwest::header::HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_www_authenticate)
        .collect()
}

/// Every challenge in one `WWW-Authenticate` header value, in order. Never panics; what
/// cannot be understood is skipped.
pub fn parse_www_authenticate(header: &str) -> Vec<Challenge> {
    let mut cursor = Cursor {
        input: header.as_bytes(),
        pos: 0,
    };
    let mut challenges = Vec::new();
    loop {
        cursor.skip_while(|b| is_whitespace(b) || b == b',');
        if cursor.at_end() {
            break;
        }
        let scheme = cursor.take_token();
        if scheme.is_empty() {
            // Not a token where a scheme must start: skip one byte and resynchronise.
            cursor.pos += 1;
            continue;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: BTreeMap::new(),
        };
        parse_params(&mut cursor, &mut challenge.params);
        challenges.push(challenge);
    }
    challenges
}

/// Reads `name=value` pairs separated by commas until something that is not a parameter:
/// the start of the next challenge (a token not followed by `=`), or garbage.
fn parse_params(cursor: &mut Cursor<'_>, params: &mut BTreeMap<String, String>) {
    loop {
        let before_param = cursor.pos;
        cursor.skip_while(|b| is_whitespace(b) || b == b',');
        let name = cursor.take_token();
        if name.is_empty() {
            // Garbage, or the end: the caller resynchronises.
            return;
        }
        cursor.skip_while(is_whitespace);
        if cursor.peek() != Some(b'=') {
            // A token without `=`: the scheme of the next challenge (or a token68, which
            // no registry uses; it is then read as a parameterless challenge).
            cursor.pos = before_param;
            return;
        }
        cursor.pos += 1;
        cursor.skip_while(is_whitespace);
        let value = if cursor.peek() == Some(b'"') {
            cursor.take_quoted_string()
        } else {
            // Lenient: unquoted values run to the next comma or space, so a sloppy
            // `realm=https://auth.example/token` still works.
            let raw = cursor.take_while(|b| b != b',' && !is_whitespace(b));
            String::from_utf8_lossy(raw).into_owned()
        };
        params.entry(name.to_ascii_lowercase()).or_insert(value);
    }
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn take_while(&mut self, keep: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&keep) {
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    fn skip_while(&mut self, skip: impl Fn(u8) -> bool) {
        self.take_while(skip);
    }

    /// An RFC 7230 token (ASCII only, so the result is valid UTF-8).
    fn take_token(&mut self) -> String {
        String::from_utf8_lossy(self.take_while(is_token_byte)).into_owned()
    }

    /// A quoted string starting at the opening `"`; `\x` stands for `x`. An unterminated
    /// string runs to the end of the input.
    fn take_quoted_string(&mut self) -> String {
        self.pos += 1; // the opening quote
        let mut value = Vec::new();
        while let Some(b) = self.peek() {
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    if let Some(escaped) = self.peek() {
                        value.push(escaped);
                        self.pos += 1;
                    }
                }
                _ => value.push(b),
            }
        }
        String::from_utf8_lossy(&value).into_owned()
    }
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(header: &str) -> Challenge {
        let mut all = parse_www_authenticate(header);
        assert_eq!(all.len(), 1, "{header:?} -> {all:?}");
        all.remove(0)
    }

    #[test]
    fn docker_hub_bearer() {
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert!(c.is_bearer());
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/nginx:pull"));
        assert_eq!(c.params.len(), 3);
    }

    #[test]
    fn ghcr_and_quay_style() {
        let c = one(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull""#,
        );
        assert_eq!(c.param("service"), Some("ghcr.io"));
        // quay: spaces after commas, a scope with two actions.
        let c = one(
            r#"Bearer realm="https://quay.io/v2/auth", service="quay.io", scope="repository:org/img:pull,push""#,
        );
        assert_eq!(c.param("realm"), Some("https://quay.io/v2/auth"));
        assert_eq!(c.param("scope"), Some("repository:org/img:pull,push"));
    }

    #[test]
    fn basic_and_case_insensitivity() {
        let c = one(r#"BASIC Realm="Registry Realm""#);
        assert!(c.is_basic());
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        let c = one("basic");
        assert!(c.is_basic());
        assert!(c.params.is_empty());
    }

    #[test]
    fn multiple_challenges_in_one_header() {
        let all = parse_www_authenticate(
            r#"Basic realm="a, b", Bearer realm="https://t.example/token",service=x, Negotiate"#,
        );
        let schemes: Vec<&str> = all.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(all[0].param("realm"), Some("a, b"));
        assert_eq!(all[1].param("realm"), Some("https://t.example/token"));
        assert_eq!(all[1].param("service"), Some("x"));
    }

    #[test]
    fn escapes_and_unquoted_values() {
        let c = one(r#"Bearer realm="say \"hi\" \\ there",service = plain , scope=a:b:pull"#);
        assert_eq!(c.param("realm"), Some(r#"say "hi" \ there"#));
        assert_eq!(c.param("service"), Some("plain"));
        assert_eq!(c.param("scope"), Some("a:b:pull"));
        let c = one("Bearer realm=https://auth.example/token");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
    }

    #[test]
    fn first_value_wins_and_unterminated_quote() {
        let c = one(r#"Bearer realm="first", realm="second""#);
        assert_eq!(c.param("realm"), Some("first"));
        let c = one(r#"Bearer realm="never closed, scope=x"#);
        assert_eq!(c.param("realm"), Some("never closed, scope=x"));
    }

    #[test]
    fn garbage_gives_nothing_or_partial() {
        assert!(parse_www_authenticate("").is_empty());
        assert!(parse_www_authenticate(" , ,, ").is_empty());
        assert!(parse_www_authenticate("\"\"\"=,=,(){}").is_empty());
        let all = parse_www_authenticate("=== Bearer realm=\"x\"");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].param("realm"), Some("x"));
        // A trailing backslash inside quotes.
        let c = one("Bearer realm=\"abc\\");
        assert_eq!(c.param("realm"), Some("abc"));
        // Non-ASCII inside quotes survives; outside it is skipped.
        let c = one("Bearer realm=\"héllo\" é");
        assert_eq!(c.param("realm"), Some("héllo"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in ".{0,200}") {
            let _ = parse_www_authenticate(&s);
        }

        #[test]
        fn never_panics_on_header_like_input(
            s in r#"([A-Za-z]{1,8}|[ ,="\\]|realm|scope|service|[^\x00]){0,60}"#
        ) {
            for c in parse_www_authenticate(&s) {
                prop_assert!(!c.scheme.is_empty());
                prop_assert_eq!(c.scheme.to_ascii_lowercase(), c.scheme.clone());
                for key in c.params.keys() {
                    prop_assert_eq!(key.to_ascii_lowercase(), key.clone());
                }
            }
        }

        #[test]
        fn round_trips_quoted_values(value in "[ -~]{0,40}") {
            let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
            let header = format!("Bearer realm=\"{escaped}\",service=\"s\"");
            let all = parse_www_authenticate(&header);
            prop_assert_eq!(all.len(), 1);
            prop_assert_eq!(all[0].param("realm"), Some(value.as_str()));
            prop_assert_eq!(all[0].param("service"), Some("s"));
        }
    }
}
