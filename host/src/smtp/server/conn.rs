//! One connection: drives its [`Session`] (sans-IO) over the socket, runs
//! the TLS handshake and the AUTH check when the session asks, and streams
//! each message into the spool, answering the final dot with exactly what
//! [`Spool::commit`] returned.
//!
//! SECURITY: every byte read is the client's and goes to the session
//! unread; what goes back is the session's replies and, for spool errors,
//! [`spool_error_reply`]'s, never internal error text.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::received::received_header;
use super::tls::{describe, Stream};
use super::{admission, auth, spool_error_reply, ListenKind, Shared};
use crate::door::{DoorAnswer, DoorMemory};
use crate::metrics;
use crate::smtp::reply::Reply;
use crate::smtp::session::{AuthResult, Session, SessionConfig, Step};
use crate::smtp::settings::SmtpConfig;
use crate::spool::{self, Envelope, Spool, SpoolWriter};

/// How long a client the door refused at connect (554 greeting) may stay
/// before it is closed with 421, whatever `command_timeout_secs` says.
const REFUSED_TIMEOUT: Duration = Duration::from_secs(10);

/// Content buffered before it is handed to a blocking write.
const WRITE_BATCH: usize = 256 * 1024;

/// The message being received: its spool file and content not yet written.
struct Sink {
    writer: Option<SpoolWriter>,
    buffered: Vec<u8>,
    failed: Option<spool::Error>,
    envelope: Box<Envelope>,
}

impl Sink {
    async fn push(&mut self, bytes: Vec<u8>) {
        if self.failed.is_some() {
            return;
        }
        if self.buffered.is_empty() {
            self.buffered = bytes;
        } else {
            self.buffered.extend_from_slice(&bytes);
        }
        if self.buffered.len() >= WRITE_BATCH {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let data = std::mem::take(&mut self.buffered);
        let r = tokio::task::spawn_blocking(move || {
            let r = writer.write(&data);
            (writer, r)
        })
        .await;
        match r {
            Ok((writer, Ok(()))) => self.writer = Some(writer),
            Ok((_, Err(e))) => self.failed = Some(e),
            Err(e) => self.failed = Some(join_error(e)),
        }
    }

    async fn commit(
        mut self,
        spool: &Spool,
    ) -> Result<(spool::QueueId, u64, Box<Envelope>), spool::Error> {
        self.flush().await;
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let writer = self.writer.take().ok_or(spool::Error::CommitterGone)?;
        let size = writer.message_len();
        let prepared = tokio::task::spawn_blocking(move || writer.finish())
            .await
            .map_err(join_error)??;
        let id = spool.commit(prepared).await?;
        Ok((id, size, self.envelope))
    }

    async fn discard(mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(writer)).await;
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> spool::Error {
    spool::Error::io(
        "background write",
        std::path::Path::new(""),
        std::io::Error::other(e.to_string()),
    )
}

/// When a client must have sent what the session waits for. Besides the
/// idle timeout of each read (`command_timeout`, `data_timeout`), a whole
/// command line must arrive within `command_timeout` of the last reply, and
/// a message's whole content within `data_timeout` plus its size at
/// `min_data_rate`: a client that trickles a byte now and then is cut off
/// like one that sends nothing (RFC 5321 §4.5.3.2 timeouts are minimums for
/// an honest client, not a licence to hold a connection slot forever).
struct Deadlines {
    command_timeout: Duration,
    data_timeout: Duration,
    min_data_rate: u64,
    /// The end of the wait for the next whole command line.
    line: Instant,
    /// When the current message's content began, and its octets so far.
    content: Option<(Instant, u64)>,
}

impl Deadlines {
    fn new(smtp: &SmtpConfig) -> Deadlines {
        Deadlines {
            command_timeout: smtp.command_timeout,
            data_timeout: smtp.data_timeout,
            min_data_rate: smtp.min_data_rate,
            line: Instant::now() + smtp.command_timeout,
            content: None,
        }
    }

    /// After the session ran: `replied` when it answered something (a
    /// command was complete, the wait for the next one starts over);
    /// `in_message` while a message's content is open.
    fn replied(&mut self, replied: bool, in_message: bool) {
        let now = Instant::now();
        if replied {
            self.line = now + self.command_timeout;
        }
        match (&self.content, in_message) {
            (None, true) => self.content = Some((now, 0)),
            (Some(_), false) => self.content = None,
            _ => {}
        }
    }

    /// `n` octets arrived.
    fn received(&mut self, n: usize, content: bool) {
        if let (Some((_, octets)), true) = (self.content.as_mut(), content) {
            *octets += n as u64;
        }
    }

    /// The latest moment the next read may end.
    fn until(&self, reading_content: bool) -> Instant {
        let now = Instant::now();
        if !reading_content {
            return self.line.min(now + self.command_timeout);
        }
        let idle = now + self.data_timeout;
        match self.content {
            Some((began, octets)) if self.min_data_rate > 0 => {
                let allowance = Duration::from_secs_f64(octets as f64 / self.min_data_rate as f64);
                idle.min(began + self.data_timeout + allowance)
            }
            _ => idle,
        }
    }
}

/// One client connection and the session it carries.
pub(super) struct Conn {
    /// The next reply ends a refused message (counted in the metrics).
    refusing: bool,
    /// When the current message's commit began (for the ack-latency histogram).
    ack_started: Option<std::time::Instant>,
    /// The socket, plain or TLS.
    stream: Stream,
    /// The protocol state machine: bytes in, steps out.
    session: Session,
    /// The server's name (the Received field).
    hostname: String,
    /// `[smtp]` as it was when the connection began (timeouts, in-flow delay).
    smtp: Arc<SmtpConfig>,
    /// What the server's connections share (spool, TLS, caps, AUTH failures).
    shared: Arc<Shared>,
    /// The message being received, if any.
    sink: Option<Sink>,
    /// Replies not yet written.
    out: Vec<u8>,
    /// Becomes true when the server shuts down.
    stop: watch::Receiver<bool>,
    /// Set when shutdown began: the end of the grace period.
    deadline: Option<Instant>,
    /// The client's address.
    peer: IpAddr,
    /// Record the authenticated user in Received (submission listeners).
    received_auth: bool,
    /// Writes of replies so far (the command deadline starts over after one).
    replies_sent: u64,
    /// What the door remembers of this connection (taken while a door call
    /// runs on a blocking thread).
    door_memory: Option<DoorMemory>,
}

impl Conn {
    /// A connection from `peer` on a `kind` listener, its session set up with `session`.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        kind: ListenKind,
        session: Arc<SessionConfig>,
        smtp: Arc<SmtpConfig>,
        shared: Arc<Shared>,
        stop: watch::Receiver<bool>,
    ) -> Conn {
        let received_auth = kind == ListenKind::Submission && shared.submission().received_auth;
        let local_ip = stream.local_addr().ok().map(|a| a.ip().to_canonical());
        Conn {
            refusing: false,
            ack_started: None,
            stream: Stream::Plain(stream),
            hostname: session.hostname.clone(),
            session: Session::new(session, peer.ip())
                .with_local_ip(local_ip)
                .with_peer(peer.port(), kind.listener()),
            smtp,
            shared,
            sink: None,
            out: Vec::new(),
            stop,
            deadline: None,
            peer: peer.ip(),
            received_auth,
            replies_sent: 0,
            door_memory: Some(DoorMemory {
                label: peer.to_string(),
                ..DoorMemory::default()
            }),
        }
    }

    async fn send(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.replies_sent += 1;
            self.out.clear();
        }
        Ok(())
    }

    async fn send_final(&mut self, reply: Reply) -> std::io::Result<()> {
        reply.write_to(&mut self.out);
        self.send().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// Runs the server side of a TLS handshake on the plain stream (after
    /// STARTTLS, or at connect on an implicit-TLS listener), within the
    /// command timeout. False when there is no certificate or it failed: the
    /// connection is then closed.
    pub(super) async fn handshake(&mut self) -> bool {
        let Some(acceptor) = self.shared.tls() else {
            return false;
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return false;
        };
        match tokio::time::timeout(self.smtp.command_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let facts = describe(tls.get_ref().1);
                debug!(tls = %facts.protocol, cipher = %facts.cipher, "TLS established");
                self.stream = Stream::Tls(Box::new(tls));
                self.session.tls_established(facts);
                true
            }
            Ok(Err(e)) => {
                info!(error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                info!("TLS handshake timed out");
                false
            }
        }
    }

    /// Serves the connection until the session ends, the client leaves or
    /// the server shuts down; a message left unfinished is discarded.
    pub(super) async fn serve(&mut self) {
        if let Err(e) = self.exchange().await {
            debug!(error = %e, "connection ended");
        }
        // Dropping an unfinished sink removes its tmp file.
        if let Some(sink) = self.sink.take() {
            sink.discard().await;
        }
    }

    /// Greets, then reads, drives the session and writes its replies.
    async fn exchange(&mut self) -> std::io::Result<()> {
        if *self.stop.borrow() {
            let r = self.session.shutdown();
            return self.send_final(r).await;
        }
        let mut refused = false;
        match self.session.connect_ask() {
            None => self.session.greeting().write_to(&mut self.out),
            Some(ask) => {
                let answer = self.ask_door(ask).await;
                let (reply, close) = self.session.connect_answered(answer);
                if close {
                    return self.send_final(reply).await;
                }
                refused = reply.code >= 500;
                reply.write_to(&mut self.out);
            }
        }
        self.send().await?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut clock = Deadlines::new(&self.smtp);
        if refused {
            // After a 554 greeting the client may only QUIT (RFC 5321
            // §3.1): it gets a short while to, not a slot for minutes.
            clock.command_timeout = clock.command_timeout.min(REFUSED_TIMEOUT);
            clock.line = Instant::now() + clock.command_timeout;
        }
        loop {
            let before = self.replies_sent;
            if self.drive().await? {
                self.send().await?;
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
            // A reply written inside the steps (STARTTLS's 220, then the
            // handshake) counts as much as one written here.
            self.send().await?;
            clock.replied(self.replies_sent != before, self.session.in_message());
            if let Some(t) = self.ack_started.take() {
                metrics::global()
                    .ack_latency
                    .observe(t.elapsed().as_secs_f64());
            }
            if self.deadline.is_some() && !self.session.in_message() {
                let r = self.session.shutdown();
                return self.send_final(r).await;
            }
            let until = clock.until(self.session.reading_content());
            let grace_end = self.deadline;
            tokio::select! {
                r = tokio::time::timeout_at(until, self.stream.read(&mut buf)) => match r {
                    Err(_) => {
                        info!("timeout, closing");
                        let r = self.session.timeout();
                        return self.send_final(r).await;
                    }
                    Ok(Ok(0)) => {
                        debug!("client closed the connection");
                        return Ok(());
                    }
                    Ok(Ok(n)) => {
                        clock.received(n, self.session.reading_content());
                        self.session.feed(&buf[..n]);
                    }
                    Ok(Err(e)) => return Err(e),
                },
                _ = self.stop.changed(), if grace_end.is_none() => {
                    self.deadline = Some(Instant::now() + self.smtp.shutdown_grace);
                }
                _ = tokio::time::sleep_until(grace_end.unwrap_or_else(Instant::now)), if grace_end.is_some() => {
                    info!("shutdown grace period over, closing");
                    let r = self.session.shutdown();
                    return self.send_final(r).await;
                }
            }
        }
    }

    /// Runs session steps until it needs input. Returns true when the session is over.
    async fn drive(&mut self) -> std::io::Result<bool> {
        loop {
            match self.session.next_step() {
                Step::NeedInput => return Ok(false),
                Step::Close => return Ok(true),
                Step::Reply(r) => {
                    if std::mem::take(&mut self.refusing) && r.is_error() {
                        count_message("refused", &r.code.to_string());
                    }
                    r.write_to(&mut self.out)
                }
                Step::Begin(env) => {
                    let r = self.begin(env).await;
                    self.session.begun(r);
                }
                Step::Data(bytes) => {
                    if let Some(sink) = self.sink.as_mut() {
                        sink.push(bytes).await;
                    }
                }
                Step::Abort => {
                    self.refusing = true;
                    if let Some(sink) = self.sink.take() {
                        sink.discard().await;
                    }
                }
                Step::StartTls => {
                    self.send().await?;
                    if !self.handshake().await {
                        return Ok(true);
                    }
                }
                Step::Authenticate { user, password } => self.authenticate(user, password).await,
                Step::Door(ask) => {
                    // Replies already due (a 250 after a final dot, when
                    // the client pipelined the next MAIL) never wait for a
                    // door call.
                    self.send().await?;
                    let answer = self.ask_door(*ask).await;
                    self.session.door_answered(answer);
                }
                Step::Commit => {
                    self.ack_started = Some(std::time::Instant::now());
                    let r = self.commit().await;
                    let code = match &r {
                        Ok(_) => "250".to_string(),
                        Err(reply) => reply.code.to_string(),
                    };
                    count_message(if r.is_ok() { "accepted" } else { "refused" }, &code);
                    self.session.committed(r);
                }
            }
        }
    }

    /// Asks the door about one command on a blocking thread (the plugin
    /// pool's calls block; the runtime's threads never wait on them). A
    /// door that could not be asked at all answers with the tempfail.
    async fn ask_door(&mut self, ask: finaldot_sdk::wire::DoorInput) -> DoorAnswer {
        let door = self.shared.door.clone();
        let stage = ask.stage;
        // A slot first, waited for here (no thread held), within the
        // command timeout: a door that cannot be asked is a door failure.
        let wait = self.smtp.command_timeout;
        let slot = match tokio::time::timeout(wait, self.shared.door_calls.clone().acquire_owned())
            .await
        {
            Ok(Ok(slot)) => slot,
            _ => {
                warn!(
                    stage = stage.as_str(),
                    "no door call slot in time; answering with the tempfail"
                );
                return DoorAnswer::tempfail(stage);
            }
        };
        let mut memory = self.door_memory.take().unwrap_or_default();
        let label = memory.label.clone();
        let judged = tokio::task::spawn_blocking(move || {
            let answer = door.judge(&ask, &mut memory);
            drop(slot);
            (answer, memory)
        })
        .await;
        match judged {
            Ok((answer, memory)) => {
                self.door_memory = Some(memory);
                answer
            }
            Err(e) => {
                error!(error = %e, "the door call did not finish");
                self.door_memory = Some(DoorMemory {
                    label,
                    ..DoorMemory::default()
                });
                DoorAnswer::tempfail(stage)
            }
        }
    }

    /// Checks AUTH credentials against the users file (on the AUTH
    /// gate's threads: argon2 is slow on purpose), unless this address (its
    /// /64 for IPv6) failed too often; tells the session the result. The
    /// attempt counts as a failure before the check begins and is taken
    /// back if it succeeds, so simultaneous guesses cannot all get past
    /// the limit.
    async fn authenticate(&mut self, user: String, password: String) {
        let settings = self.shared.submission();
        let max = settings.max_auth_failures_per_ip;
        let key = admission::subscriber(self.peer);
        let shown = crate::Printable(&user);
        if self.shared.auth_failures.count(key, |n| n < max) >= max {
            warn!(user = %shown, "AUTH refused: too many failures from this address");
            self.session.auth_checked(AuthResult::Blocked);
            return;
        }
        let file = settings.users_file.clone();
        let outcome = self.shared.auth.check(file, user.clone(), password).await;
        match outcome {
            auth::Outcome::Valid => {
                self.shared.auth_failures.forget_newest(key);
                info!(user = %shown, "authenticated");
                self.session.auth_checked(AuthResult::Valid(user));
            }
            auth::Outcome::Invalid => {
                let n = self.shared.auth_failures.count(key, |_| false);
                warn!(user = %shown, failures = n, "AUTH failed: bad user name or password");
                self.session.auth_checked(AuthResult::Invalid);
            }
            auth::Outcome::Busy => {
                self.shared.auth_failures.forget_newest(key);
                warn!(user = %shown, "AUTH not checked: every checking thread is busy (454)");
                self.session.auth_checked(AuthResult::TryLater);
            }
            auth::Outcome::Unavailable => {
                self.shared.auth_failures.forget_newest(key);
                self.session.auth_checked(AuthResult::TryLater);
            }
        }
    }

    async fn begin(&mut self, env: Box<Envelope>) -> Result<(), Reply> {
        // In-flow delay (Postfix's idea): while the queue holds more
        // delivery work than it should, pause before taking a new message
        // (its 354), until the pipeline catches up or for at most
        // `in_flow_delay`. The 250 after the final dot is never delayed.
        let delay = self.smtp.in_flow_delay;
        if !delay.is_zero() && self.shared.behind(&self.smtp) {
            let started = Instant::now();
            let until = started + delay;
            while Instant::now() < until && self.shared.behind(&self.smtp) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            crate::metrics::global()
                .in_flow_delay_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        let spool = self.shared.spool.clone();
        let hostname = self.hostname.clone();
        let env2 = env.clone();
        let auth = self
            .session
            .authenticated()
            .filter(|_| self.received_auth)
            .map(str::to_string);
        let r = tokio::task::spawn_blocking(move || {
            let mut w = spool.begin(&env2)?;
            let header = received_header(&env2, &hostname, w.id().as_str(), auth.as_deref());
            w.write(header.as_bytes())?;
            Ok::<_, spool::Error>(w)
        })
        .await
        .map_err(join_error)
        .and_then(|r| r);
        match r {
            Ok(writer) => {
                self.sink = Some(Sink {
                    writer: Some(writer),
                    buffered: Vec::new(),
                    failed: None,
                    envelope: env,
                });
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "cannot start spool file");
                Err(spool_error_reply(&e))
            }
        }
    }

    async fn commit(&mut self) -> Result<String, Reply> {
        let Some(sink) = self.sink.take() else {
            return Err(Reply::new(451, "4.3.0", "Error: local error in processing"));
        };
        match sink.commit(&self.shared.spool).await {
            Ok((id, size, env)) => {
                metrics::global().message_bytes.inc_by(size);
                let from = if env.mail_from.is_empty() {
                    "<>"
                } else {
                    env.mail_from.as_str()
                };
                info!(
                    queue_id = %id,
                    client_ip = %env.client_ip,
                    from = %crate::Printable(from),
                    nrcpt = env.rcpt_to.len(),
                    size,
                    "queued"
                );
                Ok(id.to_string())
            }
            Err(e) => {
                error!(error = %e, "message not queued");
                Err(spool_error_reply(&e))
            }
        }
    }
}

/// Counts one message's outcome (`accepted` or `refused`, by reply code).
fn count_message(result: &str, code: &str) {
    metrics::global()
        .messages
        .get_or_create(&metrics::labels(&[("result", result), ("code", code)]))
        .inc();
}
