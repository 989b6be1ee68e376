//! MX resolution for outbound delivery (RFC 5321 §5.1), with hickory-resolver:
//! MX records in preference order, the implicit MX (the domain's own address
//! records) when there are none, the null MX of RFC 7505, and a configurable
//! set of name servers (so tests and split-horizon setups can use their own).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// Why a domain has no hosts to try.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The domain does not exist, or says it takes no mail: permanent.
    #[error("{status} {reason}")]
    Permanent {
        /// Enhanced status code for the DSN.
        status: &'static str,
        /// What DNS said.
        reason: String,
    },
    /// The lookup failed for now (timeout, SERVFAIL…): try later.
    #[error("{0}")]
    Temporary(String),
    /// The resolver could not be set up.
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(String),
}

/// One host to try, with the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The host name (for TLS and logs).
    pub name: String,
    /// Its addresses, as resolved.
    pub addrs: Vec<IpAddr>,
}

/// A resolver with its own small runtime, callable from blocking threads.
pub struct Dns {
    runtime: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver asking `servers`, or the system's (`/etc/resolv.conf`) when empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, LookupError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dns")
            .enable_all()
            .build()
            .map_err(|e| LookupError::Setup(e.to_string()))?;
        let resolver = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| LookupError::Setup(e.to_string()))?
                .build()
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            let mut opts = ResolverOpts::default();
            opts.attempts = 2;
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
            .with_options(opts)
            .build()
        };
        Ok(Dns { runtime, resolver })
    }

    /// The hosts to try for `domain`, best first.
    pub fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, LookupError> {
        // A trailing dot: never let a search domain be appended.
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        self.runtime.block_on(async {
            let mut mx: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
                Ok(l) => l
                    .iter()
                    .map(|r| (r.preference(), r.exchange().to_ascii()))
                    .collect(),
                Err(e) if e.is_nx_domain() => {
                    return Err(LookupError::Permanent {
                        status: "5.1.2",
                        reason: format!("domain {domain} does not exist"),
                    })
                }
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => {
                    return Err(LookupError::Temporary(format!(
                        "4.4.3 MX lookup for {domain} failed: {e}"
                    )))
                }
            };
            // RFC 7505: a single MX of "." means the domain takes no mail.
            if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
                return Err(LookupError::Permanent {
                    status: "5.1.10",
                    reason: format!("domain {domain} accepts no mail (null MX)"),
                });
            }
            // No MX: the domain itself is the implicit MX (RFC 5321 §5.1).
            if mx.is_empty() {
                mx.push((0, fqdn.clone()));
            }
            mx.sort_by_key(|(pref, _)| *pref);
            let mut hosts = Vec::new();
            let mut last_error = None;
            for (_, name) in mx {
                match self.resolver.lookup_ip(name.as_str()).await {
                    Ok(ips) => {
                        let addrs: Vec<IpAddr> = ips.iter().collect();
                        if !addrs.is_empty() {
                            hosts.push(MxHost {
                                name: name.trim_end_matches('.').to_string(),
                                addrs,
                            });
                        }
                    }
                    Err(e) => last_error = Some(e.to_string()),
                }
            }
            if hosts.is_empty() {
                return Err(LookupError::Temporary(format!(
                    "4.4.3 no address for any mail host of {domain}{}",
                    last_error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
            Ok(hosts)
        })
    }
}
