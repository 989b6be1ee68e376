//! The daemon: opens and recovers the spool, binds the listeners, serves until
//! SIGTERM or SIGINT, then shuts down gracefully (exit status 0).

use std::sync::Arc;

use tracing::info;

use crate::config::Config;
use crate::pipeline::{self, Pipeline};
use crate::plugins::{Runtime, RuntimeOptions};
use crate::smtp::server::Server;
use crate::spool::{self, Spool};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool could not be opened or recovered.
    #[error("spool: {0}")]
    Spool(#[from] spool::Error),
    /// A listener could not be bound.
    #[error("{0}")]
    Listen(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The plugin runtime could not start.
    #[error("{0}")]
    Runtime(#[from] crate::plugins::RuntimeError),
    /// The pipeline threads could not start.
    #[error("starting the pipeline: {0}")]
    Pipeline(std::io::Error),
}

/// A started daemon: spool recovered, listeners bound.
pub struct Daemon {
    server: Server,
    pipeline: Option<Pipeline>,
    _runtime: Option<Runtime>,
}

impl Daemon {
    /// Opens the spool, runs recovery and binds the listeners.
    pub async fn start(config: &Config) -> Result<Daemon, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let spool_dir = config.spool_dir();
        let spool = tokio::task::block_in_place(|| {
            let spool = Spool::open(&spool_dir)?;
            let report = spool.recover()?;
            info!(
                spool = %spool_dir.display(),
                tmp_removed = report.tmp_removed,
                active_returned = report.active_returned,
                corrupt = report.corrupt,
                queued = report.queued,
                "spool recovered"
            );
            Ok::<_, spool::Error>(spool)
        })?;
        let spool = Arc::new(spool);
        // Listeners first: a port that is taken fails the start before any plugin loads.
        let server = Server::bind(config, spool.clone())
            .await
            .map_err(StartError::Listen)?;
        let (pipeline, runtime) = if config.plugins.is_empty() {
            tracing::warn!("no plugins configured: accepted mail stays in the queue (see [[plugins]] in finaldot.example.toml)");
            (None, None)
        } else {
            let runtime = Runtime::new(RuntimeOptions {
                cache_dir: Some(config.data_dir.join("cache")),
                max_instances: (64 + config.pipeline.workers * 4 + config.plugins.len() * 16)
                    as u32,
                max_memory: config
                    .plugins
                    .iter()
                    .map(|p| p.limits.memory)
                    .max()
                    .unwrap_or(1 << 26),
            })?;
            let chain =
                tokio::task::block_in_place(|| pipeline::load_chain(&runtime, &config.plugins));
            let p = Pipeline::start(
                spool,
                chain,
                pipeline::Settings {
                    config: config.pipeline.clone(),
                    hostname: config.hostname.clone(),
                },
            )
            .map_err(StartError::Pipeline)?;
            (Some(p), Some(runtime))
        };
        for addr in server.local_addrs() {
            info!(%addr, hostname = %config.hostname, "listening on {addr}");
        }
        Ok(Daemon {
            server,
            pipeline,
            _runtime: runtime,
        })
    }

    /// The bound SMTP addresses.
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.server.local_addrs()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
        self.server
            .run(async move {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            })
            .await;
        if let Some(p) = self.pipeline {
            tokio::task::block_in_place(|| p.shutdown());
        }
        info!("stopped");
        Ok(())
    }
}
