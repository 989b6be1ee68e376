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
    /// The slowest content a client may send, in octets per second: the
    /// whole of a message's content must arrive within `data_timeout` plus
    /// its size at this rate (Postfix's `smtpd_min_data_rate`), so a client
    /// trickling a byte now and then is cut off. 0: no such deadline.
    pub min_data_rate: u64,
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
    /// Most simultaneous connections on the submission listeners, a cap of
    /// their own: a flood on port 25 cannot lock authenticated users out.
    pub max_connections: usize,
    /// Which envelope senders an authenticated user may use.
    pub sender_login: SenderLogin,
}

/// Which envelope senders (`MAIL FROM`) an authenticated submission user
/// may use (Postfix's `smtpd_sender_login_maps` with
/// `reject_sender_login_mismatch`); a mismatch is `553 5.7.1`. The null
/// sender `<>` is always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SenderLogin {
    /// Any sender (the default, for compatibility).
    #[default]
    Off,
    /// Only the user's own addresses: the login itself when it is an
    /// address, or `login@` (with or without a `+tag`) at a local domain;
    /// and, for a user listed in `extra`, the addresses and `@domains`
    /// listed there.
    Strict {
        /// Lowercase login → lowercase addresses (`a@b`) or domains (`@b`).
        extra: std::collections::HashMap<String, Vec<String>>,
    },
}

impl SenderLogin {
    /// Whether `login` may send as `local@domain`; `local_domain` tells the
    /// local domains, `delimiter` the address extension separator.
    pub fn allows(
        &self,
        login: &str,
        local: &str,
        domain: &str,
        local_domain: impl Fn(&str) -> bool,
        delimiter: Option<char>,
    ) -> bool {
        let SenderLogin::Strict { extra } = self else {
            return true;
        };
        let login = login.to_lowercase();
        let local = local.to_lowercase();
        let domain = domain.to_ascii_lowercase();
        let base = match delimiter {
            Some(d) => local.split(d).next().unwrap_or(&local),
            None => &local,
        };
        let address = format!("{local}@{domain}");
        let base_address = format!("{base}@{domain}");
        // The login itself, as an address (with or without a +tag).
        if login == address || login == base_address {
            return true;
        }
        // login@ a local domain.
        if !login.contains('@') && base == login && local_domain(&domain) {
            return true;
        }
        extra.get(&login).is_some_and(|allowed| {
            allowed.iter().any(|a| match a.strip_prefix('@') {
                Some(d) => d == domain,
                None => *a == address || *a == base_address,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_sender_login_allows_own_addresses_and_listed_ones_only() {
        let strict = SenderLogin::Strict {
            extra: [(
                "alice".to_string(),
                vec![
                    "sales@example.test".to_string(),
                    "@alice.example".to_string(),
                ],
            )]
            .into_iter()
            .collect(),
        };
        let local = |d: &str| d == "example.test";
        let ok = |login: &str, l: &str, d: &str| strict.allows(login, l, d, local, Some('+'));
        assert!(ok("alice", "alice", "example.test"));
        assert!(ok("alice", "Alice+news", "EXAMPLE.test"));
        assert!(ok("alice", "sales", "example.test"));
        assert!(ok("alice", "anyone", "alice.example"));
        assert!(!ok("alice", "ceo", "other-domain.test"));
        assert!(!ok("alice", "bob", "example.test"));
        assert!(!ok("alice", "alice", "other-domain.test"));
        assert!(!ok("bob", "sales", "example.test"));
        assert!(ok("bob@corp.example", "bob", "corp.example"));
        assert!(!ok("bob@corp.example", "bob", "example.test"));
        assert!(SenderLogin::Off.allows("alice", "ceo", "other.test", local, None));
    }
}
