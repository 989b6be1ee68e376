//! The `finaldot` command line: `run` the daemon, `check-config` a file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use finaldot::config::Config;
use finaldot::daemon::Daemon;

/// finaldot: a mail server whose 250 comes as soon as the message is on disk.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (with no --config: the embedded default, 127.0.0.1:2525, ./var).
    Run {
        /// Configuration file (TOML); see finaldot.example.toml.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log line format on stderr (the level comes from RUST_LOG, default info).
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Listen here instead of the configuration's smtp.listen (repeatable; IP:PORT).
        #[arg(long)]
        listen: Vec<std::net::SocketAddr>,
        /// Serve metrics and the status page here instead of metrics.listen (IP:PORT).
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file without starting (no file: the embedded default).
    CheckConfig {
        /// Configuration file (TOML).
        file: Option<PathBuf>,
    },
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Inspect and manage the queue (works on a live or a stopped daemon).
    Queue {
        /// Configuration file, to find the data directory (default: the embedded default).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Manage submission users (the [submission] users file; argon2id hashes).
    User {
        /// Configuration file, to find the users file (default: the embedded default).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// DKIM signing keys: make one and the DNS record to publish, check a published one.
    Dkim {
        /// Configuration file: where keys go by default ([data_dir]/dkim), its
        /// [[dkim]] keys and its [dns] servers (default: the embedded default).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: DkimCommand,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Write a new private key and print the TXT record to publish and the
    /// [[dkim]] entry to add to the configuration.
    Keygen {
        /// The signing domain (the From domain of the mail to sign).
        domain: String,
        /// The selector (for example the year: 2026).
        selector: String,
        /// rsa (2048 bits, verified everywhere) or ed25519 (RFC 8463; publish one beside an RSA key).
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
        algorithm: KeyAlgorithm,
        /// Where to write the key (default: [data_dir]/dkim/DOMAIN.SELECTOR.key); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Look up SELECTOR._domainkey.DOMAIN and say whether it publishes the
    /// key's public half (exit status 0 when it does).
    Check {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
        /// The private key (default: the configuration's [[dkim]] entry for DOMAIN and SELECTOR).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Key types for `dkim keygen`.
#[derive(Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    /// RSA-SHA256, 2048 bits.
    Rsa,
    /// Ed25519-SHA256.
    Ed25519,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or set a new password for one; the password is read from
    /// the first line of standard input (`echo 'secret' | finaldot user add alice`).
    Add {
        /// User name (what the client gives to AUTH).
        name: String,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
    },
    /// List the user names.
    List,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every message: id, state, age, sender, open recipients, next attempt, last error.
    List,
    /// One message: envelope, per-recipient state, headers, stages.
    Show {
        /// Queue id.
        id: String,
    },
    /// Attempt a deferred or held message now (or every deferred one with --all).
    Retry {
        /// Queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every deferred message.
        #[arg(long)]
        all: bool,
    },
    /// Put a message on hold.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Release a held message for an immediate attempt.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message on purpose (no DSN).
    Delete {
        /// Queue id.
        id: String,
    },
    /// Fail every open recipient and send the sender a DSN.
    Bounce {
        /// Queue id.
        id: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
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
    /// Run one plugin on one message, outside the daemon, with the daemon's
    /// limits and capabilities; print the verdict, the changes, the log lines
    /// and the call time.
    Test {
        /// The plugin's .wasm file.
        file: PathBuf,
        /// The message (.eml, CRLF or LF line endings).
        message: PathBuf,
        /// Take the plugin's settings, limits and grants from this configuration
        /// (the [[plugins]] entry with this file, or --name).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Which [[plugins]] entry of --config to use.
        #[arg(long)]
        name: Option<String>,
        /// Envelope sender.
        #[arg(long, default_value = "sender@example.test")]
        from: String,
        /// Envelope recipients (repeatable).
        #[arg(long, default_value = "alice@localhost")]
        to: Vec<String>,
    },
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

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            log_format,
            listen,
            metrics_listen,
        } => {
            init_logging(log_format);
            run(config, listen, metrics_listen)
        }
        Command::CheckConfig { file } => check_config(file),
        Command::Plugin(PluginCommand::Check { file }) => plugin_check(&file),
        Command::Plugin(PluginCommand::New { name, dir, sdk }) => plugin_new(&name, dir, sdk),
        Command::Plugin(PluginCommand::Test {
            file,
            message,
            config,
            name,
            from,
            to,
        }) => plugin_test(&file, &message, config, name, &from, &to),
        Command::Plugin(PluginCommand::List { config, json }) => plugin_list(config, json),
        Command::Queue {
            config,
            json,
            command,
        } => queue(config, json, command),
        Command::User { config, command } => user(config, command),
        Command::Dkim { config, command } => dkim(config, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finaldot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Option<PathBuf>,
    listen: Vec<std::net::SocketAddr>,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    let config_path = config;
    let mut config = Config::load(config_path.as_deref())?;
    if !listen.is_empty() {
        config.smtp.listen = listen;
    }
    if metrics_listen.is_some() {
        config.metrics_listen = metrics_listen;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("finaldot-smtp")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(config, config_path).await?;
        daemon.run_until_signal().await?;
        Ok(())
    })
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    println!(
        "config ok: hostname {}, listening on {}, domains {}, data in {}",
        config.hostname,
        config
            .smtp
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        config.domains.join(", "),
        config.data_dir.display()
    );
    Ok(())
}

fn plugin_check(file: &std::path::Path) -> anyhow::Result<()> {
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

fn dkim(config: Option<PathBuf>, command: DkimCommand) -> anyhow::Result<()> {
    use finaldot::auth::keys;
    let config = Config::load(config.as_deref())?;
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            out,
        } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let path = out.unwrap_or_else(|| {
                config
                    .data_dir
                    .join("dkim")
                    .join(format!("{domain}.{selector}.key"))
            });
            let (algorithm, label) = match algorithm {
                KeyAlgorithm::Rsa => (keys::Algorithm::Rsa, "RSA 2048"),
                KeyAlgorithm::Ed25519 => (keys::Algorithm::Ed25519, "Ed25519"),
            };
            let text = keys::keygen(algorithm, &path)?;
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            let name = keys::record_name(&domain, &selector);
            println!(
                "Wrote the {label} private key to {} (mode 0600).",
                path.display()
            );
            println!();
            println!("Publish this TXT record:");
            println!();
            println!("{}", keys::zone_line(&name, &text));
            println!();
            println!("Then add to the configuration and reload:");
            println!();
            println!("[[dkim]]");
            println!("domain = \"{domain}\"");
            println!("selector = \"{selector}\"");
            println!("key_file = \"{}\"", path.display());
            println!();
            println!("and check the record once it is published: finaldot dkim check {domain} {selector}");
            Ok(())
        }
        DkimCommand::Check {
            domain,
            selector,
            key,
        } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let key = match key {
                Some(k) => k,
                None => config
                    .dkim
                    .keys()
                    .iter()
                    .find(|k| k.domain == domain && k.selector == selector)
                    .map(|k| k.path.clone())
                    .with_context(|| {
                        format!("no [[dkim]] entry for {domain} with selector {selector} in the configuration; name the key with --key FILE")
                    })?,
            };
            let dns = finaldot::dns::Dns::new(&config.nameservers)?;
            let name = keys::record_name(&domain, &selector);
            match keys::check(&dns, &domain, &selector, &key)? {
                keys::Check::Matches => {
                    println!("ok: {name} publishes the public key of {}", key.display());
                    Ok(())
                }
                keys::Check::Differs(why) => anyhow::bail!("mismatch: {why}"),
                keys::Check::Missing(why) => anyhow::bail!("not published: {why}"),
            }
        }
    }
}

fn user(config: Option<PathBuf>, command: UserCommand) -> anyhow::Result<()> {
    use finaldot::smtp::users;
    let config = Config::load(config.as_deref())?;
    let file = &config.submission.users_file;
    match command {
        UserCommand::Add { name } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("password for {name} (one line; it is not echoed by a pipe, but is by a terminal):");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let new = users::add(file, &name, password)?;
            println!(
                "{} {name} in {}",
                if new { "added" } else { "new password for" },
                file.display()
            );
        }
        UserCommand::Remove { name } => {
            users::remove(file, &name)?;
            println!("removed {name} from {}", file.display());
        }
        UserCommand::List => {
            for u in users::list(file)? {
                println!("{u}");
            }
        }
    }
    Ok(())
}

fn queue(config: Option<PathBuf>, json: bool, command: QueueCommand) -> anyhow::Result<()> {
    use finaldot::queue as q;
    let config = Config::load(config.as_deref())?;
    let dir = config.spool_dir();
    if !dir.join("incoming").is_dir() {
        anyhow::bail!(
            "no spool at {} (has the daemon ever run with this config?)",
            dir.display()
        );
    }
    let spool = finaldot::spool::Spool::open(&dir)?;
    let done = |what: &str, id: &str| {
        if json {
            println!("{}", serde_json::json!({ "id": id, "done": what }));
        } else {
            println!("{id}: {what}");
        }
    };
    match command {
        QueueCommand::List => {
            let entries = q::list(&spool)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            if entries.is_empty() {
                println!("queue is empty");
                return Ok(());
            }
            print_list(&entries);
        }
        QueueCommand::Show { id } => {
            let d = q::show(&spool, &q::parse_id(&id)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            print_detail(&d);
        }
        QueueCommand::Retry {
            id: Some(id),
            all: false,
        } => {
            q::retry(&spool, &q::parse_id(&id)?)?;
            done("queued for an immediate attempt", &id);
        }
        QueueCommand::Retry { .. } => {
            let n = q::retry_all(&spool)?;
            done(
                &format!("{n} deferred message(s) queued for an immediate attempt"),
                "all",
            );
        }
        QueueCommand::Hold { id } => {
            q::hold(&spool, &q::parse_id(&id)?)?;
            done("held", &id);
        }
        QueueCommand::Release { id } => {
            q::release(&spool, &q::parse_id(&id)?)?;
            done("released", &id);
        }
        QueueCommand::Delete { id } => {
            q::delete(&spool, &q::parse_id(&id)?)?;
            done("deleted", &id);
        }
        QueueCommand::Bounce { id } => {
            q::bounce(&spool, &q::parse_id(&id)?)?;
            done("bounced; the DSN goes out on the next pipeline pass", &id);
        }
    }
    Ok(())
}

/// `queue list` as a table.
fn print_list(entries: &[finaldot::queue::Entry]) {
    println!(
        "{:<22} {:<9} {:>8} {:>9}  {:<30} RECIPIENTS / NEXT ATTEMPT / LAST ERROR",
        "ID", "STATE", "AGE", "SIZE", "SENDER"
    );
    let now = finaldot::unix_now();
    for e in entries {
        println!(
            "{:<22} {:<9} {:>7}s {:>9}  {:<30} {}",
            e.id,
            e.state,
            e.age_secs,
            e.size,
            e.sender,
            e.open_recipients.join(", ")
        );
        if let Some(t) = e.next_attempt {
            println!("{:>24}next attempt in {}s", "", t.saturating_sub(now));
        }
        if let Some(h) = &e.hold_reason {
            println!("{:>24}held: {h}", "");
        }
        if let Some(err) = &e.last_error {
            println!("{:>24}last error: {err}", "");
        }
    }
    println!("{} message(s)", entries.len());
}

/// `queue show` as text.
fn print_detail(d: &finaldot::queue::Details) {
    let e = &d.entry;
    println!("id:        {}", e.id);
    println!("state:     {}", e.state);
    println!(
        "age:       {}s, {} attempt(s), {} bytes",
        e.age_secs, d.attempts, e.size
    );
    println!("sender:    {}", e.sender);
    if let Some(h) = &e.hold_reason {
        println!("held:      {h}");
    }
    if let Some(err) = &e.last_error {
        println!("error:     {err}");
    }
    println!("recipients:");
    for (a, s) in &d.recipient_states {
        println!("  {a}: {s}");
    }
    if !d.dsn.is_empty() {
        println!("dsn:");
        for l in &d.dsn {
            println!("  {l}");
        }
    }
    println!("stages:");
    for s in &d.stages {
        println!("  {} {} [{}]: {}", s.stage, s.plugin, s.version, s.outcome);
    }
    println!("headers:");
    for (n, v) in &d.headers {
        println!("  {n}: {v}");
    }
}

fn plugin_list(config: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
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

fn plugin_new(name: &str, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<()> {
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
        ("Cargo.toml", include_str!("templates/plugin_cargo.toml")),
        ("src/lib.rs", include_str!("templates/plugin_lib.rs")),
        ("README.md", include_str!("templates/plugin_readme.md")),
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

// Long on purpose: `plugin test` end to end (load, configure, build the input, run, print), one step after another.
fn plugin_test(
    file: &std::path::Path,
    message: &std::path::Path,
    config: Option<PathBuf>,
    name: Option<String>,
    from: &str,
    to: &[String],
) -> anyhow::Result<()> {
    use finaldot::plugins::{Plugin, PluginSpec, Runtime, RuntimeOptions};
    use finaldot_sdk::wire::{parse_headers, EnvelopeState, MessageInput, MessageState, Recipient};
    let spec = match &config {
        Some(path) => {
            let cfg = Config::load(Some(path))?;
            let wanted = file.file_name();
            cfg.plugins
                .into_iter()
                .find(|p| match &name {
                    Some(n) => &p.name == n,
                    None => p.file.file_name() == wanted,
                })
                .map(|mut p| {
                    p.file = file.to_path_buf();
                    p
                })
                .with_context(|| {
                    format!(
                        "no [[plugins]] entry for {} in {}",
                        file.display(),
                        path.display()
                    )
                })?
        }
        None => PluginSpec {
            name: name.unwrap_or_else(|| {
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
    let raw = std::fs::read(message).with_context(|| format!("reading {}", message.display()))?;
    let (headers, body_at) = parse_headers(&raw);
    let input = MessageInput {
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
        run_plugin_test(&plugin, &input, &raw[body_at..])
    });
    if let Some(s) = scratch {
        let _ = std::fs::remove_dir_all(s);
    }
    result
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
            println!("log:");
            for l in &r.logs {
                println!("  {:?} {}", l.level, l.text);
            }
            println!("time:     {:.1} µs", r.elapsed.as_secs_f64() * 1e6);
            Ok(())
        }
        Err(e) => {
            println!("fault:    {e}");
            Err(e.into())
        }
    }
}
