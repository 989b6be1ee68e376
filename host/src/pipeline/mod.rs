//! The post-acceptance pipeline: after the 250, it owns each message until it
//! is delivered, bounced, held or deliberately removed.
//!
//! A scheduler thread learns of new mail from the spool's commit hook (and,
//! as the backstop, from a periodic rescan of `incoming/` and of the due part
//! of `deferred/`), interleaves fresh and retried mail, and hands queue ids to
//! a bounded pool of worker threads. Workers run at a lower scheduling
//! priority than the SMTP threads (plugin CPU never delays a 250), claim a
//! message (`incoming|deferred → active`), run the plugin chain in order, and
//! checkpoint the message's [`Progress`] durably after every stage, so a
//! restart resumes at the next unfinished stage and no stage's effect is
//! applied twice. See [`worker`] for the verdict and retry rules.
//!
//! Invariant: every message ends delivered, bounced (a DSN to its sender,
//! never to `<>`), held, or removed by an administrator. A recipient no plugin
//! delivered or failed by the end of the chain fails with `5.1.1`.

pub mod chain;
pub mod delivery;
pub mod dsn;
pub mod worker;

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

pub use chain::{load_chain, SharedChain, Stage};

use crate::config::PipelineConfig;
use crate::spool::{QueueId, Spool};

/// What the pipeline needs besides the chain.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pipeline section of the configuration.
    pub config: PipelineConfig,
    /// The server's name (for DSNs).
    pub hostname: String,
    /// The local domains (lowercase): recipients elsewhere go outbound.
    pub local_domains: Arc<Vec<String>>,
    /// Delivery to the next hop (the configured route, or one a plugin chose).
    pub delivery: Arc<dyn delivery::Delivery>,
    /// Mail authentication of what arrives on the MX listener (`None`: off).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// What happens instead of a DSN to a sender that failed SPF or DMARC.
    pub forged_sender: crate::config::ForgedSender,
    /// Clients whose mail is not verified.
    pub trusted_networks: Arc<Vec<ipnet::IpNet>>,
    /// The DKIM keys that sign what leaves.
    pub signer: Arc<crate::auth::Signer>,
}

impl Settings {
    /// The settings `config` asks for. Sets up outbound delivery (its DNS
    /// resolver and TLS roots) when a route is configured, and mail
    /// authentication with the shared resolver of `[dns]`.
    pub fn of(config: &crate::config::Config) -> Result<Settings, crate::outbound::SetupError> {
        let outbound = crate::outbound::Outbound::new(&config.outbound, &config.hostname)?;
        let verifier = if config.auth.verify {
            Some(Arc::new(crate::auth::Verifier::new(
                crate::dns::shared(&config.nameservers)?,
                &config.auth.authserv_id,
                config.auth.timeout,
            )))
        } else {
            None
        };
        Ok(Settings {
            config: config.pipeline.clone(),
            hostname: config.hostname.clone(),
            local_domains: Arc::new(config.domains.clone()),
            delivery: Arc::new(outbound),
            verifier,
            forged_sender: config.auth.forged_sender,
            trusted_networks: Arc::new(config.auth.trusted_networks.clone()),
            signer: config.dkim.clone(),
        })
    }
}

enum Event {
    Committed(QueueId),
    Done(QueueId),
    Stop,
}

/// A running pipeline.
pub struct Pipeline {
    ctx: Arc<worker::Context>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    events: mpsc::Sender<Event>,
    scheduler: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pipeline {
    /// Starts the scheduler and the workers.
    pub fn start(
        spool: Arc<Spool>,
        chain: SharedChain,
        settings: Settings,
    ) -> std::io::Result<Pipeline> {
        let (events_tx, events_rx) = mpsc::channel::<Event>();
        {
            let tx = Mutex::new(events_tx.clone());
            spool.notify_commits(Box::new(move |id| {
                if let Ok(tx) = tx.lock() {
                    let _ = tx.send(Event::Committed(id.clone()));
                }
            }));
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (work_tx, work_rx) = mpsc::channel::<QueueId>();
        let work_rx = Arc::new(Mutex::new(work_rx));
        let ctx = Arc::new(worker::Context {
            spool: spool.clone(),
            chain,
            settings: std::sync::RwLock::new(settings.clone()),
        });
        let mut workers = Vec::new();
        for n in 0..settings.config.workers {
            let rx = work_rx.clone();
            let ctx = ctx.clone();
            let events = events_tx.clone();
            let nice = settings.config.nice;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pipeline-{n}"))
                    .spawn(move || {
                        lower_priority(nice);
                        loop {
                            let next = match rx.lock() {
                                Ok(rx) => rx.recv(),
                                Err(_) => return,
                            };
                            let Ok(id) = next else { return };
                            worker::process(&ctx, &id);
                            let _ = events.send(Event::Done(id));
                        }
                    })?,
            );
        }
        let scheduler = {
            let stop = stop.clone();
            let cfg = settings.config.clone();
            let nice = settings.config.nice;
            std::thread::Builder::new()
                .name("pipeline-scheduler".into())
                .spawn(move || {
                    // Its rescans list the whole queue (tens of thousands of
                    // files under a backlog): that work yields to SMTP too.
                    lower_priority(nice);
                    schedule(spool, cfg, events_rx, work_tx, stop)
                })?
        };
        Ok(Pipeline {
            ctx,
            stop,
            events: events_tx,
            scheduler: Some(scheduler),
            workers,
        })
    }

    /// Applies new settings (retries, lifetime, faults, warnings) to the next
    /// messages. The number of workers and the rescan interval stay as they
    /// started until a restart.
    pub fn reconfigure(&self, settings: Settings) {
        if let Ok(mut s) = self.ctx.settings.write() {
            *s = settings;
        }
    }

    /// Stops dispatching, lets workers finish the message they hold (each
    /// plugin call is bounded by its time limit), and waits for them.
    pub fn shutdown(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.events.send(Event::Stop);
        if let Some(s) = self.scheduler.take() {
            let _ = s.join();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        info!("pipeline stopped");
    }
}

/// Lowers the calling thread's CPU priority so plugin work yields the CPU to
/// the SMTP threads: Linux's SCHED_IDLE class (the thread runs only when a
/// core is otherwise idle) when `nice` is 19, else the per-thread niceness.
fn lower_priority(nice: i32) {
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on the calling thread (who/pid 0), with a
    // fully initialised parameter struct; no memory is shared.
    let r = unsafe {
        if nice >= 19 {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        } else {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice)
        }
    };
    if r != 0 {
        warn!(nice, "could not lower the pipeline threads' priority");
    }
}

fn schedule(
    spool: Arc<Spool>,
    cfg: PipelineConfig,
    events: mpsc::Receiver<Event>,
    work: mpsc::Sender<QueueId>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut fresh: VecDeque<QueueId> = VecDeque::new();
    let mut retry: VecDeque<QueueId> = VecDeque::new();
    let mut known: HashSet<QueueId> = HashSet::new();
    let mut idle = cfg.workers;
    let mut last_scan: Option<Instant> = None;
    let mut take_fresh = true;
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if last_scan.is_none_or(|t| t.elapsed() >= cfg.rescan) {
            last_scan = Some(Instant::now());
            if let Ok(ids) = spool.list(crate::spool::QueueState::Incoming) {
                // The backlog SMTP paces new mail by, counted afresh.
                spool
                    .flow()
                    .set_pending(ids.len() + spool.count(crate::spool::QueueState::Active));
                for id in ids {
                    if known.insert(id.clone()) {
                        fresh.push_back(id);
                    }
                }
            }
            if let Ok(ids) = spool.due_deferred(crate::unix_now()) {
                for id in ids {
                    if known.insert(id.clone()) {
                        retry.push_back(id);
                    }
                }
            }
        }
        // Interleave new and retried mail so a retry backlog never starves fresh mail.
        while idle > 0 && !(fresh.is_empty() && retry.is_empty()) {
            let next = if take_fresh {
                fresh.pop_front().or_else(|| retry.pop_front())
            } else {
                retry.pop_front().or_else(|| fresh.pop_front())
            };
            take_fresh = !take_fresh;
            if let Some(id) = next {
                if work.send(id).is_err() {
                    return;
                }
                idle -= 1;
            }
        }
        let wait = cfg
            .rescan
            .saturating_sub(last_scan.map(|t| t.elapsed()).unwrap_or_default())
            .max(Duration::from_millis(10));
        match events.recv_timeout(wait) {
            Ok(Event::Committed(id)) => {
                if known.insert(id.clone()) {
                    fresh.push_back(id);
                }
            }
            Ok(Event::Done(id)) => {
                if known.remove(&id) {
                    idle += 1;
                }
            }
            Ok(Event::Stop) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
