//! Configuration: the TOML file as written ([`RawConfig`], unknown keys refused),
//! then validated into what the daemon uses ([`Config`]). Every refusal names the
//! key and what is wrong with it. With no file, the embedded default
//! ([`DEFAULT_CONFIG`]) goes through exactly the same path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use finaldot_sdk::wire::Route;
use serde::Deserialize;

use crate::plugins::{DirGrant, Grants, Limits, PluginSpec};
use crate::smtp::policy::{DomainUsers, Recipients};
use crate::smtp::session::SessionConfig;

/// The configuration `finaldot run` uses when no file is given.
pub const DEFAULT_CONFIG: &str = r#"
data_dir = "var"

[smtp]
listen = ["127.0.0.1:2525"]

[domains.localhost]
[domains."example.test"]

[pipeline]
plugin_dir = "var/plugins"

[[plugins]]
name = "dedup"
file = "dedup.wasm"
kv = true

[[plugins]]
name = "list-expand"
file = "list_expand.wasm"
dirs = [{ name = "lists", path = "var/lists" }]

[[plugins]]
name = "filter"
file = "filter.wasm"

[[plugins]]
name = "local-delivery"
file = "local_delivery.wasm"
dirs = [{ name = "mail", path = "var/mail", writable = true }]
[plugins.config]
domains = ["localhost", "example.test"]
aliases = { postmaster = "root", abuse = "root", mailer-daemon = "root" }

[metrics]
listen = "127.0.0.1:9425"
"#;

/// RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
const MIN_RECIPIENTS: usize = 100;

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or "embedded default".
        origin: String,
        /// The parser's message (it names the key, line and column).
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{origin}: `{key}`: {why}")]
    Invalid {
        /// The file, or "embedded default".
        origin: String,
        /// The key, dotted (e.g. `smtp.max_recipients`).
        key: String,
        /// What is wrong and what would be right.
        why: String,
    },
}

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name in the greeting and Received headers; default: the system hostname.
    pub hostname: Option<String>,
    /// Where the spool lives; relative paths are resolved against the config file's directory.
    pub data_dir: Option<PathBuf>,
    /// The SMTP listener.
    #[serde(default)]
    pub smtp: RawSmtp,
    /// The domains this server accepts mail for.
    #[serde(default)]
    pub domains: BTreeMap<String, RawDomain>,
    /// The post-acceptance pipeline.
    #[serde(default)]
    pub pipeline: RawPipeline,
    /// The plugin chain, in order.
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// Metrics and the status page.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Delivery to other mail servers.
    #[serde(default)]
    pub outbound: RawOutbound,
    /// The authenticated submission listener.
    #[serde(default)]
    pub submission: RawSubmission,
}

/// `[submission]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubmission {
    /// Addresses to listen on (port 587 style); absent: no submission listener.
    pub listen: Option<Vec<String>>,
    /// The users file (`finaldot user add`).
    pub users_file: Option<PathBuf>,
    /// Record the authenticated user in the Received header.
    pub received_auth: Option<bool>,
    /// Failed AUTH attempts per IP address in ten minutes before 421.
    pub max_auth_failures_per_ip: Option<usize>,
}

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

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Where to serve `/metrics` and the status page (IP:PORT); absent = off.
    pub listen: Option<String>,
}

/// `[pipeline]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// Concurrent pipeline workers.
    pub workers: Option<usize>,
    /// Where plugin `.wasm` files are found.
    pub plugin_dir: Option<PathBuf>,
    /// First retry delay in seconds.
    pub retry_min_secs: Option<u64>,
    /// Longest retry delay in seconds.
    pub retry_max_secs: Option<u64>,
    /// After this long in the queue a message bounces.
    pub max_queue_lifetime_secs: Option<u64>,
    /// Consecutive plugin faults before a message is held.
    pub max_faults: Option<u32>,
    /// Send a delay warning after this long (0 = never).
    pub delay_warning_secs: Option<u64>,
    /// How often the queue is rescanned (the backstop for wake-ups).
    pub rescan_secs: Option<u64>,
    /// Scheduling niceness of pipeline threads (0-19).
    pub nice: Option<i32>,
    /// Plugin calls running WebAssembly at once (default: cores - 1, at least 1).
    pub max_running_plugins: Option<usize>,
}

/// `[[plugins]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// Name in logs, errors and `queue show`.
    pub name: String,
    /// The `.wasm` file, relative to `pipeline.plugin_dir`.
    pub file: PathBuf,
    /// Time limit per call, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory cap, MiB.
    pub memory_mb: Option<u64>,
    /// Keep instances between messages.
    pub reuse_instance: Option<bool>,
    /// Grant a key-value namespace.
    pub kv: Option<bool>,
    /// Directory grants.
    #[serde(default)]
    pub dirs: Vec<RawDirGrant>,
    /// The plugin's own settings.
    pub config: Option<toml::Table>,
}

/// One directory grant as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirGrant {
    /// The name the plugin asks for.
    pub name: String,
    /// The directory (relative to the config file's directory).
    pub path: PathBuf,
    /// Read-write when true; read-only by default.
    #[serde(default)]
    pub writable: bool,
}

/// `[smtp]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    /// Addresses to listen on, as `IP:PORT`.
    pub listen: Option<Vec<String>>,
    /// Largest message in octets.
    pub max_message_size: Option<u64>,
    /// Most recipients per message.
    pub max_recipients: Option<usize>,
    /// Most simultaneous connections in total.
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one IP address.
    pub max_connections_per_ip: Option<usize>,
    /// Most new connections per minute from one IP address (0 = no limit).
    pub max_connection_rate_per_ip: Option<usize>,
    /// Networks exempt from the per-IP connection count and rate.
    pub limit_exceptions: Option<Vec<String>>,
    /// Longest pause before a new message's 354 while the pipeline is behind (0 = off).
    pub in_flow_delay_ms: Option<u64>,
    /// Messages waiting for their first pipeline run above which the pause applies.
    pub in_flow_backlog: Option<usize>,
    /// Error replies before a session is closed with 421.
    pub max_errors: Option<u32>,
    /// Seconds to wait for the next command.
    pub command_timeout_secs: Option<u64>,
    /// Seconds to wait for more message content.
    pub data_timeout_secs: Option<u64>,
    /// Seconds a shutdown waits for messages in progress.
    pub shutdown_grace_secs: Option<u64>,
    /// Separator of address extensions (`user+tag`); empty to turn off.
    pub recipient_delimiter: Option<String>,
    /// STARTTLS certificate and key.
    pub tls: Option<RawTls>,
    /// Addresses where TLS starts at connect (implicit TLS, port 465 style).
    pub tls_listen: Option<Vec<String>>,
}

/// `[smtp.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[domains."name"]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDomain {
    /// Local parts that exist; absent means every local part is accepted.
    pub recipients: Option<Vec<String>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server name.
    pub hostname: String,
    /// Data directory (absolute or relative to the working directory).
    pub data_dir: PathBuf,
    /// SMTP listener settings.
    pub smtp: SmtpConfig,
    /// Local domains, lowercase, sorted.
    pub domains: Vec<String>,
    /// The RCPT-time recipient table.
    pub recipients: Recipients,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// The plugin chain, in order.
    pub plugins: Vec<PluginSpec>,
    /// Where `/metrics` and the status page are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Delivery to other mail servers.
    pub outbound: OutboundConfig,
    /// The submission listener.
    pub submission: SubmissionConfig,
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

/// Validated `[pipeline]`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Concurrent workers.
    pub workers: usize,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Queue lifetime before a bounce.
    pub max_queue_lifetime: Duration,
    /// Consecutive faults before hold.
    pub max_faults: u32,
    /// Delay warning after (None = never).
    pub delay_warning: Option<Duration>,
    /// Rescan interval.
    pub rescan: Duration,
    /// Niceness of pipeline threads.
    pub nice: i32,
    /// Plugin calls running WebAssembly at once.
    pub max_running_plugins: usize,
}

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
    /// In-flow delay applies while more messages than this wait in `incoming/`.
    pub in_flow_backlog: usize,
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
}

/// Where the STARTTLS certificate chain and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl Config {
    /// Loads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_CONFIG, "embedded default", Path::new(".")),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let base = p.parent().unwrap_or(Path::new("."));
                let base = if base.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    base
                };
                Config::parse(&text, &p.display().to_string(), base)
            }
        }
    }

    /// Parses and validates TOML text; relative paths are resolved against `base`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        raw.validate(origin, base)
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    /// What each SMTP session needs.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            hostname: self.hostname.clone(),
            max_message_size: self.smtp.max_message_size,
            max_recipients: self.smtp.max_recipients,
            max_errors: self.smtp.max_errors,
            recipients: self.recipients.clone(),
            starttls: self.smtp.tls.is_some(),
            submission: false,
        }
    }

    /// What each submission session needs.
    pub fn submission_session_config(&self) -> SessionConfig {
        SessionConfig {
            submission: true,
            ..self.session_config()
        }
    }
}

/// The system's host name, or `localhost` when it cannot be read.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl RawConfig {
    /// Validates into a [`Config`].
    pub fn validate(self, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &str, why: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key: key.to_string(),
            why,
        };
        // Relative paths in the file are relative to the file's directory.
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let parse_addrs = |key: &str, raw: &[String]| -> Result<Vec<SocketAddr>, ConfigError> {
            raw.iter()
                .map(|a| {
                    a.parse::<SocketAddr>().map_err(|_| {
                        invalid(
                            key,
                            format!(
                                "{a:?} is not IP:PORT (for example \"0.0.0.0:25\" or \"[::]:25\")"
                            ),
                        )
                    })
                })
                .collect()
        };
        let hostname = match self.hostname {
            Some(h) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
                return Err(invalid(
                    "hostname",
                    "must be a host name without spaces".into(),
                ))
            }
            Some(h) => h,
            None => system_hostname(),
        };
        let data_dir = abs(self.data_dir.unwrap_or_else(|| PathBuf::from("var")));

        let s = self.smtp;
        let listen_raw = s
            .listen
            .unwrap_or_else(|| vec!["127.0.0.1:2525".to_string()]);
        if listen_raw.is_empty() {
            return Err(invalid("smtp.listen", "needs at least one address".into()));
        }
        let listen = parse_addrs("smtp.listen", &listen_raw)?;
        let tls_listen = parse_addrs("smtp.tls_listen", &s.tls_listen.unwrap_or_default())?;
        if !tls_listen.is_empty() && s.tls.is_none() {
            return Err(invalid(
                "smtp.tls_listen",
                "needs smtp.tls (a certificate and key) to serve TLS".into(),
            ));
        }
        if let Some(both) = tls_listen
            .iter()
            .find(|a| listen.contains(a) && a.port() != 0)
        {
            return Err(invalid(
                "smtp.tls_listen",
                format!("{both} is also in smtp.listen"),
            ));
        }
        let max_message_size = s.max_message_size.unwrap_or(25 * 1024 * 1024);
        if max_message_size < 64 * 1024 {
            return Err(invalid(
                "smtp.max_message_size",
                format!("{max_message_size} is below the RFC 5321 minimum of 65536 octets"),
            ));
        }
        let max_recipients = s.max_recipients.unwrap_or(1000);
        if max_recipients < MIN_RECIPIENTS {
            return Err(invalid(
                "smtp.max_recipients",
                format!("{max_recipients} is below {MIN_RECIPIENTS}, the minimum RFC 5321 section 4.5.3.1.8 requires"),
            ));
        }
        let max_connections = s.max_connections.unwrap_or(1000);
        let max_connections_per_ip = s.max_connections_per_ip.unwrap_or(50);
        if max_connections == 0 {
            return Err(invalid("smtp.max_connections", "must be at least 1".into()));
        }
        if max_connections_per_ip == 0 || max_connections_per_ip > max_connections {
            return Err(invalid(
                "smtp.max_connections_per_ip",
                format!("must be between 1 and smtp.max_connections ({max_connections})"),
            ));
        }
        let limit_exceptions = match s.limit_exceptions {
            // As Postfix exempts $mynetworks from its client limits: local
            // scripts and web applications submit through loopback.
            None => ["127.0.0.0/8", "::1"]
                .into_iter()
                .filter_map(parse_network)
                .collect(),
            Some(list) => list
                .iter()
                .map(|n| parse_network(n).ok_or_else(|| {
                    invalid(
                        "smtp.limit_exceptions",
                        format!("{n:?} is not a network (write \"192.0.2.0/24\", \"2001:db8::/32\" or one address)"),
                    )
                }))
                .collect::<Result<_, _>>()?,
        };
        let max_errors = s.max_errors.unwrap_or(20);
        if max_errors == 0 {
            return Err(invalid("smtp.max_errors", "must be at least 1".into()));
        }
        let secs = |key: &str, v: Option<u64>, default: u64, min: u64| {
            let v = v.unwrap_or(default);
            if v < min {
                Err(invalid(
                    key,
                    format!("{v} is below the minimum of {min} seconds"),
                ))
            } else {
                Ok(Duration::from_secs(v))
            }
        };
        // RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command;
        // shorter values are allowed for tests and overloaded servers, not below 1 s.
        let command_timeout = secs("smtp.command_timeout_secs", s.command_timeout_secs, 300, 1)?;
        let data_timeout = secs("smtp.data_timeout_secs", s.data_timeout_secs, 180, 1)?;
        let shutdown_grace = secs("smtp.shutdown_grace_secs", s.shutdown_grace_secs, 30, 0)?;
        let delimiter = match s.recipient_delimiter.as_deref() {
            None => Some('+'),
            Some("") => None,
            Some(d) if d.chars().count() == 1 => d.chars().next(),
            Some(d) => {
                return Err(invalid(
                    "smtp.recipient_delimiter",
                    format!("{d:?} must be one character, or empty to turn it off"),
                ))
            }
        };

        let tls = s.tls.map(|t| TlsFiles {
            cert: abs(t.cert),
            key: abs(t.key),
        });

        if self.domains.is_empty() {
            return Err(invalid(
                "domains",
                "no local domains: add a [domains.\"example.org\"] table".into(),
            ));
        }
        let mut table = Vec::new();
        let mut domains = Vec::new();
        let mut seen = HashSet::new();
        for (name, d) in self.domains {
            let key = format!("domains.{name:?}");
            let lower = name.to_ascii_lowercase();
            let valid = !lower.is_empty()
                && lower.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
                });
            if !valid {
                return Err(invalid(&key, "is not a valid domain name".into()));
            }
            if !seen.insert(lower.clone()) {
                return Err(invalid(
                    &key,
                    "is listed twice (domains compare case-insensitively)".into(),
                ));
            }
            let users = match d.recipients {
                None => DomainUsers::CatchAll,
                Some(list) => {
                    let mut set = HashSet::new();
                    for u in list {
                        if u.is_empty() || u.contains('@') || u.contains(char::is_whitespace) {
                            return Err(invalid(
                                &format!("{key}.recipients"),
                                format!("{u:?} is not a local part (write \"alice\", not \"alice@{name}\")"),
                            ));
                        }
                        set.insert(u.to_lowercase());
                    }
                    DomainUsers::Listed(set)
                }
            };
            table.push((lower.clone(), users));
            domains.push(lower);
        }

        let p = self.pipeline;
        let plugin_dir = p
            .plugin_dir
            .map(abs)
            .unwrap_or_else(|| data_dir.join("plugins"));
        let workers = p.workers.unwrap_or(4);
        if workers == 0 || workers > 256 {
            return Err(invalid(
                "pipeline.workers",
                format!("{workers} must be between 1 and 256"),
            ));
        }
        let retry_min = secs("pipeline.retry_min_secs", p.retry_min_secs, 60, 1)?;
        let retry_max = secs("pipeline.retry_max_secs", p.retry_max_secs, 3600, 1)?;
        if retry_max < retry_min {
            return Err(invalid(
                "pipeline.retry_max_secs",
                "must not be less than pipeline.retry_min_secs".into(),
            ));
        }
        let max_queue_lifetime = secs(
            "pipeline.max_queue_lifetime_secs",
            p.max_queue_lifetime_secs,
            5 * 86400,
            1,
        )?;
        let max_faults = p.max_faults.unwrap_or(5);
        if max_faults == 0 {
            return Err(invalid("pipeline.max_faults", "must be at least 1".into()));
        }
        let delay_warning = match p.delay_warning_secs.unwrap_or(4 * 3600) {
            0 => None,
            n => Some(Duration::from_secs(n)),
        };
        let rescan = secs("pipeline.rescan_secs", p.rescan_secs, 5, 1)?;
        let nice = p.nice.unwrap_or(19);
        if !(0..=19).contains(&nice) {
            return Err(invalid(
                "pipeline.nice",
                format!("{nice} must be between 0 and 19"),
            ));
        }

        let mut plugins = Vec::new();
        let mut names = HashSet::new();
        for (i, rp) in self.plugins.into_iter().enumerate() {
            let key = |k: &str| format!("plugins[{i}].{k}");
            let name_ok = !rp.name.is_empty()
                && rp
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} must be letters, digits, - and _", rp.name),
                ));
            }
            if !names.insert(rp.name.clone()) {
                return Err(invalid(
                    &key("name"),
                    format!("{:?} is used twice", rp.name),
                ));
            }
            let builtin = crate::plugins::builtin::for_file(&rp.file);
            let file = if rp.file.is_absolute() {
                rp.file
            } else {
                plugin_dir.join(rp.file)
            };
            let timeout_ms = rp.timeout_ms.unwrap_or(1000);
            if !(1..=600_000).contains(&timeout_ms) {
                return Err(invalid(
                    &key("timeout_ms"),
                    format!("{timeout_ms} must be between 1 and 600000"),
                ));
            }
            let memory_mb = rp.memory_mb.unwrap_or(64);
            if !(1..=1024).contains(&memory_mb) {
                return Err(invalid(
                    &key("memory_mb"),
                    format!("{memory_mb} must be between 1 and 1024"),
                ));
            }
            let mut grant_names = HashSet::new();
            let mut dirs = Vec::new();
            for (j, d) in rp.dirs.into_iter().enumerate() {
                if !grant_names.insert(d.name.clone()) {
                    return Err(invalid(
                        &key(&format!("dirs[{j}].name")),
                        format!("{:?} is granted twice", d.name),
                    ));
                }
                dirs.push(DirGrant {
                    name: d.name,
                    path: abs(d.path),
                    writable: d.writable,
                });
            }
            let config =
                finaldot_sdk::Value::from_toml(&toml::Value::Table(rp.config.unwrap_or_default()));
            plugins.push(PluginSpec {
                name: rp.name.clone(),
                file,
                config,
                limits: Limits {
                    timeout: Duration::from_millis(timeout_ms),
                    memory: (memory_mb as usize) << 20,
                },
                grants: Grants {
                    dirs,
                    kv: rp
                        .kv
                        .unwrap_or(false)
                        .then(|| data_dir.join("kv").join(&rp.name)),
                },
                reuse_instance: rp.reuse_instance.unwrap_or(false),
                builtin,
            });
        }

        let metrics_listen = match self.metrics.listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("{a:?} is not IP:PORT (for example \"127.0.0.1:9425\")"),
                )
            })?),
        };
        if let Some(m) = metrics_listen {
            if listen.contains(&m) && m.port() != 0 {
                return Err(invalid(
                    "metrics.listen",
                    format!("{m} is also an SMTP listen address"),
                ));
            }
        }

        let o = self.outbound;
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
            Some(hp) => {
                let parsed = hp
                    .rsplit_once(':')
                    .and_then(|(h, p)| {
                        Some((
                            h.trim_matches(['[', ']']).to_string(),
                            p.parse::<u16>().ok()?,
                        ))
                    })
                    .filter(|(h, _)| !h.is_empty());
                Some(parsed.ok_or_else(|| {
                    invalid(
                        "outbound.smarthost",
                        format!("{hp:?} is not HOST:PORT (for example \"smtp.example.net:587\")"),
                    )
                })?)
            }
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
                let file = abs(a.password_file);
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
        let nameservers = parse_addrs("outbound.nameservers", &o.nameservers.unwrap_or_default())?;
        let outbound = OutboundConfig {
            route,
            smarthost,
            smarthost_tls,
            smarthost_auth,
            tls_ca_file: o.tls_ca_file.map(abs),
            mx_port: o.mx_port.unwrap_or(25),
            nameservers,
            timeout: Duration::from_secs(o.timeout_secs.unwrap_or(60).max(1)),
            max_connections_per_destination: o.max_connections_per_destination.unwrap_or(4).max(1),
        };

        let sub = self.submission;
        let submission = SubmissionConfig {
            listen: parse_addrs("submission.listen", &sub.listen.unwrap_or_default())?,
            users_file: sub
                .users_file
                .map(abs)
                .unwrap_or_else(|| data_dir.join("users")),
            received_auth: sub.received_auth.unwrap_or(false),
            max_auth_failures_per_ip: sub.max_auth_failures_per_ip.unwrap_or(5).max(1),
        };
        if !submission.listen.is_empty() && tls.is_none() {
            return Err(invalid(
                "submission.listen",
                "needs smtp.tls (a certificate and key): AUTH is only offered after STARTTLS"
                    .into(),
            ));
        }
        if let Some(both) = submission
            .listen
            .iter()
            .find(|a| (listen.contains(a) || tls_listen.contains(a)) && a.port() != 0)
        {
            return Err(invalid(
                "submission.listen",
                format!("{both} is also an SMTP listen address"),
            ));
        }

        Ok(Config {
            submission,
            outbound,
            metrics_listen,
            pipeline: PipelineConfig {
                workers,
                plugin_dir,
                retry_min,
                retry_max,
                max_queue_lifetime,
                max_faults,
                delay_warning,
                rescan,
                nice,
                max_running_plugins: match p.max_running_plugins {
                    None | Some(0) => crate::plugins::default_max_running(),
                    Some(n) => n,
                },
            },
            plugins,
            hostname,
            data_dir,
            smtp: SmtpConfig {
                listen,
                max_message_size,
                max_recipients,
                max_connections,
                max_connections_per_ip,
                max_connection_rate_per_ip: s.max_connection_rate_per_ip.unwrap_or(0),
                limit_exceptions,
                in_flow_delay: Duration::from_millis(s.in_flow_delay_ms.unwrap_or(0)),
                in_flow_backlog: s.in_flow_backlog.unwrap_or(1000),
                max_errors,
                command_timeout,
                data_timeout,
                shutdown_grace,
                tls,
                tls_listen,
            },
            domains,
            recipients: Recipients::new(table, delimiter),
        })
    }
}

/// A network (`192.0.2.0/24`, `2001:db8::/32`) or one address, host bits cleared.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    match text.parse::<ipnet::IpNet>() {
        Ok(n) => Some(n.trunc()),
        Err(_) => text
            .parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/finaldot"))
    }

    #[test]
    fn embedded_default_serves_localhost_and_example_test() {
        let c = Config::load(None).expect("default");
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().expect("addr")]);
        assert_eq!(c.domains, vec!["example.test", "localhost"]);
        assert_eq!(c.data_dir, Path::new("./var"));
        let names: Vec<_> = c.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dedup", "list-expand", "filter", "local-delivery"]);
        assert_eq!(
            c.plugins[3].file,
            Path::new("./var/plugins/local_delivery.wasm")
        );
    }

    #[test]
    fn example_file_documents_a_valid_config() {
        let text = include_str!("../../finaldot.example.toml");
        let c = parse(text).expect("example parses");
        assert!(c.data_dir.is_absolute());
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(
            c.plugins[0].file,
            Path::new("/etc/finaldot/var/plugins/stamp.wasm")
        );
    }

    #[test]
    fn plugin_settings_are_validated_with_their_keys() {
        for (text, key) in [
            ("[domains.a]\n[[plugins]]\nname = \"x y\"\nfile = \"x.wasm\"\n", "plugins[0].name"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\ntimeout_ms = 0\n", "plugins[0].timeout_ms"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\n[[plugins]]\nname = \"x\"\nfile = \"y.wasm\"\n", "plugins[1].name"),
            ("[domains.a]\n[pipeline]\nworkers = 0\n", "pipeline.workers"),
            ("[domains.a]\n[pipeline]\nretry_min_secs = 10\nretry_max_secs = 5\n", "pipeline.retry_max_secs"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nsurprise = 1\n", "surprise"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[smtp]\nlisten = [\"127.0.0.1:25\"]\nmax_recipeints = 5\n[domains.a]\n")
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("max_recipeints"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            (
                "[smtp]\nlisten = [\"localhost:25\"]\n[domains.a]\n",
                "smtp.listen",
            ),
            (
                "[smtp]\nmax_recipients = 10\n[domains.a]\n",
                "smtp.max_recipients",
            ),
            (
                "[smtp]\nmax_message_size = 10\n[domains.a]\n",
                "smtp.max_message_size",
            ),
            (
                "[smtp]\nrecipient_delimiter = \"++\"\n[domains.a]\n",
                "smtp.recipient_delimiter",
            ),
            ("[domains.\"a..b\"]\n", "domains"),
            ("[domains.a]\nrecipients = [\"x@a\"]\n", "recipients"),
            ("hostname = \"\"\n[domains.a]\n", "hostname"),
            ("data_dir = \"x\"\n", "domains"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn wrong_type_is_refused_with_location() {
        let e = parse("[smtp]\nmax_recipients = \"many\"\n[domains.a]\n")
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("max_recipients"), "{e}");
    }
}
