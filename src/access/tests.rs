//! Tests of access control: credentials, scopes, pushes, networks, quotas, and that
//! each refusal is counted where it is made.

use super::*;
use crate::config::load::load_from_text_for_tests;
use crate::config::ConfigOrigin;
use base64::engine::general_purpose::STANDARD;

struct Fixture {
    access: Access,
    public: String,
    both: String,
}

fn fixture(auth: &str) -> Fixture {
    let public = token::new_secret().expect("secret");
    let both = token::new_secret().expect("secret");
    let text = format!(
        "[auth]\n{auth}\n[[auth.token]]\nname = \"pub\"\nhash = \"{}\"\nscopes = [\"pull:public\"]\n[[auth.token]]\nname = \"both\"\nhash = \"{}\"\nscopes = [\"pull:public\", \"pull:private\"]\n[[upstream]]\nname = \"secret.lan\"\nurl = \"https://secret.lan\"\nprivate = true\n",
        public.hash, both.hash
    );
    let c = load_from_text_for_tests(ConfigOrigin::Embedded, &text);
    Fixture {
        access: Access::from_config(&c, Arc::new(Metrics::new())).expect("access"),
        public: public.secret,
        both: both.secret,
    }
}

fn basic(secret: &str) -> Vec<u8> {
    format!("Basic {}", STANDARD.encode(format!("anyone:{secret}"))).into_bytes()
}

#[test]
fn basic_and_bearer() {
    let f = fixture("anonymous = true");
    let a = &f.access;
    assert_eq!(a.authenticate(None), Ok(Identity::Anonymous));
    let who = a.authenticate(Some(&basic(&f.both))).expect("valid");
    assert_eq!(who.name(), "both");
    assert!(who.has(Scope::PullPrivate));
    assert_eq!(
        a.authenticate(Some(&basic("spk_wrong"))),
        Err(DenyReason::BadCredentials)
    );
    for junk in [
        &b"Basic"[..],
        b"Basic !!!",
        b"Digest x",
        b"Bearer v1.a.b",
        b"\xff\xfe",
    ] {
        assert!(a.authenticate(Some(junk)).is_err());
    }
    let issued = a.issue(&who).expect("token");
    let bearer = format!("Bearer {}", issued.token);
    assert_eq!(a.authenticate(Some(bearer.as_bytes())), Ok(who));
    let anon = a.issue(&Identity::Anonymous).expect("anonymous token");
    let bearer = format!("bearer {}", anon.token);
    assert_eq!(
        a.authenticate(Some(bearer.as_bytes())),
        Ok(Identity::Anonymous)
    );
}

#[test]
fn scopes_and_private_upstreams() {
    let f = fixture("anonymous = true");
    let a = &f.access;
    let public = a.authenticate(Some(&basic(&f.public))).expect("valid");
    let both = a.authenticate(Some(&basic(&f.both))).expect("valid");
    let anon = Identity::Anonymous;
    let private = Action::Pull {
        upstream: "secret.lan",
    };
    let hub = Action::Pull {
        upstream: "docker.io",
    };
    assert_eq!(a.decide(&anon, hub), Decision::Allow);
    assert_eq!(
        a.decide(&anon, private),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    assert_eq!(a.decide(&public, hub), Decision::Allow);
    assert_eq!(
        a.decide(&public, private),
        Decision::Forbid(DenyReason::Scope)
    );
    assert_eq!(a.decide(&both, private), Decision::Allow);
    // Tokens exist: anonymous pings are challenged so clients learn where to log in.
    assert_eq!(
        a.decide(&anon, Action::Ping),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    assert_eq!(a.decide(&public, Action::Ping), Decision::Allow);
    assert!(!a.may_pull(&public, "secret.lan"));
    assert!(a.issue(&anon).is_some());

    let f = fixture("anonymous = false");
    let a = &f.access;
    assert_eq!(
        a.decide(&anon, hub),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    assert_eq!(
        a.decide(&anon, Action::Catalog),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    // A request that routes nowhere: only a client that may use the edge learns why.
    assert_eq!(
        a.decide(&anon, Action::Unrouted),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    assert_eq!(a.decide(&public, Action::Unrouted), Decision::Allow);
    assert!(a.issue(&anon).is_none());
}

#[test]
fn push_needs_the_push_scope_and_a_push_upstream() {
    let pusher = token::new_secret().expect("secret");
    let text = format!(
        "[auth]\nanonymous = true\n[[auth.token]]\nname = \"ci\"\nhash = \"{}\"\nscopes = [\"push\"]\n[[upstream]]\nname = \"corp.lan\"\nurl = \"https://corp.lan\"\nprivate = true\npush = true\n[[upstream]]\nname = \"ro.lan\"\nurl = \"https://ro.lan\"\nprivate = true\n",
        pusher.hash
    );
    let c = load_from_text_for_tests(ConfigOrigin::Embedded, &text);
    let a = Access::from_config(&c, Arc::new(Metrics::new())).expect("access");
    let basic = format!("Basic {}", STANDARD.encode(format!("x:{}", pusher.secret)));
    let ci = a.authenticate(Some(basic.as_bytes())).expect("token");
    let corp = Action::Push {
        upstream: "corp.lan",
    };
    assert!(a.push_enabled("corp.lan") && !a.push_enabled("ro.lan"));
    assert_eq!(a.decide(&ci, corp), Decision::Allow);
    assert_eq!(
        a.decide(&ci, Action::Push { upstream: "ro.lan" }),
        Decision::Forbid(DenyReason::Scope)
    );
    // push implies nothing about pulls.
    assert_eq!(
        a.decide(
            &ci,
            Action::Pull {
                upstream: "corp.lan"
            }
        ),
        Decision::Forbid(DenyReason::Scope)
    );
    assert_eq!(
        a.decide(&Identity::Anonymous, corp),
        Decision::Challenge(DenyReason::NoCredentials)
    );
}

#[test]
fn refusals_are_counted_where_they_are_made() {
    let f = fixture("anonymous = false\nallow_cidrs = [\"10.0.0.0/8\"]");
    let a = &f.access;
    let count = |reason: &str| a.metrics.auth_denials.with_label_values(&[reason]).get();
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    assert!(!a.peer_allowed("192.0.2.1".parse().expect("ip")));
    assert_eq!(count("network"), 1);
    assert_eq!(
        a.admit(Some(&b"Basic !!!"[..]), ip),
        Err(Refused::BadCredentials)
    );
    assert_eq!(count("bad_credentials"), 1);
    let anon = a.admit(None, ip).expect("no quota configured");
    let hub = Action::Pull {
        upstream: "docker.io",
    };
    assert_eq!(
        a.authorize(&anon, hub),
        Decision::Challenge(DenyReason::NoCredentials)
    );
    assert!(a.issue(&anon).is_none());
    assert_eq!(count("no_credentials"), 2);
}

#[test]
fn networks_and_quota() {
    let f = fixture(
        "allow_cidrs = [\"10.0.0.0/8\", \"::1\"]\nanonymous_rate = { per_minute = 60, burst = 2 }",
    );
    let a = &f.access;
    assert!(a.peer_allowed("10.9.8.7".parse().expect("ip")));
    assert!(a.peer_allowed("::1".parse().expect("ip")));
    assert!(!a.peer_allowed("127.0.0.1".parse().expect("ip")));
    let ip: IpAddr = "10.0.0.1".parse().expect("ip");
    assert!(a.check_anonymous_rate(ip).is_ok());
    assert!(a.check_anonymous_rate(ip).is_ok());
    let wait = a.check_anonymous_rate(ip).expect_err("over the burst");
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    // Another address has its own quota.
    assert!(a
        .check_anonymous_rate("10.0.0.2".parse().expect("ip"))
        .is_ok());
}

#[test]
fn the_quota_groups_ipv6_clients_by_the_configured_prefix() {
    let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
    // Default /128: every IPv6 address on its own (SLAAC hosts of one LAN share a /64).
    let f = fixture("anonymous_rate = { per_minute = 60, burst = 1 }");
    let a = &f.access;
    assert!(a.check_anonymous_rate(ip("2001:db8:1:2::10")).is_ok());
    assert!(a.check_anonymous_rate(ip("2001:db8:1:2::11")).is_ok());
    // /64: a client rotating addresses inside its /64 is one client.
    let f = fixture("anonymous_rate = { per_minute = 60, burst = 1, ipv6_prefix = 64 }");
    let a = &f.access;
    assert!(a.check_anonymous_rate(ip("2001:db8:1:2::10")).is_ok());
    assert!(
        a.check_anonymous_rate(ip("2001:db8:1:2:aaaa::99")).is_err(),
        "same /64: same count"
    );
    assert!(
        a.check_anonymous_rate(ip("2001:db8:1:3::10")).is_ok(),
        "another /64: its own count"
    );
    // IPv4 clients on a dual-stack listener (IPv4-mapped) stay one count per address,
    // never one for all of IPv4.
    assert!(a.check_anonymous_rate(ip("::ffff:10.0.0.1")).is_ok());
    assert!(a.check_anonymous_rate(ip("::ffff:10.0.0.2")).is_ok());
    assert!(
        a.check_anonymous_rate(ip("10.0.0.1")).is_err(),
        "the same address as ::ffff:10.0.0.1"
    );
}

#[test]
fn operator_endpoints_count_against_the_quota_outside_admin_networks() {
    let f = fixture("anonymous_rate = { per_minute = 60, burst = 2 }");
    let a = &f.access;
    let outsider: IpAddr = "10.1.1.1".parse().expect("ip");
    assert!(a.operator_rate(outsider, None).is_ok());
    assert!(a.operator_rate(outsider, None).is_ok());
    assert!(a.operator_rate(outsider, None).is_err(), "over the burst");
    let token = basic(&f.public);
    assert!(
        a.operator_rate(outsider, Some(&token)).is_ok(),
        "a client with a token is not limited"
    );
    let loopback: IpAddr = "127.0.0.1".parse().expect("ip");
    for _ in 0..10 {
        assert!(
            a.operator_rate(loopback, None).is_ok(),
            "admin_cidrs: no limit"
        );
    }
}
