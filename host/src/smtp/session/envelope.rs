//! The envelope of a transaction: MAIL FROM with its parameters (SIZE,
//! BODY, SMTPUTF8, RET, ENVID), RCPT TO with NOTIFY and ORCPT, checked
//! against the recipient table, and the spool [`Envelope`] they make.
//!
//! SECURITY: addresses and parameters come from the client; each refusal
//! counts toward the error cap, and recipients past the limit are refused
//! (452) and never kept.

use super::*;

impl Session {
    pub(super) fn mail(&mut self, from: Option<Mailbox>, params: command::MailParams) {
        let Some((greeting, _)) = &self.greeting else {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
        };
        if self.cfg.submission && self.authenticated.is_none() {
            return self.error_reply(Reply::new(530, "5.7.0", "Error: authentication required"));
        }
        if self.tx.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        if let (Some(login), Some(f)) = (&self.authenticated, &from) {
            let recipients = &self.cfg.recipients;
            let allowed = self.cfg.sender_login.allows(
                login,
                &f.local,
                &f.domain,
                |d| recipients.is_local_domain(d),
                recipients.delimiter(),
            );
            if !allowed {
                return self.error_reply(Reply::new(
                    553,
                    "5.7.1",
                    format!("<{f}>: Sender address rejected: not owned by user {login}"),
                ));
            }
        }
        if *greeting == Greeting::Helo
            && (params.smtputf8
                || params.body != Body::SevenBit
                || params.size.is_some()
                || params.ret.is_some()
                || params.envid.is_some())
        {
            return self.error_reply(Reply::new(
                555,
                "5.5.4",
                "MAIL parameters need EHLO, not HELO",
            ));
        }
        // RFC 4954 §5: AUTH= belongs to the AUTH extension, which only the
        // submission listener offers (and there MAIL needs AUTH first).
        if params.auth && !self.cfg.submission {
            return self.error_reply(Reply::new(555, "5.5.4", "Unsupported MAIL parameter: AUTH"));
        }
        if let Some(size) = params.size {
            if size > self.cfg.max_message_size {
                return self.error_reply(Reply::new(
                    552,
                    "5.3.4",
                    "Message size exceeds fixed maximum message size",
                ));
            }
        }
        let tx = Transaction {
            mail_from: from,
            size: params.size,
            body: params.body,
            smtputf8: params.smtputf8,
            rcpt_to: Vec::new(),
            dsn: finaldot_sdk::wire::DsnRequest {
                ret: params.ret,
                envid: params.envid,
                recipients: Vec::new(),
            },
            overshoot: 0,
            content: None,
        };
        self.through_door(DoorPending::Mail {
            tx: Box::new(tx),
            reply: Reply::new(250, "2.1.0", "Ok"),
        });
    }

    pub(super) fn rcpt(&mut self, to: Mailbox, params: command::RcptParams) {
        let (to, postmaster) = match self.own_postmaster(&to) {
            Some(p) => (p, true),
            None => (to, false),
        };
        let max = self.cfg.max_recipients;
        let dsn = params.notify.is_some() || params.orcpt.is_some();
        if dsn && matches!(&self.greeting, Some((Greeting::Helo, _))) {
            return self.error_reply(Reply::new(
                555,
                "5.5.4",
                "RCPT parameters need EHLO, not HELO",
            ));
        }
        let Some(tx) = self.tx.as_mut() else {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        if tx.content.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: RCPT after BDAT"));
        }
        if to.is_utf8() && !tx.smtputf8 {
            return self.error_reply(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII address requires SMTPUTF8 on MAIL",
            ));
        }
        if tx.rcpt_to.len() >= max {
            // RFC 5321 §4.5.3.1.10: the client sends the rest in a later
            // transaction. A pipelining client may be far past the limit
            // before it reads the first 452, so, as Postfix's
            // smtpd_recipient_overshoot_limit, these count as errors (which
            // end the session) only past an overshoot of 1000.
            tx.overshoot += 1;
            let reply = Reply::new(452, "4.5.3", "Error: too many recipients");
            return if tx.overshoot > RECIPIENT_OVERSHOOT {
                self.error_reply(reply)
            } else {
                self.reply(reply)
            };
        }
        let verdict = match self.cfg.recipients.check(&to) {
            // This host's postmaster is always taken (RFC 5321 §4.5.1).
            _ if postmaster => RcptVerdict::Accept,
            // An authenticated submission client may send anywhere.
            RcptVerdict::Relay if self.authenticated.is_some() => RcptVerdict::Accept,
            v => v,
        };
        match verdict {
            RcptVerdict::Accept => {
                let dsn = dsn.then(|| finaldot_sdk::wire::DsnRcpt {
                    address: to.to_string(),
                    notify: params.notify,
                    orcpt: params.orcpt,
                });
                self.through_door(DoorPending::Rcpt {
                    to,
                    dsn,
                    reply: Reply::new(250, "2.1.5", "Ok"),
                });
            }
            RcptVerdict::UnknownUser => self.error_reply(Reply::new(
                550,
                "5.1.1",
                format!("<{to}>: Recipient address rejected: user unknown"),
            )),
            RcptVerdict::Relay => self.error_reply(Reply::new(
                550,
                "5.7.1",
                format!("<{to}>: Relay access denied"),
            )),
            RcptVerdict::Undeliverable(why) => self.error_reply(Reply::new(
                550,
                "5.1.1",
                format!("<{to}>: Recipient address rejected: {why}"),
            )),
        }
    }

    /// Adds an accepted recipient to the transaction (once: the same
    /// mailbox twice is one recipient; domains compare without case, RFC
    /// 5321 §2.4, local parts exactly), with its DSN parameters.
    pub(super) fn add_recipient(&mut self, to: Mailbox, dsn: Option<finaldot_sdk::wire::DsnRcpt>) {
        let Some(tx) = self.tx.as_mut() else {
            return;
        };
        let known = tx
            .rcpt_to
            .iter()
            .any(|r| r.local == to.local && r.domain.eq_ignore_ascii_case(&to.domain));
        if !known {
            if let Some(d) = dsn {
                tx.dsn.recipients.push(d);
            }
            tx.rcpt_to.push(to);
        }
    }

    /// The configured postmaster when `to` is this host's postmaster: the
    /// bare `<postmaster>` (RFC 5321 §4.1.1.3) or `postmaster@[this host's
    /// address]` (RFC 5321 §4.5.1, RFC 1123 §5.2.17), in any case.
    pub(super) fn own_postmaster(&self, to: &Mailbox) -> Option<Mailbox> {
        if !to.local.eq_ignore_ascii_case("postmaster") {
            return None;
        }
        let own = |ip: IpAddr| {
            self.local_ip
                .is_some_and(|l| l.to_canonical() == ip.to_canonical())
        };
        let ours = to.domain.is_empty() || to.literal_ip().is_some_and(own);
        ours.then(|| self.cfg.postmaster.clone())
    }

    pub(super) fn envelope(&self) -> Option<Envelope> {
        let tx = self.tx.as_ref()?;
        let (greeting, helo) = self.greeting.as_ref()?;
        // RFC 3848 / RFC 6531 "with" keywords; S for TLS.
        let auth = self.authenticated.is_some();
        let protocol = match (tx.smtputf8, greeting, self.tls.is_some(), auth) {
            (true, _, false, false) => "UTF8SMTP",
            (true, _, true, false) => "UTF8SMTPS",
            (true, _, false, true) => "UTF8SMTPA",
            (true, _, true, true) => "UTF8SMTPSA",
            (false, Greeting::Ehlo, false, false) => "ESMTP",
            (false, Greeting::Ehlo, true, false) => "ESMTPS",
            (false, Greeting::Ehlo, false, true) => "ESMTPA",
            (false, Greeting::Ehlo, true, true) => "ESMTPSA",
            (false, Greeting::Helo, _, _) => "SMTP",
        };
        Some(Envelope {
            mail_from: tx
                .mail_from
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
            rcpt_to: tx.rcpt_to.iter().map(|r| r.to_string()).collect(),
            client_ip: self.client_ip,
            client_port: self.client_port,
            listener: self.listener,
            helo: helo.clone(),
            protocol: protocol.to_string(),
            received_at: (self.now)(),
            body_8bit: tx.body == Body::EightBitMime,
            smtputf8: tx.smtputf8,
            tls: self.tls.clone(),
            auth: self.authenticated.clone(),
            dsn: tx.dsn.clone(),
        })
    }
}
