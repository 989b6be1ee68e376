//! The SMTP session state machine, sans-IO: bytes in, [`Step`]s out.
//!
//! The driver (see `server.rs`) feeds whatever it read with [`Session::feed`]
//! and then calls [`Session::next_step`] until it returns [`Step::NeedInput`].
//! Two steps are requests the driver must answer before asking again:
//! [`Step::Begin`] (open a spool file; answer with [`Session::begun`]) and
//! [`Step::Commit`] (make the message durable; answer with
//! [`Session::committed`]). Because the session stops at those points, replies
//! to pipelined commands (RFC 2920) always come in order, after the 250 that
//! follows the commit.
//!
//! SECURITY: every byte is hostile. Command lines are capped at 512 octets,
//! only CRLF ends a line, message content goes through the bare-CR/LF and
//! line-length checks, sizes are checked before data is kept, and every error
//! reply counts toward a per-session error cap. Nothing here panics on input.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;

use memchr::memchr;

pub use super::command::Mailbox;
use super::command::{self, Body, Command};
use super::data::{DataDecoder, HeaderCheck, LineCheck};
use super::policy::{RcptVerdict, Recipients};
use super::reply::Reply;
use crate::spool::Envelope;
use crate::unix_now;
use finaldot_sdk::wire::{Listener, TlsFacts};

mod auth;
mod content;
mod door;
mod envelope;

use door::DoorPending;

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512 + 500;

/// The longest AUTH response line, CRLF aside (RFC 4954 §4).
const MAX_AUTH_LINE: usize = 12288;

/// The reply to an over-long line: an AUTH response (RFC 4954 §4: `500
/// 5.5.6`) or a command (`500 5.5.2`).
fn line_too_long(auth: bool) -> Reply {
    if auth {
        Reply::new(
            500,
            "5.5.6",
            "Error: authentication exchange line is too long",
        )
    } else {
        Reply::new(500, "5.5.2", "Error: command line too long")
    }
}

/// The longest other command line (RFC 5321 §4.5.3.1.4).
const BASE_COMMAND_LINE: usize = 512;
/// Largest piece of message content handed out in one [`Step::Data`].
const DATA_CHUNK: usize = 64 * 1024;

/// What a session needs to know about the server; shared by all sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The server's name, used in the greeting and replies.
    pub hostname: String,
    /// Largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: u64,
    /// Most recipients per message; more get 452 (RFC 5321 §4.5.3.1.10).
    pub max_recipients: usize,
    /// Error replies after which the session is closed with 421.
    pub max_errors: u32,
    /// Which recipients are local, which exist.
    pub recipients: Recipients,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// A submission listener (RFC 6409): AUTH is offered once TLS is up,
    /// MAIL needs it, and an authenticated client may relay.
    pub submission: bool,
    /// Which senders an authenticated user may use (submission).
    pub sender_login: super::settings::SenderLogin,
    /// Where mail to the bare `<postmaster>` and to `postmaster@[this
    /// host's address]` goes (RFC 5321 §4.5.1: it must be accepted and
    /// delivered), as the envelope recipient the pipeline sees.
    pub postmaster: Mailbox,
    /// The door stages some `[[door]]` plugin judges on this listener
    /// (none: the session never asks).
    pub door: crate::door::DoorWants,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Everything buffered has been handled; read more input.
    NeedInput,
    /// Send this reply.
    Reply(Reply),
    /// Open a spool file for this envelope, then call [`Session::begun`].
    Begin(Box<Envelope>),
    /// Append these message bytes to the open spool file.
    Data(Vec<u8>),
    /// Make the open message durable, then call [`Session::committed`].
    Commit,
    /// Discard the open spool file (a reply follows as its own step).
    Abort,
    /// Send what is pending, then start TLS on the connection (RFC 3207),
    /// then call [`Session::tls_established`].
    StartTls,
    /// Send what is pending and close the connection.
    Close,
    /// Check these credentials, then call [`Session::auth_checked`].
    Authenticate {
        /// The authentication identity.
        user: String,
        /// The password.
        password: String,
    },
    /// Ask the door about this command (off the network runtime), then
    /// call [`Session::door_answered`]. Never asked at or after DATA.
    Door(Box<finaldot_sdk::wire::DoorInput>),
}

/// What the driver found when it checked credentials ([`Step::Authenticate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Good credentials: the session is authenticated as this user (`235`).
    Valid(String),
    /// Unknown user or wrong password (`535 5.7.8`).
    Invalid,
    /// Not checked now (every checker busy, the users file unreadable):
    /// `454 4.7.0`, the client may try again.
    TryLater,
    /// The client's address failed too often: `421 4.7.0` and the session ends.
    Blocked,
}

/// Which AUTH exchange is waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthWait {
    /// PLAIN without an initial response.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password for this user.
    LoginPassword(String),
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Discarding the rest of an over-long command line.
    SkipLongLine {
        /// An AUTH response (RFC 4954 §4: `500 5.5.6`), not a command.
        auth: bool,
    },
    /// Waiting for [`Session::begun`]; then enter `then`.
    AwaitBegin(Box<Phase>),
    /// Reading DATA content.
    Data(DataDecoder),
    /// Reading a BDAT chunk.
    Bdat {
        remaining: u64,
        last: bool,
        /// When set, the chunk is consumed and discarded and this is the reply.
        refuse: Option<Reply>,
    },
    /// Waiting for [`Session::committed`].
    AwaitCommit,
    /// Waiting for [`Session::tls_established`].
    AwaitTls,
    /// Reading an AUTH response line (RFC 4954).
    AuthResponse(AuthWait),
    /// Waiting for [`Session::auth_checked`].
    AwaitAuth,
    /// Waiting for [`Session::door_answered`].
    AwaitDoor,
    /// The connection is over.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Greeting {
    Helo,
    Ehlo,
}

#[derive(Debug)]
struct Content {
    size: u64,
    too_big: bool,
    check: LineCheck,
    headers: HeaderCheck,
    /// The start of the content, held until its first line shows whether
    /// the message begins with a header field; `None` once that is known.
    first_line: Option<Vec<u8>>,
}

impl Default for Content {
    fn default() -> Self {
        Content {
            size: 0,
            too_big: false,
            check: LineCheck::default(),
            headers: HeaderCheck::default(),
            first_line: Some(Vec::new()),
        }
    }
}

/// Whether content starting with `start` needs an empty line before it to
/// stay out of the header section the daemon's `Received:` field opens:
/// `Some(false)` for a header field (`name:`) or an empty first line,
/// `Some(true)` for anything else (a body with no headers, as a bare
/// `sendmail`-style client may send; RFC 5322 §2.1 puts the empty line
/// between the two, and Postfix inserts it too), `None` while undecided.
fn needs_separator(start: &[u8]) -> Option<bool> {
    // After the name, blanks may come before the colon (RFC 5322 §4.5,
    // obsolete syntax that old software still sends: "Subject : x").
    let mut blanks = false;
    for (i, &b) in start.iter().enumerate() {
        match b {
            b':' if i > 0 => return Some(false),
            b'\r' | b'\n' if i == 0 => return Some(false),
            b' ' | b'\t' if i > 0 => blanks = true,
            33..=126 if b != b':' && !blanks => {}
            _ => return Some(true),
        }
    }
    // A field name is at most a line long.
    (start.len() > 998).then_some(true)
}

#[derive(Debug)]
struct Transaction {
    mail_from: Option<Mailbox>,
    /// SIZE= of MAIL, as given.
    size: Option<u64>,
    body: Body,
    smtputf8: bool,
    rcpt_to: Vec<Mailbox>,
    /// What the client asked of DSNs (RFC 3461): RET and ENVID of MAIL,
    /// NOTIFY and ORCPT of the RCPTs that had them.
    dsn: finaldot_sdk::wire::DsnRequest,
    /// RCPTs refused for being over `max_recipients` so far.
    overshoot: usize,
    /// Set once the message content has begun (a spool file is open).
    content: Option<Content>,
}

/// RCPTs over `max_recipients` answered 452 before they count as errors.
const RECIPIENT_OVERSHOOT: usize = 1000;

/// One SMTP session's state.
#[derive(Debug)]
pub struct Session {
    cfg: Arc<SessionConfig>,
    client_ip: IpAddr,
    /// The client's TCP port (recorded with each message).
    client_port: u16,
    /// The listener the session is on (recorded with each message).
    listener: Listener,
    now: fn() -> u64,
    greeting: Option<(Greeting, String)>,
    tx: Option<Transaction>,
    phase: Phase,
    input: Vec<u8>,
    pos: usize,
    pending: VecDeque<Step>,
    data_out: Vec<u8>,
    errors: u32,
    /// Set once TLS is up: the protocol version and cipher suite.
    tls: Option<TlsFacts>,
    /// Set once AUTH succeeded: the authenticated user.
    authenticated: Option<String>,
    /// The address the client connected to.
    local_ip: Option<IpAddr>,
    /// When the connection opened (the door's `received_at`).
    connected_at: u64,
    /// The command waiting for the door's answer.
    door_pending: Option<DoorPending>,
    /// The door refused the connection at connect with a 5xx greeting:
    /// only QUIT is accepted (RFC 5321 §3.1).
    refused: bool,
}

impl Session {
    /// A new session for a client at `client_ip`.
    pub fn new(cfg: Arc<SessionConfig>, client_ip: IpAddr) -> Self {
        Session {
            cfg,
            client_ip,
            client_port: 0,
            listener: Listener::Smtp,
            now: unix_now,
            greeting: None,
            tx: None,
            phase: Phase::Command,
            input: Vec::new(),
            pos: 0,
            pending: VecDeque::new(),
            data_out: Vec::new(),
            errors: 0,
            tls: None,
            authenticated: None,
            local_ip: None,
            connected_at: unix_now(),
            door_pending: None,
            refused: false,
        }
    }

    /// The address the client connected to, so that `postmaster@[that
    /// address]` reaches this host's postmaster (RFC 5321 §4.5.1, RFC 1123
    /// §5.2.17).
    pub fn with_local_ip(mut self, ip: Option<IpAddr>) -> Self {
        self.local_ip = ip;
        self
    }

    /// The client's TCP port and the listener the session is on, recorded
    /// with each message (default: port 0 on the SMTP listener).
    pub fn with_peer(mut self, client_port: u16, listener: Listener) -> Self {
        self.client_port = client_port;
        self.listener = listener;
        self
    }

    /// The user this session authenticated as, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The driver's answer to [`Step::Authenticate`].
    pub fn auth_checked(&mut self, result: AuthResult) {
        self.phase = Phase::Command;
        match result {
            AuthResult::Blocked => {
                self.reply_and_close(Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Error: too many failed authentication attempts from your address, try again later",
                        self.cfg.hostname
                    ),
                ));
            }
            AuthResult::Valid(u) => {
                self.authenticated = Some(u);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            AuthResult::Invalid => self.error_reply(Reply::new(
                535,
                "5.7.8",
                "Error: authentication credentials invalid",
            )),
            AuthResult::TryLater => self.error_reply(Reply::new(
                454,
                "4.7.0",
                "Error: temporary authentication failure, try again later",
            )),
        }
    }

    /// The 220 greeting to send when the connection opens.
    pub fn greeting(&self) -> Reply {
        Reply::new(220, "", format!("{} ESMTP finaldot", self.cfg.hostname))
    }

    /// True while message content is being received (DATA or a BDAT series),
    /// the part a graceful shutdown lets finish.
    pub fn in_message(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::Bdat { .. } | Phase::AwaitBegin(_) | Phase::AwaitCommit
        ) || self.tx.as_ref().is_some_and(|t| t.content.is_some())
    }

    /// True while the session is reading message content rather than commands
    /// (the driver uses the data timeout then).
    pub fn reading_content(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
    }

    /// Appends bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// The driver's answer to [`Step::Begin`].
    pub fn begun(&mut self, result: Result<(), Reply>) {
        let Phase::AwaitBegin(then) = std::mem::replace(&mut self.phase, Phase::Command) else {
            debug_assert!(false, "begun() without Step::Begin");
            return;
        };
        match result {
            Ok(()) => {
                if let Some(tx) = self.tx.as_mut() {
                    tx.content = Some(Content::default());
                }
                if matches!(*then, Phase::Data(_)) {
                    self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
                }
                self.phase = *then;
            }
            Err(reply) => {
                self.tx = None;
                match *then {
                    Phase::Bdat {
                        remaining, last, ..
                    } => {
                        self.phase = Phase::Bdat {
                            remaining,
                            last,
                            refuse: Some(reply),
                        }
                    }
                    _ => self.error_reply(reply),
                }
            }
        }
    }

    /// The driver's answer to [`Step::Commit`]: the queue id, or the error reply.
    pub fn committed(&mut self, result: Result<String, Reply>) {
        debug_assert!(matches!(self.phase, Phase::AwaitCommit));
        self.phase = Phase::Command;
        self.tx = None;
        match result {
            Ok(id) => self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))),
            Err(reply) => self.error_reply(reply),
        }
    }

    /// The driver's report that the TLS handshake after [`Step::StartTls`]
    /// succeeded (version and cipher suite, recorded with each message). The
    /// session starts over, as RFC 3207 requires: the client must EHLO again.
    pub fn tls_established(&mut self, tls: TlsFacts) {
        self.tls = Some(tls);
        self.greeting = None;
        self.tx = None;
        self.phase = Phase::Command;
    }

    /// Whether TLS is up.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The reply for a timeout; the driver sends it and closes.
    pub fn timeout(&mut self) -> Reply {
        self.phase = Phase::Closed;
        Reply::new(
            421,
            "4.4.2",
            format!("{} Error: timeout exceeded", self.cfg.hostname),
        )
    }

    /// The reply for a shutdown; the driver sends it and closes.
    pub fn shutdown(&mut self) -> Reply {
        self.phase = Phase::Closed;
        Reply::new(
            421,
            "4.3.2",
            format!(
                "{} Service shutting down, closing channel",
                self.cfg.hostname
            ),
        )
    }

    fn reply(&mut self, reply: Reply) {
        self.pending.push_back(Step::Reply(reply));
    }

    /// Sends `reply`, then closes the connection.
    fn reply_and_close(&mut self, reply: Reply) {
        self.reply(reply);
        self.pending.push_back(Step::Close);
        self.phase = Phase::Closed;
    }

    fn error_reply(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            self.reply_and_close(Reply::new(
                421,
                "4.7.0",
                format!("{} Error: too many errors", self.cfg.hostname),
            ));
        }
    }

    /// The next thing the driver must do.
    pub fn next_step(&mut self) -> Step {
        loop {
            if let Some(step) = self.pending.pop_front() {
                return step;
            }
            match &mut self.phase {
                Phase::Closed => return Step::Close,
                Phase::AuthResponse(_) => {
                    if !self.auth_line_step() {
                        return Step::NeedInput;
                    }
                }
                Phase::AwaitBegin(_)
                | Phase::AwaitCommit
                | Phase::AwaitTls
                | Phase::AwaitAuth
                | Phase::AwaitDoor => {
                    debug_assert!(false, "next_step() while a request is unanswered");
                    return Step::NeedInput;
                }
                Phase::Command => {
                    if !self.command_step() {
                        return Step::NeedInput;
                    }
                }
                Phase::SkipLongLine { auth } => match memchr(b'\n', &self.input[self.pos..]) {
                    Some(off) => {
                        let auth = *auth;
                        self.pos += off + 1;
                        self.phase = Phase::Command;
                        self.error_reply(line_too_long(auth));
                    }
                    None => {
                        self.pos = self.input.len();
                        return Step::NeedInput;
                    }
                },
                Phase::Data(_) => {
                    if !self.data_step() {
                        return Step::NeedInput;
                    }
                }
                Phase::Bdat { .. } => {
                    if !self.bdat_step() {
                        return Step::NeedInput;
                    }
                }
            }
        }
    }

    /// Handles one command line if a whole one is buffered. Returns false if more input is needed.
    fn command_step(&mut self) -> bool {
        let avail = &self.input[self.pos..];
        let Some(lf) = memchr(b'\n', avail) else {
            if avail.len() >= MAX_COMMAND_LINE {
                self.pos = self.input.len();
                self.phase = Phase::SkipLongLine { auth: false };
                return true;
            }
            return false;
        };
        let line_start = self.pos;
        let line_end = self.pos + lf;
        self.pos = line_end + 1;
        // RFC 3461 §5: MAIL and RCPT may be 100 and 500 octets longer (RET
        // and ENVID, NOTIFY and ORCPT); 500 for both keeps one bound.
        let verb = &self.input[line_start..line_start + lf.min(5)];
        let dsn_verb = verb.eq_ignore_ascii_case(b"MAIL ") || verb.eq_ignore_ascii_case(b"RCPT ");
        if lf + 1 > MAX_COMMAND_LINE || (lf + 1 > BASE_COMMAND_LINE && !dsn_verb) {
            self.error_reply(line_too_long(false));
            return true;
        }
        if lf == 0 || self.input[line_end - 1] != b'\r' {
            self.error_reply(Reply::new(
                500,
                "5.5.2",
                "Error: bare <LF> received; SMTP lines end with <CR><LF>",
            ));
            return true;
        }
        let line = self.input[line_end - lf..line_end - 1].to_vec();
        if memchr(b'\r', &line).is_some() {
            self.error_reply(Reply::new(
                500,
                "5.5.2",
                "Error: bare <CR> received in command",
            ));
            return true;
        }
        match command::parse(&line) {
            Ok(Command::Quit) => self.execute(Command::Quit),
            // BDAT's refusal consumes its chunk (RFC 3030): bdat() refuses
            // it, with no greeting, as content that is not allowed.
            Ok(cmd @ Command::Bdat { .. }) if self.refused => self.execute(cmd),
            // RFC 5321 §3.1: after a 554 greeting, 503 to all but QUIT.
            Ok(_) if self.refused => self.error_reply(Reply::new(
                503,
                "5.5.1",
                "Error: this server refused the connection; only QUIT is accepted",
            )),
            Ok(cmd) => self.execute(cmd),
            Err(reply) => self.error_reply(reply),
        }
        true
    }

    // Long on purpose: one arm per SMTP verb, each delegating to its handler.
    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Ehlo(name) => {
                // The reset (RFC 5321 §4.1.4) happens when the door lets
                // the EHLO through: a refused one leaves the state as it was.
                let c = &self.cfg;
                let lines = vec![
                    format!("{} greets {}", c.hostname, self.client_ip),
                    "PIPELINING".to_string(),
                    format!("SIZE {}", c.max_message_size),
                    "8BITMIME".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                    "SMTPUTF8".to_string(),
                    "CHUNKING".to_string(),
                    "DSN".to_string(),
                ];
                let mut lines = lines;
                if c.starttls && self.tls.is_none() {
                    lines.push("STARTTLS".to_string());
                }
                // RFC 4954 §4 and RFC 8314: no AUTH in plaintext.
                if c.submission && self.tls.is_some() {
                    lines.push("AUTH PLAIN LOGIN".to_string());
                }
                self.through_door(DoorPending::Helo {
                    greeting: Greeting::Ehlo,
                    name,
                    reply: Reply::lines(250, "", lines),
                });
            }
            Command::Helo(name) => {
                let text = self.cfg.hostname.clone();
                self.through_door(DoorPending::Helo {
                    greeting: Greeting::Helo,
                    name,
                    reply: Reply::new(250, "", text),
                });
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.abort_content();
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            Command::Quit => {
                self.abort_content();
                self.tx = None;
                let text = format!("{} closing connection", self.cfg.hostname);
                self.reply_and_close(Reply::new(221, "2.0.0", text));
            }
            Command::Vrfy => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => {
                self.error_reply(Reply::new(502, "5.5.1", "Error: EXPN is not available"))
            }
            Command::Help => self.reply(Reply::lines(
                214,
                "2.0.0",
                vec![
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP".into(),
                    "See RFC 5321".into(),
                ],
            )),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
            Command::NotImplemented(verb) => self.error_reply(Reply::new(
                502,
                "5.5.1",
                format!("Error: {verb} is not implemented"),
            )),
        }
    }

    fn starttls(&mut self) {
        if !self.cfg.starttls {
            return self.error_reply(Reply::new(502, "5.5.1", "Error: STARTTLS is not available"));
        }
        if self.tls.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: TLS is already active"));
        }
        if self.tx.is_some() {
            return self.error_reply(Reply::new(
                503,
                "5.5.1",
                "Error: STARTTLS inside a transaction",
            ));
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.pending.push_back(Step::StartTls);
        // Anything the client pipelined after STARTTLS arrived in plaintext and
        // must not be run inside the TLS session (CVE-2011-0411).
        self.input.clear();
        self.pos = 0;
        self.phase = Phase::AwaitTls;
    }

    /// Drops an open message (RSET, EHLO, QUIT in the middle of a BDAT series).
    fn abort_content(&mut self) {
        if self.tx.as_ref().is_some_and(|t| t.content.is_some()) {
            self.pending.push_back(Step::Abort);
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
