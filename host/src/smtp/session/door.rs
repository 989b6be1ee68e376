//! The session's side of the door: a command the session would accept
//! (HELO/EHLO, MAIL, RCPT) is held as a [`DoorPending`] while the driver
//! asks the door ([`Step::Door`]); the door's answer either lets it through
//! as the session would have answered, or replaces its reply. At connect the
//! driver asks before the greeting ([`Session::connect_ask`],
//! [`Session::connect_answered`]). Nothing here runs at or after DATA.
//!
//! SECURITY: the door's reply was validated by the plugin runtime (4xx/5xx,
//! one printable line); a refusal counts toward the error cap like any
//! other, and "disconnect" closes after the reply.

use finaldot_sdk::wire::{DoorInput, DoorStage, SessionFacts};

use super::*;
use crate::door::DoorAnswer;

/// A command the session accepted, waiting for the door.
#[derive(Debug)]
pub(super) enum DoorPending {
    /// HELO or EHLO: the greeting to record and its 250.
    Helo {
        /// Which one.
        greeting: Greeting,
        /// The client's name.
        name: String,
        /// The 250 (with the extensions, for EHLO).
        reply: Reply,
    },
    /// MAIL FROM: the transaction it opens.
    Mail {
        /// The transaction.
        tx: Box<Transaction>,
        /// The 250.
        reply: Reply,
    },
    /// RCPT TO: the recipient it adds.
    Rcpt {
        /// The recipient (this host's postmaster already resolved).
        to: Mailbox,
        /// Its NOTIFY and ORCPT, if it had them.
        dsn: Option<finaldot_sdk::wire::DsnRcpt>,
        /// The 250.
        reply: Reply,
    },
}

impl DoorPending {
    fn stage(&self) -> DoorStage {
        match self {
            DoorPending::Helo { .. } => DoorStage::Helo,
            DoorPending::Mail { .. } => DoorStage::Mail,
            DoorPending::Rcpt { .. } => DoorStage::Rcpt,
        }
    }
}

/// `" KEY=value KEY2=value2"` as keyword and value pairs.
fn params_of(rendered: &str) -> Vec<(String, String)> {
    rendered
        .split_whitespace()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), v.to_string()),
            None => (p.to_ascii_uppercase(), String::new()),
        })
        .collect()
}

impl Session {
    /// Lets `pending` through at once when no door plugin judges its
    /// stage; otherwise asks the door and waits for
    /// [`Session::door_answered`].
    pub(super) fn through_door(&mut self, pending: DoorPending) {
        let stage = pending.stage();
        if !self.cfg.door.at(stage, self.authenticated.is_some()) {
            return self.let_through(pending);
        }
        let ask = self.door_input(stage, Some(&pending));
        self.door_pending = Some(pending);
        self.phase = Phase::AwaitDoor;
        self.pending.push_back(Step::Door(Box::new(ask)));
    }

    /// Carries out a command the door let through.
    fn let_through(&mut self, pending: DoorPending) {
        match pending {
            DoorPending::Helo {
                greeting,
                name,
                reply,
            } => {
                self.abort_content();
                self.tx = None;
                self.greeting = Some((greeting, name));
                self.reply(reply);
            }
            DoorPending::Mail { tx, reply, .. } => {
                self.tx = Some(*tx);
                self.reply(reply);
            }
            DoorPending::Rcpt { to, dsn, reply } => {
                self.add_recipient(to, dsn);
                self.reply(reply);
            }
        }
    }

    /// The driver's answer to [`Step::Door`].
    pub fn door_answered(&mut self, answer: DoorAnswer) {
        debug_assert!(matches!(self.phase, Phase::AwaitDoor));
        self.phase = Phase::Command;
        let Some(pending) = self.door_pending.take() else {
            return;
        };
        match answer {
            DoorAnswer::Continue => self.let_through(pending),
            DoorAnswer::Refuse {
                code,
                status,
                text,
                disconnect,
            } => {
                // A door is trusted only so far: nothing but a 4xx/5xx.
                let (code, status, text) = if (400..=599).contains(&code) {
                    (code, status, text)
                } else {
                    (
                        451,
                        "4.7.1".to_string(),
                        "Service temporarily unavailable, try again later".to_string(),
                    )
                };
                let reply = Reply::new(code, status, text);
                if disconnect || code == 421 {
                    // 421: the channel is closing (RFC 5321 §4.2.2).
                    self.reply_and_close(reply);
                } else if code < 500 {
                    // A 4xx (greylisting, a rate limit) is no client
                    // error: a list server's message to many new
                    // recipients must not end in "too many errors".
                    self.reply(reply);
                } else {
                    self.error_reply(reply);
                }
            }
        }
    }

    /// What to ask the door before the greeting, if a door plugin judges
    /// the connect stage on this listener.
    pub fn connect_ask(&self) -> Option<DoorInput> {
        self.cfg
            .door
            .at(DoorStage::Connect, false)
            .then(|| self.door_input(DoorStage::Connect, None))
    }

    /// The greeting after the door's answer at connect, and whether the
    /// connection closes after it. A 5xx refusal is a `554` greeting after
    /// which only QUIT is accepted (RFC 5321 §3.1); a 4xx, or any refusal
    /// asking to disconnect, is sent (a 4xx as `421`) and the connection
    /// closes.
    pub fn connect_answered(&mut self, answer: DoorAnswer) -> (Reply, bool) {
        match answer {
            DoorAnswer::Continue => (self.greeting(), false),
            DoorAnswer::Refuse {
                code,
                status,
                text,
                disconnect,
            } => {
                // One reply line is at most 512 octets with its CRLF (RFC
                // 5321 §4.5.3.1.5): "554 " + status + " " + host + " " + text.
                let mut text = format!("{} {text}", self.cfg.hostname);
                let mut room = 510usize.saturating_sub(5 + status.len());
                if text.len() > room {
                    while !text.is_char_boundary(room) {
                        room -= 1;
                    }
                    text.truncate(room);
                }
                if code >= 500 && !disconnect {
                    self.refused = true;
                    return (Reply::new(554, status, text), false);
                }
                self.phase = Phase::Closed;
                let code = if code >= 500 { 554 } else { 421 };
                (Reply::new(code, status, text), true)
            }
        }
    }

    /// The door's input at `stage`: what the session knows so far, and the
    /// command waiting (`pending`).
    fn door_input(&self, stage: DoorStage, pending: Option<&DoorPending>) -> DoorInput {
        let helo = match (pending, &self.greeting) {
            (Some(DoorPending::Helo { name, .. }), _) => name.clone(),
            (_, Some((_, name))) => name.clone(),
            _ => String::new(),
        };
        let tx = match pending {
            Some(DoorPending::Mail { tx, .. }) => Some(tx.as_ref()),
            // HELO/EHLO starts over: no transaction to speak of.
            Some(DoorPending::Helo { .. }) => None,
            _ => self.tx.as_ref(),
        };
        let mut mail_params = Vec::new();
        if let Some(tx) = tx {
            if let Some(size) = tx.size {
                mail_params.push(("SIZE".to_string(), size.to_string()));
            }
            match tx.body {
                Body::EightBitMime => mail_params.push(("BODY".into(), "8BITMIME".into())),
                Body::SevenBit => {}
            }
            if tx.smtputf8 {
                mail_params.push(("SMTPUTF8".into(), String::new()));
            }
            mail_params.extend(params_of(&tx.dsn.mail_params()));
        }
        let (rcpt_to, rcpt_params) = match pending {
            Some(DoorPending::Rcpt { to, dsn, .. }) => (
                Some(to.to_string()),
                dsn.as_ref()
                    .map(|d| params_of(&d.rcpt_params()))
                    .unwrap_or_default(),
            ),
            _ => (None, Vec::new()),
        };
        DoorInput {
            abi: finaldot_sdk::wire::ABI_VERSION,
            stage,
            session: SessionFacts {
                client_ip: self.client_ip.to_string(),
                client_port: self.client_port,
                listener: self.listener,
                helo,
                tls: self.tls.clone(),
                auth: self.authenticated.clone(),
                received_at: self.connected_at,
                body_8bit: tx.is_some_and(|t| t.body == Body::EightBitMime),
                smtputf8: tx.is_some_and(|t| t.smtputf8),
            },
            mail_from: tx.map(|t| {
                t.mail_from
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default()
            }),
            mail_params,
            rcpt_to,
            rcpt_params,
            recipients: tx
                .map(|t| t.rcpt_to.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
            earlier: Vec::new(),
        }
    }
}
