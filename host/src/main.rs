//! The `finaldot` command line: `run` the daemon, `check-config` a file;
//! the other command groups (`plugin`, `queue`, `user`, `dkim`) live in
//! `cli/`, one file each.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use finaldot::config::Config;
use finaldot::daemon::Daemon;

use cli::dkim::{dkim, DkimCommand};
use cli::plugin::{plugin_check, plugin_list, plugin_new, plugin_test, PluginCommand};
use cli::queue::{queue, QueueCommand};
use cli::user::{user, UserCommand};

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
        Command::Plugin(PluginCommand::Test(args)) => plugin_test(args),
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
