//! `finaldot plugin`: check, create, test and list plugins.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use finaldot::config::Config;

/// `finaldot plugin` subcommands.
#[derive(Subcommand)]
pub(crate) enum PluginCommand {
    /// Create a plugin crate from a template: it builds for
    /// wasm32-unknown-unknown and its test passes with no edits.
    New {
        /// Crate name (letters, digits, -, _).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The finaldot-sdk crate to depend on (default: the one this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Run one plugin on one message (or, with --door, at one door stage),
    /// outside the daemon, with the daemon's limits and capabilities; print
    /// the verdict, the changes, the log lines and the call time.
    Test(TestArgs),
    /// What the running (or last run) daemon has loaded: name, file, version,
    /// ABI, content hash, loaded at, calls, faults.
    List {
        /// Configuration file, to find the data directory (default: the embedded default).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's name, version, ABI and exports, and whether it would load
    /// (exit status 1 if not).
    Check {
        /// The plugin's .wasm file.
        file: PathBuf,
    },
}

/// `finaldot plugin check FILE`: whether the file would load, and what it needs.
pub(crate) fn plugin_check(file: &std::path::Path) -> anyhow::Result<()> {
    use finaldot::plugins::{Runtime, RuntimeOptions};
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 4,
        ..RuntimeOptions::default()
    })?;
    println!("file:     {}", file.display());
    match runtime.load(file) {
        Ok(m) => {
            println!("name:     {}", m.info.name);
            println!("version:  {}", m.info.version);
            println!(
                "abi:      {} (this host supports {})",
                m.info.abi,
                finaldot_sdk::ABI_VERSION
            );
            println!(
                "needs:    {}",
                if m.info.needs.is_empty() {
                    "ABI v1 as first released (built with an SDK older than feature lists)"
                        .to_string()
                } else {
                    m.info.needs.join(", ")
                }
            );
            println!(
                "door:     {}",
                if m.exports.iter().any(|e| e == "finaldot_on_door") {
                    "yes (finaldot_on_door: it can judge at connect, HELO, MAIL and RCPT in [[door]])"
                } else {
                    "no (built without door stages: [[plugins]] only)"
                }
            );
            println!("sha256:   {}", m.hash);
            println!("exports:  {}", m.exports.join(", "));
            println!("imports:  {}", m.imports.join(", "));
            println!("compiled: {:.1} ms", m.compile_time.as_secs_f64() * 1000.0);
            println!("loads:    yes");
            Ok(())
        }
        Err(e) => {
            println!("loads:    no");
            Err(e.into())
        }
    }
}

/// `finaldot plugin list`: what the daemon runs.
pub(crate) fn plugin_list(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    use finaldot::pipeline::chain::{status_path, PluginStatus};
    let config = Config::load(config.as_deref())?;
    let path = status_path(&config.data_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no plugin status at {} (is the daemon running with this config?)",
            path.display()
        )
    })?;
    if json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let list: Vec<PluginStatus> =
        serde_json::from_str(&text).context("reading the plugin status file")?;
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for p in &list {
        println!("{}", p.name);
        match p.source.as_deref() {
            Some("built-in") => {
                println!("  file:      {} (absent: the built-in copy serves)", p.file)
            }
            _ => println!("  file:      {}", p.file),
        }
        match (&p.version, &p.error) {
            (Some(v), _) => {
                println!("  version:   {v} (ABI {})", p.abi.unwrap_or(0));
                println!("  sha256:    {}", p.hash.as_deref().unwrap_or(""));
                println!("  loaded at: {} (unix time)", p.loaded_at.unwrap_or(0));
                println!("  calls:     {}, faults: {}", p.calls, p.faults);
            }
            (None, Some(e)) => println!("  NOT LOADED: {e}"),
            (None, None) => println!("  NOT LOADED"),
        }
    }
    println!(
        "({} plugin(s); status written {age}s ago by the daemon)",
        list.len()
    );
    Ok(())
}

/// `finaldot plugin new NAME`: a plugin crate to start from.
pub(crate) fn plugin_new(
    name: &str,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!(
            "{name:?} is not a crate name: start with a letter; letters, digits, - and _"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        anyhow::bail!("{} already exists", dir.display());
    }
    let sdk = match sdk {
        Some(p) => p,
        None => {
            let built_from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
            if !built_from.join("Cargo.toml").exists() {
                anyhow::bail!(
                    "where is finaldot-sdk? pass --sdk PATH (a checkout's plugin-sdk directory)"
                );
            }
            built_from
        }
    };
    let sdk = sdk
        .canonicalize()
        .with_context(|| format!("finaldot-sdk at {}", sdk.display()))?;
    let crate_name = name.replace('-', "_");
    let type_name: String = name
        .split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{type}}", &type_name)
            .replace(
                "{{sdk}}",
                &format!("{{ path = {:?} }}", sdk.display().to_string()),
            )
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for (path, template) in [
        ("Cargo.toml", include_str!("../templates/plugin_cargo.toml")),
        ("src/lib.rs", include_str!("../templates/plugin_lib.rs")),
        ("README.md", include_str!("../templates/plugin_readme.md")),
    ] {
        std::fs::write(dir.join(path), fill(template))
            .with_context(|| format!("writing {}", dir.join(path).display()))?;
    }
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("created plugin {name} in {}", dir.display());
    println!(
        "next: cd {} && cargo test && cargo build --release --target wasm32-unknown-unknown",
        dir.display()
    );
    Ok(())
}

/// `finaldot plugin test FILE MESSAGE`: one plugin run on one message, printed.
// Long on purpose: `plugin test` end to end (load, configure, build the input, run, print), one step after another.
pub(crate) fn plugin_test(args: TestArgs) -> anyhow::Result<()> {
    use finaldot::plugins::{Plugin, PluginSpec, Runtime, RuntimeOptions};
    let TestArgs {
        file,
        message,
        config,
        name,
        ..
    } = &args;
    let file = file.as_path();
    let spec = match config {
        Some(path) => {
            let cfg = Config::load(Some(path))?;
            let wanted = file.file_name();
            cfg.plugins
                .into_iter()
                .chain(cfg.door.into_iter().map(|d| d.plugin))
                .find(|p| match name {
                    Some(n) => &p.name == n,
                    None => p.file.file_name() == wanted,
                })
                .map(|mut p| {
                    p.file = file.to_path_buf();
                    p
                })
                .with_context(|| {
                    format!(
                        "no [[plugins]] or [[door]] entry for {} in {}",
                        file.display(),
                        path.display()
                    )
                })?
        }
        None => PluginSpec {
            name: name.clone().unwrap_or_else(|| {
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plugin".into())
            }),
            file: file.to_path_buf(),
            config: finaldot_sdk::Value::empty(),
            limits: Default::default(),
            grants: Default::default(),
            reuse_instance: false,
            builtin: None,
        },
    };
    let what = match (&args.door, message) {
        (Some(stage), _) => Input::Door(Box::new(door_input(&args, stage)?)),
        (None, Some(m)) => {
            let raw = std::fs::read(m).with_context(|| format!("reading {}", m.display()))?;
            Input::Message(Box::new(message_input(&raw, &args.from, &args.to)), raw)
        }
        (None, None) => anyhow::bail!("give a message file to run on_message, or --door STAGE"),
    };
    let runtime = Runtime::new(RuntimeOptions {
        max_instances: 4,
        ..RuntimeOptions::default()
    })?;
    // A key-value grant gets a scratch namespace, empty and removed after:
    // the daemon's is locked while it runs, and a test must not record
    // anything there (a test run of dedup would make the real message look
    // like a duplicate).
    let mut spec = spec;
    let scratch = spec.grants.kv.as_ref().map(|_| {
        std::env::temp_dir().join(format!("finaldot-plugin-test-kv-{}", std::process::id()))
    });
    if let Some(s) = &scratch {
        spec.grants.kv = Some(finaldot::plugins::kv::KvGrant::Local(s.clone()));
    }
    let plugin = Plugin::new(&runtime, spec);
    let result = plugin.map_err(anyhow::Error::from).and_then(|plugin| {
        let m = plugin.module();
        println!("plugin:   {} ({})", plugin.spec().name, m.version_label());
        if scratch.is_some() {
            println!("kv:       a scratch namespace (empty), not the daemon's");
        }
        match &what {
            Input::Message(input, raw) => {
                let body_at = raw.len() - input.body_len as usize;
                run_plugin_test(&plugin, input, &raw[body_at..])
            }
            Input::Door(input) => run_door_test(&plugin, input),
        }
    });
    if let Some(s) = scratch {
        let _ = std::fs::remove_dir_all(s);
    }
    result
}

/// What `plugin test` runs the plugin on.
enum Input {
    /// A message (`on_message`) and its raw bytes.
    Message(Box<finaldot_sdk::wire::MessageInput>, Vec<u8>),
    /// A door stage.
    Door(Box<finaldot_sdk::wire::DoorInput>),
}

/// `finaldot plugin test`'s arguments.
#[derive(clap::Args)]
pub(crate) struct TestArgs {
    /// The plugin's .wasm file.
    pub file: PathBuf,
    /// The message (.eml, CRLF or LF line endings); not with --door.
    pub message: Option<PathBuf>,
    /// Take the plugin's settings, limits and grants from this configuration
    /// (the [[plugins]] or [[door]] entry with this file, or --name).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Which [[plugins]] or [[door]] entry of --config to use.
    #[arg(long)]
    pub name: Option<String>,
    /// Envelope sender (MAIL FROM; "" for <>).
    #[arg(long, default_value = "sender@example.test")]
    pub from: String,
    /// Envelope recipients (repeatable; at the door: the one judged).
    #[arg(long, default_value = "alice@localhost")]
    pub to: Vec<String>,
    /// Run this door stage instead of on_message: connect, helo, mail or rcpt.
    #[arg(long)]
    pub door: Option<String>,
    /// At the door: the client's address.
    #[arg(long, default_value = "192.0.2.1")]
    pub client_ip: String,
    /// At the door: the HELO name.
    #[arg(long, default_value = "client.example")]
    pub helo: String,
    /// At the door: the user the client authenticated as.
    #[arg(long)]
    pub user: Option<String>,
}

/// The door input of `--door STAGE` and the facts given: what a stage
/// knows at that point of a session (HELO from `helo` on, MAIL from
/// `mail`, the first `--to` at `rcpt`).
fn door_input(args: &TestArgs, stage: &str) -> anyhow::Result<finaldot_sdk::wire::DoorInput> {
    use finaldot_sdk::wire::{DoorInput, DoorStage, Listener, SessionFacts};
    let stage = DoorStage::parse(stage).with_context(|| {
        format!("--door {stage:?}: one of connect, helo, mail, rcpt (there is no door stage at or after DATA)")
    })?;
    let after = |s: DoorStage| stage >= s;
    Ok(DoorInput {
        abi: finaldot_sdk::ABI_VERSION,
        stage,
        session: SessionFacts {
            client_ip: args.client_ip.clone(),
            client_port: 40000,
            listener: Listener::Smtp,
            helo: if after(DoorStage::Helo) {
                args.helo.clone()
            } else {
                String::new()
            },
            auth: args.user.clone(),
            ..SessionFacts::local(finaldot::unix_now())
        },
        mail_from: after(DoorStage::Mail).then(|| args.from.clone()),
        mail_params: Vec::new(),
        rcpt_to: (stage == DoorStage::Rcpt)
            .then(|| args.to.first().cloned())
            .flatten(),
        rcpt_params: Vec::new(),
        recipients: Vec::new(),
        earlier: Vec::new(),
    })
}

/// The message input of `plugin test` for `raw` from `from` to `to`.
fn message_input(raw: &[u8], from: &str, to: &[String]) -> finaldot_sdk::wire::MessageInput {
    use finaldot_sdk::wire::{parse_headers, EnvelopeState, MessageInput, MessageState, Recipient};
    let (headers, body_at) = parse_headers(raw);
    MessageInput {
        abi: finaldot_sdk::ABI_VERSION,
        queue_id: "PLUGINTEST".into(),
        state: MessageState {
            envelope: EnvelopeState {
                mail_from: from.to_string(),
                recipients: to.iter().map(Recipient::new).collect(),
            },
            headers,
        },
        body_len: (raw.len() - body_at) as u64,
        client_ip: "127.0.0.1".into(),
        helo: "plugin-test".into(),
        received_at: 0,
        session: finaldot_sdk::wire::SessionFacts {
            helo: "plugin-test".into(),
            listener: finaldot_sdk::wire::Listener::Smtp,
            ..finaldot_sdk::wire::SessionFacts::local(0)
        },
        auth: None,
        dsn: None,
    }
}

/// Runs one door stage and prints the verdict, the log lines and the time.
fn run_door_test(
    plugin: &finaldot::plugins::Plugin,
    input: &finaldot_sdk::wire::DoorInput,
) -> anyhow::Result<()> {
    println!("stage:    {}", input.stage.as_str());
    match plugin.call_door(input, "plugin-test", true) {
        Ok(r) => {
            println!("verdict:  {}", r.verdict.describe());
            print_logs_and_time(&r.logs, r.elapsed);
            Ok(())
        }
        Err(e) => {
            println!("fault:    {e}");
            Err(e.into())
        }
    }
}

/// The log lines a test call captured, and its time.
fn print_logs_and_time(logs: &[finaldot::plugins::LogLine], elapsed: std::time::Duration) {
    println!("log:");
    for l in logs {
        println!("  {:?} {}", l.level, l.text);
    }
    println!("time:     {:.1} µs", elapsed.as_secs_f64() * 1e6);
}

fn run_plugin_test(
    plugin: &finaldot::plugins::Plugin,
    input: &finaldot_sdk::wire::MessageInput,
    body: &[u8],
) -> anyhow::Result<()> {
    use finaldot::plugins::Body;
    let result = plugin.call(
        input,
        Body::Bytes(std::sync::Arc::from(body.to_vec())),
        true,
    );
    match result {
        Ok(r) => {
            println!("verdict:  {:?}", r.output.verdict);
            println!("changes:  {}", r.output.changes.len());
            for c in &r.output.changes {
                println!("  {c}");
            }
            let mut state = input.state.clone();
            for c in &r.output.changes {
                state.apply(c);
            }
            println!("recipients after:");
            for rc in &state.envelope.recipients {
                println!("  {} {:?}", rc.address, rc.state);
            }
            print_logs_and_time(&r.logs, r.elapsed);
            Ok(())
        }
        Err(e) => {
            println!("fault:    {e}");
            Err(e.into())
        }
    }
}
