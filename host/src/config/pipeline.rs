//! `[pipeline]` and `[[plugins]]`: as written, and validated into the
//! pipeline's settings and the plugin chain's specs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Cx};

/// Pipeline workers when `pipeline.workers` is not set and a plugin is
/// granted DNS, HTTP or a Redis namespace (whose answers a worker waits for).
pub const NETWORK_WORKERS: usize = 64;
use crate::pipeline::PipelineConfig;
use crate::plugins::kv::{redis::RedisGrant, KvGrant};
use crate::plugins::{DirGrant, DnsGrant, Grants, HttpGrant, Limits, PluginSpec};

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
    /// Grant a key-value namespace: `true` (the local store) or
    /// `{ backend = "redis", url = "redis://…", … }`.
    pub kv: Option<toml::Value>,
    /// Directory grants.
    #[serde(default)]
    pub dirs: Vec<RawDirGrant>,
    /// The plugin's own settings.
    pub config: Option<toml::Table>,
    /// Serve the binary's built-in copy while `file` is missing (only for
    /// the built-in plugins' file names). Default: false.
    pub builtin: Option<bool>,
    /// DNS lookups: `true`, or `{ timeout_ms = 2000, max_lookups = 10 }`.
    pub dns: Option<toml::Value>,
    /// HTTP to allow-listed URLs.
    pub http: Option<RawHttpGrant>,
    /// `[[door]]` only: the stages it judges (`connect`, `helo`, `mail`,
    /// `rcpt`; default all four).
    pub stages: Option<Vec<String>>,
    /// `[[door]]` only: the listeners it judges (`mx`, `submission`;
    /// default `["mx"]`).
    pub listeners: Option<Vec<String>>,
    /// `[[door]]` only: judge authenticated clients too (default false).
    pub authenticated: Option<bool>,
    /// `[[door]]` only: what a failure does, `continue` (default) or `tempfail`.
    pub on_failure: Option<String>,
}

/// A plugin's `http = { … }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpGrant {
    /// URL prefixes (scheme, host, port, path) a request may go to.
    pub allow: Vec<String>,
    /// The longest wait for one response, milliseconds (default 5000).
    pub timeout_ms: Option<u64>,
    /// The largest response body, bytes (default 1 MiB).
    pub max_response_bytes: Option<u64>,
    /// CA certificates (PEM) trusted instead of the system's bundle.
    pub ca_file: Option<PathBuf>,
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

impl RawPipeline {
    /// Validates `[pipeline]`; `data_dir` holds the default plugin directory.
    pub fn validate(self, data_dir: &Path, cx: &Cx) -> Result<PipelineConfig, ConfigError> {
        let invalid = |key: &str, why: String| cx.invalid(key, why);
        let p = self;
        let plugin_dir = p
            .plugin_dir
            .map(|p| cx.abs(p))
            .unwrap_or_else(|| data_dir.join("plugins"));
        let workers = p.workers.unwrap_or(4);
        if workers == 0 || workers > 256 {
            return Err(invalid(
                "pipeline.workers",
                format!("{workers} must be between 1 and 256"),
            ));
        }
        let retry_min = cx.secs("pipeline.retry_min_secs", p.retry_min_secs, 60, 1)?;
        let retry_max = cx.secs("pipeline.retry_max_secs", p.retry_max_secs, 3600, 1)?;
        if retry_max < retry_min {
            return Err(invalid(
                "pipeline.retry_max_secs",
                "must not be less than pipeline.retry_min_secs".into(),
            ));
        }
        let max_queue_lifetime = cx.secs(
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
        let rescan = cx.secs("pipeline.rescan_secs", p.rescan_secs, 5, 1)?;
        let nice = p.nice.unwrap_or(19);
        if !(0..=19).contains(&nice) {
            return Err(invalid(
                "pipeline.nice",
                format!("{nice} must be between 0 and 19"),
            ));
        }

        Ok(PipelineConfig {
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
        })
    }
}

/// Validates `[[plugins]]` into the chain's specs, in order: files relative
/// to `plugin_dir`, key-value namespaces under `data_dir/kv/NAME`.
// Long on purpose: one check per key of [[plugins]], in the order the example file documents them.
pub fn validate_plugins(
    raw: Vec<RawPlugin>,
    table: &str,
    plugin_dir: &Path,
    data_dir: &Path,
    nameservers: &[SocketAddr],
    cx: &Cx,
) -> Result<Vec<PluginSpec>, ConfigError> {
    let invalid = |key: &str, why: String| cx.invalid(key, why);
    let mut plugins = Vec::new();
    let mut names = HashSet::new();
    for (i, rp) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("{table}[{i}].{k}");
        check_name(&rp.name, &key("name"), cx)?;
        for (k, set) in [
            ("stages", rp.stages.is_some()),
            ("listeners", rp.listeners.is_some()),
            ("authenticated", rp.authenticated.is_some()),
            ("on_failure", rp.on_failure.is_some()),
        ] {
            if set {
                return Err(invalid(
                    &key(k),
                    "only a [[door]] plugin has this (the chain runs after the 250, on every message)".into(),
                ));
            }
        }
        if !names.insert(rp.name.clone()) {
            return Err(invalid(
                &key("name"),
                format!("{:?} is used twice", rp.name),
            ));
        }
        let builtin = match rp.builtin {
            Some(true) => Some(crate::plugins::builtin::for_file(&rp.file).ok_or_else(|| {
                let names: Vec<&str> = crate::plugins::builtin::BUILTINS
                    .iter()
                    .map(|b| b.file_name)
                    .collect();
                invalid(
                    &key("builtin"),
                    format!(
                        "{} is not a built-in plugin (the binary carries {}, named without a directory)",
                        rp.file.display(),
                        names.join(", ")
                    ),
                )
            })?),
            _ => None,
        };
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
                path: cx.abs(d.path),
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
                kv: kv_grant(rp.kv, &rp.name, data_dir, &key("kv"), cx)?,
                dns: dns_grant(rp.dns.as_ref(), nameservers, &key("dns"), cx)?,
                http: match rp.http {
                    None => None,
                    Some(h) => Some(http_grant(h, &key("http"), cx)?),
                },
            },
            reuse_instance: rp.reuse_instance.unwrap_or(false),
            builtin,
        });
    }

    Ok(plugins)
}

/// Validates `[[door]]` into the door plugins' specs, in order, with the
/// same keys as `[[plugins]]` (files, limits, grants) and the door's own;
/// a name may not be one the chain (`taken`) already uses.
// Long on purpose: the door's four keys, each with its default and check, then the plugin keys through validate_plugins.
pub fn validate_door(
    raw: Vec<RawPlugin>,
    plugin_dir: &Path,
    data_dir: &Path,
    nameservers: &[SocketAddr],
    taken: &[PluginSpec],
    cx: &Cx,
) -> Result<Vec<crate::door::DoorSpec>, ConfigError> {
    use crate::door::{DoorListener, OnFailure};
    use finaldot_sdk::wire::DoorStage;
    let mut door = Vec::new();
    let mut plugins = Vec::new();
    for (i, mut rp) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("door[{i}].{k}");
        if taken.iter().any(|p| p.name == rp.name) {
            return Err(cx.invalid(
                &key("name"),
                format!(
                    "{:?} is a [[plugins]] name too: give the door entry a name of its own (metrics and logs tell them apart by it)",
                    rp.name
                ),
            ));
        }
        let stages = match rp.stages.take() {
            None => DoorStage::ALL.to_vec(),
            Some(list) if list.is_empty() => {
                return Err(cx.invalid(&key("stages"), "lists no stage".into()))
            }
            Some(list) => list
                .iter()
                .map(|s| {
                    DoorStage::parse(s).ok_or_else(|| {
                        cx.invalid(
                            &key("stages"),
                            format!("{s:?} is not one of \"connect\", \"helo\", \"mail\", \"rcpt\" (there is no door stage at or after DATA)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let listeners = match rp.listeners.take() {
            None => vec![DoorListener::Mx],
            Some(list) if list.is_empty() => {
                return Err(cx.invalid(&key("listeners"), "lists no listener".into()))
            }
            Some(list) => list
                .iter()
                .map(|l| match l.as_str() {
                    "mx" => Ok(DoorListener::Mx),
                    "submission" => Ok(DoorListener::Submission),
                    other => Err(cx.invalid(
                        &key("listeners"),
                        format!(
                            "{other:?} is not \"mx\" (port 25 and implicit TLS) or \"submission\""
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let authenticated = rp.authenticated.take().unwrap_or(false);
        let on_failure = match rp.on_failure.take().as_deref().unwrap_or("continue") {
            "continue" => OnFailure::Continue,
            "tempfail" => OnFailure::Tempfail,
            other => {
                return Err(cx.invalid(
                    &key("on_failure"),
                    format!(
                        "{other:?} is not \"continue\" (fail open) or \"tempfail\" (451 4.7.1)"
                    ),
                ))
            }
        };
        // A door call is on a client's path: an instance kept between calls
        // saves instantiating and configuring one per command (about
        // 100 µs of CPU per refused connection, docs/PERFORMANCE.md).
        rp.reuse_instance = Some(rp.reuse_instance.unwrap_or(true));
        door.push((stages, listeners, authenticated, on_failure));
        plugins.push(rp);
    }
    let specs = validate_plugins(plugins, "door", plugin_dir, data_dir, nameservers, cx)?;
    Ok(specs
        .into_iter()
        .zip(door)
        .map(
            |(plugin, (stages, listeners, authenticated, on_failure))| crate::door::DoorSpec {
                plugin,
                stages,
                listeners,
                authenticated,
                on_failure,
            },
        )
        .collect())
}

/// `dns = true | false | { timeout_ms, max_lookups }` of one plugin.
fn dns_grant(
    raw: Option<&toml::Value>,
    nameservers: &[SocketAddr],
    key: &str,
    cx: &Cx,
) -> Result<Option<DnsGrant>, ConfigError> {
    let grant = |timeout_ms: i64, max_lookups: i64| DnsGrant {
        nameservers: nameservers.to_vec(),
        timeout: Duration::from_millis(timeout_ms as u64),
        max_lookups: max_lookups as u32,
    };
    match raw {
        None | Some(toml::Value::Boolean(false)) => Ok(None),
        // RFC 7208's ten lookups per check is the model for the budget.
        Some(toml::Value::Boolean(true)) => Ok(Some(grant(2000, 10))),
        Some(toml::Value::Table(t)) => {
            let int = |k: &str, default: i64, range: std::ops::RangeInclusive<i64>| match t.get(k) {
                None => Ok(default),
                Some(toml::Value::Integer(n)) if range.contains(n) => Ok(*n),
                Some(v) => Err(cx.invalid(
                    &format!("{key}.{k}"),
                    format!(
                        "{v} must be a number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )),
            };
            if let Some(other) = t
                .keys()
                .find(|k| !["timeout_ms", "max_lookups"].contains(&k.as_str()))
            {
                return Err(cx.invalid(
                    &format!("{key}.{other}"),
                    "unknown key (timeout_ms, max_lookups)".into(),
                ));
            }
            Ok(Some(grant(
                int("timeout_ms", 2000, 1..=60_000)?,
                int("max_lookups", 10, 0..=1000)?,
            )))
        }
        Some(v) => Err(cx.invalid(
            key,
            format!("{v} must be true, false or {{ timeout_ms = 2000, max_lookups = 10 }}"),
        )),
    }
}

/// A plugin's or a namespace's name (it becomes a directory name and a key
/// prefix): letters, digits, - and _.
fn check_name(name: &str, key: &str, cx: &Cx) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(cx.invalid(key, format!("{name:?} must be letters, digits, - and _")))
    }
}

/// A plugin's `kv = { … }` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    /// `local` (the default) or `redis`.
    backend: Option<String>,
    /// The namespace's name (default: the plugin's): two entries with the
    /// same one share their keys (dedup's claim and confirm entries).
    namespace: Option<String>,
    /// The Redis server (`redis://host:port/db`, `rediss://` for TLS).
    url: Option<String>,
    /// A file holding the Redis password (instead of one in the URL).
    password_file: Option<PathBuf>,
    /// What every key of the namespace starts with (default `finaldot:NAME:`).
    prefix: Option<String>,
    /// The longest wait for Redis, milliseconds (default 1000).
    timeout_ms: Option<u64>,
}

/// `kv = true` or `kv = { backend = "redis", … }` of plugin `name`.
fn kv_grant(
    raw: Option<toml::Value>,
    name: &str,
    data_dir: &Path,
    key: &str,
    cx: &Cx,
) -> Result<Option<KvGrant>, ConfigError> {
    let t: RawKv = match raw {
        None | Some(toml::Value::Boolean(false)) => return Ok(None),
        Some(toml::Value::Boolean(true)) => {
            return Ok(Some(KvGrant::Local(data_dir.join("kv").join(name))))
        }
        Some(v @ toml::Value::Table(_)) => v.try_into().map_err(|e: toml::de::Error| {
            cx.invalid(
                key,
                format!("{} (keys: backend, namespace, url, password_file, prefix, timeout_ms)", e.message()),
            )
        })?,
        Some(v) => {
            return Err(cx.invalid(
                key,
                format!("{v} must be true, false or {{ backend = \"redis\", url = \"redis://127.0.0.1:6379\" }}"),
            ))
        }
    };
    let name = t.namespace.as_deref().unwrap_or(name);
    check_name(name, &format!("{key}.namespace"), cx)?;
    let local = || KvGrant::Local(data_dir.join("kv").join(name));
    let redis_only = [
        ("url", t.url.is_some()),
        ("password_file", t.password_file.is_some()),
        ("prefix", t.prefix.is_some()),
        ("timeout_ms", t.timeout_ms.is_some()),
    ];
    match t.backend.as_deref().unwrap_or("local") {
        "local" => match redis_only.iter().find(|(_, set)| *set) {
            Some((k, _)) => {
                Err(cx.invalid(&format!("{key}.{k}"), "only for backend = \"redis\"".into()))
            }
            None => Ok(Some(local())),
        },
        "redis" => {
            let url = t.url.ok_or_else(|| {
                cx.invalid(
                    &format!("{key}.url"),
                    "backend = \"redis\" needs a url, for example \"redis://127.0.0.1:6379/0\""
                        .into(),
                )
            })?;
            let parsed = url::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some());
            if parsed.is_none() {
                return Err(cx.invalid(
                    &format!("{key}.url"),
                    format!(
                        "{} must be redis://host[:port][/db] or rediss://… for TLS",
                        crate::plugins::kv::redis::redacted(&url)
                    ),
                ));
            }
            let password = match t.password_file {
                None => None,
                Some(f) => {
                    let f = cx.abs(f);
                    let text = std::fs::read_to_string(&f).map_err(|e| {
                        cx.invalid(
                            &format!("{key}.password_file"),
                            format!("{}: {e}", f.display()),
                        )
                    })?;
                    Some(text.trim_end_matches(['\r', '\n']).to_string())
                }
            };
            let timeout_ms = t.timeout_ms.unwrap_or(1000);
            if !(1..=60_000).contains(&timeout_ms) {
                return Err(cx.invalid(
                    &format!("{key}.timeout_ms"),
                    format!("{timeout_ms} must be between 1 and 60000"),
                ));
            }
            Ok(Some(KvGrant::Redis(RedisGrant {
                url,
                password,
                prefix: t.prefix.unwrap_or_else(|| format!("finaldot:{name}:")),
                timeout: Duration::from_millis(timeout_ms),
            })))
        }
        other => Err(cx.invalid(
            &format!("{key}.backend"),
            format!("{other:?} is not a backend (local, redis)"),
        )),
    }
}

/// `http = { allow, timeout_ms, max_response_bytes, ca_file }` of one plugin.
fn http_grant(raw: RawHttpGrant, key: &str, cx: &Cx) -> Result<HttpGrant, ConfigError> {
    if raw.allow.is_empty() {
        return Err(cx.invalid(
            &format!("{key}.allow"),
            "needs at least one URL (for example \"http://127.0.0.1:11333/checkv2\")".into(),
        ));
    }
    for u in &raw.allow {
        let ok = url::Url::parse(u)
            .ok()
            .filter(|p| matches!(p.scheme(), "http" | "https") && p.host_str().is_some());
        if ok.is_none() {
            return Err(cx.invalid(
                &format!("{key}.allow"),
                format!("{u:?} is not an http:// or https:// URL"),
            ));
        }
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(5000);
    if !(1..=600_000).contains(&timeout_ms) {
        return Err(cx.invalid(
            &format!("{key}.timeout_ms"),
            format!("{timeout_ms} must be between 1 and 600000"),
        ));
    }
    Ok(HttpGrant {
        allow: raw.allow,
        timeout: Duration::from_millis(timeout_ms),
        max_response_bytes: raw.max_response_bytes.unwrap_or(1 << 20),
        ca_file: raw.ca_file.map(|p| cx.abs(p)),
    })
}

impl super::Config {
    /// The pipeline's settings, delivering through `delivery` (what the
    /// daemon plugged in). Sets up mail authentication with the shared
    /// resolver of `[dns]`.
    pub fn pipeline_settings(
        &self,
        delivery: std::sync::Arc<dyn crate::delivery::Delivery>,
    ) -> Result<crate::pipeline::Settings, crate::dns::LookupError> {
        use std::sync::Arc;
        let verifier = if self.auth.verify {
            Some(Arc::new(crate::auth::Verifier::new(
                crate::dns::shared(&self.nameservers)?,
                &self.auth.authserv_id,
                self.auth.timeout,
            )))
        } else {
            None
        };
        Ok(crate::pipeline::Settings {
            config: self.pipeline.clone(),
            hostname: self.hostname.clone(),
            local_domains: Arc::new(self.domains.clone()),
            delivery,
            verifier,
            forged_sender: self.auth.forged_sender,
            trusted_networks: Arc::new(self.auth.trusted_networks.clone()),
        })
    }
}
