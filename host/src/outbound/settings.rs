//! What delivery to the next hop is configured with: `[outbound]` and
//! `[lmtp]` validated (the configuration builds these from what was
//! written; outbound never reads the configuration itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use finaldot_sdk::wire::Route;

/// How hard to insist on TLS to the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// STARTTLS with a verified certificate, or the recipients wait (4.7.5).
    Required,
    /// STARTTLS when offered (certificate not verified, RFC 7435), else plain.
    Opportunistic,
    /// Never STARTTLS.
    None,
}

/// Validated `[outbound]`.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// The route for recipients outside the local domains; `None`: nothing
    /// leaves (such recipients fail, 5.1.1, unless a plugin routes them).
    pub route: Option<Route>,
    /// Smarthost host and port.
    pub smarthost: Option<(String, u16)>,
    /// TLS to the smarthost.
    pub smarthost_tls: TlsPolicy,
    /// Smarthost AUTH user and password.
    pub smarthost_auth: Option<(String, String)>,
    /// Extra CA certificates (PEM).
    pub tls_ca_file: Option<PathBuf>,
    /// Port of MX hosts (25).
    pub mx_port: u16,
    /// DNS servers for MX lookups; empty: the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Most simultaneous connections to one destination.
    pub max_connections_per_destination: usize,
}

/// Where the LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpAddress {
    /// TCP, host and port.
    Tcp(String, u16),
    /// A Unix stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for LmtpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpAddress::Tcp(h, p) if h.contains(':') => write!(f, "[{h}]:{p}"),
            LmtpAddress::Tcp(h, p) => write!(f, "{h}:{p}"),
            LmtpAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Validated `[lmtp]`: delivery of local recipients to a mailbox server.
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// The server.
    pub address: LmtpAddress,
    /// The local domains it receives (lowercase); every local domain when
    /// `[lmtp] domains` is absent.
    pub domains: Vec<String>,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// Most simultaneous connections.
    pub max_connections: usize,
}
