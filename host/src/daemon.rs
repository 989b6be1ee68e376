//! The daemon: opens and recovers the spool, binds the listeners, starts the
//! plugin runtime, the pipeline and the plugin-directory watcher, and serves
//! until SIGTERM or SIGINT, then shuts down gracefully (exit status 0).
//!
//! Configuration reload, on SIGHUP or when the config file changes: the new
//! file is validated whole first; an invalid one is refused with the reason
//! and the running configuration stays. A valid one is applied: listeners,
//! SMTP limits and domains (for new connections), the plugin chain (order and
//! per-plugin settings; unchanged plugins keep running as they are) and the
//! pipeline's retry settings. `data_dir`, `pipeline.workers` and
//! `pipeline.plugin_dir` need a restart (a reload that changes them says so).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::Watcher;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::door::DoorChain;
use crate::pipeline::{self, chain, Pipeline, SharedChain};
use crate::plugins::{Runtime, RuntimeOptions};
use crate::smtp::server::{ListenKind, Server};
use crate::spool::{self, Spool};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The spool could not be opened, locked or recovered (its message names the path).
    #[error(transparent)]
    Spool(#[from] spool::Error),
    /// A listener could not be bound.
    #[error("{0}")]
    Listen(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Runtime(#[from] crate::plugins::RuntimeError),
    /// A background thread could not start.
    #[error("starting {0}: {1}")]
    Thread(&'static str, std::io::Error),
    /// Outbound delivery could not be set up.
    #[error(transparent)]
    Outbound(#[from] crate::outbound::SetupError),
}

/// The signals the daemon handles, registered before it announces that it
/// listens (so a SIGHUP right after start is a reload, never the default
/// action, which would end the process).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Signals, StartError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(StartError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(StartError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(StartError::Signals)?,
        })
    }
}

/// A started daemon.
pub struct Daemon {
    signals: Signals,
    config: Config,
    config_path: Option<PathBuf>,
    server: Server,
    runtime: Arc<Runtime>,
    chain: SharedChain,
    door: Arc<DoorChain>,
    pipeline: Pipeline,
    _reloader: chain::Reloader,
    /// Held for the daemon's whole life, so no second daemon claims its mail.
    _spool_lock: spool::SpoolLock,
}

impl Daemon {
    /// Opens the spool, runs recovery, binds the listeners, loads the plugins
    /// and starts the pipeline. `config_path` is what a reload re-reads.
    // Long on purpose: the start-up order, read top to bottom (spool, lock, recovery, listeners, plugins, pipeline, watcher).
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Daemon, StartError> {
        let signals = Signals::register()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let spool_dir = config.spool_dir();
        let (spool, spool_lock) = tokio::task::block_in_place(|| {
            let spool = Spool::open(&spool_dir)?;
            // Before recovery: a daemon killed a moment ago may still hold it.
            let lock = spool.lock(crate::BIND_RETRY_FOR)?;
            let report = spool.recover()?;
            info!(
                spool = %spool_dir.display(),
                tmp_removed = report.tmp_removed,
                active_returned = report.active_returned,
                corrupt = report.corrupt,
                queued = report.queued,
                "spool recovered"
            );
            Ok::<_, spool::Error>((spool, lock))
        })?;
        let spool = Arc::new(spool);
        // Listeners first: a port that is taken fails the start before any
        // plugin loads. The door knows what its plugins judge before they
        // load; until then their calls get their failure policy.
        let door = Arc::new(DoorChain::new(&config.door));
        let server = Server::bind(
            &config.smtp,
            &config.submission,
            config.session_config(),
            spool.clone(),
            door.clone(),
        )
        .await
        .map_err(StartError::Listen)?;
        if let Some(addr) = config.metrics_listen {
            crate::metrics::serve(addr, spool.clone(), chain::status_path(&config.data_dir))
                .await
                .map_err(StartError::Listen)?;
        }
        if config.plugins.is_empty() && config.lmtp.is_none() {
            warn!("no plugins and no [lmtp] configured: accepted mail stays in the queue (see [[plugins]] and [lmtp] in finaldot.example.toml)");
        }
        let runtime = Arc::new(Runtime::new(RuntimeOptions {
            cache_dir: Some(config.data_dir.join("cache")),
            max_instances: (64 + config.pipeline.workers * 4 + config.plugins.len().max(8) * 16)
                as u32,
            max_memory: 1 << 30,
            max_running: config.pipeline.max_running_plugins,
        })?);
        tokio::task::block_in_place(|| door.load(&runtime));
        let stages =
            tokio::task::block_in_place(|| pipeline::load_chain(&runtime, &config.plugins));
        let chain: SharedChain = Arc::new(RwLock::new(Arc::new(stages)));
        let pipeline = Pipeline::start(spool, chain.clone(), pipeline_settings(&config)?)
            .map_err(|e| StartError::Thread("the pipeline", e))?;
        let door_stages: chain::StageList = {
            let door = door.clone();
            Box::new(move || door.stages())
        };
        let reloader = chain::Reloader::start(
            runtime.clone(),
            vec![chain::chain_stages(&chain), door_stages],
            config.pipeline.plugin_dir.clone(),
            config.pipeline.rescan,
            chain::status_path(&config.data_dir),
        )
        .map_err(|e| StartError::Thread("the plugin watcher", e))?;
        for addr in server.local_addrs() {
            info!(%addr, hostname = %config.hostname, "listening on {addr}");
        }
        for addr in server.bound(ListenKind::ImplicitTls) {
            info!(%addr, hostname = %config.hostname, "listening (implicit TLS) at {addr}");
        }
        for addr in server.bound(ListenKind::Submission) {
            info!(%addr, hostname = %config.hostname, "listening (submission) at {addr}");
        }
        Ok(Daemon {
            signals,
            config,
            config_path,
            server,
            runtime,
            chain,
            door,
            pipeline,
            _reloader: reloader,
            _spool_lock: spool_lock,
        })
    }

    /// The bound SMTP addresses.
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.server.local_addrs()
    }

    /// Re-reads the configuration file and applies it, or refuses it whole.
    pub async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            info!("running on the embedded default configuration: nothing to reload");
            return;
        };
        let new = match Config::load(Some(&path)) {
            Ok(c) => c,
            Err(e) => {
                refused(&e);
                return;
            }
        };
        let old = &self.config;
        if new.data_dir != old.data_dir {
            error!(
                "configuration reload refused: data_dir changed ({} -> {}); that needs a restart. Keeping the running configuration",
                old.data_dir.display(),
                new.data_dir.display()
            );
            return;
        }
        for (what, changed) in [
            (
                "pipeline.workers",
                new.pipeline.workers != old.pipeline.workers,
            ),
            (
                "pipeline.plugin_dir",
                new.pipeline.plugin_dir != old.pipeline.plugin_dir,
            ),
        ] {
            if changed {
                warn!("{what} changed: it takes effect at the next restart");
            }
        }
        // The door first: the listeners' settings say what it judges.
        let door = self.door.clone();
        let runtime = self.runtime.clone();
        tokio::task::block_in_place(|| door.replace(&runtime, &new.door));
        for problem in self
            .server
            .reconfigure(&new.smtp, &new.submission, new.session_config())
            .await
        {
            error!("configuration reload: {problem}");
        }
        // The chain: plugins whose settings did not change keep running as they are.
        let current = chain::snapshot(&self.chain);
        let runtime = self.runtime.clone();
        let stages: Vec<Arc<pipeline::Stage>> = tokio::task::block_in_place(|| {
            new.plugins
                .iter()
                .map(|spec| {
                    current
                        .iter()
                        .find(|s| s.spec == *spec)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(pipeline::Stage::load(&runtime, spec.clone())))
                })
                .collect()
        });
        if let Ok(mut c) = self.chain.write() {
            *c = Arc::new(stages);
        }
        match pipeline_settings(&new) {
            Ok(settings) => self.pipeline.reconfigure(settings),
            Err(e) => {
                warn!(error = %e, "outbound delivery could not be set up; keeping the previous pipeline settings");
            }
        }
        let names: Vec<&str> = new.plugins.iter().map(|p| p.name.as_str()).collect();
        let door: Vec<&str> = new.door.iter().map(|d| d.plugin.name.as_str()).collect();
        info!(file = %path.display(), chain = %names.join(" -> "), door = %door.join(" -> "), "configuration reloaded");
        self.config = new;
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP and on changes of
    /// the config file, then shuts down gracefully.
    pub async fn run_until_signal(mut self) -> Result<(), StartError> {
        let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
        let _watcher = self
            .config_path
            .as_ref()
            .and_then(|path| watch_config(path, changed_tx));
        loop {
            tokio::select! {
                _ = self.signals.term.recv() => { info!("SIGTERM received"); break; }
                _ = self.signals.int.recv() => { info!("SIGINT received"); break; }
                _ = self.signals.hup.recv() => { info!("SIGHUP received: reloading the configuration"); self.reload().await; }
                Some(()) = changed.recv() => {
                    // Editors write in several steps: let them finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while changed.try_recv().is_ok() {}
                    info!("configuration file changed: reloading");
                    self.reload().await;
                }
            }
        }
        self.server.shutdown().await;
        let Daemon { pipeline, .. } = self;
        tokio::task::block_in_place(|| pipeline.shutdown());
        info!("stopped");
        Ok(())
    }
}

fn refused(e: &ConfigError) {
    error!("configuration reload refused: {e}; keeping the running configuration");
}

/// Watches the config file's directory for changes to that file.
fn watch_config(
    path: &std::path::Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    let file = path.file_name()?.to_os_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let ours = ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(file.as_os_str()));
            let writes = matches!(
                ev.kind,
                notify::EventKind::Modify(_)
                    | notify::EventKind::Create(_)
                    | notify::EventKind::Access(notify::event::AccessKind::Close(
                        notify::event::AccessMode::Write
                    ))
            );
            if ours && writes {
                let _ = tx.send(());
            }
        }
    })
    .ok()?;
    match w.watch(dir, notify::RecursiveMode::NonRecursive) {
        Ok(()) => Some(w),
        Err(e) => {
            warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    }
}

/// The pipeline's settings for `config`, with the delivery the daemon plugs
/// in: outbound SMTP (smarthost or MX, signing with `[[dkim]]`) and LMTP.
fn pipeline_settings(config: &Config) -> Result<pipeline::Settings, crate::outbound::SetupError> {
    let outbound = crate::outbound::Outbound::new(
        &config.outbound,
        config.lmtp.as_ref(),
        &config.hostname,
        config.dkim.clone(),
    )?;
    Ok(config.pipeline_settings(Arc::new(outbound))?)
}
