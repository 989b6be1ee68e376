//! How far behind the pipeline is, as the spool sees it: how many messages
//! wait in `incoming/` or are in a pipeline run in `active/`, and how fast
//! runs finish them. The SMTP front end reads it to pace new messages
//! before their 354 when the queue holds more delivery work than it should
//! (Postfix's `in_flow_delay`, measured in seconds of work rather than in
//! messages); nothing here ever delays a 250.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long finishing rates are remembered.
const WINDOW: Duration = Duration::from_secs(30);
/// The shortest span a rate is measured over.
const SPAN: Duration = Duration::from_secs(1);
/// The least time between two samples.
const EVERY: Duration = Duration::from_millis(100);

/// The spool's backlog and the pipeline's finishing rate.
#[derive(Debug, Default)]
pub struct Flow {
    pending: AtomicI64,
    finished: AtomicU64,
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl Flow {
    /// A message entered `incoming/` or `active/` (committed, requeued, or
    /// claimed from `deferred/`).
    pub(crate) fn added(&self) {
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// A message left `incoming/` and `active/`; `finished` when a pipeline
    /// run completed it (rather than deferring, holding or deleting it).
    pub(crate) fn removed(&self, finished: bool) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
        if finished {
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Replaces the count with one made by listing the directories (which
    /// corrects any drift, such as files moved by another process).
    pub(crate) fn set_pending(&self, n: usize) {
        self.pending
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Messages waiting for or in a pipeline run.
    pub fn pending(&self) -> usize {
        usize::try_from(self.pending.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Messages the pipeline has completed since the spool was opened.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// The fastest the pipeline finished messages over any second of the
    /// last 30 (messages per second), `None` before a second has been
    /// seen. The best rate rather than the latest: while SMTP is busy, the
    /// pipeline (which yields the CPU to it) finishes fewer than it can.
    pub fn capacity(&self) -> Option<f64> {
        let now = Instant::now();
        let done = self.finished();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= EVERY)
        {
            samples.push_back((now, done));
        }
        while samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            samples.pop_front();
        }
        let mut best: Option<f64> = None;
        let mut from = 0;
        for (i, &(t, n)) in samples.iter().enumerate() {
            // The latest earlier sample at least SPAN before this one.
            while from + 1 < i && t.duration_since(samples[from + 1].0) >= SPAN {
                from += 1;
            }
            let (t0, n0) = samples[from];
            let span = t.duration_since(t0);
            if from < i && span >= SPAN {
                let rate = n.saturating_sub(n0) as f64 / span.as_secs_f64();
                best = Some(best.map_or(rate, |b: f64| b.max(rate)));
            }
        }
        best
    }

    /// Seconds of delivery work the backlog holds at the pipeline's
    /// best recent rate (`None` before that rate is known).
    pub fn backlog_secs(&self) -> Option<f64> {
        let rate = self.capacity()?;
        Some(self.pending() as f64 / rate.max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_counts_what_came_and_went() {
        let f = Flow::default();
        f.added();
        f.added();
        f.removed(true);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.finished(), 1);
        f.removed(false);
        f.removed(false);
        assert_eq!(f.pending(), 0, "never below zero");
        f.set_pending(7);
        assert_eq!(f.pending(), 7);
    }

    #[test]
    fn capacity_is_the_best_rate_over_a_second() {
        let f = Flow::default();
        assert_eq!(f.capacity(), None);
        let start = Instant::now();
        {
            let mut s = f.samples.lock().unwrap();
            s.clear();
            // 100/s for two seconds, then 10/s.
            s.push_back((start - Duration::from_secs(4), 0));
            s.push_back((start - Duration::from_secs(3), 100));
            s.push_back((start - Duration::from_secs(2), 200));
            s.push_back((start - Duration::from_secs(1), 210));
        }
        f.finished.store(220, Ordering::Relaxed);
        let c = f.capacity().unwrap();
        assert!((c - 100.0).abs() < 1.0, "{c}");
        f.set_pending(500);
        let secs = f.backlog_secs().unwrap();
        assert!((secs - 5.0).abs() < 0.1, "{secs}");
    }
}
