//! The daemon: opens and recovers the spool, binds the listeners, serves until
//! SIGTERM or SIGINT, then shuts down gracefully (exit status 0).

use std::sync::Arc;

use tracing::info;

use crate::config::Config;
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
}

/// A started daemon: spool recovered, listeners bound.
pub struct Daemon {
    server: Server,
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
        let server = Server::bind(config, Arc::new(spool))
            .await
            .map_err(StartError::Listen)?;
        for addr in server.local_addrs() {
            info!(%addr, hostname = %config.hostname, "listening on {addr}");
        }
        Ok(Daemon { server })
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
        info!("stopped");
        Ok(())
    }
}
