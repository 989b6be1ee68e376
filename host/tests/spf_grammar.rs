//! The SPF record grammar (RFC 7208 §4.6.1, §5, §6, §7.1, §12) as the
//! vendored mail-auth reads it (`vendor/mail-auth/src/spf/grammar.rs`,
//! FINALDOT-PATCHES.md 7): what it must refuse, what it must take, and that
//! an attacker's record cannot make it slow. The vendored crate's own tests
//! are outside the workspace; these run in `./dev test`.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Mechanism, Spf};

fn parse(terms: &str) -> Result<Spf, mail_auth::Error> {
    Spf::parse(format!("v=spf1 {terms}").as_bytes())
}

#[test]
fn records_rfc_7208_refuses_are_syntax_errors() {
    for bad in [
        "a:111.222.33.44",
        "a:abc.123",
        "a:museum",
        "a:museum.",
        "a:example.-com",
        "a:foo-bar",
        "a:example.com:8080",
        "mx:foo.example.com\0",
        "ip4:1.2.3.4/032",
        "a/24/64",
        "ip4:192.0.2.5\n include:x.example.com",
        "a:ctrl.example.com\rptr",
        "a:\u{feff}garbage.example.net -all",
        "1up=foo",
        "=all",
        "redirect=-all",
        "exp=-all",
        "a:%{x}.example.com",
        "a:50%.example.com",
        "a:x.%%{d}",
        "ip6:::1/129",
        "frobnicate:x",
        "all:x",
        "redirect=a.example.com redirect=b.example.com",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn records_rfc_7208_allows_are_read_as_written() {
    let s = parse("moo.cow-far_out=man:dog/cat ip4:1.2.3.4 -all").expect("modifier names");
    assert_eq!(s.directives.len(), 2);
    let s = parse("a:foo:bar/baz.example.com").expect("':' and '/' in a domain-spec");
    assert!(matches!(
        &s.directives[0].mechanism,
        Mechanism::A {
            ip4_mask: u32::MAX,
            ip6_mask: u128::MAX,
            ..
        }
    ));
    let s =
        parse("a:colo.example.com/28//64 mx/30 a//96 ptr:%{d} exists:%{i}.%{l1r+-}._spf.%{d} ~all")
            .expect("masks and macros");
    assert_eq!(s.directives.len(), 6);
    assert!(matches!(
        &s.directives[0].mechanism,
        Mechanism::A { ip4_mask, ip6_mask, .. } if *ip4_mask == u32::MAX << 4 && *ip6_mask == u128::MAX << 64
    ));
    for good in [
        "a:macro%%percent%_%_space%-url-space.example.com -all",
        "redirect=_spf.example.com exp=explain.%{d}",
        "ip4:0.0.0.0/0 ip6:::1.1.1.1/0 ip6:2001:db8::/32",
        "foo= -all",
        "a:x.%{d}",
        "include:_spf.example.com ?all",
    ] {
        parse(good).unwrap_or_else(|e| panic!("{good:?} refused: {e:?}"));
    }
}

#[test]
fn a_record_full_of_slashes_is_read() {
    // The dual-cidr is looked for in the last octets only (it is at most
    // `/NNN//NNN`), so this is linear; 30 000 slashes once took seconds.
    let long = format!("a:{}x.example.com", "/x".repeat(30_000));
    parse(&long).expect("valid: '/' is allowed in a domain-spec");
    assert!(parse(&format!("a:{}x.example.com/24", "/x".repeat(30_000))).is_ok());
}
