//! Group commit for threads that each need "my change is durable": the first
//! one to arrive runs the expensive flush (an fsync, a database commit) for
//! every change submitted so far, and the others wait for that flush instead
//! of paying for one each. While one flush runs, new submissions gather into
//! the next batch, so under load one flush serves many changes and with a
//! single writer nothing waits longer than its own flush.
//!
//! The spool has its own committer thread (it also does the renames); this is
//! for the pipeline's writes: local delivery's directory fsyncs and the
//! plugins' key-value store.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

type Slot<E> = Arc<OnceLock<Result<(), E>>>;

/// Batches changes of type `T` whose flush can fail with `E`.
pub struct GroupCommit<T, E> {
    state: Mutex<State<T, E>>,
    flushed: Condvar,
    /// What the changes of a batch get if its flush panics.
    on_panic: E,
}

struct State<T, E> {
    pending: Vec<(T, Slot<E>)>,
    flushing: bool,
    /// Callers waiting for a flush to end (woken only if there are any).
    waiting: usize,
}

impl<T, E: Clone> GroupCommit<T, E> {
    /// A group commit whose batches get `on_panic` if their flush panics.
    pub fn new(on_panic: E) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                pending: Vec::new(),
                flushing: false,
                waiting: 0,
            }),
            flushed: Condvar::new(),
            on_panic,
        }
    }

    /// Submits `change` and returns once a flush that includes it has
    /// finished, with that flush's result. `flush` is run by whichever caller
    /// leads a batch, with every change of that batch, in submission order.
    pub fn submit(&self, change: T, flush: impl FnOnce(Vec<T>) -> Result<(), E>) -> Result<(), E> {
        let slot: Slot<E> = Arc::default();
        let mut state = self.lock();
        state.pending.push((change, slot.clone()));
        loop {
            if let Some(result) = slot.get() {
                return result.clone();
            }
            if !state.flushing {
                // Not taken by a finished flush (it would have filled the
                // slot) nor by a running one (`flushing`): lead the next
                // batch, which includes this change.
                state.flushing = true;
                let batch = std::mem::take(&mut state.pending);
                drop(state);
                let (changes, slots): (Vec<T>, Vec<Slot<E>>) = batch.into_iter().unzip();
                // Even if the flush panics, its batch gets an answer and the
                // next batch a leader; the panic then goes on to this caller.
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| flush(changes)));
                let result = match &outcome {
                    Ok(r) => r.clone(),
                    Err(_) => Err(self.on_panic.clone()),
                };
                for s in &slots {
                    let _ = s.set(result.clone());
                }
                state = self.lock();
                state.flushing = false;
                if state.waiting > 0 {
                    self.flushed.notify_all();
                }
                drop(state);
                return match outcome {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
            }
            state.waiting += 1;
            state = match self.flushed.wait(state) {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            state.waiting -= 1;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        // The state is a queue and a flag, consistent between statements: a
        // panic elsewhere cannot leave it half-updated.
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }
}

/// Group commit of durable file-system work: flushes fail with an
/// `io::Error`, which every change of the batch receives.
pub type IoGroupCommit<T> = GroupCommit<T, Arc<io::Error>>;

impl<T> IoGroupCommit<T> {
    /// A group commit for I/O; `what` names the flush in the error a batch
    /// gets if its flush panics.
    pub fn io(what: &str) -> Self {
        GroupCommit::new(Arc::new(io::Error::other(format!(
            "{what} failed (panicked)"
        ))))
    }

    /// [`GroupCommit::submit`] for a flush that returns an `io::Error`.
    pub fn submit_io(
        &self,
        change: T,
        flush: impl FnOnce(Vec<T>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.submit(change, |batch| flush(batch).map_err(Arc::new))
            .map_err(|e| unshare(&e))
    }
}

/// An owned copy of an I/O error that a batch shares, keeping the OS error
/// code (a full disk must still read as one).
fn unshare(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn one_writer_flushes_alone_and_sees_its_result() {
        let g: GroupCommit<u32, String> = GroupCommit::new("panicked".into());
        let mut seen = Vec::new();
        g.submit(1, |b| {
            seen.extend(b);
            Ok(())
        })
        .expect("flush");
        assert_eq!(seen, [1]);
        let e = g.submit(2, |_| Err("disk full".to_string()));
        assert_eq!(e, Err("disk full".to_string()));
    }

    #[test]
    fn concurrent_writers_share_flushes_and_every_change_is_flushed_once() {
        let g: Arc<GroupCommit<usize, String>> = Arc::new(GroupCommit::new("panicked".into()));
        let flushes = Arc::new(AtomicUsize::new(0));
        let flushed: Arc<Mutex<Vec<usize>>> = Arc::default();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let (g, flushes, flushed) = (g.clone(), flushes.clone(), flushed.clone());
                std::thread::spawn(move || {
                    for i in 0..50 {
                        g.submit(t * 1000 + i, |batch| {
                            flushes.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(1));
                            flushed.lock().expect("lock").extend(batch);
                            Ok(())
                        })
                        .expect("flush");
                        // Returned, so the change is in a finished flush.
                        assert!(flushed.lock().expect("lock").contains(&(t * 1000 + i)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let mut all = flushed.lock().expect("lock").clone();
        all.sort_unstable();
        let mut want: Vec<usize> = (0..16)
            .flat_map(|t| (0..50).map(move |i| t * 1000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(all, want, "every change flushed exactly once");
        // 800 changes; with 16 writers and a 1 ms flush they must have shared.
        assert!(flushes.load(Ordering::SeqCst) < 800);
    }

    #[test]
    fn a_panicking_flush_answers_its_batch_and_the_next_batch_still_runs() {
        let g: Arc<GroupCommit<usize, String>> = Arc::new(GroupCommit::new("panicked".into()));
        let leader = {
            let g = g.clone();
            std::thread::spawn(move || {
                g.submit(0, |_| {
                    std::thread::sleep(Duration::from_millis(50));
                    panic!("flush bug")
                })
            })
        };
        std::thread::sleep(Duration::from_millis(10));
        // Joins the panicking batch or the next one; either way it returns.
        let follower = g.submit(1, |_| Ok(()));
        assert!(
            leader.join().is_err(),
            "the panic reaches the leader's caller"
        );
        assert!(
            follower == Ok(()) || follower == Err("panicked".into()),
            "{follower:?}"
        );
        assert_eq!(g.submit(2, |_| Ok(())), Ok(()), "not stuck");
    }

    #[test]
    fn a_failed_flush_fails_every_change_in_its_batch_and_the_next_batch_runs() {
        let g: Arc<GroupCommit<usize, String>> = Arc::new(GroupCommit::new("panicked".into()));
        let calls = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (g, calls) = (g.clone(), calls.clone());
                std::thread::spawn(move || {
                    g.submit(t, |batch| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                        if n == 0 {
                            Err(format!("first flush of {} failed", batch.len()))
                        } else {
                            Ok(())
                        }
                    })
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert!(failed >= 1, "the first batch failed: {results:?}");
        // A batch's error names its size: everyone in it got the same one.
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(r, &format!("first flush of {failed} failed"));
        }
    }
}
