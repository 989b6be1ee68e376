//! The AUTH gate: every password check of every submission session runs
//! here, on a few dedicated threads (about one per two cores, at a lower
//! priority than the SMTP runtime), each with one argon2 working memory it
//! reuses. A flood of AUTH commands therefore costs at most those threads'
//! CPU and memory: the port-25 replies keep their latency, and memory stays
//! flat however many clients try at once.
//!
//! A check waits in a short queue; when the queue is full, or a check has
//! waited longer than [`MAX_WAIT`], the client gets `454 4.7.0` (RFC 4954
//! §6: temporary authentication failure) and may try again.
//!
//! SECURITY: user names and passwords are the client's; they are handed to
//! [`users::verify_with`], which costs the same for an unknown user as for
//! a wrong password, and are never logged here.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::smtp::users;

/// How long a check may wait for a free checking thread.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(5);

/// Checks that may wait for a thread; more get 454 at once.
const QUEUE: usize = 64;

/// The niceness of the checking threads: below the SMTP runtime, above
/// the pipeline.
const NICE: i32 = 10;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The password is the user's.
    Valid,
    /// Unknown user or wrong password (the two are not told apart).
    Invalid,
    /// No thread was free in time: `454`, try again later.
    Busy,
    /// The users file could not be read (logged): refused.
    Unavailable,
}

struct Job {
    file: PathBuf,
    user: String,
    password: String,
    queued: Instant,
    answer: oneshot::Sender<Outcome>,
}

/// The checking threads and their queue.
pub(super) struct AuthGate {
    jobs: mpsc::SyncSender<Job>,
}

impl AuthGate {
    /// Starts `threads` checking threads.
    pub(super) fn start(threads: usize) -> std::io::Result<AuthGate> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("auth-{n}"))
                .spawn(move || {
                    if !crate::lower_thread_priority(NICE) {
                        warn!("could not lower the AUTH threads' priority");
                    }
                    let mut scratch = users::Scratch::default();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        run(job, &mut scratch);
                    }
                })?;
        }
        Ok(AuthGate { jobs })
    }

    /// The number of checking threads for this machine: one per two cores, at least one.
    pub(super) fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    }

    /// Checks `user`'s `password` against `file`.
    pub(super) async fn check(&self, file: PathBuf, user: String, password: String) -> Outcome {
        let (answer, rx) = oneshot::channel();
        let job = Job {
            file,
            user,
            password,
            queued: Instant::now(),
            answer,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => return Outcome::Busy,
            Err(mpsc::TrySendError::Disconnected(_)) => return Outcome::Unavailable,
        }
        rx.await.unwrap_or(Outcome::Unavailable)
    }
}

fn run(job: Job, scratch: &mut users::Scratch) {
    if job.answer.is_closed() {
        return; // the client left while it waited
    }
    if job.queued.elapsed() > MAX_WAIT {
        let _ = job.answer.send(Outcome::Busy);
        return;
    }
    let outcome = match users::verify_with(&job.file, &job.user, &job.password, scratch) {
        Ok(true) => Outcome::Valid,
        Ok(false) => Outcome::Invalid,
        Err(e) => {
            error!(error = %e, "cannot read the users file");
            Outcome::Unavailable
        }
    };
    let _ = job.answer.send(outcome);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_answer_and_a_full_queue_is_busy_not_unbounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("users");
        users::add(&file, "alice", "pw").expect("add");
        let gate = std::sync::Arc::new(AuthGate::start(1).expect("start"));
        let check = |u: &str, p: &str| gate.check(file.clone(), u.into(), p.into());
        assert_eq!(check("alice", "pw").await, Outcome::Valid);
        assert_eq!(check("alice", "no").await, Outcome::Invalid);
        assert_eq!(check("mallory", "pw").await, Outcome::Invalid);
        // Far more than the queue at once: the excess is told to come back.
        let many: Vec<_> = (0..QUEUE * 2)
            .map(|_| {
                let gate = gate.clone();
                let file = file.clone();
                tokio::spawn(async move { gate.check(file, "alice".into(), "no".into()).await })
            })
            .collect();
        let mut busy = 0;
        for h in many {
            match h.await.expect("join") {
                Outcome::Busy => busy += 1,
                o => assert_eq!(o, Outcome::Invalid),
            }
        }
        assert!(busy >= QUEUE / 2, "{busy} of {} were busy", QUEUE * 2);
    }
}
