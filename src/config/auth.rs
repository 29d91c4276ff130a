//! The `[auth]` section: who may use the edge. Anonymous access, the client networks
//! allowed to connect (`allow_cidrs`), the access tokens (`[[auth.token]]`: a name, the
//! SHA-256 of the secret, scopes) and the per-IP quota of anonymous clients.
//!
//! Owns: the schema of these keys and the parsing of their values (CIDRs, token hashes,
//! scope names) into typed values with one-line errors.
//!
//! Must not: verify credentials or enforce anything (that is `access`), hold a token
//! secret (only its hash is ever configured), or import other modules of this crate.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Pull through upstreams not marked `private`.
    PullPublic,
    /// Pull through upstreams marked `private = true`.
    PullPrivate,
    /// Read the operator's pages (`/status`, `/status.json`) from any allowed network.
    Admin,
    /// Push through upstreams marked `push = true` (implies nothing about pulls).
    Push,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::PullPublic,
        Scope::PullPrivate,
        Scope::Admin,
        Scope::Push,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PullPublic => "pull:public",
            Scope::PullPrivate => "pull:private",
            Scope::Admin => "admin",
            Scope::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|sc| sc.as_str() == s.trim())
            .ok_or_else(|| {
                format!("expected one of \"pull:public\" \"pull:private\" \"admin\" \"push\", got {s:?}")
            })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A client network: `10.0.0.0/8`, `fd00::/8`, or one address (`192.168.1.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        t.parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map(|n| Cidr(n.trunc()))
            .map_err(|_| {
                format!("expected a network such as \"10.0.0.0/8\" or an IP address, got {s:?}")
            })
    }

    /// Whether `ip` is in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The configured form of a token: `sha256:<64 hex digits>`, the SHA-256 of the secret.
/// The secret itself (256 random bits) is never written to the config.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub const PREFIX: &'static str = "sha256:";

    pub fn parse(s: &str) -> Result<TokenHash, String> {
        let expected = || {
            format!(
                "expected \"sha256:\" and 64 hex digits (from `sparkcr-edge token create`), got {:?}",
                s.chars().take(80).collect::<String>()
            )
        };
        let hex_part = s.trim().strip_prefix(Self::PREFIX).ok_or_else(expected)?;
        if hex_part.len() != 64 {
            return Err(expected());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| expected())?;
        Ok(TokenHash(out))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({self})")
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One `[[auth.token]]` block.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (for logs and metrics); letters, digits, `.`, `_`, `-`, `@`.
    pub name: String,
    pub hash: TokenHash,
    pub scopes: Vec<Scope>,
}

impl TokenConfig {
    /// This token as an `[[auth.token]]` block to append to a config, written by the
    /// config's own serializer: what [`super::load`] reads back, fields in a fixed order
    /// (`name`, `hash`, `scopes`).
    pub fn to_config_block(&self) -> Result<String, toml::ser::Error> {
        #[derive(Serialize)]
        struct Block<'a> {
            auth: Tokens<'a>,
        }
        #[derive(Serialize)]
        struct Tokens<'a> {
            token: [&'a TokenConfig; 1],
        }
        toml::to_string(&Block {
            auth: Tokens { token: [self] },
        })
    }
}

/// `auth.anonymous_rate = { per_minute = 600, burst = 100 }`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// Sustained requests per minute per client address.
    pub per_minute: u32,
    /// Requests a client address may make at once before the rate applies.
    pub burst: u32,
    /// IPv6 clients are counted per prefix of this length (128: each address; 64: a
    /// subnet, for an edge facing untrusted networks, where a client can rotate addresses
    /// in its /64). IPv4 clients are always counted per address.
    #[serde(default = "full_ipv6_address")]
    pub ipv6_prefix: u8,
}

fn full_ipv6_address() -> u8 {
    128
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Clients without a token may pull through public upstreams.
    #[serde(default = "yes")]
    pub anonymous: bool,
    /// Client networks allowed to connect; empty = everyone.
    #[serde(default)]
    pub allow_cidrs: Vec<Cidr>,
    /// Networks whose clients may read `/status` and `/status.json` without a token
    /// (others need one with the `admin` scope); default: loopback only.
    #[serde(default = "loopback")]
    pub admin_cidrs: Vec<Cidr>,
    /// Per-address quota of anonymous clients; absent = unlimited.
    #[serde(default)]
    pub anonymous_rate: Option<RateConfig>,
    #[serde(default)]
    pub token: Vec<TokenConfig>,
}

fn yes() -> bool {
    true
}

/// `127.0.0.0/8` and `::1`.
pub fn loopback() -> Vec<Cidr> {
    let v4 = ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8)
        .expect("8 is a valid IPv4 prefix length");
    vec![
        Cidr(ipnet::IpNet::V4(v4)),
        Cidr(ipnet::IpNet::from(std::net::IpAddr::V6(
            std::net::Ipv6Addr::LOCALHOST,
        ))),
    ]
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: true,
            allow_cidrs: Vec::new(),
            admin_cidrs: loopback(),
            anonymous_rate: None,
            token: Vec::new(),
        }
    }
}

/// A token name as it may appear in logs: 1–64 of `[A-Za-z0-9._@-]`.
pub fn is_token_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").expect("cidr");
        assert!(c.contains("10.1.2.3".parse().expect("ip")));
        assert!(!c.contains("127.0.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.2.3".parse().expect("mapped")));
        let one = Cidr::parse("192.168.1.7").expect("one address");
        assert!(one.contains("192.168.1.7".parse().expect("ip")));
        assert!(!one.contains("192.168.1.8".parse().expect("ip")));
        assert_eq!(
            Cidr::parse("10.1.2.3/8").expect("host bits").to_string(),
            "10.0.0.0/8"
        );
        for bad in ["", "10.0.0.0/33", "ten", "10.0.0/8", "::1/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_and_scopes() {
        let h = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(TokenHash::parse(&h).expect("hash").to_string(), h);
        for bad in [
            "ab".repeat(32),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}", "zz".repeat(32)),
            format!("md5:{}", "ab".repeat(32)),
            "spk_secret".into(),
        ] {
            assert!(TokenHash::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(Scope::parse("pull:private"), Ok(Scope::PullPrivate));
        assert_eq!(Scope::parse("push"), Ok(Scope::Push));
        assert!(Scope::parse("pull").is_err());
        assert!(is_token_name("ci-runner.1@lab"));
        assert!(!is_token_name("a b"));
        assert!(!is_token_name(""));
    }

    #[test]
    fn a_token_block_appended_to_a_config_loads_as_that_token() {
        let token = TokenConfig {
            name: "ci-runners".into(),
            hash: TokenHash([0xab; 32]),
            scopes: vec![Scope::PullPublic, Scope::Push],
        };
        let block = token.to_config_block().expect("renders");
        assert_eq!(
            block,
            format!(
                "[[auth.token]]\nname = \"ci-runners\"\nhash = \"sha256:{}\"\nscopes = [\"pull:public\", \"push\"]\n",
                "ab".repeat(32)
            )
        );
        let config = format!("[auth]\nanonymous = false\n\n{block}");
        let c = super::super::load::load_from_text_for_tests(
            super::super::ConfigOrigin::Embedded,
            &config,
        );
        assert!(!c.auth.anonymous);
        assert_eq!(c.auth.token, vec![token]);
    }
}
