//! Delivery to the next hop: recipients outside the local domains to a
//! configured smarthost or the domain's MX hosts over SMTP (lettre's
//! connection, one transaction per destination and message), and local
//! recipients to the mailbox server over LMTP ([`lmtp`], `[lmtp]`).
//!
//! It owns the SMTP client side: connecting (each MX host in preference
//! order, then the next), STARTTLS (required and verified for a smarthost by
//! default, opportunistic and unverified for MX, RFC 7435), AUTH to a
//! smarthost, one MAIL/RCPT…/DATA transaction with a reply per recipient,
//! connection reuse per destination and a cap on connections per
//! destination. Replies are classified per recipient: 2xx delivered, 4xx and
//! connection failures deferred, 5xx failed. The caller (the pipeline) gets a
//! callback the moment the next hop accepts, to make that durable before
//! anything else happens.

pub use crate::dns;

mod lmtp;
mod settings;

pub use settings::{LmtpAddress, LmtpConfig, OutboundConfig, TlsPolicy};

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::{ClientId, Extension};
use tracing::{debug, info};

use finaldot_sdk::wire::{DsnRequest, RecipientState, Route};

use crate::delivery::{group_by, Delivery, Handoff, OnAccepted};

/// Why outbound delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The extra CA file could not be used.
    #[error("outbound.tls_ca_file {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The resolver could not be set up.
    #[error(transparent)]
    Dns(#[from] dns::LookupError),
}

/// A message's SHA-256 and its copy with DKIM signatures on top.
type Signed = ([u8; 32], Arc<Vec<u8>>);

/// One host to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Hop {
    /// Name for TLS and logs.
    name: String,
    /// Where to connect (a name or an address).
    connect: String,
    port: u16,
    tls: TlsPolicy,
    auth: bool,
}

/// The outbound side of one daemon.
pub struct Outbound {
    cfg: OutboundConfig,
    hello: ClientId,
    roots: Vec<Certificate>,
    dns: std::sync::OnceLock<Result<dns::Dns, String>>,
    /// Idle connections per hop, each with whether the hop offers DSN.
    idle: Mutex<HashMap<Hop, Vec<(SmtpConnection, bool)>>>,
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
    /// The LMTP route, when `[lmtp]` is configured.
    lmtp: Option<lmtp::Lmtp>,
    /// The DKIM keys that sign what leaves over SMTP (never what goes to the
    /// mailbox server over LMTP).
    signer: Arc<crate::auth::Signer>,
    /// The last message signed and its signed copy, by SHA-256: one message
    /// handed over in several transactions (VERP) is signed once.
    last_signed: Mutex<Option<Signed>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("route", &self.cfg.route)
            .field(
                "lmtp",
                &self.lmtp.as_ref().map(|l| l.cfg.address.to_string()),
            )
            .finish()
    }
}

/// The enhanced status code at the start of a reply text, if any.
fn enhanced(text: &str) -> Option<String> {
    let t = text.trim_start();
    let word = t.split_whitespace().next()?;
    let parts: Vec<&str> = word.split('.').collect();
    (parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| word.to_string())
}

/// Classifies a failed command: permanent (5xx) or not (4xx, network, TLS…).
fn classify(e: &lettre::transport::smtp::Error, host: &str, what: &str) -> RecipientState {
    let text = e.to_string();
    let reason = format!("{host} said after {what}: {text}");
    if e.is_permanent() {
        failed(text.split_once(": ").map(|x| x.1).unwrap_or(&text), reason)
    } else {
        deferred(reason)
    }
}

/// A permanent failure, with the enhanced code `text` starts with (5.0.0
/// when it has none).
fn failed(text: &str, reason: String) -> RecipientState {
    let status = enhanced(text)
        .filter(|s| s.starts_with('5'))
        .unwrap_or_else(|| "5.0.0".into());
    RecipientState::Failed { status, reason }
}

/// A recipient's state from a reply that is not 2xx: 5xx failed, anything
/// else deferred. `text` is the reply's code and text.
fn outcome_of_reply(code: u16, text: &str, host: &str, what: &str) -> RecipientState {
    let reason = format!("{host} said after {what}: {text}");
    if code / 100 == 5 {
        failed(text.split_once(' ').map(|x| x.1).unwrap_or(text), reason)
    } else {
        deferred(reason)
    }
}

/// A temporary failure, to retry later.
fn deferred(reason: impl Into<String>) -> RecipientState {
    RecipientState::Deferred {
        reason: reason.into(),
    }
}

/// The same outcome for each of `rcpts`.
fn every(rcpts: &[String], outcome: &RecipientState) -> Vec<(String, RecipientState)> {
    rcpts.iter().map(|r| (r.clone(), outcome.clone())).collect()
}

/// One message to hand over: what every transaction of it sends.
struct Job<'a> {
    mail_from: &'a str,
    message: &'a [u8],
    /// The DSN parameters to pass on to a hop that offers DSN.
    dsn: &'a DsnRequest,
}

impl Job<'_> {
    /// Whether the sender or one of `rcpts` needs SMTPUTF8.
    fn needs_utf8(&self, rcpts: &[String]) -> bool {
        !self.mail_from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii())
    }

    /// The MAIL FROM command for a hop that offers 8BITMIME, DSN or not
    /// (SMTPUTF8, when needed, was checked before).
    fn mail_command(&self, rcpts: &[String], eightbit: bool, dsn: bool) -> String {
        let mut params = String::new();
        if !self.message.is_ascii() && eightbit {
            params.push_str(" BODY=8BITMIME");
        }
        if self.needs_utf8(rcpts) {
            params.push_str(" SMTPUTF8");
        }
        if dsn {
            params.push_str(&self.dsn.mail_params());
        }
        format!("MAIL FROM:<{}>{params}\r\n", self.mail_from)
    }

    /// The RCPT TO command for `rcpt`, with its NOTIFY and ORCPT at a hop
    /// that offers DSN.
    fn rcpt_command(&self, rcpt: &str, dsn: bool) -> String {
        let params = match self.dsn.recipient(rcpt) {
            Some(r) if dsn => r.rcpt_params(),
            _ => String::new(),
        };
        format!("RCPT TO:<{rcpt}>{params}\r\n")
    }
}

/// The keywords of an EHLO or LHLO reply (every line after the first),
/// uppercase.
fn keywords(reply: &lettre::transport::smtp::response::Response) -> Vec<String> {
    reply
        .message()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|k| k.to_ascii_uppercase())
        .collect()
}

/// The outcome of recipients whose addresses need SMTPUTF8 at a hop
/// (`host`) that lacks it.
fn no_smtputf8(host: &str) -> RecipientState {
    RecipientState::Failed {
        status: "5.6.7".into(),
        reason: format!("{host} does not support SMTPUTF8, which these addresses need"),
    }
}

/// The domain part of an address, lowercase (the key MX routes group by).
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Releases a destination slot on drop.
struct Slot<'a> {
    out: &'a Outbound,
    key: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.out.busy.lock() {
            if let Some(n) = busy.get_mut(&self.key) {
                *n = n.saturating_sub(1);
            }
        }
        self.out.freed.notify_all();
    }
}

impl Outbound {
    /// Sets up delivery to the next hop: SMTP as `cfg` says, LMTP to the
    /// server of `lmtp`; `hostname` is what EHLO and LHLO say.
    pub fn new(
        cfg: &OutboundConfig,
        lmtp: Option<&LmtpConfig>,
        hostname: &str,
        signer: Arc<crate::auth::Signer>,
    ) -> Result<Outbound, SetupError> {
        let mut roots = Vec::new();
        if let Some(path) = &cfg.tls_ca_file {
            let ca = |why: String| SetupError::Ca {
                path: path.display().to_string(),
                why,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            roots.push(Certificate::from_pem(&pem).map_err(|e| ca(e.to_string()))?);
        }
        let dns = std::sync::OnceLock::new();
        if cfg.route == Some(Route::Mx) {
            // Set up now, so a broken resolver configuration fails the start.
            let _ = dns.set(Ok(dns::Dns::new(&cfg.nameservers)?));
        }
        Ok(Outbound {
            cfg: cfg.clone(),
            hello: ClientId::Domain(hostname.to_string()),
            roots,
            dns,
            idle: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
            lmtp: lmtp.map(|l| lmtp::Lmtp::new(l, hostname)),
            signer,
            last_signed: Mutex::new(None),
        })
    }

    /// `message` with the DKIM signatures of `[[dkim]]` on top, as it
    /// leaves over SMTP, after every change the chain made; `None` when no
    /// key signs it. Inbound mail claiming our From must not be stored with
    /// our signature, so LMTP never gets this copy.
    fn signed(&self, message: &[u8]) -> Option<Arc<Vec<u8>>> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(message).into();
        if let Some((d, signed)) = self.last_signed.lock().ok().and_then(|l| l.clone()) {
            if d == digest {
                return Some(signed);
            }
        }
        match self.signer.sign(message) {
            Ok(signatures) if !signatures.is_empty() => {
                let mut s = signatures;
                s.extend_from_slice(message);
                let signed = Arc::new(s);
                if let Ok(mut l) = self.last_signed.lock() {
                    *l = Some((digest, signed.clone()));
                }
                Some(signed)
            }
            Ok(_) => None,
            // A key that cannot sign (it was read at load time, so this is
            // mail-auth refusing the message): sent unsigned rather than
            // held, and said loudly.
            Err(e) => {
                tracing::error!(error = %e, "sending without a DKIM signature");
                None
            }
        }
    }

    fn hops(&self, route: &Route, key: &str) -> Result<Vec<Hop>, RecipientState> {
        match route {
            Route::Smarthost => {
                let Some((host, port)) = &self.cfg.smarthost else {
                    return Err(deferred(
                        "4.3.5 a plugin routed this recipient to the smarthost, but outbound.smarthost is not set",
                    ));
                };
                Ok(vec![Hop {
                    name: host.clone(),
                    connect: host.clone(),
                    port: *port,
                    tls: self.cfg.smarthost_tls,
                    auth: self.cfg.smarthost_auth.is_some(),
                }])
            }
            Route::Lmtp => Err(deferred("4.3.5 LMTP is not an SMTP hop")),
            Route::Mx => {
                let dns = match self
                    .dns
                    .get_or_init(|| dns::Dns::new(&self.cfg.nameservers).map_err(|e| e.to_string()))
                {
                    Ok(d) => d,
                    Err(e) => return Err(deferred(format!("4.3.5 {e}"))),
                };
                match dns.mx_hosts(key) {
                    Ok(hosts) => Ok(hosts
                        .into_iter()
                        .flat_map(|h| {
                            let name = h.name.clone();
                            h.addrs.into_iter().map(move |ip| Hop {
                                name: name.clone(),
                                connect: ip.to_string(),
                                port: self.cfg.mx_port,
                                tls: TlsPolicy::Opportunistic,
                                auth: false,
                            })
                        })
                        .collect()),
                    Err(e @ dns::LookupError::Permanent { status, .. }) => {
                        Err(RecipientState::Failed {
                            status: status.to_string(),
                            reason: e.to_string(),
                        })
                    }
                    Err(e) => Err(deferred(e.to_string())),
                }
            }
            other => Err(deferred(format!(
                "4.3.5 route {other:?} is not an SMTP hop"
            ))),
        }
    }

    /// Waits for one of `cap` connection slots to destination `key` (at
    /// most the timeout).
    fn slot(&self, key: &str, cap: usize) -> Option<Slot<'_>> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut busy = self.busy.lock().ok()?;
        loop {
            let n = busy.entry(key.to_string()).or_insert(0);
            if *n < cap {
                *n += 1;
                return Some(Slot {
                    out: self,
                    key: key.to_string(),
                });
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            busy = self.freed.wait_timeout(busy, left).ok()?.0;
        }
    }

    fn tls_params(&self, hop: &Hop) -> Result<TlsParameters, lettre::transport::smtp::Error> {
        let mut b = TlsParameters::builder(hop.name.clone());
        for root in &self.roots {
            b = b.add_root_certificate(root.clone());
        }
        if hop.tls != TlsPolicy::Required {
            // Opportunistic TLS protects against passive listeners only; an
            // unverifiable certificate must not stop the mail (RFC 7435).
            b = b
                .dangerous_accept_invalid_certs(true)
                .dangerous_accept_invalid_hostnames(true);
        }
        b.build_rustls()
    }

    /// A pooled connection to `hop` that still answers, or a new one (EHLO,
    /// STARTTLS and AUTH as the hop requires), with whether the hop offers
    /// DSN.
    fn connect(&self, hop: &Hop) -> Result<(SmtpConnection, bool), RecipientState> {
        let pooled = self
            .idle
            .lock()
            .ok()
            .and_then(|mut m| m.get_mut(hop).and_then(|v| v.pop()));
        if let Some((mut c, dsn)) = pooled {
            if c.test_connected() {
                debug!(host = %hop.name, "reusing connection");
                return Ok((c, dsn));
            }
        }
        let defer = |what: &str, e: &dyn std::fmt::Display| {
            deferred(format!("4.4.1 {}:{}: {what}: {e}", hop.name, hop.port))
        };
        let mut c = SmtpConnection::connect(
            (hop.connect.as_str(), hop.port),
            Some(self.cfg.timeout),
            &self.hello,
            None,
            None,
        )
        .map_err(|e| defer("connect", &e))?;
        if hop.tls != TlsPolicy::None && c.can_starttls() {
            let params = self.tls_params(hop).map_err(|e| defer("TLS setup", &e))?;
            if let Err(e) = c.starttls(&params, &self.hello) {
                return Err(defer("STARTTLS", &e));
            }
        } else if hop.tls == TlsPolicy::Required {
            c.abort();
            return Err(deferred(format!(
                "4.7.5 {}:{} does not offer STARTTLS and TLS is required (outbound.smarthost_tls)",
                hop.name, hop.port
            )));
        }
        // lettre keeps only the EHLO keywords it knows, and DSN is not one:
        // ask again (before AUTH, which a later EHLO would not keep).
        let dsn = c
            .command(format!("EHLO {}\r\n", self.hello))
            .map(|r| keywords(&r).iter().any(|k| k == "DSN"))
            .map_err(|e| defer("EHLO", &e))?;
        if hop.auth {
            if let Some((user, password)) = &self.cfg.smarthost_auth {
                let creds = Credentials::new(user.clone(), password.clone());
                if let Err(e) = c.auth(&[Mechanism::Plain, Mechanism::Login], &creds) {
                    c.abort();
                    return Err(deferred(format!(
                        "4.7.0 AUTH to {} as {user} failed: {e}",
                        hop.name
                    )));
                }
            }
        }
        Ok((c, dsn))
    }

    fn deliver_group(
        &self,
        (route, key): &(Route, String),
        job: &Job<'_>,
        rcpts: &[String],
        accepted: OnAccepted<'_>,
        stopped: &mut Option<String>,
    ) -> Vec<(String, RecipientState)> {
        let all = |o: RecipientState| every(rcpts, &o);
        if *route == Route::Lmtp {
            let Some(lmtp) = &self.lmtp else {
                return all(deferred(
                    "4.3.5 a plugin routed this recipient to LMTP, but [lmtp] is not configured",
                ));
            };
            let Some(_slot) = self.slot(key, lmtp.cfg.max_connections) else {
                return all(deferred(format!(
                    "4.4.5 too many connections to LMTP {} (lmtp.max_connections)",
                    lmtp.cfg.address
                )));
            };
            return lmtp.deliver(job, rcpts, accepted, stopped);
        }
        let hops = match self.hops(route, key) {
            Ok(h) => h,
            Err(o) => return all(o),
        };
        let Some(_slot) = self.slot(key, self.cfg.max_connections_per_destination) else {
            return all(deferred(format!(
                "4.4.5 too many connections to {key} (outbound.max_connections_per_destination)"
            )));
        };
        let mut last = deferred(format!("4.4.4 no host to try for {key}"));
        for hop in &hops {
            let (mut conn, dsn) = match self.connect(hop) {
                Ok(c) => c,
                Err(o @ RecipientState::Failed { .. }) => return all(o),
                Err(o) => {
                    info!(host = %hop.name, port = hop.port, reason = ?o, "next hop unavailable, trying the next");
                    last = o;
                    continue;
                }
            };
            let (outcomes, healthy) =
                self.transaction(&mut conn, hop, dsn, job, rcpts, accepted, stopped);
            if healthy {
                if let Ok(mut m) = self.idle.lock() {
                    m.entry(hop.clone()).or_default().push((conn, dsn));
                }
            } else {
                conn.abort();
            }
            return outcomes;
        }
        all(last)
    }

    /// One MAIL/RCPT/DATA transaction. Returns the outcomes and whether the
    /// connection can be reused.
    #[allow(clippy::too_many_arguments)]
    // Long on purpose: one SMTP transaction (MAIL, RCPT per recipient, DATA), each reply classified where it is read.
    fn transaction(
        &self,
        conn: &mut SmtpConnection,
        hop: &Hop,
        offers_dsn: bool,
        job: &Job<'_>,
        rcpts: &[String],
        accepted: OnAccepted<'_>,
        stopped: &mut Option<String>,
    ) -> (Vec<(String, RecipientState)>, bool) {
        let message = job.message;
        let all = |o: RecipientState| every(rcpts, &o);
        let host = format!("{}:{}", hop.name, hop.port);
        let info = conn.server_info().clone();
        if job.needs_utf8(rcpts) && !info.supports_feature(Extension::SmtpUtfEight) {
            return (all(no_smtputf8(&host)), true);
        }
        let eightbit = info.supports_feature(Extension::EightBitMime);
        if let Err(e) = conn.command(job.mail_command(rcpts, eightbit, offers_dsn)) {
            let healthy = e.is_permanent() || e.is_transient();
            if healthy {
                let _ = conn.command("RSET\r\n");
            }
            return (all(classify(&e, &host, "MAIL FROM")), healthy);
        }
        let mut results = Vec::new();
        let mut ok = Vec::new();
        for r in rcpts {
            match conn.command(job.rcpt_command(r, offers_dsn)) {
                Ok(_) => ok.push(r.clone()),
                Err(e) if e.is_permanent() || e.is_transient() => {
                    results.push((r.clone(), classify(&e, &host, "RCPT TO")))
                }
                Err(e) => {
                    let o = classify(&e, &host, "RCPT TO");
                    return (all(o), false);
                }
            }
        }
        if ok.is_empty() {
            let _ = conn.command("RSET\r\n");
            return (results, true);
        }
        if let Err(e) = conn.command("DATA\r\n") {
            let o = classify(&e, &host, "DATA");
            results.extend(every(&ok, &o));
            return (results, false);
        }
        // lettre ends the data with CRLF "." CRLF itself: a message that
        // already ends with CRLF (as SMTP content does) must not get a second.
        let payload = message.strip_suffix(b"\r\n").unwrap_or(message);
        match conn.message(payload) {
            Ok(resp) => {
                let reply: Vec<String> = resp.message().map(|s| s.to_string()).collect();
                let note = format!("relayed to {host}: {} {}", resp.code(), reply.join(" "));
                info!(host = %host, recipients = ok.len(), "next hop accepted the message");
                let handoff = if offers_dsn {
                    Handoff::PassedOn
                } else {
                    Handoff::Relayed
                };
                if let Err(e) = accepted(&ok, &note, handoff) {
                    // The hop has it; we could not record that. Say so loudly
                    // and stop: the rest waits for the next attempt.
                    *stopped = Some(format!("4.3.0 could not record a delivery: {e}"));
                }
                results.extend(
                    ok.into_iter()
                        .map(|r| (r, RecipientState::Delivered { note: note.clone() })),
                );
                (results, true)
            }
            Err(e) => {
                let healthy = e.is_permanent() || e.is_transient();
                let o = classify(&e, &host, "end of data");
                results.extend(every(&ok, &o));
                (results, healthy)
            }
        }
    }
}

impl Delivery for Outbound {
    fn route(&self, domain: &str, local: bool) -> Option<Route> {
        if local {
            self.lmtp
                .as_ref()
                .filter(|l| l.covers(domain))
                .map(|_| Route::Lmtp)
        } else {
            self.cfg.route
        }
    }

    fn delivers_local(&self) -> bool {
        self.lmtp.is_some()
    }

    /// One transaction per destination (the smarthost, each domain's MX
    /// hosts, the LMTP server); a recording failure in `accepted` defers
    /// every later group.
    fn deliver(
        &self,
        mail_from: &str,
        recipients: &[(String, Route)],
        message: &[u8],
        dsn: &DsnRequest,
        accepted: OnAccepted<'_>,
    ) -> Vec<(String, RecipientState)> {
        let job = Job {
            mail_from,
            message,
            dsn,
        };
        let smtp = recipients.iter().any(|(_, route)| *route != Route::Lmtp);
        let signed = if smtp { self.signed(message) } else { None };
        let signed_job = signed.as_ref().map(|s| Job {
            mail_from,
            message: s.as_slice(),
            dsn,
        });
        let groups = group_by(recipients, |(r, route)| match route {
            Route::Mx => (Route::Mx, domain_of(r)),
            // One transaction per route otherwise (a route `hops` does not
            // know is deferred there).
            other => (*other, format!("{other:?}")),
        });
        let mut results = Vec::new();
        let mut stopped: Option<String> = None;
        for (key, group) in groups {
            let rcpts: Vec<String> = group.into_iter().map(|(r, _)| r.clone()).collect();
            if let Some(why) = &stopped {
                results.extend(every(&rcpts, &deferred(why.clone())));
                continue;
            }
            let job = match &signed_job {
                Some(signed) if key.0 != Route::Lmtp => signed,
                _ => &job,
            };
            let outcomes = self.deliver_group(&key, job, &rcpts, accepted, &mut stopped);
            results.extend(outcomes);
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_found_only_where_they_belong() {
        assert_eq!(enhanced("5.1.1 no such user"), Some("5.1.1".into()));
        assert_eq!(enhanced("  4.2.2 mailbox full"), Some("4.2.2".into()));
        assert_eq!(enhanced("no such user 5.1.1"), None);
        assert_eq!(enhanced("5.1 x"), None);
        assert_eq!(domain_of("A@Example.TEST"), "example.test");
    }
}
