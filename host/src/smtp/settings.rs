//! The SMTP side's validated settings: `[smtp]` and `[submission]` as the
//! listeners use them. `config` builds them from the file; the server takes
//! them directly, so the SMTP side depends on nothing of `config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Validated `[smtp]`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Largest message in octets.
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Most simultaneous connections per IP.
    pub max_connections_per_ip: usize,
    /// Most new connections per minute per IP (0 = no limit).
    pub max_connection_rate_per_ip: usize,
    /// Clients in these networks are exempt from the two per-IP limits
    /// above (and from nothing else: not the total cap, not relay control).
    pub limit_exceptions: Vec<ipnet::IpNet>,
    /// In-flow delay: the longest pause before a new message (zero = off).
    pub in_flow_delay: Duration,
    /// In-flow delay applies while more messages than this (and than
    /// `in_flow_backlog_secs` of delivery) wait for or are in a pipeline run.
    pub in_flow_backlog: usize,
    /// In-flow delay applies while the backlog holds more than this many
    /// seconds of delivery at the pipeline's best recent rate.
    pub in_flow_backlog_secs: f64,
    /// Error replies before 421.
    pub max_errors: u32,
    /// Wait for the next command.
    pub command_timeout: Duration,
    /// Wait for more content.
    pub data_timeout: Duration,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// STARTTLS certificate and key files, when TLS is offered.
    pub tls: Option<TlsFiles>,
    /// Implicit-TLS listen addresses (the handshake comes before the greeting).
    pub tls_listen: Vec<SocketAddr>,
    /// Listeners behind a load balancer that sends the PROXY protocol.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// `[smtp.proxy_protocol]`: listeners whose connections come from a load
/// balancer (HAProxy's `send-proxy` / `send-proxy-v2`) and start with a
/// PROXY header naming the real client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// The listen addresses, as configured, that expect the header.
    pub listeners: Vec<SocketAddr>,
    /// The load balancers allowed to connect to them (and so to name a client).
    pub from: Vec<ipnet::IpNet>,
    /// The longest wait for the header after the connection opens.
    pub timeout: Duration,
}

impl ProxyProtocol {
    /// Whether connections to `listener` (as configured) carry a header.
    pub fn expects(&self, listener: SocketAddr) -> bool {
        self.listeners.contains(&listener)
    }

    /// Whether `ip` is one of the load balancers.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }
}

/// Where the STARTTLS certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Validated `[submission]`.
#[derive(Debug, Clone)]
pub struct SubmissionConfig {
    /// Listen addresses (empty: none).
    pub listen: Vec<SocketAddr>,
    /// The users file.
    pub users_file: PathBuf,
    /// Record the authenticated user in Received.
    pub received_auth: bool,
    /// Failed AUTH attempts per IP in ten minutes before 421.
    pub max_auth_failures_per_ip: usize,
}
