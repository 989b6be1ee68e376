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
    },
    /// Validate a configuration file without starting (no file: the embedded default).
    CheckConfig {
        /// Configuration file (TOML).
        file: Option<PathBuf>,
    },
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
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
        Command::Run { config, log_format } => {
            init_logging(log_format);
            run(config)
        }
        Command::CheckConfig { file } => check_config(file),
        Command::Plugin(PluginCommand::Check { file }) => plugin_check(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("finaldot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("finaldot-smtp")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = Daemon::start(&config).await?;
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
