//! `[outbound]` and `[lmtp]`: as written, and validated into what delivery
//! to the next hop (another MTA, or the mailbox server) uses.

use std::path::PathBuf;
use std::time::Duration;

use finaldot_sdk::wire::Route;
use serde::Deserialize;

use super::{ConfigError, Cx};
use crate::outbound::{LmtpAddress, LmtpConfig, OutboundConfig, TlsPolicy};

/// `[outbound]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbound {
    /// `none`, `smarthost` or `mx`.
    pub route: Option<String>,
    /// The smarthost, `HOST:PORT`.
    pub smarthost: Option<String>,
    /// TLS to the smarthost: `required`, `opportunistic` or `none`.
    pub smarthost_tls: Option<String>,
    /// AUTH credentials for the smarthost.
    pub smarthost_auth: Option<RawSmarthostAuth>,
    /// Extra CA certificates (PEM) trusted when TLS is required.
    pub tls_ca_file: Option<PathBuf>,
    /// Port of MX hosts.
    pub mx_port: Option<u16>,
    /// DNS servers for MX lookups (`IP:PORT`); absent: the system's.
    pub nameservers: Option<Vec<String>>,
    /// Seconds for connecting and for each reply.
    pub timeout_secs: Option<u64>,
    /// Most simultaneous connections to one destination.
    pub max_connections_per_destination: Option<usize>,
}

/// `[outbound.smarthost_auth]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmarthostAuth {
    /// User name.
    pub user: String,
    /// File holding the password (first line).
    pub password_file: PathBuf,
}

impl RawOutbound {
    /// Validates `[outbound]` (reading the smarthost password file).
    // Long on purpose: one check per key of [outbound], in the order the example file documents them.
    pub fn validate(self, cx: &Cx) -> Result<OutboundConfig, ConfigError> {
        let invalid = |key: &str, why: String| cx.invalid(key, why);
        let o = self;
        let route = match o.route.as_deref().unwrap_or("none") {
            "none" => None,
            "smarthost" => Some(Route::Smarthost),
            "mx" => Some(Route::Mx),
            other => {
                return Err(invalid(
                    "outbound.route",
                    format!("{other:?} is not one of \"none\", \"smarthost\", \"mx\""),
                ))
            }
        };
        let smarthost = match &o.smarthost {
            None => None,
            Some(hp) => Some(host_port(hp).ok_or_else(|| {
                invalid(
                    "outbound.smarthost",
                    format!("{hp:?} is not HOST:PORT (for example \"smtp.example.net:587\")"),
                )
            })?),
        };
        if route == Some(Route::Smarthost) && smarthost.is_none() {
            return Err(invalid(
                "outbound.smarthost",
                "route = \"smarthost\" needs a smarthost (HOST:PORT)".into(),
            ));
        }
        let smarthost_tls = match o.smarthost_tls.as_deref().unwrap_or("required") {
            "required" => TlsPolicy::Required,
            "opportunistic" => TlsPolicy::Opportunistic,
            "none" => TlsPolicy::None,
            other => {
                return Err(invalid(
                    "outbound.smarthost_tls",
                    format!("{other:?} is not one of \"required\", \"opportunistic\", \"none\""),
                ))
            }
        };
        let smarthost_auth = match o.smarthost_auth {
            None => None,
            Some(a) => {
                let file = cx.abs(a.password_file);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    invalid(
                        "outbound.smarthost_auth.password_file",
                        format!("cannot read {}: {e}", file.display()),
                    )
                })?;
                let password = text.lines().next().unwrap_or("").to_string();
                Some((a.user, password))
            }
        };
        let nameservers = cx.addrs("outbound.nameservers", &o.nameservers.unwrap_or_default())?;
        let outbound = OutboundConfig {
            route,
            smarthost,
            smarthost_tls,
            smarthost_auth,
            tls_ca_file: o.tls_ca_file.map(|p| cx.abs(p)),
            mx_port: o.mx_port.unwrap_or(25),
            nameservers,
            timeout: Duration::from_secs(o.timeout_secs.unwrap_or(60).max(1)),
            max_connections_per_destination: o.max_connections_per_destination.unwrap_or(4).max(1),
        };

        Ok(outbound)
    }
}

/// `HOST:PORT` (an IPv6 address in brackets), or `None`.
fn host_port(raw: &str) -> Option<(String, u16)> {
    raw.rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>().ok()?,
            ))
        })
        .filter(|(h, _)| !h.is_empty())
}

/// `[lmtp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLmtp {
    /// The LMTP server: `HOST:PORT`, or a Unix socket (`unix:PATH` or an
    /// absolute path).
    pub address: Option<String>,
    /// The local domains delivered over LMTP; absent: all of them.
    pub domains: Option<Vec<String>>,
    /// Seconds for connecting and for each reply.
    pub timeout_secs: Option<u64>,
    /// Most simultaneous connections to the LMTP server.
    pub max_connections: Option<usize>,
}

impl RawLmtp {
    /// Validates `[lmtp]` against the local domains (`local`, lowercase).
    pub fn validate(self, local: &[String], cx: &Cx) -> Result<LmtpConfig, ConfigError> {
        let raw = self.address.ok_or_else(|| {
            cx.invalid(
                "lmtp.address",
                "missing: the LMTP server, \"HOST:PORT\" or a Unix socket (\"unix:/run/dovecot/lmtp\")".into(),
            )
        })?;
        let address = if let Some(path) = raw.strip_prefix("unix:") {
            LmtpAddress::Unix(cx.abs(PathBuf::from(path)))
        } else if raw.starts_with('/') {
            LmtpAddress::Unix(PathBuf::from(&raw))
        } else {
            let (h, p) = host_port(&raw).ok_or_else(|| {
                cx.invalid(
                    "lmtp.address",
                    format!("{raw:?} is neither HOST:PORT (\"127.0.0.1:24\") nor a Unix socket (\"unix:/run/dovecot/lmtp\")"),
                )
            })?;
            LmtpAddress::Tcp(h, p)
        };
        let domains = match self.domains {
            None => local.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for d in list {
                    let d = d.to_ascii_lowercase();
                    if !local.contains(&d) {
                        return Err(cx.invalid(
                            "lmtp.domains",
                            format!("{d:?} is not a local domain (a [domains.\"{d}\"] table)"),
                        ));
                    }
                    out.push(d);
                }
                out
            }
        };
        Ok(LmtpConfig {
            address,
            domains,
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(60).max(1)),
            max_connections: self.max_connections.unwrap_or(10).max(1),
        })
    }
}
