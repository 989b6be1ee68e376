//! `[smtp]`, `[submission]` and `[domains]`: as written, and validated into
//! the SMTP side's settings ([`crate::smtp::settings`]) and its RCPT table.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Cx};
use crate::smtp::policy::{DomainUsers, Recipients};
use crate::smtp::settings::{ProxyProtocol, SenderLogin, SmtpConfig, SubmissionConfig, TlsFiles};

/// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
const MIN_RECIPIENTS: usize = 100;

/// The longest pause before a 354 while the pipeline is behind, by default:
/// Postfix's ceiling for `in_flow_delay` (a client waits up to 2 minutes for
/// the 354 by RFC 5321 §4.5.3.2.2).
const DEFAULT_IN_FLOW_DELAY_MS: u64 = 10_000;

/// Seconds of delivery work the queue may hold before new mail is paced,
/// by default.
const DEFAULT_IN_FLOW_BACKLOG_SECS: f64 = 5.0;

/// The slowest content a client may send by default, in octets per
/// second: Postfix's `smtpd_min_data_rate`.
const DEFAULT_MIN_DATA_RATE: u64 = 500;

/// `[smtp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Addresses to listen on, as `IP:PORT`.
    pub listen: Option<Vec<String>>,
    /// Largest message in octets.
    pub max_message_size: Option<u64>,
    /// Most recipients per message.
    pub max_recipients: Option<usize>,
    /// Most simultaneous connections in total.
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_ip: Option<usize>,
    /// Most new connections per minute from one IP address (0 = no limit).
    pub max_connection_rate_per_ip: Option<usize>,
    /// Networks exempt from the per-IP connection count and rate.
    pub limit_exceptions: Option<Vec<String>>,
    /// Longest pause before a new message's 354 while the pipeline is behind (0 = off).
    pub in_flow_delay_ms: Option<u64>,
    /// Fewest queued messages at which the pause applies.
    pub in_flow_backlog: Option<usize>,
    /// Seconds of delivery work the queue may hold before the pause applies.
    pub in_flow_backlog_secs: Option<f64>,
    /// Error replies before a session is closed with 421.
    pub max_errors: Option<u32>,
    /// Seconds to wait for the next command.
    pub command_timeout_secs: Option<u64>,
    /// Seconds to wait for more message content.
    pub data_timeout_secs: Option<u64>,
    /// The slowest content a client may send (octets per second; 0: off).
    pub min_data_rate: Option<u64>,
    /// Seconds a shutdown waits for messages in progress.
    pub shutdown_grace_secs: Option<u64>,
    /// Separator of address extensions (`user+tag`); empty to turn off.
    pub recipient_delimiter: Option<String>,
    /// STARTTLS certificate and key.
    pub tls: Option<RawTls>,
    /// Addresses where TLS starts at connect (implicit TLS, port 465 style).
    pub tls_listen: Option<Vec<String>>,
    /// `[smtp.proxy_protocol]`: listeners behind a load balancer.
    pub proxy_protocol: Option<RawProxyProtocol>,
}

/// `[smtp.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[domains."name"]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomain {
    /// Local parts that exist; absent means every local part is accepted.
    pub recipients: Option<Vec<String>>,
}

/// `[submission]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubmission {
    /// Addresses to listen on (port 587 style); absent: no submission listener.
    pub listen: Option<Vec<String>>,
    /// The users file (`finaldot user add`).
    pub users_file: Option<PathBuf>,
    /// Record the authenticated user in the Received header.
    pub received_auth: Option<bool>,
    /// Failed AUTH attempts per IP address in ten minutes before 421.
    pub max_auth_failures_per_ip: Option<usize>,
    /// Most simultaneous connections on the submission listeners.
    pub max_connections: Option<usize>,
    /// Which senders an authenticated user may use: "off", "strict", or a
    /// table of logins and their extra addresses.
    pub sender_login: Option<RawSenderLogin>,
}

/// `submission.sender_login` as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSenderLogin {
    /// `"off"` or `"strict"`.
    Mode(String),
    /// Strict, and these logins may also use these addresses or `@domains`.
    Map(BTreeMap<String, Vec<String>>),
}

impl RawSmtp {
    /// Validates `[smtp]`, each key's default beside its check; also returns
    /// `recipient_delimiter`, which the `[domains]` table uses.
    // Long on purpose: one check per key of [smtp], in the order the example file documents them.
    pub fn validate(self, cx: &Cx) -> Result<(SmtpConfig, Option<char>), ConfigError> {
        let s = self;
        let invalid = |key: &str, why: String| cx.invalid(key, why);
        let listen_raw = s
            .listen
            .unwrap_or_else(|| vec!["127.0.0.1:2525".to_string()]);
        if listen_raw.is_empty() {
            return Err(invalid("smtp.listen", "needs at least one address".into()));
        }
        let listen = cx.addrs("smtp.listen", &listen_raw)?;
        let tls_listen = cx.addrs("smtp.tls_listen", &s.tls_listen.unwrap_or_default())?;
        if !tls_listen.is_empty() && s.tls.is_none() {
            return Err(invalid(
                "smtp.tls_listen",
                "needs smtp.tls (a certificate and key) to serve TLS".into(),
            ));
        }
        if let Some(both) = tls_listen
            .iter()
            .find(|a| listen.contains(a) && a.port() != 0)
        {
            return Err(invalid(
                "smtp.tls_listen",
                format!("{both} is also in smtp.listen"),
            ));
        }
        let max_message_size = s.max_message_size.unwrap_or(25 * 1024 * 1024);
        if max_message_size < 64 * 1024 {
            return Err(invalid(
                "smtp.max_message_size",
                format!("{max_message_size} is below the RFC 5321 minimum of 65536 octets"),
            ));
        }
        let max_recipients = s.max_recipients.unwrap_or(1000);
        if max_recipients < MIN_RECIPIENTS {
            return Err(invalid(
                "smtp.max_recipients",
                format!("{max_recipients} is below {MIN_RECIPIENTS}, the minimum RFC 5321 section 4.5.3.1.8 requires"),
            ));
        }
        let max_connections = s.max_connections.unwrap_or(1000);
        let max_connections_per_ip = s.max_connections_per_ip.unwrap_or(50);
        if max_connections == 0 {
            return Err(invalid("smtp.max_connections", "must be at least 1".into()));
        }
        if max_connections_per_ip == 0 || max_connections_per_ip > max_connections {
            return Err(invalid(
                "smtp.max_connections_per_ip",
                format!("must be between 1 and smtp.max_connections ({max_connections})"),
            ));
        }
        let limit_exceptions = limit_exceptions(s.limit_exceptions, cx)?;
        let in_flow_backlog_secs = s
            .in_flow_backlog_secs
            .unwrap_or(DEFAULT_IN_FLOW_BACKLOG_SECS);
        if !(in_flow_backlog_secs > 0.0 && in_flow_backlog_secs <= 3600.0) {
            return Err(invalid(
                "smtp.in_flow_backlog_secs",
                "must be more than 0 and at most 3600".into(),
            ));
        }
        if s.in_flow_delay_ms.is_some_and(|ms| ms > 120_000) {
            return Err(invalid(
                "smtp.in_flow_delay_ms",
                "must be at most 120000 (RFC 5321 gives a client 2 minutes to see the 354)".into(),
            ));
        }
        let max_errors = s.max_errors.unwrap_or(20);
        if max_errors == 0 {
            return Err(invalid("smtp.max_errors", "must be at least 1".into()));
        }
        // RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command;
        // shorter values are allowed for tests and overloaded servers, not below 1 s.
        let command_timeout =
            cx.secs("smtp.command_timeout_secs", s.command_timeout_secs, 300, 1)?;
        let data_timeout = cx.secs("smtp.data_timeout_secs", s.data_timeout_secs, 180, 1)?;
        let shutdown_grace = cx.secs("smtp.shutdown_grace_secs", s.shutdown_grace_secs, 30, 0)?;
        let delimiter = recipient_delimiter(s.recipient_delimiter.as_deref(), cx)?;

        let tls = s.tls.map(|t| TlsFiles {
            cert: cx.abs(t.cert),
            key: cx.abs(t.key),
        });
        Ok((
            SmtpConfig {
                listen,
                max_message_size,
                max_recipients,
                max_connections,
                max_connections_per_ip,
                max_connection_rate_per_ip: s.max_connection_rate_per_ip.unwrap_or(0),
                limit_exceptions,
                in_flow_delay: Duration::from_millis(
                    s.in_flow_delay_ms.unwrap_or(DEFAULT_IN_FLOW_DELAY_MS),
                ),
                in_flow_backlog: s.in_flow_backlog.unwrap_or(1000),
                in_flow_backlog_secs,
                max_errors,
                command_timeout,
                data_timeout,
                min_data_rate: s.min_data_rate.unwrap_or(DEFAULT_MIN_DATA_RATE),
                shutdown_grace,
                tls,
                tls_listen,
                proxy_protocol: proxy_protocol(s.proxy_protocol, cx)?,
            },
            delimiter,
        ))
    }
}

/// Validates `[domains]`: the local domains (lowercase, sorted) and the
/// RCPT-time table, with `delimiter` (`smtp.recipient_delimiter`).
pub fn validate_domains(
    raw: BTreeMap<String, RawDomain>,
    delimiter: Option<char>,
    cx: &Cx,
) -> Result<(Vec<String>, Recipients), ConfigError> {
    let invalid = |key: &str, why: String| cx.invalid(key, why);
    if raw.is_empty() {
        return Err(invalid(
            "domains",
            "no local domains: add a [domains.\"example.org\"] table".into(),
        ));
    }
    let mut table = Vec::new();
    let mut domains = Vec::new();
    let mut seen = HashSet::new();
    for (name, d) in raw {
        let key = format!("domains.{name:?}");
        let lower = name.to_ascii_lowercase();
        let valid = !lower.is_empty()
            && lower.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            });
        if !valid {
            return Err(invalid(&key, "is not a valid domain name".into()));
        }
        if !seen.insert(lower.clone()) {
            return Err(invalid(
                &key,
                "is listed twice (domains compare case-insensitively)".into(),
            ));
        }
        let users = match d.recipients {
            None => DomainUsers::CatchAll,
            Some(list) => {
                let mut set = HashSet::new();
                for u in list {
                    if u.is_empty() || u.contains('@') || u.contains(char::is_whitespace) {
                        return Err(invalid(
                            &format!("{key}.recipients"),
                            format!(
                                "{u:?} is not a local part (write \"alice\", not \"alice@{name}\")"
                            ),
                        ));
                    }
                    // A listed user the RCPT check would refuse could never
                    // receive mail: say so now rather than at its first 550.
                    if let Err(why) = finaldot_sdk::mailbox::check_local_part(&u) {
                        return Err(invalid(
                            &format!("{key}.recipients"),
                            format!("{u:?} can name no mailbox: {why}"),
                        ));
                    }
                    set.insert(u.to_lowercase());
                }
                DomainUsers::Listed(set)
            }
        };
        table.push((lower.clone(), users));
        domains.push(lower);
    }
    Ok((domains, Recipients::new(table, delimiter)))
}

impl RawSubmission {
    /// Validates `[submission]` (it needs `[smtp]`'s certificate and
    /// addresses); `data_dir` holds the default users file.
    pub fn validate(
        self,
        smtp: &SmtpConfig,
        data_dir: &Path,
        cx: &Cx,
    ) -> Result<SubmissionConfig, ConfigError> {
        let invalid = |key: &str, why: String| cx.invalid(key, why);
        let (listen, tls, tls_listen) = (&smtp.listen, &smtp.tls, &smtp.tls_listen);
        let sub = self;
        let submission = SubmissionConfig {
            listen: cx.addrs("submission.listen", &sub.listen.unwrap_or_default())?,
            users_file: sub
                .users_file
                .map(|p| cx.abs(p))
                .unwrap_or_else(|| data_dir.join("users")),
            received_auth: sub.received_auth.unwrap_or(false),
            max_auth_failures_per_ip: sub.max_auth_failures_per_ip.unwrap_or(5).max(1),
            max_connections: sub.max_connections.unwrap_or(100),
            sender_login: sender_login(sub.sender_login, cx)?,
        };
        if submission.max_connections == 0 {
            return Err(invalid(
                "submission.max_connections",
                "must be at least 1".into(),
            ));
        }
        if !submission.listen.is_empty() && tls.is_none() {
            return Err(invalid(
                "submission.listen",
                "needs smtp.tls (a certificate and key): AUTH is only offered after STARTTLS"
                    .into(),
            ));
        }
        if let Some(both) = submission
            .listen
            .iter()
            .find(|a| (listen.contains(a) || tls_listen.contains(a)) && a.port() != 0)
        {
            return Err(invalid(
                "submission.listen",
                format!("{both} is also an SMTP listen address"),
            ));
        }
        if let Some(p) = &smtp.proxy_protocol {
            let all = || listen.iter().chain(tls_listen).chain(&submission.listen);
            if let Some(stray) = p.listeners.iter().find(|a| !all().any(|l| l == *a)) {
                return Err(invalid(
                    "smtp.proxy_protocol.listeners",
                    format!("{stray} is not a listen address (smtp.listen, smtp.tls_listen or submission.listen)"),
                ));
            }
        }
        Ok(submission)
    }
}

/// Validates `postmaster`: an address (`root@example.org`), by default
/// `postmaster@` the host name when it is a local domain, else the first
/// local domain.
pub fn postmaster(
    raw: Option<String>,
    hostname: &str,
    domains: &[String],
    cx: &Cx,
) -> Result<crate::smtp::session::Mailbox, ConfigError> {
    let Some(raw) = raw else {
        let host = hostname.to_ascii_lowercase();
        let domain = if domains.contains(&host) {
            host
        } else {
            domains.first().cloned().unwrap_or(host)
        };
        return Ok(crate::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain,
        });
    };
    let parsed = raw.rsplit_once('@').filter(|(l, d)| {
        let fine =
            |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        fine(l) && fine(d) && !d.contains('@')
    });
    match parsed {
        Some((local, domain)) => Ok(crate::smtp::session::Mailbox {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        }),
        None => Err(cx.invalid(
            "postmaster",
            format!("{raw:?} is not an address (for example \"root@example.org\")"),
        )),
    }
}

/// Validates `submission.sender_login`.
fn sender_login(raw: Option<RawSenderLogin>, cx: &Cx) -> Result<SenderLogin, ConfigError> {
    let key = "submission.sender_login";
    match raw {
        None => Ok(SenderLogin::Off),
        Some(RawSenderLogin::Mode(m)) => match m.as_str() {
            "off" => Ok(SenderLogin::Off),
            "strict" => Ok(SenderLogin::Strict {
                extra: Default::default(),
            }),
            other => Err(cx.invalid(
                key,
                format!(
                    "{other:?} is not \"off\", \"strict\" or a table of logins and their addresses"
                ),
            )),
        },
        Some(RawSenderLogin::Map(map)) => {
            let mut extra = std::collections::HashMap::new();
            for (login, addrs) in map {
                for a in &addrs {
                    let (local, domain) = a.rsplit_once('@').unwrap_or(("", ""));
                    if domain.is_empty()
                        || domain.contains(char::is_whitespace)
                        || local.contains(char::is_whitespace)
                    {
                        return Err(cx.invalid(
                            &format!("{key}.{login}"),
                            format!("{a:?} is neither an address (alice@example.org) nor a domain (@example.org)"),
                        ));
                    }
                }
                extra.insert(
                    login.to_lowercase(),
                    addrs.iter().map(|a| a.to_lowercase()).collect(),
                );
            }
            Ok(SenderLogin::Strict { extra })
        }
    }
}

/// `[smtp.proxy_protocol]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    /// Listen addresses (from smtp.listen, smtp.tls_listen, submission.listen).
    pub listeners: Vec<String>,
    /// The load balancers' addresses or networks.
    pub from: Vec<String>,
    /// The longest wait for the header, seconds (default 10).
    pub timeout_secs: Option<u64>,
}

/// Validates `[smtp.proxy_protocol]`; its listeners are checked against
/// every listen address once submission's are known.
fn proxy_protocol(
    raw: Option<RawProxyProtocol>,
    cx: &Cx,
) -> Result<Option<ProxyProtocol>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.listeners.is_empty() {
        return Err(cx.invalid(
            "smtp.proxy_protocol.listeners",
            "needs at least one listen address (one of smtp.listen, smtp.tls_listen, submission.listen)".into(),
        ));
    }
    if raw.from.is_empty() {
        return Err(cx.invalid(
            "smtp.proxy_protocol.from",
            "needs the load balancers' addresses: a PROXY header names the client, so only they may send one".into(),
        ));
    }
    Ok(Some(ProxyProtocol {
        listeners: cx.addrs("smtp.proxy_protocol.listeners", &raw.listeners)?,
        from: networks("smtp.proxy_protocol.from", Some(raw.from), cx)?,
        timeout: cx.secs("smtp.proxy_protocol.timeout_secs", raw.timeout_secs, 10, 1)?,
    }))
}

/// `smtp.limit_exceptions`; loopback when absent.
fn limit_exceptions(raw: Option<Vec<String>>, cx: &Cx) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    // As Postfix exempts $mynetworks from its client limits: local
    // scripts and web applications submit through loopback.
    networks("smtp.limit_exceptions", raw, cx)
}

/// A list of networks at `key`; loopback (`127.0.0.0/8`, `::1`) when absent.
pub(super) fn networks(
    key: &str,
    raw: Option<Vec<String>>,
    cx: &Cx,
) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    Ok(match raw {
        None => ["127.0.0.0/8", "::1"]
            .into_iter()
            .filter_map(parse_network)
            .collect(),
        Some(list) => list
            .iter()
            .map(|n| parse_network(n).ok_or_else(|| {
                cx.invalid(
                    key,
                    format!("{n:?} is not a network (write \"192.0.2.0/24\", \"2001:db8::/32\" or one address)"),
                )
            }))
            .collect::<Result<_, _>>()?,
    })
}

/// `smtp.recipient_delimiter`: one character, `+` when absent, none when empty.
fn recipient_delimiter(raw: Option<&str>, cx: &Cx) -> Result<Option<char>, ConfigError> {
    let invalid = |key: &str, why: String| cx.invalid(key, why);
    Ok(match raw {
        None => Some('+'),
        Some("") => None,
        Some(d) if d.chars().count() == 1 => d.chars().next(),
        Some(d) => {
            return Err(invalid(
                "smtp.recipient_delimiter",
                format!("{d:?} must be one character, or empty to turn it off"),
            ))
        }
    })
}

/// A network (`192.0.2.0/24`, `2001:db8::/32`) or one address, host bits cleared.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    match text.parse::<ipnet::IpNet>() {
        Ok(n) => Some(n.trunc()),
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from),
    }
}
