//! The post-acceptance pipeline: after the 250, it owns each message until it
//! is delivered, bounced, held or deliberately removed.
//!
//! The spool's commit hook queues each new message for the workers (and, as
//! the backstop, a scheduler thread's periodic rescan of `incoming/` queues
//! what is there and the due part of `deferred/`); a bounded pool of worker
//! threads takes fresh and retried mail alternately. Workers run at a lower scheduling
//! priority than the SMTP threads (plugin CPU never delays a 250), claim a
//! message (`incoming|deferred → active`), run the plugin chain in order, and
//! checkpoint the message's [`Progress`] durably after every stage, so a
//! restart resumes at the next unfinished stage and no stage's effect is
//! applied twice. See [`rules`] for the verdict and retry rules.
//!
//! Invariant: every message ends delivered, bounced (a DSN to its sender,
//! never to `<>`), held, or removed by an administrator. A recipient no plugin
//! delivered or failed by the end of the chain fails with `5.1.1`.

pub mod chain;
pub mod dsn;
mod load;
mod report;
mod rules;
mod settings;
mod settle;
mod stage;
#[cfg(test)]
mod tests;
pub mod worker;

pub use settings::{ForgedSender, PipelineConfig, Settings};

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tracing::{info, warn};

pub use chain::{load_chain, SharedChain, Stage};

use crate::spool::{QueueId, Spool};

/// Queue ids waiting for a worker: fresh mail (from the spool's commit hook)
/// and retries (from the rescans), taken alternately so a retry backlog
/// never starves fresh mail. A worker takes the next id itself; nothing
/// wakes a thread per message unless a worker is idle.
struct Work {
    state: Mutex<WorkState>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct WorkState {
    fresh: VecDeque<QueueId>,
    retry: VecDeque<QueueId>,
    /// Queued or in a worker's hands: never handed out twice.
    known: HashSet<QueueId>,
    take_fresh: bool,
    /// Workers waiting for an id.
    idle: usize,
    stop: bool,
}

impl Work {
    fn new() -> Work {
        Work {
            state: Mutex::new(WorkState::default()),
            ready: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WorkState> {
        // Deques, a set and counters, consistent between statements.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `id` unless it is queued or being processed.
    fn push(&self, id: &QueueId, fresh: bool) {
        let mut s = self.lock();
        if s.stop || !s.known.insert(id.clone()) {
            return;
        }
        if fresh {
            s.fresh.push_back(id.clone());
        } else {
            s.retry.push_back(id.clone());
        }
        if s.idle > 0 {
            self.ready.notify_one();
        }
    }

    /// The next id to process; `None` once stopping.
    fn next(&self) -> Option<QueueId> {
        let mut s = self.lock();
        loop {
            if s.stop {
                return None;
            }
            let take_fresh = s.take_fresh;
            let next = if take_fresh {
                s.fresh.pop_front().or_else(|| s.retry.pop_front())
            } else {
                s.retry.pop_front().or_else(|| s.fresh.pop_front())
            };
            if let Some(id) = next {
                s.take_fresh = !take_fresh;
                return Some(id);
            }
            s.idle += 1;
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle -= 1;
        }
    }

    /// A worker is done with `id` (a later rescan may queue it again).
    fn done(&self, id: &QueueId) {
        self.lock().known.remove(id);
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.ready.notify_all();
    }
}

/// A running pipeline.
pub struct Pipeline {
    ctx: Arc<worker::Context>,
    work: Arc<Work>,
    rescans: mpsc::Sender<()>,
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
        let work = Arc::new(Work::new());
        {
            let work = work.clone();
            spool.notify_commits(Box::new(move |id| work.push(id, true)));
        }
        let ctx = Arc::new(worker::Context {
            spool: spool.clone(),
            chain,
            settings: std::sync::RwLock::new(Arc::new(settings.clone())),
        });
        let mut workers = Vec::new();
        for n in 0..settings.config.workers {
            let ctx = ctx.clone();
            let work = work.clone();
            let nice = settings.config.nice;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("pipeline-{n}"))
                    .spawn(move || {
                        lower_priority(nice);
                        while let Some(id) = work.next() {
                            worker::process(&ctx, &id);
                            work.done(&id);
                        }
                    })?,
            );
        }
        let (rescans, stop_rx) = mpsc::channel::<()>();
        let scheduler = {
            let work = work.clone();
            let cfg = settings.config.clone();
            let nice = settings.config.nice;
            std::thread::Builder::new()
                .name("pipeline-scheduler".into())
                .spawn(move || {
                    // Its rescans list the whole queue (tens of thousands of
                    // files under a backlog): that work yields to SMTP too.
                    lower_priority(nice);
                    rescan_loop(&spool, &cfg, &work, &stop_rx)
                })?
        };
        Ok(Pipeline {
            ctx,
            work,
            rescans,
            scheduler: Some(scheduler),
            workers,
        })
    }

    /// Applies new settings (retries, lifetime, faults, warnings) to the next
    /// messages. The number of workers and the rescan interval stay as they
    /// started until a restart.
    pub fn reconfigure(&self, settings: Settings) {
        if let Ok(mut s) = self.ctx.settings.write() {
            *s = Arc::new(settings);
        }
    }

    /// Stops dispatching, lets workers finish the message they hold (each
    /// plugin call is bounded by its time limit), and waits for them.
    pub fn shutdown(mut self) {
        self.work.stop();
        let _ = self.rescans.send(());
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
    if !crate::lower_thread_priority(nice) {
        warn!(nice, "could not lower the pipeline threads' priority");
    }
}

/// The backstop for wake-ups, every `rescan`: queues what waits in
/// `incoming/` (mail committed while no pipeline ran, or whose wake-up was
/// lost) and the deferred mail that is due, and recounts the backlog SMTP
/// paces new mail by. Returns when `stop` says so (or is dropped).
fn rescan_loop(spool: &Spool, cfg: &PipelineConfig, work: &Work, stop: &mpsc::Receiver<()>) {
    loop {
        if let Ok(ids) = spool.list(crate::spool::QueueState::Incoming) {
            spool
                .flow()
                .set_pending(ids.len() + spool.count(crate::spool::QueueState::Active));
            for id in &ids {
                work.push(id, true);
            }
        }
        if let Ok(ids) = spool.due_deferred(crate::unix_now()) {
            for id in &ids {
                work.push(id, false);
            }
        }
        match stop.recv_timeout(cfg.rescan) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}
