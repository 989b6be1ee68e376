//! LMTP delivery (RFC 2033) to the mailbox server of `[lmtp]` (Dovecot,
//! Cyrus): the client side of one LMTP transaction over TCP or a Unix
//! socket, and the idle connections kept for reuse.
//!
//! LHLO, then MAIL and every RCPT pipelined (an LMTP server must offer
//! PIPELINING), then the content with `BDAT n LAST` where CHUNKING is offered
//! and DATA otherwise, then one reply per accepted recipient, each mapped to
//! that recipient's state (2xx delivered, 4xx deferred, 5xx failed). The
//! recipients accepted so far are handed to the caller's `accepted` before
//! the client waits for a reply that has not arrived yet, so what the server
//! has taken is recorded at once, with one checkpoint for the replies that
//! came together.
//!
//! SECURITY: the server's replies are parsed by lettre (`Response`), one
//! line at most 1000 octets and a reply at most 64 KiB; a reply that does not
//! parse ends the connection and defers what is not answered.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::str::FromStr;
use std::sync::Mutex;

use lettre::transport::smtp::response::Response;
use tracing::{debug, info};

use finaldot_sdk::wire::RecipientState;

use super::{deferred, every, keywords, no_smtputf8, outcome_of_reply, Job};
use super::{LmtpAddress, LmtpConfig};
use crate::delivery::{Handoff, OnAccepted};

/// Longest reply line accepted (RFC 5321's 512 for replies, with room).
const MAX_LINE: u64 = 1000;
/// Longest multi-line reply accepted.
const MAX_REPLY: usize = 64 * 1024;
/// How long the replies after the data may take (RFC 5321 §4.5.3.2.6).
const END_OF_DATA: std::time::Duration = std::time::Duration::from_secs(600);

/// The socket, TCP or Unix.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// One open LMTP connection after LHLO.
struct Conn {
    io: BufReader<Stream>,
    /// The LHLO keywords, uppercase.
    keywords: Vec<String>,
}

/// A reply, or why there is none (the connection is then unusable).
type Read1 = Result<Response, String>;

impl Conn {
    /// Connects, reads the greeting and says LHLO.
    fn open(cfg: &LmtpConfig, hello: &str) -> Result<Conn, String> {
        let stream = match &cfg.address {
            LmtpAddress::Tcp(host, port) => {
                let addrs = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("resolving {host}: {e}"))?;
                let mut last = format!("{host} has no address");
                let mut found = None;
                for a in addrs {
                    match TcpStream::connect_timeout(&a, cfg.timeout) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = format!("connect: {e}"),
                    }
                }
                let s = found.ok_or(last)?;
                s.set_read_timeout(Some(cfg.timeout))
                    .and_then(|_| s.set_write_timeout(Some(cfg.timeout)))
                    .and_then(|_| s.set_nodelay(true))
                    .map_err(|e| e.to_string())?;
                Stream::Tcp(s)
            }
            LmtpAddress::Unix(path) => {
                let s = UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(cfg.timeout))
                    .and_then(|_| s.set_write_timeout(Some(cfg.timeout)))
                    .map_err(|e| e.to_string())?;
                Stream::Unix(s)
            }
        };
        let mut c = Conn {
            io: BufReader::new(stream),
            keywords: Vec::new(),
        };
        let greeting = c.read_reply()?;
        if code(&greeting) != 220 {
            return Err(format!("greeting: {}", text(&greeting)));
        }
        c.send(format!("LHLO {hello}\r\n").as_bytes())?;
        let lhlo = c.read_reply()?;
        if code(&lhlo) != 250 {
            return Err(format!("LHLO: {}", text(&lhlo)));
        }
        c.keywords = keywords(&lhlo);
        Ok(c)
    }

    fn offers(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| k == keyword)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s = self.io.get_mut();
        s.write_all(bytes)
            .and_then(|_| s.flush())
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads one reply, all its lines.
    fn read_reply(&mut self) -> Read1 {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = (&mut self.io)
                .take(MAX_LINE + 2)
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            if !line.ends_with('\n') {
                return Err("reply line too long".into());
            }
            reply.push_str(&line);
            if reply.len() > MAX_REPLY {
                return Err("reply too long".into());
            }
            // The last line of a reply has a space (or nothing) after the code.
            if line.as_bytes().get(3) != Some(&b'-') {
                return Response::from_str(&reply)
                    .map_err(|e| format!("unreadable reply {:?}: {e}", reply.trim_end()));
            }
        }
    }

    /// How long a read may wait from now on.
    fn read_timeout(&self, t: std::time::Duration) {
        let _ = match self.io.get_ref() {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
        };
    }

    /// Whether another reply is already here (so reading it will not wait).
    fn reply_waiting(&self) -> bool {
        !self.io.buffer().is_empty()
    }

    /// Whether the connection still answers (before reuse).
    fn alive(&mut self) -> bool {
        self.send(b"NOOP\r\n").is_ok() && self.read_reply().is_ok_and(|r| code(&r) == 250)
    }
}

/// The reply code.
fn code(r: &Response) -> u16 {
    r.code().to_string().parse().unwrap_or(0)
}

/// The reply as one line: code and text.
fn text(r: &Response) -> String {
    let lines: Vec<&str> = r.message().collect();
    format!("{} {}", r.code(), lines.join(" "))
}

/// The content with dot-stuffing (RFC 5321 §4.5.2) and the final dot; the
/// content ends with CRLF, as SMTP content does.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The LMTP route: the server of `[lmtp]` and its idle connections.
pub(super) struct Lmtp {
    /// The settings.
    pub(super) cfg: LmtpConfig,
    hello: String,
    idle: Mutex<Vec<Conn>>,
}

impl Lmtp {
    /// The route to `cfg`'s server; `hello` is what LHLO says.
    pub(super) fn new(cfg: &LmtpConfig, hello: &str) -> Lmtp {
        Lmtp {
            cfg: cfg.clone(),
            hello: hello.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Whether recipients at `domain` (lowercase, local) go over LMTP.
    pub(super) fn covers(&self, domain: &str) -> bool {
        self.cfg.domains.iter().any(|d| d == domain)
    }

    /// An idle connection that still answers, or a new one.
    fn connection(&self) -> Result<Conn, RecipientState> {
        loop {
            // Its own statement: the lock is not held while the NOOP waits.
            let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut c) = pooled else { break };
            if c.alive() {
                debug!(server = %self.cfg.address, "reusing LMTP connection");
                return Ok(c);
            }
        }
        let c = Conn::open(&self.cfg, &self.hello)
            .map_err(|e| deferred(format!("4.4.1 LMTP {}: {e}", self.cfg.address)))?;
        info!(server = %self.cfg.address, "LMTP connection opened");
        Ok(c)
    }

    /// Delivers `message` to `rcpts` in one transaction (the caller holds a
    /// connection slot). `stopped` is set when `accepted` could not record.
    pub(super) fn deliver(
        &self,
        job: &Job<'_>,
        rcpts: &[String],
        accepted: OnAccepted<'_>,
        stopped: &mut Option<String>,
    ) -> Vec<(String, RecipientState)> {
        let mut conn = match self.connection() {
            Ok(c) => c,
            Err(o) => return every(rcpts, &o),
        };
        let (outcomes, healthy) = self.transaction(&mut conn, job, rcpts, accepted, stopped);
        if healthy {
            if let Ok(mut v) = self.idle.lock() {
                v.push(conn);
            }
        }
        outcomes
    }

    /// One LMTP transaction. Returns the outcomes and whether the connection
    /// can be reused.
    // Long on purpose: one LMTP transaction, each reply mapped where it is read.
    fn transaction(
        &self,
        conn: &mut Conn,
        job: &Job<'_>,
        rcpts: &[String],
        accepted: OnAccepted<'_>,
        stopped: &mut Option<String>,
    ) -> (Vec<(String, RecipientState)>, bool) {
        let message = job.message;
        // A server that offers DSN gets the parameters and the duty.
        let dsn = conn.offers("DSN");
        let host = format!("LMTP {}", self.cfg.address);
        if job.needs_utf8(rcpts) && !conn.offers("SMTPUTF8") {
            return (every(rcpts, &no_smtputf8(&host)), true);
        }
        // MAIL and the RCPTs in one write (PIPELINING), then their replies.
        let mut envelope = job.mail_command(rcpts, conn.offers("8BITMIME"), dsn);
        for r in rcpts {
            envelope.push_str(&job.rcpt_command(r, dsn));
        }
        let lost =
            |why: String, which: &[String]| every(which, &deferred(format!("4.4.2 {host}: {why}")));
        if let Err(e) = conn.send(envelope.as_bytes()) {
            return (lost(e, rcpts), false);
        }
        let mail = match conn.read_reply() {
            Ok(r) => r,
            Err(e) => return (lost(e, rcpts), false),
        };
        let mut results = Vec::new();
        let mut ok = Vec::new();
        for r in rcpts {
            match conn.read_reply() {
                Ok(_) if code(&mail) / 100 != 2 => {
                    results.push((
                        r.clone(),
                        outcome_of_reply(code(&mail), &text(&mail), &host, "MAIL FROM"),
                    ));
                }
                Ok(reply) if code(&reply) / 100 == 2 => ok.push(r.clone()),
                Ok(reply) => results.push((
                    r.clone(),
                    outcome_of_reply(code(&reply), &text(&reply), &host, "RCPT TO"),
                )),
                Err(e) => {
                    results.extend(lost(e, &rcpts[results.len() + ok.len()..]));
                    results.extend(lost("no reply after RCPT".into(), &ok));
                    return (results, false);
                }
            }
        }
        if ok.is_empty() {
            let healthy = conn.send(b"RSET\r\n").is_ok() && conn.read_reply().is_ok();
            return (results, healthy);
        }
        // The content: BDAT where offered (no dot-stuffing), else DATA.
        let sent = if conn.offers("CHUNKING") {
            let mut chunk = format!("BDAT {} LAST\r\n", message.len()).into_bytes();
            chunk.extend_from_slice(message);
            conn.send(&chunk)
        } else {
            match conn.send(b"DATA\r\n").and_then(|_| conn.read_reply()) {
                Ok(r) if code(&r) == 354 => conn.send(&dot_stuffed(message)),
                Ok(r) => {
                    let o = outcome_of_reply(code(&r), &text(&r), &host, "DATA");
                    results.extend(every(&ok, &o));
                    let healthy = conn.send(b"RSET\r\n").is_ok() && conn.read_reply().is_ok();
                    return (results, healthy);
                }
                Err(e) => Err(e),
            }
        };
        if let Err(e) = sent {
            results.extend(lost(e, &ok));
            return (results, false);
        }
        // One reply per accepted recipient, in RCPT order (RFC 2033 §4.2).
        // The server delivers before it answers (Sieve, quota, fsync): give
        // it RFC 5321's ten minutes for the end of data, as SMTP does, since
        // a reply given up on is a message delivered again.
        conn.read_timeout(self.cfg.timeout.max(END_OF_DATA));
        // The recipients taken and not yet recorded, with their notes.
        let mut taken: Vec<(String, String)> = Vec::new();
        let mut record = |taken: &mut Vec<(String, String)>, results: &mut Vec<_>| {
            if taken.is_empty() {
                return;
            }
            let note = format!("delivered over {host}");
            if stopped.is_none() {
                let handoff = if dsn {
                    Handoff::PassedOn
                } else {
                    Handoff::Delivered
                };
                let addresses: Vec<String> = taken.iter().map(|(r, _)| r.clone()).collect();
                if let Err(e) = accepted(&addresses, &note, handoff) {
                    *stopped = Some(format!("4.3.0 could not record a delivery: {e}"));
                }
            }
            for (r, n) in taken.drain(..) {
                results.push((r, RecipientState::Delivered { note: n }));
            }
        };
        for (i, r) in ok.iter().enumerate() {
            if !taken.is_empty() && !conn.reply_waiting() {
                record(&mut taken, &mut results);
            }
            match conn.read_reply() {
                Ok(reply) if code(&reply) / 100 == 2 => {
                    taken.push((
                        r.clone(),
                        format!("delivered over {host}: {}", text(&reply)),
                    ));
                }
                Ok(reply) => results.push((
                    r.clone(),
                    outcome_of_reply(code(&reply), &text(&reply), &host, "end of data"),
                )),
                Err(e) => {
                    record(&mut taken, &mut results);
                    results.extend(lost(e, &ok[i..]));
                    return (results, false);
                }
            }
        }
        record(&mut taken, &mut results);
        conn.read_timeout(self.cfg.timeout);
        info!(server = %self.cfg.address, recipients = ok.len(), "LMTP transaction done");
        (results, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A scripted LMTP server without CHUNKING (Dovecot offers it, so the
    /// DATA path is checked here): answers one connection as `replies` says
    /// after the data, and returns everything the client sent.
    fn scripted(
        after_data: &'static [&'static str],
    ) -> (LmtpConfig, std::thread::JoinHandle<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            let mut r = BufReader::new(s);
            let mut seen = String::new();
            w.write_all(b"220 lmtp.test ready\r\n").expect("greet");
            let mut in_data = false;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                seen.push_str(&line);
                let reply: String = if in_data {
                    if line != ".\r\n" {
                        continue;
                    }
                    in_data = false;
                    after_data.iter().map(|l| format!("{l}\r\n")).collect()
                } else if line.starts_with("LHLO") {
                    "250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n".into()
                } else if line.starts_with("RCPT TO:<nobody@") {
                    "550 5.1.1 <nobody@example.test> User doesn't exist\r\n".into()
                } else if line.starts_with("DATA") {
                    in_data = true;
                    "354 go ahead\r\n".into()
                } else if line.starts_with("QUIT") {
                    break;
                } else {
                    "250 2.0.0 ok\r\n".into()
                };
                w.write_all(reply.as_bytes()).expect("reply");
            }
            seen
        });
        let cfg = LmtpConfig {
            address: LmtpAddress::Tcp("127.0.0.1".into(), port),
            domains: vec!["example.test".into()],
            timeout: Duration::from_secs(5),
            max_connections: 1,
        };
        (cfg, t)
    }

    #[test]
    fn data_without_chunking_maps_each_recipients_reply_and_records_what_was_taken() {
        let (cfg, server) = scripted(&[
            "250 2.0.0 <a@example.test> Saved",
            "452 4.2.2 <b@example.test> Mailbox is full",
            "552 5.2.2 <c@example.test> Quota exceeded",
        ]);
        let lmtp = Lmtp::new(&cfg, "mx.test");
        let rcpts: Vec<String> = ["a", "nobody", "b", "c"]
            .iter()
            .map(|u| format!("{u}@example.test"))
            .collect();
        let mut recorded = Vec::new();
        let mut stopped = None;
        let job = Job {
            mail_from: "s@remote.test",
            message: b"Subject: x\r\n\r\n.dot line\r\n",
            dsn: &Default::default(),
        };
        let out = lmtp.deliver(
            &job,
            &rcpts,
            &mut |taken, _, _| {
                recorded.extend(taken.to_vec());
                Ok(())
            },
            &mut stopped,
        );
        drop(lmtp);
        let state = |a: &str| out.iter().find(|(r, _)| r == a).map(|(_, s)| s.clone());
        assert!(
            matches!(
                state("a@example.test"),
                Some(RecipientState::Delivered { .. })
            ),
            "{out:?}"
        );
        assert!(
            matches!(state("nobody@example.test"), Some(RecipientState::Failed { status, .. }) if status == "5.1.1"),
            "{out:?}"
        );
        assert!(
            matches!(
                state("b@example.test"),
                Some(RecipientState::Deferred { .. })
            ),
            "{out:?}"
        );
        assert!(
            matches!(state("c@example.test"), Some(RecipientState::Failed { status, .. }) if status == "5.2.2"),
            "{out:?}"
        );
        assert_eq!(recorded, vec!["a@example.test".to_string()]);
        assert!(stopped.is_none());
        let seen = server.join().expect("server");
        assert!(seen.contains("LHLO mx.test\r\n"), "{seen}");
        assert!(seen.contains("\r\n..dot line\r\n.\r\n"), "{seen}");
        assert!(!seen.contains("BDAT"), "{seen}");
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_with_one() {
        assert_eq!(
            dot_stuffed(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b"x"), b"x\r\n.\r\n");
    }
}
