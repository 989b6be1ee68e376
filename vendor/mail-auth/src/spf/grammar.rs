/*
 * finaldot patch (FINALDOT-PATCHES.md, 7): the SPF record's ABNF of
 * RFC 7208 §4.6.1 and §12, applied term by term.
 *
 * SPDX-License-Identifier: Apache-2.0 OR MIT
 */

//! A strict reader of an SPF record's terms (RFC 7208 §4.6.1, §5, §6, §7.1
//! and the ABNF of §12). It refuses what the grammar refuses (control
//! characters and non-ASCII anywhere, a domain-spec whose last label is not
//! a `toplabel`, CIDR lengths with leading zeros or out of range, malformed
//! modifier names, bad macro syntax) and takes what it allows (modifier
//! names with `.` and `_`, a domain-spec holding `:` or `/`), building the
//! same [`Spf`] the rest of the crate evaluates.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::parse::SPFParser;
use super::{Directive, Macro, Mechanism, Qualifier, Spf};
use crate::{Error, Version};

/// Parses the terms after `v=spf1` (the version already checked).
pub(crate) fn parse_terms(terms: &[u8]) -> crate::Result<Spf> {
    // RFC 7208 §4.6.1 and §12: terms are printable ASCII separated by
    // spaces; anything else (CR, LF, TAB, NUL, non-ASCII) is a syntax error.
    if terms.iter().any(|&b| !(0x20..=0x7e).contains(&b)) {
        return Err(Error::ParseError);
    }
    let mut redirect = None;
    let mut exp = None;
    let mut ra = None;
    let mut rp = 100;
    let mut rr = u8::MAX;
    let mut directives = Vec::new();
    for term in terms.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        if let Some((name, value)) = modifier(term)? {
            match name.as_str() {
                "redirect" | "exp" => {
                    let m = domain_spec(value)?;
                    let slot = if name == "redirect" { &mut redirect } else { &mut exp };
                    if slot.is_some() {
                        return Err(Error::ParseError); // §6: at most once
                    }
                    *slot = Some(m);
                }
                "ra" => {
                    let v = value.iter().ra()?;
                    if !v.is_empty() {
                        ra = Some(v.into_boxed_slice());
                    }
                }
                "rp" => rp = std::cmp::min(value.iter().cidr_length()?, 100),
                "rr" => rr = value.iter().rr()?,
                // §6: unknown modifiers are ignored, once their value is a
                // valid macro-string.
                // (an empty value is an empty macro-string: allowed)
                _ => {
                    if !value.is_empty() {
                        macro_string(value, false)?;
                    }
                }
            }
            continue;
        }
        directives.push(directive(term)?);
    }
    Ok(Spf {
        version: Version::V1,
        directives: directives.into_boxed_slice(),
        redirect,
        exp,
        ra,
        rp,
        rr,
    })
}

/// `name=value` when `term` is a modifier (`name = ALPHA *( ALPHA / DIGIT /
/// "-" / "_" / "." )`), lower-cased; `None` for a directive. A term whose
/// `=` comes before any `:` or `/` but whose name is not a name is an error.
fn modifier(term: &[u8]) -> crate::Result<Option<(String, &[u8])>> {
    let Some(eq) = term.iter().position(|&b| b == b'=') else {
        return Ok(None);
    };
    let name = &term[..eq];
    if name.iter().any(|&b| b == b':' || b == b'/') {
        return Ok(None); // `=` inside a mechanism's argument
    }
    let valid = name.first().is_some_and(u8::is_ascii_alphabetic)
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(Error::ParseError);
    }
    Ok(Some((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        &term[eq + 1..],
    )))
}

/// One `[qualifier] mechanism`.
fn directive(term: &[u8]) -> crate::Result<Directive> {
    let (qualifier, rest) = match term.first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest
        .iter()
        .position(|&b| b == b':' || b == b'/')
        .unwrap_or(rest.len());
    let name = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
    let arg = &rest[end..];
    let colon = arg.strip_prefix(b":");
    let mechanism = match name.as_str() {
        "all" if arg.is_empty() => Mechanism::All,
        "include" | "exists" => {
            let macro_string = domain_spec(colon.ok_or(Error::ParseError)?)?;
            if name == "include" {
                Mechanism::Include { macro_string }
            } else {
                Mechanism::Exists { macro_string }
            }
        }
        "a" | "mx" => {
            let (spec, (ip4, ip6)) = match colon {
                Some(a) => {
                    let (spec, cidr) = split_dual_cidr(a);
                    (domain_spec(spec)?, dual_cidr(cidr)?)
                }
                None => (Macro::None, dual_cidr(arg)?),
            };
            let (ip4_mask, ip6_mask) = (super::parse::ip4_mask(ip4), super::parse::ip6_mask(ip6));
            if name == "a" {
                Mechanism::A {
                    macro_string: spec,
                    ip4_mask,
                    ip6_mask,
                }
            } else {
                Mechanism::Mx {
                    macro_string: spec,
                    ip4_mask,
                    ip6_mask,
                }
            }
        }
        "ptr" => Mechanism::Ptr {
            macro_string: match colon {
                Some(a) => domain_spec(a)?,
                None if arg.is_empty() => Macro::None,
                None => return Err(Error::ParseError),
            },
        },
        "ip4" => {
            let a = colon.ok_or(Error::ParseError)?;
            let (addr, len) = split_at_slash(a);
            let addr: Ipv4Addr = std::str::from_utf8(addr)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::ParseError)?;
            let len = match len {
                Some(l) => cidr(l, 32)?,
                None => 32,
            };
            Mechanism::Ip4 {
                addr,
                mask: super::parse::ip4_mask(len),
            }
        }
        "ip6" => {
            let a = colon.ok_or(Error::ParseError)?;
            let (addr, len) = split_at_slash(a);
            let addr: Ipv6Addr = std::str::from_utf8(addr)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Error::ParseError)?;
            let len = match len {
                Some(l) => cidr(l, 128)?,
                None => 128,
            };
            Mechanism::Ip6 {
                addr,
                mask: super::parse::ip6_mask(len),
            }
        }
        _ => return Err(Error::ParseError),
    };
    Ok(Directive::new(qualifier, mechanism))
}

/// `addr[/len]`: the address and the length's digits.
fn split_at_slash(a: &[u8]) -> (&[u8], Option<&[u8]>) {
    match a.iter().position(|&b| b == b'/') {
        Some(i) => (&a[..i], Some(&a[i + 1..])),
        None => (a, None),
    }
}

/// A domain-spec followed by an optional dual-cidr-length: the cidr is the
/// longest tail of the form `/N`, `//N` or `/N//N` (digits only); what is
/// before it, `/` included, is the domain-spec (RFC 7208 §5.3 allows `/`
/// inside a macro-string).
fn split_dual_cidr(a: &[u8]) -> (&[u8], &[u8]) {
    // A dual-cidr is at most `/NNN//NNN`: only the last 9 octets are
    // candidates (linear in the term, however many `/` it holds).
    let from = a.len().saturating_sub(9);
    for i in from..a.len() {
        if a[i] == b'/' && is_dual_cidr(&a[i..]) {
            return (&a[..i], &a[i..]);
        }
    }
    (a, &[])
}

fn is_dual_cidr(c: &[u8]) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if let Some(six) = c.strip_prefix(b"//") {
        return digits(six);
    }
    let Some(rest) = c.strip_prefix(b"/") else {
        return false;
    };
    match rest.windows(2).position(|w| w == b"//") {
        Some(i) => digits(&rest[..i]) && digits(&rest[i + 2..]),
        None => digits(rest),
    }
}

/// `[ip4-cidr-length] [ "/" ip6-cidr-length ]` (each `/N`), or nothing.
fn dual_cidr(c: &[u8]) -> crate::Result<(u8, u8)> {
    if c.is_empty() {
        return Ok((32, 128));
    }
    if let Some(six) = c.strip_prefix(b"//") {
        return Ok((32, cidr(six, 128)?));
    }
    let rest = c.strip_prefix(b"/").ok_or(Error::ParseError)?;
    match rest.windows(2).position(|w| w == b"//") {
        Some(i) => Ok((cidr(&rest[..i], 32)?, cidr(&rest[i + 2..], 128)?)),
        None => Ok((cidr(rest, 32)?, 128)),
    }
}

/// A CIDR length: digits without a leading zero (`0` alone is fine), at
/// most `max` (RFC 7208 §5.6: `ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT)`).
fn cidr(digits: &[u8], max: u8) -> crate::Result<u8> {
    let ok = !digits.is_empty()
        && digits.len() <= 3
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || digits[0] != b'0');
    if !ok {
        return Err(Error::ParseError);
    }
    let n: u32 = digits
        .iter()
        .fold(0, |n, d| n * 10 + u32::from(d - b'0'));
    if n > u32::from(max) {
        return Err(Error::ParseError);
    }
    Ok(n as u8)
}

/// A domain-spec: a macro-string whose domain-end is `"." toplabel ["."]`
/// or a macro-expand (RFC 7208 §7.1).
fn domain_spec(spec: &[u8]) -> crate::Result<Macro> {
    if spec.is_empty() {
        return Err(Error::ParseError);
    }
    let ends_in_macro = ends_with_macro_expand(spec);
    if !ends_in_macro {
        let trimmed = spec.strip_suffix(b".").unwrap_or(spec);
        let Some(dot) = trimmed.iter().rposition(|&b| b == b'.') else {
            return Err(Error::ParseError); // one label: no "." toplabel
        };
        if !is_toplabel(&trimmed[dot + 1..]) {
            return Err(Error::ParseError);
        }
    }
    macro_string(spec, false)
}

/// Whether `spec`'s last token is a `%{…}` macro-expand (read from the
/// left, so `%%{d}` is an escaped `%` and then literal text).
fn ends_with_macro_expand(spec: &[u8]) -> bool {
    let mut i = 0;
    let mut last_was_expand = false;
    while i < spec.len() {
        match (spec[i], spec.get(i + 1)) {
            (b'%', Some(b'{')) => match spec[i..].iter().position(|&b| b == b'}') {
                Some(close) => {
                    i += close + 1;
                    last_was_expand = true;
                }
                None => return false,
            },
            (b'%', Some(_)) => {
                i += 2;
                last_was_expand = false;
            }
            _ => {
                i += 1;
                last_was_expand = false;
            }
        }
    }
    last_was_expand
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`.
pub(crate) fn is_toplabel(label: &[u8]) -> bool {
    if label.is_empty() || !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
        return false;
    }
    if label.contains(&b'-') {
        label[0].is_ascii_alphanumeric() && label[label.len() - 1].is_ascii_alphanumeric()
    } else {
        label.iter().any(u8::is_ascii_alphabetic)
    }
}

/// A macro-string (RFC 7208 §7.1), checked: `%` only as `%%`, `%_`, `%-`
/// or `%{` letter [digits] ["r"] [delimiters] `}` with a letter of
/// `slodiphv` (plus `crt` in an explanation). Parsed by the crate's own
/// macro reader.
fn macro_string(s: &[u8], is_exp: bool) -> crate::Result<Macro> {
    let letters: &[u8] = if is_exp { b"slodiphvcrt" } else { b"slodiphv" };
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            match s.get(i + 1) {
                Some(b'%' | b'_' | b'-') => i += 2,
                Some(b'{') => {
                    let close = s[i..].iter().position(|&b| b == b'}').ok_or(Error::ParseError)? + i;
                    let body = &s[i + 2..close];
                    let (letter, rest) = body.split_first().ok_or(Error::ParseError)?;
                    if !letters.contains(&letter.to_ascii_lowercase()) {
                        return Err(Error::ParseError);
                    }
                    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
                    let rest = &rest[digits..];
                    let rest = rest.strip_prefix(b"r").or_else(|| rest.strip_prefix(b"R")).unwrap_or(rest);
                    if !rest.iter().all(|b| b".-+,/_=".contains(b)) {
                        return Err(Error::ParseError);
                    }
                    i = close + 1;
                }
                _ => return Err(Error::ParseError),
            }
        } else {
            i += 1;
        }
    }
    // The whole slice is one macro-string: read it as an explanation is
    // (no stop at `/` or space; the letters were checked above).
    s.iter().macro_string(true).map(|(m, _)| m)
}

// Tests: host/tests/spf_grammar.rs (this crate is outside the workspace;
// those run in `./dev test`).
