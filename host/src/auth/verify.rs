//! Inbound verification: SPF (RFC 7208) for the MAIL FROM and HELO
//! identities, every DKIM signature (RFC 6376; RSA-SHA256 and
//! Ed25519-SHA256, RFC 8463), DMARC (RFC 7489) policy discovery and
//! alignment for the From domain, and the ARC chain (RFC 8617), all by
//! `mail-auth` through the host's resolver; then the results as
//! [`AuthFacts`] and as the value of one `Authentication-Results` field
//! (RFC 8601).
//!
//! A DNS failure or timeout is a `temperror` (the RFCs' answer), never a
//! wait without end: the whole verification of one message is bounded by
//! the configured timeout, after which every method not yet answered is a
//! `temperror`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use finaldot_sdk::wire::{
    AuthFacts, AuthResult, DkimFact, DmarcFact, DmarcPolicy, DnsOutcome, DnsRecord, DnsType,
    Header, SpfFact,
};
use mail_auth::dkim::Signature;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, DkimResult, DmarcResult, SpfResult};

use crate::dns::Dns;

/// The envelope of the message to verify, as the front end recorded it.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The SMTP client's address.
    pub client_ip: IpAddr,
    /// Its HELO/EHLO name.
    pub helo: &'a str,
    /// The MAIL FROM address; empty for `<>`.
    pub mail_from: &'a str,
}

/// Verifies messages with one resolver and one authserv-id.
pub struct Verifier {
    dns: Arc<Dns>,
    authserv_id: String,
    timeout: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("authserv_id", &self.authserv_id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn spf_result(r: SpfResult) -> AuthResult {
    match r {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::SoftFail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::TempError,
        SpfResult::PermError => AuthResult::PermError,
        SpfResult::None => AuthResult::None,
    }
}

fn dkim_result(r: &DkimResult) -> (AuthResult, String) {
    match r {
        DkimResult::Pass => (AuthResult::Pass, String::new()),
        // A body that does not match its signature's hash failed
        // verification (RFC 6376 §6.1.3, RFC 8617 §5.2, RFC 8601 §2.7.1): `fail`, though
        // mail-auth files it as neutral.
        DkimResult::Neutral(
            e @ (mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)
            | mail_auth::Error::Arc(mail_auth::arc::ArcError::FailedBodyHashMatch)),
        ) => (AuthResult::Fail, e.to_string()),
        DkimResult::Neutral(e) => (AuthResult::Neutral, e.to_string()),
        DkimResult::Fail(e) => (AuthResult::Fail, e.to_string()),
        DkimResult::PermError(e) => (AuthResult::PermError, e.to_string()),
        DkimResult::TempError(e) => (AuthResult::TempError, e.to_string()),
        DkimResult::None => (AuthResult::None, String::new()),
    }
}

fn dmarc_result(r: &DmarcResult) -> AuthResult {
    match r {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::TempError,
        DmarcResult::PermError(_) => AuthResult::PermError,
        DmarcResult::None => AuthResult::None,
    }
}

fn algorithm(s: &Signature) -> String {
    match s.a {
        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
    }
    .to_string()
}

/// The domain of an address (`a@b.example` → `b.example`), lowercase.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(_, d)| d)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// The MAIL FROM identity SPF checks: the reverse-path, or postmaster at
/// the HELO name for the null sender (RFC 7208 §2.4).
fn spf_mail_from(mail_from: &str, helo: &str) -> String {
    if mail_from.is_empty() {
        format!("postmaster@{}", helo.trim_end_matches('.'))
    } else {
        mail_from.to_string()
    }
}

/// The DMARC fact of a message that could not be evaluated.
fn dmarc_unevaluated(result: AuthResult, domain: String) -> DmarcFact {
    DmarcFact {
        result,
        domain,
        policy: DmarcPolicy::Unspecified,
        pct: 100,
        spf_aligned: false,
        dkim_aligned: false,
    }
}

impl Verifier {
    /// A verifier asking `dns`, writing `authserv_id`, giving up on a
    /// message's DNS after `timeout`.
    pub fn new(dns: Arc<Dns>, authserv_id: &str, timeout: Duration) -> Verifier {
        Verifier {
            dns,
            authserv_id: authserv_id.to_string(),
            timeout,
        }
    }

    /// The authserv-id this verifier writes.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Verifies `message` (the whole message as received), from a blocking
    /// thread. Never fails: what cannot be evaluated is a `temperror` or
    /// `permerror`, as the RFCs say.
    // Long on purpose: SPF (HELO, MAIL FROM), DKIM, DMARC and ARC in the
    // order each needs the one before, under one timeout, read top down.
    pub fn verify(&self, envelope: &Envelope<'_>, message: &[u8]) -> AuthFacts {
        let helo = envelope.helo.trim_end_matches('.');
        let mail_from = spf_mail_from(envelope.mail_from, helo);
        let mail_from_domain = domain_of(&mail_from);
        // Not strict: signatures with a body length (`l=`) are verified
        // too, as RFC 6376 allows (strict mode calls them errors); what
        // follows the signed length is unsigned, which §8.2 warns about.
        let parsed = AuthenticatedMessage::parse_with_opts(message, None, false);
        let from_domain = parsed
            .as_ref()
            .map(|m| domain_of(m.from()))
            .unwrap_or_default();
        let timed_out = || AuthFacts {
            authserv_id: self.authserv_id.clone(),
            spf: SpfFact {
                result: AuthResult::TempError,
                domain: mail_from_domain.clone(),
            },
            spf_helo: SpfFact {
                result: AuthResult::TempError,
                domain: helo.to_string(),
            },
            dkim: parsed
                .as_ref()
                .map(|m| {
                    m.dkim_headers
                        .iter()
                        .map(|h| DkimFact {
                            result: AuthResult::TempError,
                            domain: h.header.d.clone(),
                            selector: h.header.s.clone(),
                            algorithm: algorithm(&h.header),
                            reason: "verification timed out".into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            dmarc: dmarc_unevaluated(AuthResult::TempError, from_domain.clone()),
            arc: AuthResult::TempError,
        };
        let authenticator = self.dns.authenticator();
        let host_domain = self.authserv_id.as_str();
        let work = async {
            let spf_helo = authenticator
                .verify_spf(
                    SpfParameters::verify_ehlo(envelope.client_ip, helo, host_domain)
                        .without_explanation(),
                )
                .await;
            let spf = authenticator
                .verify_spf(
                    // The explanation is never used: no exp= lookup to wait for.
                    SpfParameters::verify_mail_from(
                        envelope.client_ip,
                        helo,
                        host_domain,
                        &mail_from,
                    )
                    .without_explanation(),
                )
                .await;
            let spf_fact = SpfFact {
                result: spf_result(spf.result()),
                domain: mail_from_domain.clone(),
            };
            let spf_helo_fact = SpfFact {
                result: spf_result(spf_helo.result()),
                domain: helo.to_string(),
            };
            let Some(msg) = parsed.as_ref() else {
                // Not a message mail-auth can read: SPF only.
                return AuthFacts {
                    authserv_id: self.authserv_id.clone(),
                    spf: spf_fact,
                    spf_helo: spf_helo_fact,
                    dkim: Vec::new(),
                    dmarc: dmarc_unevaluated(AuthResult::PermError, String::new()),
                    arc: AuthResult::None,
                };
            };
            let dkim = authenticator.verify_dkim(msg).await;
            let arc = authenticator.verify_arc(msg).await;
            let dmarc = authenticator
                .verify_dmarc(DmarcParameters::new(msg, &dkim, &mail_from_domain, &spf))
                .await;
            let dkim_facts = dkim
                .iter()
                .filter_map(|o| {
                    let s = o.signature()?;
                    let (result, reason) = dkim_result(o.result());
                    Some(DkimFact {
                        result,
                        domain: s.d.to_ascii_lowercase(),
                        selector: s.s.clone(),
                        algorithm: algorithm(s),
                        reason,
                    })
                })
                .collect();
            let policy = match dmarc.policy() {
                Policy::None => DmarcPolicy::None,
                Policy::Quarantine => DmarcPolicy::Quarantine,
                Policy::Reject => DmarcPolicy::Reject,
                Policy::Unspecified => DmarcPolicy::Unspecified,
            };
            let dmarc_domain = if dmarc.domain().is_empty() {
                from_domain.clone()
            } else {
                dmarc.domain().to_ascii_lowercase()
            };
            let pct = if dmarc.dmarc_record().is_some() {
                self.dmarc_pct(&dmarc_domain).await
            } else {
                100
            };
            AuthFacts {
                authserv_id: self.authserv_id.clone(),
                spf: spf_fact,
                spf_helo: spf_helo_fact,
                dkim: dkim_facts,
                dmarc: DmarcFact {
                    result: dmarc_result(&dmarc.result()),
                    domain: dmarc_domain,
                    policy,
                    pct,
                    spf_aligned: *dmarc.spf_result() == DmarcResult::Pass,
                    dkim_aligned: *dmarc.dkim_result() == DmarcResult::Pass,
                },
                arc: dkim_result(arc.result()).0,
            }
        };
        let timeout = self.timeout;
        self.dns
            .block_on(async { tokio::time::timeout(timeout, work).await })
            .unwrap_or_else(|_| timed_out())
    }

    /// The `pct=` of the DMARC record for `domain` (or its organisational
    /// domain), 100 when absent. mail-auth follows DMARCbis, which dropped
    /// the tag, so it is read here from the record's tag list (RFC 7489
    /// §6.3: `tag=value` pairs separated by `;`). The record is in the
    /// resolver's cache already, from the policy lookup.
    async fn dmarc_pct(&self, domain: &str) -> u8 {
        let mut name = domain.to_string();
        loop {
            let answer = self
                .dns
                .lookup_async(&format!("_dmarc.{name}"), DnsType::Txt, self.timeout)
                .await;
            if answer.outcome == DnsOutcome::Found {
                let record = answer.records.iter().find_map(|r| match r {
                    DnsRecord::Txt(t) if t.starts_with(b"v=DMARC1") => Some(t.clone()),
                    _ => None,
                });
                if let Some(record) = record {
                    return String::from_utf8_lossy(&record)
                        .split(';')
                        .filter_map(|tag| tag.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
                        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
                        .map_or(100, |p| p.min(100));
                }
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent.to_string(),
                _ => return 100,
            }
        }
    }
}

/// Whether an `Authentication-Results` field claims `authserv_id` (RFC
/// 8601 §5: such a field from outside must not survive).
pub fn claims(header: &Header, authserv_id: &str) -> bool {
    if !header.name.eq_ignore_ascii_case("Authentication-Results") {
        return false;
    }
    let text = header.text();
    // authserv-id [ CFWS authres-version ] ";" …; comments may precede it.
    let mut rest = text.trim_start();
    while let Some(after) = rest.strip_prefix('(') {
        rest = after.split_once(')').map_or("", |(_, r)| r).trim_start();
    }
    let id = rest
        .split(|c: char| c == ';' || c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("");
    id.eq_ignore_ascii_case(authserv_id)
}

/// Text safe in an RFC 8601 comment: printable ASCII and spaces, without
/// the characters that would end or escape it.
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '(' | ')' | '\\'))
        .collect()
}

/// An address or domain as a `pvalue`: an atom as it is, anything else as a
/// quoted-string (without the characters a quoted-string would escape).
fn pvalue(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '"' | '\\'))
        .collect();
    let atom = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c);
    if !s.is_empty() && s.chars().all(atom) {
        s
    } else {
        format!("\"{s}\"")
    }
}

/// The value of the `Authentication-Results` field for `facts` (RFC 8601
/// §2.2), folded one method per line.
pub fn header_value(facts: &AuthFacts, mail_from: &str) -> String {
    let mut v = format!(" {}", pvalue(&facts.authserv_id));
    let mail_from = spf_mail_from(mail_from, &facts.spf_helo.domain);
    v.push_str(&format!(
        ";\r\n\tspf={} smtp.mailfrom={}",
        facts.spf.result.as_str(),
        pvalue(&mail_from)
    ));
    v.push_str(&format!(
        ";\r\n\tspf={} smtp.helo={}",
        facts.spf_helo.result.as_str(),
        pvalue(&facts.spf_helo.domain)
    ));
    if facts.dkim.is_empty() {
        v.push_str(";\r\n\tdkim=none");
    }
    for d in &facts.dkim {
        v.push_str(&format!(";\r\n\tdkim={}", d.result.as_str()));
        if !d.reason.is_empty() {
            v.push_str(&format!(" ({})", comment(&d.reason)));
        }
        v.push_str(&format!(
            " header.d={} header.s={} header.a={}",
            pvalue(&d.domain),
            pvalue(&d.selector),
            pvalue(&d.algorithm)
        ));
    }
    v.push_str(&format!(";\r\n\tdmarc={}", facts.dmarc.result.as_str()));
    if facts.dmarc.policy != DmarcPolicy::Unspecified {
        v.push_str(&format!(" (p={})", facts.dmarc.policy.as_str()));
    }
    if !facts.dmarc.domain.is_empty() {
        v.push_str(&format!(" header.from={}", pvalue(&facts.dmarc.domain)));
    }
    v.push_str(&format!(";\r\n\tarc={}", facts.arc.as_str()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6376 §3.4.6: the example's header fields and body, and the
    /// canonical forms the RFC gives for each algorithm.
    #[test]
    fn dkim_canonicalization_gives_rfc_6376_example_results() {
        use mail_auth::common::headers::Writable;
        use mail_auth::dkim::Canonicalization;
        // "A: X", "B : Y<HTAB>" folded onto "<HTAB>Z<SP><SP>" (name, then
        // everything after the colon with its CRLF, as the message holds it).
        let headers: Vec<(&[u8], &[u8])> = vec![(b"A", b" X\r\n"), (b"B ", b" Y\t\r\n\tZ  \r\n")];
        let body: &[u8] = b" C \r\nD \t E\r\n\r\n\r\n";
        let canon = |c: Canonicalization| {
            let mut h = Vec::new();
            c.canonicalize_headers(headers.clone().into_iter(), &mut h);
            let mut b = Vec::new();
            c.canonical_body(body, u64::MAX).write(&mut b);
            (
                String::from_utf8(h).expect("utf8"),
                String::from_utf8(b).expect("utf8"),
            )
        };
        assert_eq!(
            canon(Canonicalization::Relaxed),
            ("a:X\r\nb:Y Z\r\n".to_string(), " C\r\nD E\r\n".to_string())
        );
        assert_eq!(
            canon(Canonicalization::Simple),
            (
                "A: X\r\nB : Y\t\r\n\tZ  \r\n".to_string(),
                " C \r\nD \t E\r\n".to_string()
            )
        );
    }

    #[test]
    fn only_fields_with_our_authserv_id_are_claims() {
        let h = |v: &str| Header::new("Authentication-Results", v);
        assert!(claims(&h("mx.example.test; spf=pass"), "mx.example.test"));
        assert!(claims(
            &h("MX.Example.Test 1; dkim=pass"),
            "mx.example.test"
        ));
        assert!(claims(
            &h("(forged) mx.example.test;none"),
            "mx.example.test"
        ));
        assert!(claims(
            &h("\r\n\tmx.example.test;\r\n\tnone"),
            "mx.example.test"
        ));
        assert!(!claims(&h("mx.other.test; spf=pass"), "mx.example.test"));
        assert!(!claims(
            &h("mx.example.test.evil; spf=pass"),
            "mx.example.test"
        ));
        assert!(!claims(
            &Header::new("X-Authentication-Results", "mx.example.test; none"),
            "mx.example.test"
        ));
    }

    #[test]
    fn the_header_names_every_method_and_quotes_what_is_not_an_atom() {
        let facts = AuthFacts {
            authserv_id: "mx.example.test".into(),
            spf: SpfFact {
                result: AuthResult::Pass,
                domain: "example.org".into(),
            },
            spf_helo: SpfFact {
                result: AuthResult::None,
                domain: "client.example.org".into(),
            },
            dkim: vec![DkimFact {
                result: AuthResult::Fail,
                domain: "example.org".into(),
                selector: "s1".into(),
                algorithm: "rsa-sha256".into(),
                reason: "bad (body) hash".into(),
            }],
            dmarc: DmarcFact {
                result: AuthResult::Fail,
                domain: "example.org".into(),
                policy: DmarcPolicy::Reject,
                pct: 100,
                spf_aligned: false,
                dkim_aligned: false,
            },
            arc: AuthResult::None,
        };
        let v = header_value(&facts, "a b@example.org");
        assert_eq!(
            v,
            " mx.example.test;\r\n\tspf=pass smtp.mailfrom=\"a b@example.org\";\r\n\tspf=none smtp.helo=client.example.org;\r\n\tdkim=fail (bad body hash) header.d=example.org header.s=s1 header.a=rsa-sha256;\r\n\tdmarc=fail (p=reject) header.from=example.org;\r\n\tarc=none"
        );
    }
}
