/*
 * SPDX-FileCopyrightText: 2020 Stalwart Labs LLC <hello@stalw.art>
 *
 * SPDX-License-Identifier: Apache-2.0 OR MIT
 */

use super::{Macro, RR_FAIL, RR_NEUTRAL_NONE, RR_SOFTFAIL, RR_TEMP_PERM_ERROR, Spf, Variable};
use crate::DnsError;
use crate::{
    Error,
    common::parse::{TagParser, TxtRecordParser, V},
    scan::{find_ascii_whitespace, find_le_space_or2},
};
use std::slice::Iter;

impl TxtRecordParser for Spf {
    const UNIQUE: bool = true;

    fn parse(bytes: &[u8]) -> crate::Result<Spf> {
        let mut record = bytes.iter();
        if !matches!(record.key(), Some(k) if k == V)
            || !record.match_bytes(b"spf1")
            || record.next().is_some_and(|v| !v.is_ascii_whitespace())
        {
            return Err(Error::Dns(DnsError::InvalidRecordType));
        }

        // finaldot patch (FINALDOT-PATCHES.md, 7): the terms are read by
        // the strict reader of RFC 7208's grammar (`grammar.rs`).
        super::grammar::parse_terms(record.as_slice())
    }
}

#[inline(always)]
pub(crate) fn ip4_mask(cidr_length: u8) -> u32 {
    if cidr_length == 0 {
        0
    } else {
        u32::MAX << (32 - cidr_length)
    }
}

#[inline(always)]
pub(crate) fn ip6_mask(cidr_length: u8) -> u128 {
    if cidr_length == 0 {
        0
    } else {
        u128::MAX << (128 - cidr_length)
    }
}

pub(crate) trait SPFParser: Sized {
    fn macro_string(&mut self, is_exp: bool) -> crate::Result<(Macro, u8)>;
    fn cidr_length(&mut self) -> crate::Result<u8>;
    fn rr(&mut self) -> crate::Result<u8>;
    fn ra(&mut self) -> crate::Result<Vec<u8>>;
}

impl SPFParser for Iter<'_, u8> {
    fn macro_string(&mut self, is_exp: bool) -> crate::Result<(Macro, u8)> {
        let input = self.as_slice();
        let mut pos = 0;

        loop {
            let rest = input.get(pos..).unwrap_or_default();
            let hit = pos
                + if is_exp {
                    memchr::memchr(b'%', rest).unwrap_or(rest.len())
                } else {
                    find_le_space_or2(rest, b'%', b'/')
                };

            match input.get(hit) {
                None => {
                    *self = [].iter();
                    return literal_macro(input, b' ');
                }
                Some(&b'%') => break,
                Some(&ch) if !is_exp && (ch == b'/' || ch.is_ascii_whitespace()) => {
                    *self = input.get(hit + 1..).unwrap_or_default().iter();
                    return literal_macro(
                        input.get(..hit).unwrap_or_default(),
                        if ch == b'/' { b'/' } else { b' ' },
                    );
                }
                Some(_) => pos = hit + 1,
            }
        }

        self.macro_string_slow(is_exp)
    }

    fn cidr_length(&mut self) -> crate::Result<u8> {
        let input = self.as_slice();
        let mut pos = 0;
        let mut cidr_length = 0u8;

        while let Some(&ch) = input.get(pos) {
            pos += 1;
            match ch {
                b'0'..=b'9' => {
                    cidr_length = cidr_length.saturating_mul(10).saturating_add(ch - b'0');
                }
                _ => {
                    if !ch.is_ascii_whitespace() {
                        *self = input.get(pos..).unwrap_or_default().iter();
                        return Err(Error::ParseError);
                    }
                    break;
                }
            }
        }

        *self = input.get(pos..).unwrap_or_default().iter();
        Ok(cidr_length)
    }

    fn rr(&mut self) -> crate::Result<u8> {
        let mut flags: u8 = 0;

        'outer: while let Some(&ch) = self.next() {
            match ch {
                b'a' | b'A' => {
                    for _ in 0..2 {
                        match self.next().unwrap_or(&0) {
                            b'l' | b'L' => {}
                            b' ' | b'\t' => {
                                return Ok(flags);
                            }
                            _ => {
                                continue 'outer;
                            }
                        }
                    }
                    flags = u8::MAX;
                }
                b'e' | b'E' => {
                    flags |= RR_TEMP_PERM_ERROR;
                }
                b'f' | b'F' => {
                    flags |= RR_FAIL;
                }
                b's' | b'S' => {
                    flags |= RR_SOFTFAIL;
                }
                b'n' | b'N' => {
                    flags |= RR_NEUTRAL_NONE;
                }
                b':' => {}
                _ => {
                    if ch.is_ascii_whitespace() {
                        break;
                    } else if !ch.is_ascii_alphanumeric() {
                        return Err(Error::ParseError);
                    }
                }
            }
        }

        Ok(flags)
    }

    fn ra(&mut self) -> crate::Result<Vec<u8>> {
        let input = self.as_slice();
        let end = find_ascii_whitespace(input);
        let ra = input.get(..end).unwrap_or_default().to_vec();
        *self = input.get(end + 1..).unwrap_or_default().iter();
        Ok(ra)
    }
}

#[inline(always)]
fn literal_macro(literal: &[u8], stop_char: u8) -> crate::Result<(Macro, u8)> {
    if literal.is_empty() {
        Err(Error::ParseError)
    } else {
        Ok((Macro::Literal(literal.into()), stop_char))
    }
}

trait SPFMacroParser {
    fn macro_string_slow(&mut self, is_exp: bool) -> crate::Result<(Macro, u8)>;
}

impl SPFMacroParser for Iter<'_, u8> {
    #[inline(never)]
    #[allow(clippy::while_let_on_iterator)]
    fn macro_string_slow(&mut self, is_exp: bool) -> crate::Result<(Macro, u8)> {
        let mut stop_char = b' ';
        let mut last_is_pct = false;
        let mut literal = Vec::with_capacity(16);
        let mut macro_string = Vec::new();

        while let Some(&ch) = self.next() {
            match ch {
                b'%' => {
                    if last_is_pct {
                        literal.push(b'%');
                    } else {
                        last_is_pct = true;
                        continue;
                    }
                }
                b'_' if last_is_pct => {
                    literal.push(b' ');
                }
                b'-' if last_is_pct => {
                    literal.extend_from_slice(b"%20");
                }
                b'{' if last_is_pct => {
                    if !literal.is_empty() {
                        macro_string.push(Macro::Literal(literal.as_slice().into()));
                        literal.clear();
                    }

                    let (letter, escape) = self
                        .next()
                        .copied()
                        .and_then(|l| {
                            if !is_exp {
                                Variable::parse(l)
                            } else {
                                Variable::parse_exp(l)
                            }
                        })
                        .ok_or(Error::ParseError)?;
                    let mut num_parts: u32 = 0;
                    let mut reverse = false;
                    let mut delimiters = 0;

                    while let Some(&ch) = self.next() {
                        match ch {
                            b'0'..=b'9' => {
                                num_parts = num_parts
                                    .saturating_mul(10)
                                    .saturating_add((ch - b'0') as u32);
                            }
                            b'r' | b'R' => {
                                reverse = true;
                            }
                            b'}' => {
                                break;
                            }
                            b'.' | b'-' | b'+' | b',' | b'/' | b'_' | b'=' => {
                                delimiters |= 1u64 << (ch - b'+');
                            }
                            _ => {
                                return Err(Error::ParseError);
                            }
                        }
                    }

                    if delimiters == 0 {
                        delimiters = 1u64 << (b'.' - b'+');
                    }

                    macro_string.push(Macro::Variable {
                        letter,
                        num_parts,
                        reverse,
                        escape,
                        delimiters,
                    });
                }
                b'/' if !is_exp => {
                    stop_char = ch;
                    break;
                }
                _ => {
                    if last_is_pct {
                        return Err(Error::ParseError);
                    } else if !ch.is_ascii_whitespace() || is_exp {
                        literal.push(ch);
                    } else {
                        break;
                    }
                }
            }

            last_is_pct = false;
        }

        if !literal.is_empty() {
            macro_string.push(Macro::Literal(literal.into_boxed_slice()));
        }

        match macro_string.len() {
            1 => macro_string
                .pop()
                .map(|m| (m, stop_char))
                .ok_or(Error::ParseError),
            0 => Err(Error::ParseError),
            _ => Ok((Macro::List(macro_string.into_boxed_slice()), stop_char)),
        }
    }
}

impl Variable {
    pub(crate) fn parse(ch: u8) -> Option<(Self, bool)> {
        match ch {
            b's' => (Variable::Sender, false),
            b'l' => (Variable::SenderLocalPart, false),
            b'o' => (Variable::SenderDomainPart, false),
            b'd' => (Variable::Domain, false),
            b'i' => (Variable::Ip, false),
            b'p' => (Variable::ValidatedDomain, false),
            b'v' => (Variable::IpVersion, false),
            b'h' => (Variable::HeloDomain, false),

            b'S' => (Variable::Sender, true),
            b'L' => (Variable::SenderLocalPart, true),
            b'O' => (Variable::SenderDomainPart, true),
            b'D' => (Variable::Domain, true),
            b'I' => (Variable::Ip, true),
            b'P' => (Variable::ValidatedDomain, true),
            b'V' => (Variable::IpVersion, true),
            b'H' => (Variable::HeloDomain, true),
            _ => return None,
        }
        .into()
    }

    pub(crate) fn parse_exp(ch: u8) -> Option<(Self, bool)> {
        match ch {
            b's' => (Variable::Sender, false),
            b'l' => (Variable::SenderLocalPart, false),
            b'o' => (Variable::SenderDomainPart, false),
            b'd' => (Variable::Domain, false),
            b'i' => (Variable::Ip, false),
            b'p' => (Variable::ValidatedDomain, false),
            b'v' => (Variable::IpVersion, false),
            b'h' => (Variable::HeloDomain, false),
            b'c' => (Variable::SmtpIp, false),
            b'r' => (Variable::HostDomain, false),
            b't' => (Variable::CurrentTime, false),

            b'S' => (Variable::Sender, true),
            b'L' => (Variable::SenderLocalPart, true),
            b'O' => (Variable::SenderDomainPart, true),
            b'D' => (Variable::Domain, true),
            b'I' => (Variable::Ip, true),
            b'P' => (Variable::ValidatedDomain, true),
            b'V' => (Variable::IpVersion, true),
            b'H' => (Variable::HeloDomain, true),
            b'C' => (Variable::SmtpIp, true),
            b'R' => (Variable::HostDomain, true),
            b'T' => (Variable::CurrentTime, true),
            _ => return None,
        }
        .into()
    }
}

impl TxtRecordParser for Macro {
    fn parse(record: &[u8]) -> crate::Result<Self> {
        record.iter().macro_string(true).map(|(m, _)| m)
    }
}

#[cfg(test)]
mod test {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::{
        common::parse::TxtRecordParser,
        spf::{
            Directive, Macro, Mechanism, Qualifier, RR_FAIL, RR_NEUTRAL_NONE, RR_SOFTFAIL,
            RR_TEMP_PERM_ERROR, Spf, Variable, Version,
        },
    };

    use super::SPFParser;

    #[test]
    fn parse_spf() {
        for (record, expected_result) in [
            (
                "v=spf1 +mx a:colo.example.com/28 -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::A {
                                macro_string: Macro::Literal(b"colo.example.com".as_slice().into()),
                                ip4_mask: u32::MAX << (32 - 28),
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 a:A.EXAMPLE.COM -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::A {
                                macro_string: Macro::Literal(b"A.EXAMPLE.COM".as_slice().into()),
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 +mx -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 +mx redirect=_spf.example.com",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    redirect: Macro::Literal(b"_spf.example.com".as_slice().into()).into(),
                    exp: None,
                    directives: Box::new([Directive::new(
                        Qualifier::Pass,
                        Mechanism::Mx {
                            macro_string: Macro::None,
                            ip4_mask: u32::MAX,
                            ip6_mask: u128::MAX,
                        },
                    )]),
                },
            ),
            (
                "v=spf1 a mx -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::A {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 include:example.com include:example.org -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Include {
                                macro_string: Macro::Literal(b"example.com".as_slice().into()),
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Include {
                                macro_string: Macro::Literal(b"example.org".as_slice().into()),
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Exists {
                                macro_string: Macro::List(Box::new([
                                    Macro::Variable {
                                        letter: Variable::Ip,
                                        num_parts: 0,
                                        reverse: true,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b".".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::SenderLocalPart,
                                        num_parts: 1,
                                        reverse: true,
                                        escape: false,
                                        delimiters: (1u64 << (b'+' - b'+'))
                                            | (1u64 << (b'-' - b'+')),
                                    },
                                    Macro::Literal(b"._spf.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::Domain,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                ])),
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 mx -all exp=explain._spf.%{d}",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: Macro::List(Box::new([
                        Macro::Literal(b"explain._spf.".as_slice().into()),
                        Macro::Variable {
                            letter: Variable::Domain,
                            num_parts: 0,
                            reverse: false,
                            escape: false,
                            delimiters: 1u64 << (b'.' - b'+'),
                        },
                    ]))
                    .into(),
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 ip4:192.0.2.1 ip4:192.0.2.129 -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ip4 {
                                addr: "192.0.2.1".parse().unwrap(),
                                mask: u32::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ip4 {
                                addr: "192.0.2.129".parse().unwrap(),
                                mask: u32::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 ip4:192.0.2.0/24 mx -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ip4 {
                                addr: "192.0.2.0".parse().unwrap(),
                                mask: u32::MAX << (32 - 24),
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 mx/30 mx:example.org/30 -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX << (32 - 30),
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::Literal(b"example.org".as_slice().into()),
                                ip4_mask: u32::MAX << (32 - 30),
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 ptr -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ptr {
                                macro_string: Macro::None,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 exists:%{l1r+}.%{d}",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([Directive::new(
                        Qualifier::Pass,
                        Mechanism::Exists {
                            macro_string: Macro::List(Box::new([
                                Macro::Variable {
                                    letter: Variable::SenderLocalPart,
                                    num_parts: 1,
                                    reverse: true,
                                    escape: false,
                                    delimiters: 1u64 << (b'+' - b'+'),
                                },
                                Macro::Literal(b".".as_slice().into()),
                                Macro::Variable {
                                    letter: Variable::Domain,
                                    num_parts: 0,
                                    reverse: false,
                                    escape: false,
                                    delimiters: 1u64 << (b'.' - b'+'),
                                },
                            ])),
                        },
                    )]),
                },
            ),
            (
                "v=spf1 exists:%{ir}.%{l1r+}.%{d}",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([Directive::new(
                        Qualifier::Pass,
                        Mechanism::Exists {
                            macro_string: Macro::List(Box::new([
                                Macro::Variable {
                                    letter: Variable::Ip,
                                    num_parts: 0,
                                    reverse: true,
                                    escape: false,
                                    delimiters: 1u64 << (b'.' - b'+'),
                                },
                                Macro::Literal(b".".as_slice().into()),
                                Macro::Variable {
                                    letter: Variable::SenderLocalPart,
                                    num_parts: 1,
                                    reverse: true,
                                    escape: false,
                                    delimiters: 1u64 << (b'+' - b'+'),
                                },
                                Macro::Literal(b".".as_slice().into()),
                                Macro::Variable {
                                    letter: Variable::Domain,
                                    num_parts: 0,
                                    reverse: false,
                                    escape: false,
                                    delimiters: 1u64 << (b'.' - b'+'),
                                },
                            ])),
                        },
                    )]),
                },
            ),
            (
                "v=spf1 exists:_h.%{h}._l.%{l}._o.%{o}._i.%{i}._spf.%{d} ?all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Exists {
                                macro_string: Macro::List(Box::new([
                                    Macro::Literal(b"_h.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::HeloDomain,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b"._l.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::SenderLocalPart,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b"._o.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::SenderDomainPart,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b"._i.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::Ip,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b"._spf.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::Domain,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                ])),
                            },
                        ),
                        Directive::new(Qualifier::Neutral, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 mx ?exists:%{ir}.whitelist.example.org -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Neutral,
                            Mechanism::Exists {
                                macro_string: Macro::List(Box::new([
                                    Macro::Variable {
                                        letter: Variable::Ip,
                                        num_parts: 0,
                                        reverse: true,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b".whitelist.example.org".as_slice().into()),
                                ])),
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 mx exists:%{l}._%-spf_%_verify%%.%{d} -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Exists {
                                macro_string: Macro::List(Box::new([
                                    Macro::Variable {
                                        letter: Variable::SenderLocalPart,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                    Macro::Literal(b"._%20spf_ verify%.".as_slice().into()),
                                    Macro::Variable {
                                        letter: Variable::Domain,
                                        num_parts: 0,
                                        reverse: false,
                                        escape: false,
                                        delimiters: 1u64 << (b'.' - b'+'),
                                    },
                                ])),
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 mx redirect=%{l1r+}._at_.%{o,=_/}._spf.%{d}",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: Macro::List(Box::new([
                        Macro::Variable {
                            letter: Variable::SenderLocalPart,
                            num_parts: 1,
                            reverse: true,
                            escape: false,
                            delimiters: 1u64 << (b'+' - b'+'),
                        },
                        Macro::Literal(b"._at_.".as_slice().into()),
                        Macro::Variable {
                            letter: Variable::SenderDomainPart,
                            num_parts: 0,
                            reverse: false,
                            escape: false,
                            delimiters: (1u64 << (b',' - b'+'))
                                | (1u64 << (b'=' - b'+'))
                                | (1u64 << (b'_' - b'+'))
                                | (1u64 << (b'/' - b'+')),
                        },
                        Macro::Literal(b"._spf.".as_slice().into()),
                        Macro::Variable {
                            letter: Variable::Domain,
                            num_parts: 0,
                            reverse: false,
                            escape: false,
                            delimiters: 1u64 << (b'.' - b'+'),
                        },
                    ]))
                    .into(),
                    directives: Box::new([Directive::new(
                        Qualifier::Pass,
                        Mechanism::Mx {
                            macro_string: Macro::None,
                            ip4_mask: u32::MAX,
                            ip6_mask: u128::MAX,
                        },
                    )]),
                },
            ),
            (
                "v=spf1 -ip4:192.0.2.0/24 a//96 +all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Fail,
                            Mechanism::Ip4 {
                                addr: "192.0.2.0".parse().unwrap(),
                                mask: u32::MAX << (32 - 24),
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::A {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX << (128 - 96),
                            },
                        ),
                        Directive::new(Qualifier::Pass, Mechanism::All),
                    ]),
                },
            ),
            (
                concat!(
                    "v=spf1 +mx/11//100 ~a:domain.com/12/123 ?ip6:::1 ",
                    "-ip6:a::b/111 ip6:1080::8:800:68.0.3.1/96 "
                ),
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::None,
                                ip4_mask: u32::MAX << (32 - 11),
                                ip6_mask: u128::MAX << (128 - 100),
                            },
                        ),
                        Directive::new(
                            Qualifier::SoftFail,
                            Mechanism::A {
                                macro_string: Macro::Literal(b"domain.com".as_slice().into()),
                                ip4_mask: u32::MAX << (32 - 12),
                                ip6_mask: u128::MAX << (128 - 123),
                            },
                        ),
                        Directive::new(
                            Qualifier::Neutral,
                            Mechanism::Ip6 {
                                addr: "::1".parse().unwrap(),
                                mask: u128::MAX,
                            },
                        ),
                        Directive::new(
                            Qualifier::Fail,
                            Mechanism::Ip6 {
                                addr: "a::b".parse().unwrap(),
                                mask: u128::MAX << (128 - 111),
                            },
                        ),
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ip6 {
                                addr: "1080::8:800:68.0.3.1".parse().unwrap(),
                                mask: u128::MAX << (128 - 96),
                            },
                        ),
                    ]),
                },
            ),
            (
                "v=spf1 mx:example.org -all ra=postmaster rp=15 rr=e:f:s:n",
                Spf {
                    version: Version::V1,
                    ra: Some(b"postmaster".as_slice().into()),
                    rp: 15,
                    rr: RR_FAIL | RR_NEUTRAL_NONE | RR_SOFTFAIL | RR_TEMP_PERM_ERROR,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Mx {
                                macro_string: Macro::Literal(b"example.org".as_slice().into()),
                                ip4_mask: u32::MAX,
                                ip6_mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
            (
                "v=spf1 ip6:fe80:0000:0000::0000:0000:0000:1 -all",
                Spf {
                    version: Version::V1,
                    ra: None,
                    rp: 100,
                    rr: u8::MAX,
                    exp: None,
                    redirect: None,
                    directives: Box::new([
                        Directive::new(
                            Qualifier::Pass,
                            Mechanism::Ip6 {
                                addr: "fe80:0000:0000::0000:0000:0000:1".parse().unwrap(),
                                mask: u128::MAX,
                            },
                        ),
                        Directive::new(Qualifier::Fail, Mechanism::All),
                    ]),
                },
            ),
        ] {
            assert_eq!(
                Spf::parse(record.as_bytes()).unwrap_or_else(|err| panic!("{record:?} : {err:?}")),
                expected_result,
                "{record}"
            );
        }
    }

}
