//! Admission: the accept loop and the caps a connection passes before its
//! greeting (the total cap, the submission listeners' own cap, the per-IP connection rate and count, with
//! `smtp.limit_exceptions` exempt from the per-IP two). A refused client
//! gets one `421 4.7.0` and is closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info_span, warn, Instrument};

use super::conn::Conn;
use super::{ListenKind, Shared};
use crate::metrics;
use crate::smtp::reply::Reply;
use crate::smtp::session::SessionConfig;
use crate::smtp::settings::{ProxyProtocol, SmtpConfig};

/// Accepts connections on one listener until the server or this listener stops.
pub(super) async fn accept_loop(
    listener: TcpListener,
    configured: SocketAddr,
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
            // One canonical client address everywhere: an IPv4 client of a
            // dual-stack (`[::]`) listener arrives as `::ffff:a.b.c.d` and
            // is that IPv4 address for the caps, the Received field, SPF,
            // DNSBLs, the queue file and plugins.
            Ok((stream, peer)) => (stream, canonical(peer)),
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
                connection(stream, peer, configured, kind, shared, stop).await;
                drop(alive);
            }
            .instrument(span),
        );
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) written as
/// the IPv4 address it carries.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
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
pub(super) struct PerIpWindow {
    window: Duration,
    events: Mutex<HashMap<IpAddr, std::collections::VecDeque<std::time::Instant>>>,
}

impl PerIpWindow {
    pub(super) fn new(window: Duration) -> PerIpWindow {
        PerIpWindow {
            window,
            events: Mutex::new(HashMap::new()),
        }
    }

    /// Events from `ip` within the window, before recording one more when
    /// `record` says so (it is given that count).
    pub(super) fn count(&self, ip: IpAddr, record: impl FnOnce(usize) -> bool) -> usize {
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

    /// Takes back the newest event recorded for `ip` (an AUTH attempt
    /// counted before its check, which then succeeded).
    pub(super) fn forget_newest(&self, ip: IpAddr) {
        if let Ok(mut map) = self.events.lock() {
            if let Some(q) = map.get_mut(&ip) {
                q.pop_back();
            }
        }
    }
}

/// The key one client's AUTH failures are counted under: its IPv4
/// address, or the /64 its IPv6 address is in (one subscriber's
/// allocation, whose every address would otherwise count apart).
pub(super) fn subscriber(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Whether `ip` is exempt from the per-IP connection count and rate
/// (`smtp.limit_exceptions`; an IPv4-mapped IPv6 address counts as IPv4).
fn exempt(smtp: &SmtpConfig, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    smtp.limit_exceptions.iter().any(|n| n.contains(&ip))
}

/// Records a new connection from `ip`; false if it is over the per-minute rate.
fn within_rate(shared: &Shared, smtp: &SmtpConfig, ip: IpAddr) -> bool {
    let limit = smtp.max_connection_rate_per_ip;
    limit == 0 || exempt(smtp, ip) || shared.recent.count(ip, |n| n < limit) < limit
}

/// Takes one of `ip`'s connection slots; `Ok(None)` for an exempt address
/// (it holds none), `Err(())` when every slot is taken.
fn take_ip_slot(shared: &Arc<Shared>, smtp: &SmtpConfig, ip: IpAddr) -> Result<Option<IpSlot>, ()> {
    if exempt(smtp, ip) {
        return Ok(None);
    }
    let Ok(mut map) = shared.per_ip.lock() else {
        return Err(());
    };
    let n = map.entry(ip).or_insert(0);
    if *n >= smtp.max_connections_per_ip {
        return Err(());
    }
    *n += 1;
    Ok(Some(IpSlot {
        shared: shared.clone(),
        ip,
    }))
}

/// Refuses a connection before its greeting: one `421 4.7.0` with `why`.
async fn refuse(stream: &mut TcpStream, kind: ListenKind, hostname: &str, why: &str) {
    warn!("refused: {why}");
    let r = Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Error: {why}, try again later"),
    );
    reply_before_closing(stream, kind, &r).await;
}

/// Sends the one reply of a connection refused before its greeting
/// (nothing on an implicit-TLS listener, whose client expects a handshake).
async fn reply_before_closing(stream: &mut TcpStream, kind: ListenKind, reply: &Reply) {
    if kind != ListenKind::ImplicitTls {
        let _ = stream.write_all(&reply.to_bytes()).await;
    }
}

/// On a listener behind a load balancer: the client its PROXY header
/// names (the balancer itself for a health check), or `None` when the
/// connection is refused: it is not from a configured balancer (554, the
/// RFC 5321 "no service here"), or its header is missing or malformed
/// (closed without a word; the balancer is misconfigured, not a client).
async fn proxied_peer(
    stream: &mut TcpStream,
    peer: SocketAddr,
    proxy: &ProxyProtocol,
    kind: ListenKind,
    hostname: &str,
) -> Option<SocketAddr> {
    if !proxy.trusts(peer.ip()) {
        warn!("refused: this listener takes connections only from its load balancers (smtp.proxy_protocol.from)");
        metrics::global().proxy_refused.inc();
        let r = Reply::new(
            554,
            "5.7.1",
            format!("{hostname} Error: no SMTP service here for your address"),
        );
        reply_before_closing(stream, kind, &r).await;
        return None;
    }
    match super::proxy::read_header(stream, proxy.timeout).await {
        Ok(client) => {
            let client = client.map(canonical).unwrap_or(peer);
            debug!(%client, "PROXY header");
            Some(client)
        }
        Err(e) => {
            warn!(error = %e, "refused: bad PROXY header from the load balancer");
            metrics::global().proxy_refused.inc();
            None
        }
    }
}

/// One accepted connection: admission, then the session.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    configured: SocketAddr,
    kind: ListenKind,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let session = shared.session(kind);
    let smtp = shared.smtp();
    let host = &session.hostname;
    let proxy = smtp
        .proxy_protocol
        .as_ref()
        .filter(|p| p.expects(configured));
    match proxy {
        None => serve(stream, peer, kind, shared, stop, session, smtp).await,
        Some(p) => {
            let Some(client) = proxied_peer(&mut stream, peer, p, kind, host).await else {
                return;
            };
            let span = info_span!("proxied", client = %client);
            serve(stream, client, kind, shared, stop, session, smtp)
                .instrument(span)
                .await
        }
    }
}

/// Admission (the caps, on the real client's address), then the session.
async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    kind: ListenKind,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    session: Arc<SessionConfig>,
    smtp: Arc<SmtpConfig>,
) {
    let host = &session.hostname;
    let Some(_total) = shared.cap(kind).take() else {
        return refuse(&mut stream, kind, host, "too many connections").await;
    };
    if !within_rate(&shared, &smtp, peer.ip()) {
        let why = "too many connections from your address per minute";
        return refuse(&mut stream, kind, host, why).await;
    }
    let Ok(_slot) = take_ip_slot(&shared, &smtp, peer.ip()) else {
        let why = "too many connections from your address";
        return refuse(&mut stream, kind, host, why).await;
    };
    debug!("connected");
    let m = metrics::global();
    m.connections.inc();
    m.connections_open.inc();
    let mut conn = Conn::new(stream, peer, kind, session, smtp, shared, stop);
    if kind != ListenKind::ImplicitTls || conn.handshake().await {
        conn.serve().await;
    }
    debug!("disconnected");
    m.connections_open.dec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_ipv4_client_is_its_ipv4_address() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(canonical(a("[::ffff:192.0.2.7]:25")), a("192.0.2.7:25"));
        assert_eq!(canonical(a("[2001:db8::1]:25")), a("[2001:db8::1]:25"));
        assert_eq!(canonical(a("192.0.2.7:25")), a("192.0.2.7:25"));
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(subscriber(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            subscriber(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            subscriber(ip("2001:db8:1:2::7"))
        );
        assert_ne!(
            subscriber(ip("2001:db8:1:3::1")),
            subscriber(ip("2001:db8:1:2::1"))
        );
        assert_eq!(subscriber(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(subscriber(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn an_attempt_counted_ahead_can_be_taken_back() {
        let w = PerIpWindow::new(Duration::from_secs(60));
        let a = "192.0.2.1".parse().expect("ip");
        let max = 3;
        let taken: Vec<bool> = (0..5).map(|_| w.count(a, |n| n < max) < max).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        w.forget_newest(a);
        assert_eq!(w.count(a, |_| false), 2);
    }
}
