//! The SMTP listener on tokio: accepts connections within the total and per-IP
//! caps, drives one [`Session`] per connection, streams message content into
//! the spool, and answers 250 only after [`Spool::commit`] returned.
//!
//! It is the one place where spool errors become SMTP replies
//! ([`spool_error_reply`]); internal error text is logged, never sent.
//! Graceful shutdown: stop accepting, answer 421 to idle sessions, let sessions
//! in the middle of a message finish within the grace period, then 421.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::reply::Reply;
use super::session::{Session, SessionConfig, Step};
use crate::config::Config;
use crate::spool::{self, Envelope, Spool, SpoolWriter};

/// Content buffered before it is handed to a blocking write.
const WRITE_BATCH: usize = 256 * 1024;

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

/// Settings the listener needs beyond the session's.
#[derive(Debug, Clone)]
struct Limits {
    max_connections_per_ip: usize,
    max_connection_rate_per_ip: usize,
    limit_exceptions: Arc<[ipnet::IpNet]>,
    command_timeout: Duration,
    data_timeout: Duration,
    shutdown_grace: Duration,
    in_flow_delay: Duration,
    in_flow_backlog: usize,
}

impl Limits {
    fn of(config: &Config) -> Limits {
        Limits {
            max_connections_per_ip: config.smtp.max_connections_per_ip,
            max_connection_rate_per_ip: config.smtp.max_connection_rate_per_ip,
            limit_exceptions: config.smtp.limit_exceptions.clone().into(),
            command_timeout: config.smtp.command_timeout,
            data_timeout: config.smtp.data_timeout,
            shutdown_grace: config.smtp.shutdown_grace,
            in_flow_delay: config.smtp.in_flow_delay,
            in_flow_backlog: config.smtp.in_flow_backlog,
        }
    }
}

struct Shared {
    /// Replaced whole by a configuration reload; a session keeps the one it started with.
    session: RwLock<Arc<SessionConfig>>,
    limits: RwLock<Limits>,
    spool: Arc<Spool>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connection times in the last minute, per IP (for the rate limit).
    recent: PerIpWindow,
    total: Arc<Semaphore>,
    max_connections: Mutex<usize>,
    /// The STARTTLS acceptor, when a certificate is configured.
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
    /// Submission settings.
    submission: RwLock<SubmissionSettings>,
    /// Messages in `incoming/` and when they were counted (for the in-flow delay).
    backlog: tokio::sync::Mutex<(Option<std::time::Instant>, usize)>,
    /// Failed AUTH attempts in the last ten minutes, per IP.
    auth_failures: PerIpWindow,
}

impl Shared {
    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        crate::read_clone(&self.tls)
    }

    fn session(&self) -> Arc<SessionConfig> {
        crate::read_clone(&self.session)
    }

    fn submission(&self) -> SubmissionSettings {
        crate::read_clone(&self.submission)
    }

    /// Messages waiting in `incoming/` for their first pipeline run, counted
    /// at most every 250 ms (a directory listing; always right, whoever moved
    /// the files).
    async fn backlog(&self) -> usize {
        let mut b = self.backlog.lock().await;
        let stale =
            b.0.is_none_or(|t| t.elapsed() >= Duration::from_millis(250));
        if stale {
            let spool = self.spool.clone();
            let n = tokio::task::spawn_blocking(move || spool.count(spool::QueueState::Incoming))
                .await
                .unwrap_or(0);
            *b = (Some(std::time::Instant::now()), n);
        }
        b.1
    }

    fn limits(&self) -> Limits {
        crate::read_clone(&self.limits)
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
}

/// One listening socket: the address it bound, what it serves, and how to
/// stop its accept loop.
struct Listener {
    bound: SocketAddr,
    kind: ListenKind,
    stop: watch::Sender<bool>,
}

/// A configured listen address and what it serves.
type ListenKey = (SocketAddr, ListenKind);

/// Every address `config` asks to listen on.
fn listen_keys(config: &Config) -> Vec<ListenKey> {
    let plain = config.smtp.listen.iter().map(|a| (*a, ListenKind::Smtp));
    let tls = config
        .smtp
        .tls_listen
        .iter()
        .map(|a| (*a, ListenKind::ImplicitTls));
    let sub = config
        .submission
        .listen
        .iter()
        .map(|a| (*a, ListenKind::Submission));
    plain.chain(tls).chain(sub).collect()
}

/// Submission settings that a reload replaces.
#[derive(Debug, Clone)]
struct SubmissionSettings {
    session: Arc<SessionConfig>,
    users_file: std::path::PathBuf,
    received_auth: bool,
    max_auth_failures_per_ip: usize,
}

impl SubmissionSettings {
    fn of(config: &Config) -> SubmissionSettings {
        SubmissionSettings {
            session: Arc::new(config.submission_session_config()),
            users_file: config.submission.users_file.clone(),
            received_auth: config.submission.received_auth,
            max_auth_failures_per_ip: config.submission.max_auth_failures_per_ip,
        }
    }
}

/// How long a failed AUTH counts against its address.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(600);

/// A running SMTP server: listeners accepting, sessions served, until
/// [`Server::shutdown`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Mutex<HashMap<ListenKey, Listener>>,
    stop: watch::Sender<bool>,
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl Server {
    /// Binds every listen address of `config` and starts accepting.
    pub async fn bind(config: &Config, spool: Arc<Spool>) -> std::io::Result<Server> {
        let (stop, _) = watch::channel(false);
        // Every accept loop and session holds a clone of `alive`; when the last
        // one is dropped, `all_done` yields None (the mini-redis drop guard).
        let (alive, all_done) = mpsc::channel::<()>(1);
        let server = Server {
            shared: Arc::new(Shared {
                session: RwLock::new(Arc::new(config.session_config())),
                limits: RwLock::new(Limits::of(config)),
                spool,
                per_ip: Mutex::new(HashMap::new()),
                recent: PerIpWindow::new(Duration::from_secs(60)),
                total: Arc::new(Semaphore::new(config.smtp.max_connections)),
                max_connections: Mutex::new(config.smtp.max_connections),
                tls: RwLock::new(match &config.smtp.tls {
                    Some(files) => Some(tls_acceptor(files)?),
                    None => None,
                }),
                submission: RwLock::new(SubmissionSettings::of(config)),
                backlog: tokio::sync::Mutex::new((None, 0)),
                auth_failures: PerIpWindow::new(AUTH_FAILURE_WINDOW),
            }),
            listeners: Mutex::new(HashMap::new()),
            stop,
            alive: Mutex::new(Some(alive)),
            all_done: tokio::sync::Mutex::new(all_done),
        };
        for key in listen_keys(config) {
            server.listen(key).await?;
        }
        Ok(server)
    }

    async fn listen(&self, key: ListenKey) -> std::io::Result<SocketAddr> {
        let (addr, kind) = key;
        let l = crate::bind_listener(addr, kind.label()).await?;
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
            kind,
            self.shared.clone(),
            self.stop.subscribe(),
            stop_one_rx,
            alive,
        ));
        if let Ok(mut map) = self.listeners.lock() {
            map.insert(
                key,
                Listener {
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
    pub async fn reconfigure(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        // The certificate is re-read with the configuration (a renewed one takes effect).
        let mut session = config.session_config();
        match config.smtp.tls.as_ref().map(tls_acceptor).transpose() {
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
        let mut submission = SubmissionSettings::of(config);
        if submission.session.starttls != session.starttls {
            let mut sc = (*submission.session).clone();
            sc.starttls = session.starttls;
            submission.session = Arc::new(sc);
        }
        if let Ok(mut s) = self.shared.session.write() {
            *s = Arc::new(session);
        }
        if let Ok(mut s) = self.shared.submission.write() {
            *s = submission;
        }
        if let Ok(mut l) = self.shared.limits.write() {
            *l = Limits::of(config);
        }
        if let Ok(mut max) = self.shared.max_connections.lock() {
            let new = config.smtp.max_connections;
            if new > *max {
                self.shared.total.add_permits(new - *max);
            } else {
                self.shared.total.forget_permits(*max - new);
            }
            *max = new;
        }
        let current: Vec<ListenKey> = self
            .listeners
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        let wanted = listen_keys(config);
        for key in current.iter().filter(|k| !wanted.contains(k)) {
            if let Some(l) = self.listeners.lock().ok().and_then(|mut m| m.remove(key)) {
                let _ = l.stop.send(true);
                let addr = key.0;
                info!(%addr, "stopped listening on {addr}");
            }
        }
        for key in wanted.iter().filter(|k| !current.contains(k)) {
            match self.listen(*key).await {
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

async fn accept_loop(
    listener: TcpListener,
    kind: ListenKind,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut stop_one: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
            _ = stop_one.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        let alive = alive.clone();
        let span = info_span!("smtp", client = %peer);
        tokio::spawn(
            async move {
                connection(stream, peer, kind, shared, stop).await;
                drop(alive);
            }
            .instrument(span),
        );
    }
}

/// Releases a per-IP connection slot on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.shared.per_ip.lock() {
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
    }
}

/// Events per IP address within a sliding window (new connections for the
/// rate limit, failed AUTH attempts).
struct PerIpWindow {
    window: Duration,
    events: Mutex<HashMap<IpAddr, std::collections::VecDeque<std::time::Instant>>>,
}

impl PerIpWindow {
    fn new(window: Duration) -> PerIpWindow {
        PerIpWindow {
            window,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Events from `ip` within the window, before recording one more when
    /// `record` says so (it is given that count).
    fn count(&self, ip: IpAddr, record: impl FnOnce(usize) -> bool) -> usize {
        let Ok(mut map) = self.events.lock() else {
            return 0;
        };
        let now = std::time::Instant::now();
        let window = self.window;
        // Forget addresses that have been quiet for a window, so the map stays small.
        if map.len() > 10_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(ip).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        let n = q.len();
        if record(n) {
            q.push_back(now);
        }
        n
    }
}

impl Limits {
    /// Whether `ip` is exempt from the per-IP connection count and rate
    /// (`smtp.limit_exceptions`; an IPv4-mapped IPv6 address counts as IPv4).
    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.limit_exceptions.iter().any(|n| n.contains(&ip))
    }
}

/// Records a new connection from `ip`; false if it is over the per-minute rate.
fn within_rate(shared: &Shared, limits: &Limits, ip: IpAddr) -> bool {
    let limit = limits.max_connection_rate_per_ip;
    limit == 0 || limits.exempt(ip) || shared.recent.count(ip, |n| n < limit) < limit
}

/// Takes one of `ip`'s connection slots; `Ok(None)` for an exempt address
/// (it holds none), `Err(())` when every slot is taken.
fn take_ip_slot(shared: &Arc<Shared>, limits: &Limits, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
    if limits.exempt(ip) {
        return Ok(None);
    }
    let Ok(mut map) = shared.per_ip.lock() else {
        return Err(());
    };
    let n = map.entry(ip).or_insert(0);
    if *n >= limits.max_connections_per_ip {
        return Err(());
    }
    *n += 1;
    Ok(Some(IpSlot {
        shared: shared.clone(),
        ip,
    }))
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: ListenKind,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let implicit_tls = kind == ListenKind::ImplicitTls;
    let session_config = match kind {
        ListenKind::Submission => shared.submission().session,
        _ => shared.session(),
    };
    let limits = shared.limits();
    let host = &session_config.hostname;
    let Ok(_total) = shared.total.clone().try_acquire_owned() else {
        warn!("refused: too many connections");
        let r = Reply::new(
            421,
            "4.7.0",
            format!("{host} Error: too many connections, try again later"),
        );
        if !implicit_tls {
            let _ = stream.write_all(&r.to_bytes()).await;
        }
        return;
    };
    if !within_rate(&shared, &limits, peer.ip()) {
        warn!("refused: connection rate from this address over the limit");
        let r = Reply::new(
            421,
            "4.7.0",
            format!(
                "{host} Error: too many connections from your address per minute, try again later"
            ),
        );
        if !implicit_tls {
            let _ = stream.write_all(&r.to_bytes()).await;
        }
        return;
    }
    let Ok(_slot) = take_ip_slot(&shared, &limits, peer.ip()) else {
        warn!("refused: too many connections from this address");
        let r = Reply::new(
            421,
            "4.7.0",
            format!("{host} Error: too many connections from your address, try again later"),
        );
        if !implicit_tls {
            let _ = stream.write_all(&r.to_bytes()).await;
        }
        return;
    };
    debug!("connected");
    let m = crate::metrics::global();
    m.connections.inc();
    m.connections_open.inc();
    let local_ip = stream.local_addr().ok().map(|a| a.ip());
    let mut conn = Conn {
        refusing: false,
        ack_started: None,
        stream: Stream::Plain(stream),
        session: Session::new(session_config.clone(), peer.ip()).with_local_ip(local_ip),
        hostname: session_config.hostname.clone(),
        limits,
        shared: shared.clone(),
        sink: None,
        out: Vec::new(),
        stop,
        deadline: None,
        peer: peer.ip(),
        received_auth: kind == ListenKind::Submission && shared.submission().received_auth,
    };
    if implicit_tls && !conn.handshake().await {
        crate::metrics::global().connections_open.dec();
        return;
    }
    if let Err(e) = conn.serve().await {
        debug!(error = %e, "connection ended");
    }
    // Dropping an unfinished sink removes its tmp file.
    if let Some(sink) = conn.sink.take() {
        sink.discard().await;
    }
    debug!("disconnected");
    crate::metrics::global().connections_open.dec();
}

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

fn clean_spaces(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Formats the `Received:` trace header (RFC 5321 §4.4) for a new message.
pub fn received_header(env: &Envelope, hostname: &str, id: &str, auth: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    };
    let ip = match env.client_ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let date = chrono::DateTime::from_timestamp(env.received_at as i64, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let mut tls = env
        .tls
        .as_deref()
        .map(|t| format!(" (using {})", clean_spaces(t)))
        .unwrap_or_default();
    if let Some(user) = auth {
        tls.push_str(&format!("\r\n\t(Authenticated sender: {})", clean(user)));
    }
    let mut h = format!(
        "Received: from {} ({})\r\n\tby {} (finaldot) with {}{} id {}",
        clean(&env.helo),
        ip,
        clean(hostname),
        env.protocol,
        tls,
        id
    );
    if env.rcpt_to.len() == 1 {
        h.push_str(&format!("\r\n\tfor <{}>", env.rcpt_to[0]));
    }
    h.push_str(&format!("; {date}\r\n"));
    h
}

/// The connection's byte stream: plain TCP, or TLS after STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while the handshake is in progress.
    Upgrading,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Upgrading => Ok(0),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
            Stream::Upgrading => Err(std::io::Error::other("connection is being upgraded")),
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            Stream::Upgrading => Ok(()),
        }
    }
}

/// Loads the STARTTLS certificate chain and key (TLS 1.2 and 1.3 only).
pub fn tls_acceptor(files: &crate::config::TlsFiles) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("TLS {what} {}: {e}", path.display()),
        )
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("certificate", &files.cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("certificate", &files.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "certificate",
            &files.cert,
            "no certificate in the file".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("key", &files.key, e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| bad("setup", &files.cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad("certificate/key", &files.cert, e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

struct Conn {
    /// The next reply ends a refused message (counted in the metrics).
    refusing: bool,
    /// When the current message's commit began (for the ack-latency histogram).
    ack_started: Option<std::time::Instant>,
    stream: Stream,
    session: Session,
    hostname: String,
    limits: Limits,
    shared: Arc<Shared>,
    sink: Option<Sink>,
    out: Vec<u8>,
    stop: watch::Receiver<bool>,
    /// Set when shutdown began: the end of the grace period.
    deadline: Option<Instant>,
    /// The client's address.
    peer: IpAddr,
    /// Record the authenticated user in Received (submission listeners).
    received_auth: bool,
}

impl Conn {
    async fn send(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
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
    async fn handshake(&mut self) -> bool {
        let Some(acceptor) = self.shared.tls() else {
            return false;
        };
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Upgrading) else {
            return false;
        };
        match tokio::time::timeout(self.limits.command_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let conn = tls.get_ref().1;
                let info = format!(
                    "{} with cipher {}",
                    conn.protocol_version()
                        .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."))
                        .unwrap_or_default(),
                    conn.negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default()
                );
                debug!(tls = %info, "TLS established");
                self.stream = Stream::Tls(Box::new(tls));
                self.session.tls_established(info);
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

    async fn serve(&mut self) -> std::io::Result<()> {
        if *self.stop.borrow() {
            let r = self.session.shutdown();
            return self.send_final(r).await;
        }
        self.session.greeting().write_to(&mut self.out);
        self.send().await?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if self.drive().await? {
                self.send().await?;
                let _ = self.stream.shutdown().await;
                return Ok(());
            }
            self.send().await?;
            if let Some(t) = self.ack_started.take() {
                crate::metrics::global()
                    .ack_latency
                    .observe(t.elapsed().as_secs_f64());
            }
            if self.deadline.is_some() && !self.session.in_message() {
                let r = self.session.shutdown();
                return self.send_final(r).await;
            }
            let wait = if self.session.reading_content() {
                self.limits.data_timeout
            } else {
                self.limits.command_timeout
            };
            let grace_end = self.deadline;
            tokio::select! {
                r = tokio::time::timeout(wait, self.stream.read(&mut buf)) => match r {
                    Err(_) => {
                        info!("timeout, closing");
                        let r = self.session.timeout();
                        return self.send_final(r).await;
                    }
                    Ok(Ok(0)) => {
                        debug!("client closed the connection");
                        return Ok(());
                    }
                    Ok(Ok(n)) => self.session.feed(&buf[..n]),
                    Ok(Err(e)) => return Err(e),
                },
                _ = self.stop.changed(), if grace_end.is_none() => {
                    self.deadline = Some(Instant::now() + self.limits.shutdown_grace);
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
                        let code = r.code.to_string();
                        crate::metrics::global()
                            .messages
                            .get_or_create(&crate::metrics::labels(&[
                                ("result", "refused"),
                                ("code", &code),
                            ]))
                            .inc();
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
                Step::Authenticate { user, password } => {
                    let settings = self.shared.submission();
                    let max = settings.max_auth_failures_per_ip;
                    if self.shared.auth_failures.count(self.peer, |_| false) >= max {
                        warn!(user = %user, "AUTH refused: too many failures from this address");
                        self.session.auth_checked(None, true);
                        continue;
                    }
                    let file = settings.users_file.clone();
                    let who = user.clone();
                    let ok = tokio::task::spawn_blocking(move || {
                        crate::smtp::users::verify(&file, &who, &password)
                    })
                    .await;
                    match ok {
                        Ok(Ok(true)) => {
                            info!(user = %user, "authenticated");
                            self.session.auth_checked(Some(user), false);
                        }
                        Ok(Ok(false)) => {
                            let n = self.shared.auth_failures.count(self.peer, |_| true) + 1;
                            warn!(user = %user, failures = n, "AUTH failed: bad user name or password");
                            self.session.auth_checked(None, false);
                        }
                        Ok(Err(e)) => {
                            error!(error = %e, "cannot read the users file");
                            self.session.auth_checked(None, false);
                        }
                        Err(e) => {
                            error!(error = %e, "AUTH check did not finish");
                            self.session.auth_checked(None, false);
                        }
                    }
                }
                Step::Commit => {
                    self.ack_started = Some(std::time::Instant::now());
                    let r = self.commit().await;
                    let m = crate::metrics::global();
                    let code = match &r {
                        Ok(_) => "250".to_string(),
                        Err(reply) => reply.code.to_string(),
                    };
                    let result = if r.is_ok() { "accepted" } else { "refused" };
                    m.messages
                        .get_or_create(&crate::metrics::labels(&[
                            ("result", result),
                            ("code", &code),
                        ]))
                        .inc();
                    self.session.committed(r);
                }
            }
        }
    }

    async fn begin(&mut self, env: Box<Envelope>) -> Result<(), Reply> {
        // In-flow delay (Postfix's idea): while the pipeline is behind, pause
        // before taking a new message (its 354), at most `in_flow_delay`. The
        // 250 after the final dot is never delayed.
        let delay = self.limits.in_flow_delay;
        if !delay.is_zero() {
            let until = Instant::now() + delay;
            while Instant::now() < until
                && self.shared.backlog().await > self.limits.in_flow_backlog
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
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
                crate::metrics::global().message_bytes.inc_by(size);
                let from = if env.mail_from.is_empty() {
                    "<>"
                } else {
                    env.mail_from.as_str()
                };
                info!(
                    queue_id = %id,
                    client_ip = %env.client_ip,
                    from = %from,
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
