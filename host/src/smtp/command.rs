//! The SMTP command-line parser: one line (without its CRLF) in, one [`Command`]
//! or the exact reply for its syntax error out.
//!
//! SECURITY: the input is hostile network bytes. The parser never panics, never
//! allocates more than the line it was given (at most 512 octets, enforced by the
//! receiver), and accepts only the RFC 5321 grammar for paths (with the RFC 6531
//! UTF-8 extension when the client asked for SMTPUTF8). It is lenient only where
//! deployed clients commonly are (a space after `FROM:`/`TO:`, a `<postmaster>`
//! recipient, source routes that are accepted and ignored).

use finaldot_sdk::wire::{xtext_decode, DsnNotify, DsnRet, Orcpt};

use super::reply::Reply;

/// A mailbox `local@domain` from a path, kept as the client spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part, quoted form preserved.
    pub local: String,
    /// The domain or address literal (e.g. `[192.0.2.1]`).
    pub domain: String,
}

impl Mailbox {
    /// True when either part has non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// The address when the domain is an address literal (`user@[192.0.2.1]`).
    pub fn literal_ip(&self) -> Option<std::net::IpAddr> {
        parse_address_literal(&self.domain).ok()
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// The BODY= parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
}

/// The parameters of MAIL FROM that finaldot understands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// SIZE= (RFC 1870), the client's estimate.
    pub size: Option<u64>,
    /// BODY= (RFC 6152).
    pub body: Body,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// AUTH= (RFC 4954 §5), allowed only where AUTH is offered.
    pub auth: bool,
    /// RET= (RFC 3461 §4.3).
    pub ret: Option<DsnRet>,
    /// ENVID= (RFC 3461 §4.4), xtext-decoded.
    pub envid: Option<String>,
}

/// The parameters of RCPT TO that finaldot understands (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// NOTIFY= (RFC 3461 §4.1).
    pub notify: Option<DsnNotify>,
    /// ORCPT= (RFC 3461 §4.2), its address xtext-decoded.
    pub orcpt: Option<Orcpt>,
}

/// One parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// EHLO with the client's domain or address literal.
    Ehlo(String),
    /// HELO with the client's domain.
    Helo(String),
    /// MAIL FROM; `None` is the null reverse-path `<>`.
    Mail {
        /// The reverse-path.
        from: Option<Mailbox>,
        /// Its parameters.
        params: MailParams,
    },
    /// RCPT TO.
    Rcpt {
        /// The forward-path; `<postmaster>` has an empty domain.
        to: Mailbox,
        /// Its parameters.
        params: RcptParams,
    },
    /// DATA.
    Data,
    /// BDAT (RFC 3030) with the chunk size and whether it is the last chunk.
    Bdat {
        /// Octets that follow the command line.
        size: u64,
        /// True for `BDAT n LAST`.
        last: bool,
    },
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// QUIT.
    Quit,
    /// VRFY (answered 252: finaldot never reveals users).
    Vrfy,
    /// EXPN (not offered).
    Expn,
    /// HELP, with an optional topic.
    Help,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// AUTH (RFC 4954): the mechanism (uppercase) and the initial response.
    Auth {
        /// `PLAIN`, `LOGIN`, …
        mechanism: String,
        /// The base64 initial response, if given (`=` is an empty one).
        initial: Option<String>,
    },
    /// A command defined by an extension finaldot does not offer (yet).
    NotImplemented(&'static str),
}

/// Longest mailbox accepted, in octets (RFC 5321 §4.5.3.1.3 path limit, less the brackets).
const MAX_PATH: usize = 256;
/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL: usize = 64;
/// Longest domain (RFC 5321 §4.5.3.1.2).
const MAX_DOMAIN: usize = 255;

fn syntax(code: u16, enhanced: &'static str, text: &str) -> Reply {
    Reply::new(code, enhanced, text)
}

/// Parses one command line (without CRLF).
// Long on purpose: one arm per SMTP verb.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| syntax(500, "5.5.2", "Syntax error: command is not valid UTF-8"))?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    if verb.is_empty() {
        return Err(syntax(500, "5.5.2", "Syntax error: empty command"));
    }
    let upper = verb.to_ascii_uppercase();
    let no_args = |cmd: Command, usage: &str| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(Reply::new(501, "5.5.4", format!("Syntax: {usage}")))
        }
    };
    match upper.as_str() {
        "EHLO" | "HELO" => {
            let arg = rest.trim();
            let domain = arg.split(' ').next().unwrap_or("");
            if domain.is_empty() {
                return Err(Reply::new(
                    501,
                    "5.5.4",
                    format!("Syntax: {upper} hostname"),
                ));
            }
            if !domain.chars().all(|c| !c.is_control()) {
                return Err(Reply::new(501, "5.5.4", "Invalid hostname"));
            }
            Ok(if upper == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(Command::Data, "DATA"),
        "BDAT" => parse_bdat(rest),
        "RSET" => no_args(Command::Rset, "RSET"),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "VRFY" => {
            if rest.trim().is_empty() {
                Err(Reply::new(501, "5.5.4", "Syntax: VRFY address"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        "AUTH" => {
            let mut words = rest.split_whitespace();
            let usage = || Reply::new(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
            let mechanism = words.next().ok_or_else(usage)?.to_ascii_uppercase();
            let initial = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(usage());
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "ETRN" => Ok(Command::NotImplemented("ETRN")),
        "TURN" => Ok(Command::NotImplemented("TURN")),
        "ATRN" => Ok(Command::NotImplemented("ATRN")),
        "SEND" | "SOML" | "SAML" => Ok(Command::NotImplemented("SEND")),
        _ => Err(syntax(500, "5.5.2", "Error: command not recognized")),
    }
}

/// Strips a case-insensitive keyword such as `FROM:` and the optional space after it.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    Some(rest[keyword.len()..].trim_start_matches(' '))
}

/// Splits `<path> params...` into the bracketed path (without brackets) and the params.
fn split_path(s: &str) -> Option<(&str, &str)> {
    let s = s.strip_prefix('<')?;
    // A quoted local part may contain '>', so find the closing bracket outside quotes.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let params = &s[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return None;
                }
                return Some((&s[..i], params.trim()));
            }
            _ => {}
        }
    }
    None
}

/// The `KEYWORD[=value]` parameters after a path (RFC 5321 §4.1.2), as
/// written.
fn esmtp_params(params: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    params
        .split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let usage = || Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>");
    let after = strip_keyword(rest, "FROM:").ok_or_else(usage)?;
    let (path, params) = split_path(after).ok_or_else(usage)?;
    let from =
        if path.is_empty() {
            None
        } else {
            Some(parse_path(path).map_err(|why| {
                Reply::new(501, "5.1.7", format!("Bad sender address syntax: {why}"))
            })?)
        };
    let mut out = MailParams::default();
    for (key, value) in esmtp_params(params) {
        match (key.to_ascii_uppercase().as_str(), value) {
            // RFC 1870: size-value ::= 1*20DIGIT; past u64 it is simply too big.
            ("SIZE", Some(v))
                if (1..=20).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                out.size = Some(v.parse::<u64>().unwrap_or(u64::MAX));
            }
            ("SIZE", _) => return Err(Reply::new(501, "5.5.4", "Syntax: SIZE=number")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body = Body::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                out.body = Body::EightBitMime
            }
            ("BODY", _) => {
                return Err(Reply::new(555, "5.5.4", "Unsupported BODY type"));
            }
            ("SMTPUTF8", None) => out.smtputf8 = true,
            // RFC 3461 §4.3 and §4.4; each at most once.
            ("RET", _) if out.ret.is_some() => return Err(twice("RET")),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => out.ret = Some(DsnRet::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => out.ret = Some(DsnRet::Headers),
            ("RET", _) => return Err(Reply::new(501, "5.5.4", "Syntax: RET=FULL or RET=HDRS")),
            ("ENVID", _) if out.envid.is_some() => return Err(twice("ENVID")),
            ("ENVID", Some(v)) if v.len() <= 100 => match xtext_decode(v) {
                Some(id) if printable(&id) => out.envid = Some(id),
                _ => return Err(Reply::new(501, "5.5.4", "Syntax: ENVID=xtext")),
            },
            ("ENVID", _) => {
                return Err(Reply::new(
                    501,
                    "5.5.4",
                    "Syntax: ENVID=xtext, at most 100 characters",
                ))
            }
            // RFC 4954 §5: clients that authenticated (Postfix as a relay
            // client, for one) send AUTH=<> or AUTH=identity. The identity is
            // the client's claim; it is accepted and not trusted.
            ("AUTH", Some(v)) if !v.is_empty() => out.auth = true,
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("Unsupported MAIL parameter: {key}"),
                ))
            }
        }
    }
    if let Some(m) = &from {
        if m.is_utf8() && !out.smtputf8 {
            return Err(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires the SMTPUTF8 parameter",
            ));
        }
    }
    Ok(Command::Mail { from, params: out })
}

/// RFC 3461 §4.2 and §4.4: ENVID and ORCPT, once decoded, are printable
/// US-ASCII (the DSN carries them as text).
fn printable(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (32..=126).contains(&b))
}

/// The 501 for a parameter given twice.
fn twice(key: &str) -> Reply {
    Reply::new(501, "5.5.4", format!("{key} given more than once"))
}

/// NOTIFY=NEVER, or a list of SUCCESS, FAILURE and DELAY (RFC 3461 §4.1).
fn parse_notify(v: &str) -> Option<DsnNotify> {
    let mut n = DsnNotify {
        success: false,
        failure: false,
        delay: false,
    };
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(n);
    }
    for word in v.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut n.success,
            "FAILURE" => &mut n.failure,
            "DELAY" => &mut n.delay,
            _ => return None,
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(n)
}

/// ORCPT=addr-type;xtext (RFC 3461 §4.2): the type an atom, the address
/// not empty once decoded.
fn parse_orcpt(v: &str) -> Option<Orcpt> {
    let (kind, addr) = v.split_once(';')?;
    let atom = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c);
    if kind.is_empty() || !kind.bytes().all(atom) || v.len() > 500 {
        return None;
    }
    let address = xtext_decode(addr).filter(|a| printable(a))?;
    Some(Orcpt {
        addr_type: kind.to_ascii_lowercase(),
        address,
    })
}

fn parse_rcpt_params(params: &str) -> Result<RcptParams, Reply> {
    let mut out = RcptParams::default();
    for (key, value) in esmtp_params(params) {
        match (key.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", _) if out.notify.is_some() => return Err(twice("NOTIFY")),
            ("NOTIFY", Some(v)) => {
                out.notify = Some(parse_notify(v).ok_or_else(|| {
                    Reply::new(
                        501,
                        "5.5.4",
                        "Syntax: NOTIFY=NEVER or NOTIFY= a list of SUCCESS, FAILURE, DELAY",
                    )
                })?)
            }
            ("ORCPT", _) if out.orcpt.is_some() => return Err(twice("ORCPT")),
            ("ORCPT", Some(v)) => {
                out.orcpt = Some(parse_orcpt(v).ok_or_else(|| {
                    Reply::new(
                        501,
                        "5.5.4",
                        "Syntax: ORCPT=addr-type;xtext (for example rfc822;alice@example.org)",
                    )
                })?)
            }
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    format!("Unsupported RCPT parameter: {key}"),
                ))
            }
        }
    }
    Ok(out)
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let usage = || Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>");
    let after = strip_keyword(rest, "TO:").ok_or_else(usage)?;
    let (path, params) = split_path(after).ok_or_else(usage)?;
    let params = parse_rcpt_params(params)?;
    // RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(Command::Rcpt {
            to: Mailbox {
                local: path.to_string(),
                domain: String::new(),
            },
            params,
        });
    }
    if path.is_empty() {
        return Err(Reply::new(
            501,
            "5.1.3",
            "Bad recipient address syntax: empty path",
        ));
    }
    let to = parse_path(path)
        .map_err(|why| Reply::new(501, "5.1.3", format!("Bad recipient address syntax: {why}")))?;
    Ok(Command::Rcpt { to, params })
}

fn parse_bdat(rest: &str) -> Result<Command, Reply> {
    let usage = || Reply::new(501, "5.5.4", "Syntax: BDAT count [LAST]");
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size_word = words.next().ok_or_else(usage)?;
    if !size_word.bytes().all(|b| b.is_ascii_digit()) || size_word.len() > 18 {
        return Err(usage());
    }
    let size = size_word.parse::<u64>().map_err(|_| usage())?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(usage()),
    };
    if words.next().is_some() {
        return Err(usage());
    }
    Ok(Command::Bdat { size, last })
}

/// Parses `[@a,@b:]local@domain` (the inside of the angle brackets).
fn parse_path(path: &str) -> Result<Mailbox, &'static str> {
    if path.len() > MAX_PATH {
        return Err("path too long");
    }
    // RFC 5321 §4.1.2 source routes ("A-d-l") are accepted and ignored.
    let mailbox = if path.starts_with('@') {
        let (route, mailbox) = path.split_once(':').ok_or("malformed source route")?;
        for hop in route.split(',') {
            let hop = hop.strip_prefix('@').ok_or("malformed source route")?;
            check_domain(hop)?;
        }
        mailbox
    } else {
        path
    };
    let at = mailbox.rfind('@').ok_or("missing @domain")?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    check_local(local)?;
    if domain.starts_with('[') {
        parse_address_literal(domain)?;
    } else {
        check_domain(domain)?;
    }
    Ok(Mailbox {
        local: canonical_local(local),
        domain: domain.to_string(),
    })
}

/// RFC 5321 §4.1.2: a local part that can be written without quotes "SHOULD
/// NOT" be quoted, and `"bob"` and `bob` are the same mailbox (RFC 5322
/// §3.2.4: the quotes are not part of the value). Keeps the quotes only when
/// they are needed.
fn canonical_local(local: &str) -> String {
    let Some(inner) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
        return local.to_string();
    };
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        value.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    let dot_string = value
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext));
    if dot_string {
        value
    } else {
        local.to_string()
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > MAX_LOCAL {
        return Err("local part longer than 64 octets");
    }
    if let Some(inner) = local.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or("unterminated quoted string")?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) if (' '..='~').contains(&e) => {}
                    _ => return Err("bad quoted pair"),
                },
                '"' => return Err("unescaped quote"),
                c if (c as u32) < 32 || c as u32 == 127 => return Err("control character"),
                _ => {}
            }
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err("invalid local part");
        }
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("empty domain");
    }
    if domain.len() > MAX_DOMAIN {
        return Err("domain longer than 255 octets");
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii());
        if !ok {
            return Err("invalid domain");
        }
    }
    Ok(())
}

/// The address in an address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn parse_address_literal(lit: &str) -> Result<std::net::IpAddr, &'static str> {
    let inner = lit
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or("malformed address literal")?;
    if let Some(v6) = inner.strip_prefix("IPv6:") {
        v6.parse::<std::net::Ipv6Addr>()
            .map(Into::into)
            .map_err(|_| "invalid IPv6 address literal")
    } else {
        inner
            .parse::<std::net::Ipv4Addr>()
            .map(Into::into)
            .map_err(|_| "invalid address literal")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(parse(b"NoOp"), Ok(Command::Noop));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
    }

    #[test]
    fn mail_accepts_null_sender_and_params() {
        let c = parse(b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME").unwrap();
        assert_eq!(
            c,
            Command::Mail {
                from: None,
                params: MailParams {
                    size: Some(1000),
                    body: Body::EightBitMime,
                    smtputf8: false,
                    auth: false,
                    ..MailParams::default()
                }
            }
        );
    }

    #[test]
    fn mail_tolerates_space_after_colon_and_lowercase_keyword() {
        let c = parse(b"mail from: <a@b.test>").unwrap();
        assert!(matches!(c, Command::Mail { from: Some(m), .. } if m == mb("a", "b.test")));
    }

    #[test]
    fn mail_requires_angle_brackets() {
        let r = parse(b"MAIL FROM:a@b.test").unwrap_err();
        assert_eq!(r.code, 501);
    }

    #[test]
    fn auth_mail_parameter_is_accepted_and_ignored() {
        for line in [
            &b"MAIL FROM:<a@b.test> AUTH=<>"[..],
            b"MAIL FROM:<a@b.test> SIZE=10 AUTH=alice+40b.test",
        ] {
            assert!(matches!(parse(line), Ok(Command::Mail { .. })), "{line:?}");
        }
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> AUTH=").map_err(|r| r.code),
            Err(555)
        );
    }

    #[test]
    fn unknown_mail_parameter_is_555() {
        let r = parse(b"MAIL FROM:<a@b.test> MT-PRIORITY=3").unwrap_err();
        assert_eq!((r.code, r.enhanced.as_ref()), (555, "5.5.4"));
    }

    #[test]
    fn source_route_is_ignored() {
        let c = parse(b"RCPT TO:<@relay.test,@other.test:joe@x.test>").unwrap();
        assert_eq!(
            c,
            Command::Rcpt {
                to: mb("joe", "x.test"),
                params: RcptParams::default(),
            }
        );
    }

    #[test]
    fn quoted_local_part_may_hold_specials() {
        let c = parse(br#"RCPT TO:<"john >doe"@x.test>"#).unwrap();
        assert_eq!(
            c,
            Command::Rcpt {
                to: mb("\"john >doe\"", "x.test"),
                params: RcptParams::default(),
            }
        );
    }

    #[test]
    fn needless_quotes_are_dropped_and_needed_ones_kept() {
        for (sent, local) in [
            (r#""bob""#, "bob"),
            (r#""b\ob.x""#, "bob.x"),
            (r#""john doe""#, r#""john doe""#),
            (r#""a..b""#, r#""a..b""#),
            (r#"".a""#, r#"".a""#),
        ] {
            let c = parse(format!("RCPT TO:<{sent}@x.test>").as_bytes()).unwrap();
            assert_eq!(
                c,
                Command::Rcpt {
                    to: mb(local, "x.test"),
                    params: RcptParams::default(),
                },
                "{sent}"
            );
        }
    }

    #[test]
    fn size_takes_up_to_twenty_digits() {
        let c = parse(b"MAIL FROM:<a@b.test> SIZE=99999999999999999999").unwrap();
        assert!(matches!(c, Command::Mail { params, .. } if params.size == Some(u64::MAX)));
        for bad in [
            &b"SIZE=999999999999999999999"[..],
            b"SIZE=",
            b"SIZE=1x",
            b"SIZE=+1",
        ] {
            let line = [&b"MAIL FROM:<a@b.test> "[..], bad].concat();
            assert_eq!(parse(&line).map_err(|r| r.code), Err(501));
        }
    }

    #[test]
    fn postmaster_without_domain() {
        let c = parse(b"RCPT TO:<Postmaster>").unwrap();
        assert_eq!(
            c,
            Command::Rcpt {
                to: mb("Postmaster", ""),
                params: RcptParams::default(),
            }
        );
    }

    #[test]
    fn address_literals() {
        assert!(parse(b"RCPT TO:<a@[192.0.2.1]>").is_ok());
        assert!(parse(b"RCPT TO:<a@[IPv6:2001:db8::1]>").is_ok());
        assert_eq!(parse(b"RCPT TO:<a@[999.1.1.1]>").unwrap_err().code, 501);
    }

    #[test]
    fn bad_addresses_are_501_with_enhanced_codes() {
        for bad in [
            &b"RCPT TO:<a..b@x.test>"[..],
            b"RCPT TO:<@x.test>",
            b"RCPT TO:<a@-x.test>",
            b"RCPT TO:<a@x..test>",
            b"RCPT TO:<a b@x.test>",
            b"RCPT TO:<>",
        ] {
            let r = parse(bad).unwrap_err();
            assert_eq!(
                (r.code, r.enhanced.as_ref()),
                (501, "5.1.3"),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let r = parse(b"MAIL FROM:<a@@x>").unwrap_err();
        assert_eq!((r.code, r.enhanced.as_ref()), (501, "5.1.7"));
    }

    #[test]
    fn overlong_local_part_is_refused() {
        let line = format!("RCPT TO:<{}@x.test>", "a".repeat(65));
        assert_eq!(parse(line.as_bytes()).unwrap_err().code, 501);
    }

    #[test]
    fn utf8_sender_needs_smtputf8() {
        let r = parse("MAIL FROM:<jøran@x.test>".as_bytes()).unwrap_err();
        assert_eq!((r.code, r.enhanced.as_ref()), (553, "5.6.7"));
        assert!(parse("MAIL FROM:<jøran@x.test> SMTPUTF8".as_bytes()).is_ok());
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse(b"BDAT 10"),
            Ok(Command::Bdat {
                size: 10,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(parse(b"BDAT").unwrap_err().code, 501);
        assert_eq!(parse(b"BDAT -1").unwrap_err().code, 501);
        assert_eq!(parse(b"BDAT 1 FIRST").unwrap_err().code, 501);
    }

    #[test]
    fn arguments_where_none_allowed_are_501() {
        assert_eq!(parse(b"DATA now").unwrap_err().code, 501);
        assert_eq!(parse(b"RSET x").unwrap_err().code, 501);
        assert_eq!(parse(b"QUIT x").unwrap_err().code, 501);
    }

    #[test]
    fn unknown_and_empty_commands_are_500() {
        assert_eq!(parse(b"FOO").unwrap_err().code, 500);
        assert_eq!(parse(b"").unwrap_err().code, 500);
        assert_eq!(parse(b"\xff\xfe").unwrap_err().code, 500);
    }

    #[test]
    fn ehlo_needs_a_name() {
        assert_eq!(parse(b"EHLO").unwrap_err().code, 501);
        assert_eq!(parse(b"HELO   ").unwrap_err().code, 501);
    }
}
