//! Configuration: the TOML file as written ([`RawConfig`], unknown keys refused),
//! then validated into what the daemon uses ([`Config`]). Every refusal names the
//! key and what is wrong with it. With no file, the embedded default
//! ([`DEFAULT_CONFIG`]) goes through exactly the same path.
//!
//! Each table is validated by its own function, beside the struct that
//! holds it as written, with each key's default next to its check:
//! [`smtp`] (`[smtp]`, `[submission]`, `[domains]`), [`pipeline`]
//! (`[pipeline]`, `[[plugins]]`), [`outbound`] (`[outbound]`, `[lmtp]`),
//! [`auth`] (`[auth]`, `[[dkim]]`).
//!
//! One convention for where settings types live: this module owns what
//! was written (the `Raw*` structs); each consumer owns the validated type
//! it runs with, beside its code (`smtp::settings::SmtpConfig`,
//! `pipeline::PipelineConfig`, `outbound::OutboundConfig`,
//! `plugins::PluginSpec`), and the validation here builds it. So the
//! configuration imports the modules it configures and none of them
//! imports the configuration.

pub mod auth;
pub mod outbound;
pub mod pipeline;
pub mod smtp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::outbound::{LmtpConfig, OutboundConfig};
use crate::pipeline::PipelineConfig;
use crate::plugins::PluginSpec;
use crate::smtp::policy::Recipients;
use crate::smtp::session::SessionConfig;
use crate::smtp::settings::{SmtpConfig, SubmissionConfig};

pub use self::auth::{AuthConfig, RawAuth, RawDkim};
pub use self::outbound::{RawLmtp, RawOutbound, RawSmarthostAuth};
pub use self::pipeline::{RawDirGrant, RawPipeline, RawPlugin};
pub use self::smtp::{RawDomain, RawSmtp, RawSubmission, RawTls};

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
builtin = true
kv = true

[[plugins]]
name = "list-expand"
file = "list_expand.wasm"
builtin = true
dirs = [{ name = "lists", path = "var/lists" }]

[[plugins]]
name = "filter"
file = "filter.wasm"
builtin = true

[[plugins]]
name = "local-delivery"
file = "local_delivery.wasm"
builtin = true
dirs = [{ name = "mail", path = "var/mail", writable = true }]
[plugins.config]
domains = ["localhost", "example.test"]
aliases = { postmaster = "root", abuse = "root", mailer-daemon = "root" }

[metrics]
listen = "127.0.0.1:9425"
"#;

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
    /// Where mail to the bare `<postmaster>` and `postmaster@[our address]`
    /// goes; default: `postmaster@` the host name if it is a local domain,
    /// else the first local domain.
    pub postmaster: Option<String>,
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
    /// The door plugins (connect, HELO, MAIL, RCPT), in order.
    #[serde(default)]
    pub door: Vec<RawPlugin>,
    /// Metrics and the status page.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Delivery to other mail servers.
    #[serde(default)]
    pub outbound: RawOutbound,
    /// Delivery of local recipients to a mailbox server over LMTP.
    pub lmtp: Option<RawLmtp>,
    /// The authenticated submission listener.
    #[serde(default)]
    pub submission: RawSubmission,
    /// The resolver plugins ask (the DNS capability).
    #[serde(default)]
    pub dns: RawDns,
    /// Mail authentication of what arrives.
    #[serde(default)]
    pub auth: RawAuth,
    /// DKIM keys that sign what leaves.
    #[serde(default)]
    pub dkim: Vec<RawDkim>,
}

/// `[dns]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Servers to ask (`IP:PORT`); absent: the system's (`/etc/resolv.conf`).
    pub nameservers: Option<Vec<String>>,
}

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Where to serve `/metrics` and the status page (IP:PORT); absent = off.
    pub listen: Option<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Server name.
    pub hostname: String,
    /// Data directory (absolute or relative to the working directory).
    pub data_dir: PathBuf,
    /// Where mail to this host's postmaster goes.
    pub postmaster: crate::smtp::session::Mailbox,
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
    /// The door plugins (before DATA), in order.
    pub door: Vec<crate::door::DoorSpec>,
    /// Where `/metrics` and the status page are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Delivery to other mail servers.
    pub outbound: OutboundConfig,
    /// LMTP delivery of local recipients, if configured.
    pub lmtp: Option<LmtpConfig>,
    /// The submission listener.
    pub submission: SubmissionConfig,
    /// The name servers of `[dns]` (empty: the system's).
    pub nameservers: Vec<SocketAddr>,
    /// Mail authentication of what arrives.
    pub auth: AuthConfig,
    /// The DKIM keys, read (again at every reload).
    pub dkim: std::sync::Arc<crate::auth::Signer>,
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
            // Only an authenticated (submission) session is checked.
            sender_login: self.submission.sender_login.clone(),
            postmaster: self.postmaster.clone(),
            // Filled per listener by the server from the door it was given.
            door: crate::door::DoorWants::default(),
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

/// What every table's validation needs: where the file is (for errors and
/// relative paths), and the checks every table uses.
pub struct Cx<'a> {
    origin: &'a str,
    base: &'a Path,
}

impl Cx<'_> {
    /// A refusal of `key`, naming the file.
    pub fn invalid(&self, key: &str, why: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            key: key.to_string(),
            why,
        }
    }

    /// `p` made absolute: relative paths in the file are relative to the
    /// file's directory.
    pub fn abs(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    /// `IP:PORT` addresses.
    pub fn addrs(&self, key: &str, raw: &[String]) -> Result<Vec<SocketAddr>, ConfigError> {
        raw.iter()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    self.invalid(
                        key,
                        format!("{a:?} is not IP:PORT (for example \"0.0.0.0:25\" or \"[::]:25\")"),
                    )
                })
            })
            .collect()
    }

    /// A number of seconds, `default` when absent, at least `min`.
    pub fn secs(
        &self,
        key: &str,
        v: Option<u64>,
        default: u64,
        min: u64,
    ) -> Result<Duration, ConfigError> {
        let v = v.unwrap_or(default);
        if v < min {
            Err(self.invalid(key, format!("{v} is below the minimum of {min} seconds")))
        } else {
            Ok(Duration::from_secs(v))
        }
    }
}

impl RawMetrics {
    /// Validates `[metrics]`: not on an SMTP address.
    pub fn validate(self, smtp: &SmtpConfig, cx: &Cx) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = &smtp.listen;
        let invalid = |key: &str, why: String| cx.invalid(key, why);
        let metrics_listen = match self.listen {
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

        Ok(metrics_listen)
    }
}

impl RawConfig {
    /// Validates into a [`Config`], one table at a time.
    pub fn validate(self, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let cx = Cx { origin, base };
        let hostname = match self.hostname {
            Some(h) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
                return Err(cx.invalid("hostname", "must be a host name without spaces".into()))
            }
            Some(h) => h,
            None => system_hostname(),
        };
        let data_dir = cx.abs(self.data_dir.unwrap_or_else(|| PathBuf::from("var")));
        let (smtp, delimiter) = self.smtp.validate(&cx)?;
        let (domains, recipients) = smtp::validate_domains(self.domains, delimiter, &cx)?;
        let postmaster = smtp::postmaster(self.postmaster, &hostname, &domains, &cx)?;
        let workers_given = self.pipeline.workers.is_some();
        let mut pipeline = self.pipeline.validate(&data_dir, &cx)?;
        let nameservers = cx.addrs("dns.nameservers", &self.dns.nameservers.unwrap_or_default())?;
        let plugins = pipeline::validate_plugins(
            self.plugins,
            "plugins",
            &pipeline.plugin_dir,
            &data_dir,
            &nameservers,
            &cx,
        )?;
        let door = pipeline::validate_door(
            self.door,
            &pipeline.plugin_dir,
            &data_dir,
            &nameservers,
            &plugins,
            &cx,
        )?;
        // A plugin that asks DNS, HTTP or a Redis namespace holds its worker
        // while it waits (the CPU gate, not the worker count, bounds what
        // runs at once): with such a plugin, many more workers by default,
        // so a slow answer stalls one message, not the queue.
        let remote_kv =
            |p: &PluginSpec| matches!(p.grants.kv, Some(crate::plugins::kv::KvGrant::Redis(_)));
        if !workers_given
            && plugins
                .iter()
                .any(|p| p.grants.dns.is_some() || p.grants.http.is_some() || remote_kv(p))
        {
            pipeline.workers = pipeline::NETWORK_WORKERS;
        }
        check_mailbox_lists(&plugins, &recipients, &postmaster, &cx)?;
        let metrics_listen = self.metrics.validate(&smtp, &cx)?;
        let outbound = self.outbound.validate(&cx)?;
        let lmtp = self.lmtp.map(|l| l.validate(&domains, &cx)).transpose()?;
        let submission = self.submission.validate(&smtp, &data_dir, &cx)?;
        let auth = self.auth.validate(&hostname, &cx)?;
        let dkim = auth::validate_dkim(self.dkim, &cx)?;
        Ok(Config {
            hostname,
            data_dir,
            postmaster,
            smtp,
            domains,
            recipients,
            pipeline,
            plugins,
            door,
            metrics_listen,
            outbound,
            lmtp,
            submission,
            nameservers,
            auth,
            dkim,
        })
    }
}

/// The front end's recipient lists and local-delivery's `users` must
/// agree: an address the front end takes at RCPT and local delivery then
/// refuses would be bounced after the 250 (backscatter to a sender who may
/// be forged). Checked for every plugin configured as local-delivery is
/// (`domains` and `users` in its `[plugins.config]`): each name a local
/// domain lists in `recipients` (and `postmaster`), after the plugin's
/// `aliases`, must be one of its users, and a domain it serves must list
/// its recipients rather than take every local part.
fn check_mailbox_lists(
    plugins: &[PluginSpec],
    recipients: &Recipients,
    postmaster: &crate::smtp::session::Mailbox,
    cx: &Cx,
) -> Result<(), ConfigError> {
    use finaldot_sdk::wire::Value;
    for (i, p) in plugins.iter().enumerate() {
        // Read as the plugin reads its table (the SDK's `Config`); a value
        // of the wrong type is the plugin's own refusal at load.
        let table = finaldot_sdk::Config::new(p.name.as_str(), p.config.clone());
        let strings = |key: &str| -> Option<Vec<String>> {
            table.get(key)?;
            let items = table.strings(key).ok()?;
            Some(items.iter().map(|s| s.to_lowercase()).collect())
        };
        let (Some(domains), Some(users)) = (strings("domains"), strings("users")) else {
            continue;
        };
        let aliases: Vec<(String, String)> = match table.get("aliases") {
            Some(Value::Table(t)) => t
                .iter()
                .filter_map(|(k, v)| Some((k.to_lowercase(), v.as_str()?.to_lowercase())))
                .collect(),
            _ => Vec::new(),
        };
        // The plugin's rule: aliases may chain, at most 8 steps.
        let resolve = |name: &str| {
            let mut user = name.to_lowercase();
            for _ in 0..8 {
                match aliases.iter().find(|(from, _)| *from == user) {
                    Some((_, to)) => user = to.clone(),
                    None => break,
                }
            }
            user
        };
        let key = format!("plugins[{i}].config.users");
        for domain in &domains {
            match recipients.users(domain) {
                None => {}
                Some(crate::smtp::policy::DomainUsers::CatchAll) => {
                    return Err(cx.invalid(
                        &key,
                        format!("plugin {:?} delivers only its users at {domain}, but [domains.{domain:?}] takes every local part: list them there too (recipients = [...]), or the rest are taken and then bounced", p.name),
                    ))
                }
                Some(crate::smtp::policy::DomainUsers::Listed(set)) => {
                    let mut names: Vec<&str> = set.iter().map(String::as_str).collect();
                    names.sort_unstable();
                    names.push("postmaster");
                    if let Some(missing) = names.into_iter().find(|n| !users.contains(&resolve(n))) {
                        return Err(cx.invalid(
                            &key,
                            format!("{missing}@{domain} is taken at RCPT ([domains.{domain:?}] recipients, or postmaster) but plugin {:?} has no such user (nor an alias to one): it would be bounced after the 250", p.name),
                        ));
                    }
                }
            }
        }
        // The configured postmaster is taken at RCPT whatever the lists say.
        if domains.contains(&postmaster.domain) && !users.contains(&resolve(&postmaster.local)) {
            return Err(cx.invalid(
                "postmaster",
                format!("{postmaster} is where mail to the postmaster goes, but plugin {:?} has no such user (nor an alias to one)", p.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_ends_recipients_and_local_deliverys_users_must_agree() {
        let cfg = |recipients: &str, users: &str| {
            parse(&format!(
                "[domains.a]\n{recipients}\n[[plugins]]\nname = \"ld\"\nfile = \"ld.wasm\"\n[plugins.config]\ndomains = [\"a\"]\n{users}\naliases = {{ postmaster = \"root\" }}\n"
            ))
        };
        // Agreeing lists, postmaster through an alias; no users: anything goes.
        cfg(
            "recipients = [\"alice\", \"Bob\"]",
            "users = [\"alice\", \"bob\", \"root\"]",
        )
        .expect("agree");
        cfg("", "").expect("no users list");
        cfg("recipients = [\"alice\"]", "").expect("no users list");
        let e = parse("postmaster = \"boss@a\"\n[domains.a]\nrecipients = [\"alice\"]\n[[plugins]]\nname = \"ld\"\nfile = \"ld.wasm\"\n[plugins.config]\ndomains = [\"a\"]\nusers = [\"alice\", \"root\"]\naliases = { postmaster = \"root\" }\n")
            .expect_err("boss is nobody")
            .to_string();
        assert!(e.contains("`postmaster`") && e.contains("boss@a"), "{e}");
        for (recipients, users, says) in [
            (
                "recipients = [\"alice\", \"carol\"]",
                "users = [\"alice\", \"root\"]",
                "carol@a",
            ),
            (
                "recipients = [\"alice\"]",
                "users = [\"alice\"]",
                "postmaster@a",
            ),
            (
                "",
                "users = [\"alice\", \"root\"]",
                "takes every local part",
            ),
        ] {
            let e = cfg(recipients, users).expect_err(users).to_string();
            assert!(
                e.contains("plugins[0].config.users") && e.contains(says),
                "{e}"
            );
        }
    }

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
    fn postmaster_defaults_to_a_local_domain_and_is_checked() {
        let c = Config::load(None).expect("default");
        assert_eq!(c.postmaster.local, "postmaster");
        assert!(
            c.domains.contains(&c.postmaster.domain),
            "{:?}",
            c.postmaster
        );
        let c = parse("hostname = \"mx.b\"\n[domains.a]\n[domains.\"mx.b\"]\n").expect("parses");
        assert_eq!(c.postmaster.to_string(), "postmaster@mx.b");
        let c = parse("postmaster = \"Root@A\"\n[domains.a]\n").expect("parses");
        assert_eq!(c.postmaster.to_string(), "Root@a");
        for bad in ["root", "a b@a", "@a", "root@"] {
            let e = parse(&format!("postmaster = {bad:?}\n[domains.a]\n"))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("`postmaster`"), "{bad}: {e}");
        }
    }

    #[test]
    fn example_file_documents_a_valid_config() {
        let text = include_str!("../../../finaldot.example.toml");
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
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nbuiltin = true\n", "plugins[0].builtin"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"sub/dedup.wasm\"\nbuiltin = true\n", "plugins[0].builtin"),
        ] {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn built_in_copies_serve_only_where_asked_for() {
        let default = Config::load(None).expect("default");
        assert!(default.plugins.iter().all(|p| p.builtin.is_some()));
        let c = parse("[domains.a]\n[[plugins]]\nname = \"d\"\nfile = \"dedup.wasm\"\n")
            .expect("parses");
        assert!(c.plugins[0].builtin.is_none());
        let c = parse(
            "[domains.a]\n[[plugins]]\nname = \"d\"\nfile = \"dedup.wasm\"\nbuiltin = true\n",
        )
        .expect("parses");
        assert_eq!(
            c.plugins[0].builtin.map(|b| b.file_name),
            Some("dedup.wasm")
        );
    }

    #[test]
    fn plugins_that_wait_on_the_network_get_more_workers_by_default() {
        let plain =
            parse("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\n").expect("parses");
        assert_eq!(plain.pipeline.workers, 4);
        let dns = parse("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\ndns = true\n")
            .expect("parses");
        assert_eq!(dns.pipeline.workers, pipeline::NETWORK_WORKERS);
        let set = parse(
            "[domains.a]\n[pipeline]\nworkers = 6\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nhttp = { allow = [\"http://127.0.0.1:1/\"] }\n",
        )
        .expect("parses");
        assert_eq!(set.pipeline.workers, 6);
    }

    #[test]
    fn kv_backends_and_their_mistakes() {
        let plugin = |kv: &str| {
            parse(&format!(
                "[domains.a]\n[[plugins]]\nname = \"d\"\nfile = \"d.wasm\"\nkv = {kv}\n"
            ))
        };
        let local = plugin("true").expect("parses");
        assert_eq!(
            local.plugins[0].grants.kv,
            Some(crate::plugins::kv::KvGrant::Local(PathBuf::from(
                "/etc/finaldot/var/kv/d"
            )))
        );
        assert_eq!(local.pipeline.workers, 4);
        let shared = plugin("{ namespace = \"dedup\" }").expect("parses");
        assert!(matches!(&shared.plugins[0].grants.kv,
            Some(crate::plugins::kv::KvGrant::Local(p)) if p.ends_with("kv/dedup")));
        let redis = plugin("{ backend = \"redis\", url = \"redis://:secret@10.0.0.5:6379/2\" }")
            .expect("parses");
        let Some(crate::plugins::kv::KvGrant::Redis(g)) = &redis.plugins[0].grants.kv else {
            panic!("not redis");
        };
        assert_eq!(g.prefix, "finaldot:d:");
        assert_eq!(g.timeout, Duration::from_millis(1000));
        assert!(!format!("{g:?}").contains("secret"), "{g:?}");
        // A Redis namespace waits on the network: more workers by default.
        assert_eq!(redis.pipeline.workers, pipeline::NETWORK_WORKERS);
        for (kv, key, says) in [
            ("{ backend = \"redis\" }", "plugins[0].kv.url", "needs a url"),
            ("{ backend = \"redis\", url = \"http://x/\" }", "plugins[0].kv.url", "redis://"),
            ("{ backend = \"memcached\" }", "plugins[0].kv.backend", "not a backend"),
            ("{ url = \"redis://x/\" }", "plugins[0].kv.url", "only for backend"),
            ("{ backend = \"redis\", url = \"redis://x/\", timeout_ms = 0 }", "plugins[0].kv.timeout_ms", "between"),
            ("{ namespace = \"../x\" }", "plugins[0].kv.namespace", "letters"),
            ("{ backend = \"redis\", url = \"redis://x/\", password_file = \"/nonexistent/pw\" }", "plugins[0].kv.password_file", "/nonexistent/pw"),
            ("{ bakend = \"redis\" }", "plugins[0].kv", "bakend"),
            ("\"yes\"", "plugins[0].kv", "must be true"),
        ] {
            let e = plugin(kv).expect_err(kv).to_string();
            assert!(e.contains(key) && e.contains(says), "{kv}: {e}");
        }
    }

    #[test]
    fn proxy_protocol_listeners_must_be_listen_addresses_and_need_balancers() {
        let cfg = |proxy: &str| {
            parse(&format!(
                "[smtp]\nlisten = [\"0.0.0.0:25\"]\n[smtp.proxy_protocol]\n{proxy}\n[domains.a]\n"
            ))
        };
        let ok = cfg("listeners = [\"0.0.0.0:25\"]\nfrom = [\"10.0.0.10\", \"10.1.0.0/16\"]")
            .expect("parses");
        let p = ok.smtp.proxy_protocol.expect("proxy");
        assert!(p.expects("0.0.0.0:25".parse().expect("addr")));
        assert!(p.trusts("10.1.2.3".parse().expect("ip")));
        assert!(p.trusts("::ffff:10.0.0.10".parse().expect("ip")));
        assert!(!p.trusts("10.0.0.11".parse().expect("ip")));
        assert_eq!(p.timeout, Duration::from_secs(10));
        for (proxy, key, says) in [
            (
                "listeners = [\"0.0.0.0:587\"]\nfrom = [\"10.0.0.10\"]",
                "smtp.proxy_protocol.listeners",
                "not a listen address",
            ),
            (
                "listeners = [\"0.0.0.0:25\"]\nfrom = []",
                "smtp.proxy_protocol.from",
                "load balancers",
            ),
            (
                "listeners = []\nfrom = [\"10.0.0.10\"]",
                "smtp.proxy_protocol.listeners",
                "at least one",
            ),
            (
                "listeners = [\"0.0.0.0:25\"]\nfrom = [\"lb.example\"]",
                "smtp.proxy_protocol.from",
                "not a network",
            ),
        ] {
            let e = cfg(proxy).expect_err(proxy).to_string();
            assert!(e.contains(key) && e.contains(says), "{proxy}: {e}");
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
            ("[domains.a]\nrecipients = [\"a/b\"]\n", "recipients"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\ndns = \"yes\"\n", "plugins[0].dns"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\ndns = { timeout_ms = 0 }\n", "plugins[0].dns.timeout_ms"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\ndns = { budget = 3 }\n", "plugins[0].dns.budget"),
            ("[domains.a]\n[dns]\nnameservers = [\"localhost\"]\n", "dns.nameservers"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nhttp = { allow = [] }\n", "plugins[0].http.allow"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nhttp = { allow = [\"ftp://x/\"] }\n", "plugins[0].http.allow"),
            ("[domains.a]\n[[plugins]]\nname = \"x\"\nfile = \"x.wasm\"\nhttp = { allow = [\"http://x/\"], timeout_ms = 0 }\n", "plugins[0].http.timeout_ms"),
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
