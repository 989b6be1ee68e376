//! The SMTP listener on tokio: accepts connections within the total and per-IP
//! caps, drives one [`Session`](super::session::Session) per connection,
//! streams message content into the spool, and answers 250 only after
//! [`Spool::commit`] returned.
//!
//! One file per job: this one owns the [`Server`] (listeners, configuration
//! reload, graceful shutdown) and the state its connections share;
//! `admission` accepts and applies the connection caps (after `proxy`
//! has read the PROXY header on a listener behind a load balancer); `conn` drives one
//! connection (the session's steps, AUTH, the spool); `tls` owns the
//! certificate and the byte stream before and after STARTTLS; `received`
//! writes the `Received:` field.
//!
//! It is the one place where spool errors become SMTP replies
//! ([`spool_error_reply`]); internal error text is logged, never sent.
//! Graceful shutdown: stop accepting, answer 421 to idle sessions, let sessions
//! in the middle of a message finish within the grace period, then 421.

mod admission;
mod auth;
mod conn;
mod proxy;
mod received;
mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use finaldot_sdk::wire::Listener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::info;

use self::admission::{accept_loop, PerIpWindow};
use super::reply::Reply;
use super::session::SessionConfig;
use super::settings::{SmtpConfig, SubmissionConfig};
use crate::door::Door;
use crate::read_clone;
use crate::spool::{self, Spool};

pub use self::received::received_header;
pub use self::tls::tls_acceptor;

/// The one mapping from spool errors to SMTP replies.
pub fn spool_error_reply(e: &spool::Error) -> Reply {
    if e.is_storage_full() {
        Reply::new(
            452,
            "4.3.1",
            "Error: insufficient system storage, try again later",
        )
    } else {
        Reply::new(
            451,
            "4.3.0",
            "Error: local error in processing, try again later",
        )
    }
}

/// How long a failed AUTH counts against its address.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(600);

/// What every connection of one server shares. The settings are replaced
/// whole by a configuration reload; a connection keeps the ones it started
/// with.
struct Shared {
    /// `[smtp]` in force.
    smtp: RwLock<Arc<SmtpConfig>>,
    /// Session settings for SMTP and implicit-TLS listeners.
    session: RwLock<Arc<SessionConfig>>,
    /// `[submission]` in force.
    submission: RwLock<Arc<SubmissionConfig>>,
    /// Session settings for submission listeners (AUTH, relay after it).
    submission_session: RwLock<Arc<SessionConfig>>,
    /// The STARTTLS acceptor, when a certificate is configured.
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    /// Where messages go.
    spool: Arc<Spool>,
    /// Open connections per client address (exempt addresses are not counted).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connection times in the last minute, per IP (for the rate limit).
    recent: PerIpWindow,
    /// The total connection cap of the SMTP and implicit-TLS listeners.
    total: Cap,
    /// The submission listeners' own cap.
    submission_total: Cap,
    /// Failed AUTH attempts in the last ten minutes, per IPv4 address or
    /// IPv6 /64 (an attempt counts from the moment it is checked).
    auth_failures: PerIpWindow,
    /// Where every AUTH password check runs (bounded threads and memory).
    auth: auth::AuthGate,
    /// The door plugins (before DATA), or an open door.
    door: Arc<dyn Door>,
    /// Door calls running at once (each holds a blocking thread and a
    /// plugin instance): past it, sessions wait for a slot without holding
    /// a thread, so a flood cannot take the blocking threads the spool
    /// writes need, nor the instances the pipeline needs.
    door_calls: Arc<Semaphore>,
}

/// A cap on simultaneous connections: a semaphore and the size it was
/// given (a reload adds or forgets permits).
struct Cap {
    permits: Arc<Semaphore>,
    size: Mutex<usize>,
    /// Permits a shrinking reload could not take back yet (they were in
    /// use): taken back as they come free, before any new connection.
    owed: std::sync::atomic::AtomicUsize,
}

impl Cap {
    fn new(size: usize) -> Cap {
        Cap {
            permits: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
            owed: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// One connection's slot, or `None` when every slot is taken.
    fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        loop {
            let permit = self.permits.clone().try_acquire_owned().ok()?;
            let owed = self.owed.load(Ordering::SeqCst);
            if owed == 0 {
                return Some(permit);
            }
            if self
                .owed
                .compare_exchange(owed, owed - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                permit.forget(); // a slot the cap no longer has
            }
        }
    }

    fn resize(&self, new: usize) {
        use std::sync::atomic::Ordering;
        if let Ok(mut size) = self.size.lock() {
            if new > *size {
                // Growing first pays back what a shrink still owes.
                let mut grow = new - *size;
                let owed = self.owed.load(Ordering::SeqCst);
                let paid = owed.min(grow);
                self.owed.fetch_sub(paid, Ordering::SeqCst);
                grow -= paid;
                self.permits.add_permits(grow);
            } else {
                let shrink = *size - new;
                let taken = self.permits.forget_permits(shrink);
                self.owed.fetch_add(shrink - taken, Ordering::SeqCst);
            }
            *size = new;
        }
    }
}

impl Shared {
    /// The connection cap of a listener of `kind`.
    fn cap(&self, kind: ListenKind) -> &Cap {
        match kind {
            ListenKind::Submission => &self.submission_total,
            ListenKind::Smtp | ListenKind::ImplicitTls => &self.total,
        }
    }

    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        read_clone(&self.tls)
    }

    fn smtp(&self) -> Arc<SmtpConfig> {
        read_clone(&self.smtp)
    }

    fn submission(&self) -> Arc<SubmissionConfig> {
        read_clone(&self.submission)
    }

    /// The session settings for a listener of `kind`.
    fn session(&self, kind: ListenKind) -> Arc<SessionConfig> {
        match kind {
            ListenKind::Submission => read_clone(&self.submission_session),
            ListenKind::Smtp | ListenKind::ImplicitTls => read_clone(&self.session),
        }
    }

    /// Whether the queue holds more delivery work than a new message
    /// should wait behind: more messages waiting for or in a pipeline run
    /// than `in_flow_backlog_secs` of the pipeline's best recent rate, and
    /// than `in_flow_backlog` (the floor, and the whole rule until a rate
    /// has been seen).
    fn behind(&self, smtp: &SmtpConfig) -> bool {
        let flow = self.spool.flow();
        let by_rate = flow
            .capacity()
            .map_or(0.0, |rate| rate * smtp.in_flow_backlog_secs);
        flow.pending() as f64 > by_rate.max(smtp.in_flow_backlog as f64)
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenKind {
    /// SMTP (port 25 style): STARTTLS offered, relay refused.
    Smtp,
    /// SMTP with TLS from the first byte (port 465 style).
    ImplicitTls,
    /// Submission (port 587 style): STARTTLS, then AUTH, then relay.
    Submission,
}

impl ListenKind {
    /// Its name in logs and errors.
    pub fn label(self) -> &'static str {
        match self {
            ListenKind::Smtp => "smtp",
            ListenKind::ImplicitTls => "smtp (implicit TLS)",
            ListenKind::Submission => "submission",
        }
    }

    /// The listener as the session facts name it.
    pub fn listener(self) -> Listener {
        match self {
            ListenKind::Smtp => Listener::Smtp,
            ListenKind::ImplicitTls => Listener::ImplicitTls,
            ListenKind::Submission => Listener::Submission,
        }
    }
}

/// One listening socket: the address it bound, what it serves, and how to
/// stop its accept loop.
struct Bound {
    bound: SocketAddr,
    kind: ListenKind,
    stop: watch::Sender<bool>,
}

/// A configured listen address and what it serves.
type ListenKey = (SocketAddr, ListenKind);

/// Every address the configuration asks to listen on.
fn listen_keys(smtp: &SmtpConfig, submission: &SubmissionConfig) -> Vec<ListenKey> {
    let plain = smtp.listen.iter().map(|a| (*a, ListenKind::Smtp));
    let tls = smtp
        .tls_listen
        .iter()
        .map(|a| (*a, ListenKind::ImplicitTls));
    let sub = submission
        .listen
        .iter()
        .map(|a| (*a, ListenKind::Submission));
    plain.chain(tls).chain(sub).collect()
}

/// The session settings of submission listeners, from those of port 25.
/// Door calls running at once, every listener together.
const DOOR_CALLS: usize = 32;

fn submission_session(session: &SessionConfig, door: &dyn Door) -> SessionConfig {
    SessionConfig {
        submission: true,
        door: door.wants(Listener::Submission),
        ..session.clone()
    }
}

/// The MX listeners' session settings: `session` with the door stages
/// judged there.
fn mx_session(mut session: SessionConfig, door: &dyn Door) -> SessionConfig {
    session.door = door.wants(Listener::Smtp);
    session
}

/// A running SMTP server: listeners accepting, sessions served, until
/// [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Mutex<HashMap<ListenKey, Bound>>,
    stop: watch::Sender<bool>,
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Server {
    /// Binds every listen address of `smtp` and `submission` and starts
    /// accepting; `session` is what each port-25 session is configured with.
    pub async fn bind(
        smtp: &SmtpConfig,
        submission: &SubmissionConfig,
        session: SessionConfig,
        spool: Arc<Spool>,
        door: Arc<dyn Door>,
    ) -> std::io::Result<Server> {
        let (stop, _) = watch::channel(false);
        // Every accept loop and session holds a clone of `alive`; when the last
        // one is dropped, `all_done` yields None (the mini-redis drop guard).
        let (alive, all_done) = mpsc::channel::<()>(1);
        let server = Server {
            shared: Arc::new(Shared {
                smtp: RwLock::new(Arc::new(smtp.clone())),
                submission_session: RwLock::new(Arc::new(submission_session(&session, &*door))),
                session: RwLock::new(Arc::new(mx_session(session, &*door))),
                submission: RwLock::new(Arc::new(submission.clone())),
                tls: RwLock::new(match &smtp.tls {
                    Some(files) => Some(tls_acceptor(files)?),
                    None => None,
                }),
                spool,
                per_ip: Mutex::new(HashMap::new()),
                recent: PerIpWindow::new(Duration::from_secs(60)),
                total: Cap::new(smtp.max_connections),
                submission_total: Cap::new(submission.max_connections),
                auth_failures: PerIpWindow::new(AUTH_FAILURE_WINDOW),
                auth: auth::AuthGate::start(auth::AuthGate::default_threads())?,
                door,
                door_calls: Arc::new(Semaphore::new(DOOR_CALLS)),
            }),
            listeners: Mutex::new(HashMap::new()),
            stop,
            alive: Mutex::new(Some(alive)),
            all_done: tokio::sync::Mutex::new(all_done),
        };
        for key in listen_keys(smtp, submission) {
            server.listen(key, true).await?;
        }
        Ok(server)
    }

    /// Binds one listen address and starts its accept loop. At start an
    /// address in use is retried (a killed predecessor's socket may linger);
    /// on a reload it is not, so a taken port cannot hold up the reload.
    async fn listen(&self, key: ListenKey, at_start: bool) -> std::io::Result<SocketAddr> {
        let (addr, kind) = key;
        let l = if at_start {
            crate::bind_listener(addr, kind.label()).await?
        } else {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{}: cannot listen on {addr}: {e}", kind.label()),
                )
            })?
        };
        let bound = l.local_addr()?;
        let (stop_one, stop_one_rx) = watch::channel(false);
        let alive = self
            .alive
            .lock()
            .ok()
            .and_then(|a| a.clone())
            .ok_or_else(|| std::io::Error::other("server is shutting down"))?;
        tokio::spawn(accept_loop(
            l,
            addr,
            kind,
            self.shared.clone(),
            self.stop.subscribe(),
            stop_one_rx,
            alive,
        ));
        if let Ok(mut map) = self.listeners.lock() {
            map.insert(
                key,
                Bound {
                    bound,
                    kind,
                    stop: stop_one,
                },
            );
        }
        Ok(bound)
    }

    /// The plain SMTP addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound(ListenKind::Smtp)
    }

    /// The addresses of one kind actually bound.
    pub fn bound(&self, kind: ListenKind) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .map(|m| {
                m.values()
                    .filter(|l| l.kind == kind)
                    .map(|l| l.bound)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies a new configuration: session settings and limits for new
    /// connections, the connection cap, and the listen addresses (new ones
    /// bound, removed ones closed; sessions already open go on). Returns the
    /// problems it met (a listener that could not be bound), having applied
    /// everything else.
    pub async fn reconfigure(
        &self,
        smtp: &SmtpConfig,
        submission: &SubmissionConfig,
        mut session: SessionConfig,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        // The certificate is re-read with the configuration (a renewed one takes effect).
        match smtp.tls.as_ref().map(tls_acceptor).transpose() {
            Ok(acceptor) => {
                if let Ok(mut t) = self.shared.tls.write() {
                    *t = acceptor;
                }
            }
            Err(e) => {
                problems.push(format!("{e}; keeping the previous TLS setting"));
                session.starttls = self.shared.tls().is_some();
            }
        }
        let door = &*self.shared.door;
        if let Ok(mut s) = self.shared.submission_session.write() {
            *s = Arc::new(submission_session(&session, door));
        }
        if let Ok(mut s) = self.shared.session.write() {
            *s = Arc::new(mx_session(session, door));
        }
        if let Ok(mut s) = self.shared.submission.write() {
            *s = Arc::new(submission.clone());
        }
        if let Ok(mut s) = self.shared.smtp.write() {
            *s = Arc::new(smtp.clone());
        }
        self.shared.total.resize(smtp.max_connections);
        self.shared
            .submission_total
            .resize(submission.max_connections);
        let current: Vec<ListenKey> = self
            .listeners
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        let wanted = listen_keys(smtp, submission);
        for key in current.iter().filter(|k| !wanted.contains(k)) {
            if let Some(l) = self.listeners.lock().ok().and_then(|mut m| m.remove(key)) {
                let _ = l.stop.send(true);
                let addr = key.0;
                info!(%addr, "stopped listening on {addr}");
            }
        }
        for key in wanted.iter().filter(|k| !current.contains(k)) {
            match self.listen(*key, false).await {
                Ok(bound) => match key.1 {
                    ListenKind::Smtp => info!(addr = %bound, "listening on {bound}"),
                    ListenKind::ImplicitTls => {
                        info!(addr = %bound, "listening (implicit TLS) at {bound}")
                    }
                    ListenKind::Submission => {
                        info!(addr = %bound, "listening (submission) at {bound}")
                    }
                },
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    /// Stops accepting, answers 421 to idle sessions, lets sessions in the
    /// middle of a message finish within the grace period, and returns once
    /// every session has ended.
    pub async fn shutdown(&self) {
        info!("shutting down: no new connections; messages in progress may finish");
        let _ = self.stop.send(true);
        if let Ok(mut a) = self.alive.lock() {
            a.take();
        }
        let _ = self.all_done.lock().await.recv().await;
        info!("all sessions closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_shrunk_while_full_takes_its_slots_back_as_they_free() {
        let cap = Cap::new(3);
        let held: Vec<_> = (0..3).map(|_| cap.take().expect("slot")).collect();
        cap.resize(1);
        drop(held); // three come free; two of them were owed
        let one = cap.take().expect("one slot");
        assert!(cap.take().is_none(), "more than the cap of 1");
        drop(one);
        cap.resize(2);
        let a = cap.take().expect("a");
        let b = cap.take().expect("b");
        assert!(cap.take().is_none(), "more than the cap of 2");
        drop((a, b));
    }
}
