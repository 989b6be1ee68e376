//! The host's DNS resolver (hickory-resolver, with its cache honouring
//! TTLs), callable from blocking threads: MX resolution for outbound
//! delivery (RFC 5321 §5.1: MX records in preference order, the implicit MX
//! when there are none, the null MX of RFC 7505), and the plugins' DNS
//! capability ([`Dns::lookup`]: A, AAAA, MX, TXT, PTR, TLSA with a timeout,
//! NXDOMAIN, NODATA, SERVFAIL and timeout told apart). A configurable set
//! of name servers lets tests and split-horizon setups use their own; one
//! resolver per set of servers is shared by every plugin ([`shared`]), so
//! they share its cache. Mail authentication (SPF, DKIM, DMARC, ARC) asks
//! through the same resolver: it is built inside mail-auth's
//! [`MessageAuthenticator`] and handed out from there ([`Dns::authenticator`]).
//!
//! SECURITY: answers come from the network; a plugin gets only the parsed
//! records, never raw packets.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use finaldot_sdk::wire::{DnsAnswer, DnsOutcome, DnsRecord, DnsType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;

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
    authenticator: MessageAuthenticator,
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
        let (config, opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| LookupError::Setup(e.to_string()))?
        } else {
            let group = servers
                .iter()
                .map(|s| {
                    let connection = |mut c: ConnectionConfig| {
                        c.port = s.port();
                        c
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![
                            connection(ConnectionConfig::udp()),
                            connection(ConnectionConfig::tcp()),
                        ],
                    )
                })
                .collect();
            let mut opts = ResolverOpts::default();
            opts.attempts = 2;
            (ResolverConfig::from_name_servers(group), opts)
        };
        // The resolver is built by mail-auth so that mail authentication
        // shares it (and its cache) with outbound and the plugins.
        let authenticator = {
            // In the runtime's context (the resolver's tasks live there);
            // entered, not blocked on: the caller may be on another runtime.
            let _entered = runtime.enter();
            MessageAuthenticator::new(config, opts)
                .map_err(|e| LookupError::Setup(e.to_string()))?
        };
        let resolver = authenticator.resolver().clone();
        Ok(Dns {
            runtime,
            resolver,
            authenticator,
        })
    }

    /// mail-auth's verifier, asking through this resolver.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.authenticator
    }

    /// Runs `future` on the resolver's runtime, from a blocking thread.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The hosts to try for `domain`, best first.
    pub fn mx_hosts(&self, domain: &str) -> Result<Vec<MxHost>, LookupError> {
        // A trailing dot: never let a search domain be appended.
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        self.runtime.block_on(async {
            let mut mx: Vec<(u16, String)> = match self.resolver.mx_lookup(fqdn.as_str()).await {
                Ok(l) => l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect(),
                Err(e) if outcome_of(&e) == DnsOutcome::NxDomain => {
                    return Err(LookupError::Permanent {
                        status: "5.1.2",
                        reason: format!("domain {domain} does not exist"),
                    })
                }
                // No MX records (NOERROR): the implicit MX below. A SERVFAIL
                // is not "no records": it falls through to a retry.
                Err(e) if outcome_of(&e) == DnsOutcome::NoData => Vec::new(),
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

impl Dns {
    /// Looks `name` up for `rtype`, waiting at most `timeout`. Every ending
    /// is an answer: records, NXDOMAIN, no data, SERVFAIL or a timeout.
    pub fn lookup(&self, name: &str, rtype: DnsType, timeout: Duration) -> DnsAnswer {
        self.runtime
            .block_on(self.lookup_async(name, rtype, timeout))
    }

    /// [`Dns::lookup`], for callers already on the resolver's runtime.
    pub async fn lookup_async(&self, name: &str, rtype: DnsType, timeout: Duration) -> DnsAnswer {
        // A trailing dot: never let a search domain be appended.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let kind = match rtype {
            DnsType::A => RecordType::A,
            DnsType::Aaaa => RecordType::AAAA,
            DnsType::Mx => RecordType::MX,
            DnsType::Txt => RecordType::TXT,
            DnsType::Ptr => RecordType::PTR,
            DnsType::Tlsa => RecordType::TLSA,
            // A type this build cannot decode never reaches it; one added
            // to the SDK without a mapping here gets "no data".
            _ => return DnsAnswer::empty(DnsOutcome::NoData),
        };
        let looked = tokio::time::timeout(timeout, self.resolver.lookup(fqdn.as_str(), kind)).await;
        let lookup = match looked {
            Err(_) => return DnsAnswer::empty(DnsOutcome::Timeout),
            Ok(Err(e)) => return DnsAnswer::empty(outcome_of(&e)),
            Ok(Ok(l)) => l,
        };
        let name =
            |n: &hickory_resolver::proto::rr::Name| n.to_ascii().trim_end_matches('.').to_string();
        let records: Vec<DnsRecord> = lookup
            .answers()
            .iter()
            .filter(|r| r.record_type() == kind)
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(DnsRecord::A(a.0.to_string())),
                RData::AAAA(a) => Some(DnsRecord::Aaaa(a.0.to_string())),
                RData::MX(mx) => Some(DnsRecord::Mx {
                    preference: mx.preference,
                    exchange: name(&mx.exchange),
                }),
                RData::TXT(txt) => Some(DnsRecord::Txt(txt.txt_data.concat())),
                RData::PTR(ptr) => Some(DnsRecord::Ptr(name(&ptr.0))),
                RData::TLSA(t) => Some(DnsRecord::Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            return DnsAnswer::empty(DnsOutcome::NoData);
        }
        let ttl_secs = lookup
            .valid_until()
            .saturating_duration_since(Instant::now())
            .as_secs()
            .min(u64::from(u32::MAX)) as u32;
        DnsAnswer {
            outcome: DnsOutcome::Found,
            ttl_secs,
            records,
        }
    }
}

/// What a failed lookup means. hickory reports every empty answer as "no
/// records found", whatever its response code: only NOERROR is no data,
/// NXDOMAIN is a name that does not exist, anything else (SERVFAIL,
/// REFUSED…) a failure to try again later.
fn outcome_of(e: &NetError) -> DnsOutcome {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(no)) => match no.response_code {
            ResponseCode::NXDomain => DnsOutcome::NxDomain,
            ResponseCode::NoError => DnsOutcome::NoData,
            _ => DnsOutcome::ServFail,
        },
        NetError::Timeout => DnsOutcome::Timeout,
        _ => DnsOutcome::ServFail,
    }
}

/// The resolver for `servers` (the system's when empty), shared by every
/// caller that asks for the same servers while one is alive, so plugins
/// share one cache.
pub fn shared(servers: &[SocketAddr]) -> Result<Arc<Dns>, LookupError> {
    static REGISTRY: Mutex<Vec<(Vec<SocketAddr>, Weak<Dns>)>> = Mutex::new(Vec::new());
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry.retain(|(_, w)| w.strong_count() > 0);
    if let Some(dns) = registry
        .iter()
        .find(|(s, _)| s.as_slice() == servers)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(dns);
    }
    let dns = Arc::new(Dns::new(servers)?);
    registry.push((servers.to_vec(), Arc::downgrade(&dns)));
    Ok(dns)
}
