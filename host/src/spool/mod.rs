//! The spool: where an accepted message lives until the pipeline finishes it.
//!
//! It owns the queue directories (`tmp/`, `incoming/`, `active/`, `deferred/`,
//! `hold/`, `corrupt/`, Postfix's vocabulary) and the one guarantee the whole
//! product rests on: **a message is durable before its 250**. [`Spool::begin`]
//! creates a file in `tmp/`, [`SpoolWriter::write`] streams the message into it,
//! [`SpoolWriter::finish`] writes the end marker and fsyncs the file, and
//! [`Spool::commit`] renames it into `incoming/` and fsyncs that directory. Only
//! after `commit` returns may the SMTP side say 250.
//!
//! Group commit: renames and the directory fsync are done by one committer
//! thread, which takes every commit that arrived while it was busy and covers
//! them all with a single directory fsync. File fsyncs run in parallel on the
//! callers' blocking threads, where the filesystem merges them into shared
//! journal commits.
//!
//! Recycling: a finished message's file is not unlinked but renamed back into
//! `tmp/` (up to [`RECYCLE_MAX_FILES`] small files and [`RECYCLE_POOL_BYTES`]
//! in all) and overwritten by a later message. Creating and deleting an inode
//! per message is the costliest part of a spool commit on ext4 (the inode
//! allocator scans past every recently freed inode under the directory
//! lock, for every file created on that file system in the next 30 s,
//! Maildir deliveries included); a rename is not. The pool is big enough
//! that a drained backlog's files wait for the next burst instead of being
//! deleted, and recovery keeps it: a recycled file (`tmp/free.*`) is taken
//! back into the pool, everything else in `tmp/` is removed.
//!
//! Invariants: a file outside `tmp/` is complete (its end marker matches its
//! length); nothing unreadable is ever deleted (recovery moves it to `corrupt/`);
//! a queue id is unique among live files because it embeds the file's inode.

mod commit;
mod flow;
mod progress;
mod queue_file;

use commit::{committer, CommitRequest, Pool};
pub use commit::{Prepared, SpoolWriter};
pub use flow::Flow;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{SystemTime, UNIX_EPOCH};

/// Header bytes read at most when a message is first parsed.
const MAX_HEADER_BYTES: u64 = 1024 * 1024;

pub use progress::{Progress, StageRecord};
pub use queue_file::{read_header, read_message, Envelope, FormatError, QueueFile};

/// Called with each queue id once it is durable in `incoming/`.
pub type CommitHook = Box<dyn Fn(&QueueId) + Send + Sync>;

/// The directory (beside the queue directories) that holds progress records.
pub const PROGRESS_DIR: &str = "state";

/// At most this many finished files wait in `tmp/` to be reused.
pub const RECYCLE_MAX_FILES: usize = 16 * 1024;

/// Only files up to this size are recycled.
pub const RECYCLE_MAX_BYTES: u64 = 128 * 1024;

/// The recycled files' sizes add up to at most this much disk.
pub const RECYCLE_POOL_BYTES: u64 = 64 * 1024 * 1024;

/// A message's queue id: uppercase hex of its creation time and inode number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    /// The id as text (also the file name in every queue directory).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts a queue id given by an administrator or read from a directory.
    pub fn parse(s: &str) -> Option<QueueId> {
        let ok = !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| QueueId(s.to_ascii_uppercase()))
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The queue states, each a directory of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Being written; never a complete message.
    Tmp,
    /// Accepted and durable, waiting for the pipeline.
    Incoming,
    /// Claimed by a pipeline worker.
    Active,
    /// Waiting for its next attempt.
    Deferred,
    /// Held for an administrator.
    Hold,
    /// Unreadable; kept for an administrator, never deleted.
    Corrupt,
}

impl QueueState {
    /// Every state, in directory-creation order.
    pub const ALL: [QueueState; 6] = [
        QueueState::Tmp,
        QueueState::Incoming,
        QueueState::Active,
        QueueState::Deferred,
        QueueState::Hold,
        QueueState::Corrupt,
    ];

    /// The directory name of this state.
    pub fn dir_name(self) -> &'static str {
        match self {
            QueueState::Tmp => "tmp",
            QueueState::Incoming => "incoming",
            QueueState::Active => "active",
            QueueState::Deferred => "deferred",
            QueueState::Hold => "hold",
            QueueState::Corrupt => "corrupt",
        }
    }

    /// Whether a message here counts in the backlog ([`Flow::pending`]):
    /// waiting for its pipeline run or in one.
    fn in_flow(self) -> bool {
        matches!(self, QueueState::Incoming | QueueState::Active)
    }
}

/// A spool failure. [`Error::is_storage_full`] tells the SMTP side whether to
/// answer 452 (out of space) or 451 (other local error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The envelope could not be encoded.
    #[error("encoding envelope: {0}")]
    Encode(#[from] postcard::Error),
    /// The committer thread is gone (the daemon is shutting down).
    #[error("spool committer has stopped")]
    CommitterGone,
    /// A queue file did not validate (torn, bad magic, unknown version).
    #[error("queue file {path}: {source}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// Another daemon holds the spool's lock.
    #[error("another finaldot is running on this spool ({path} is locked{holder})")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// `, held by process PID` when the lock file says so.
        holder: String,
    },
}

/// The daemon's hold on a spool, from [`Spool::lock`]; released when dropped
/// or when the process dies.
#[derive(Debug)]
pub struct SpoolLock {
    _file: fs::File,
}

impl Error {
    /// `op` on `path` failed with `source`.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the cause is lack of space (ENOSPC, EDQUOT, EFBIG).
    pub fn is_storage_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
            ),
            _ => false,
        }
    }
}

/// What [`Spool::recover`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Half-written files removed from `tmp/` (recycled files are kept for
    /// reuse, or removed beyond the pool's bounds, uncounted).
    pub tmp_removed: usize,
    /// Files returned from `active/` to `incoming/`.
    pub active_returned: usize,
    /// Unreadable files moved to `corrupt/`.
    pub corrupt: usize,
    /// Valid messages now waiting in `incoming/` and `deferred/`.
    pub queued: usize,
}

/// The spool of one daemon.
pub struct Spool {
    root: PathBuf,
    committer: mpsc::Sender<CommitRequest>,
    notify: Arc<std::sync::OnceLock<CommitHook>>,
    fault: Arc<AtomicI32>,
    tmp_counter: AtomicU64,
    /// This process's part of every name it makes in `tmp/` (its pid and
    /// start time): recycled files outlive a process, so names must not
    /// repeat across processes, even under a reused pid.
    tmp_prefix: String,
    recycled: std::sync::Mutex<Pool>,
    flow: Arc<Flow>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").field("root", &self.root).finish()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool under `root` and starts its committer thread.
    pub fn open(root: &Path) -> Result<Spool, Error> {
        for state in QueueState::ALL {
            let dir = root.join(state.dir_name());
            fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        }
        let progress = root.join(PROGRESS_DIR);
        fs::create_dir_all(&progress).map_err(|e| Error::io("creating", &progress, e))?;
        sync_dir(root)?;
        let (tx, rx) = mpsc::channel::<CommitRequest>();
        let incoming = root.join(QueueState::Incoming.dir_name());
        let notify: Arc<std::sync::OnceLock<CommitHook>> = Arc::default();
        let flow = Arc::new(Flow::default());
        {
            let notify = notify.clone();
            let flow = flow.clone();
            std::thread::Builder::new()
                .name("spool-commit".into())
                .spawn(move || committer(rx, incoming, notify, flow))
                .map_err(|e| Error::io("starting committer for", root, e))?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
            committer: tx,
            notify,
            fault: Arc::new(AtomicI32::new(0)),
            tmp_counter: AtomicU64::new(0),
            tmp_prefix: format!(
                "{}.{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ),
            recycled: std::sync::Mutex::new(Pool::default()),
            flow,
        };
        Ok(spool)
    }

    /// The backlog and the pipeline's finishing rate (for pacing new mail).
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// Counts the messages in `incoming/` and `active/` by listing them
    /// (recovery does; the pipeline's rescans set the count from their own
    /// listing), so the backlog stays right whoever moved files.
    fn recount_pending(&self) {
        self.flow
            .set_pending(self.count(QueueState::Incoming) + self.count(QueueState::Active));
    }

    /// Takes the daemon's exclusive lock on the spool (`spool/lock`), so two
    /// daemons never claim the same messages. The kernel releases it when the
    /// holder dies, even by `kill -9`; a start right after one waits up to
    /// `wait` for the old process to be gone (logging each retry), then fails
    /// with [`Error::Locked`].
    pub fn lock(&self, wait: std::time::Duration) -> Result<SpoolLock, Error> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => {
                    // Who holds it, for the next one that tries (best effort).
                    let mut f = &file;
                    let _ = f
                        .set_len(0)
                        .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()));
                    return Ok(SpoolLock { _file: file });
                }
                Err(fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                    tracing::warn!(lock = %path.display(), "spool locked by another process; retrying in 0.5 s");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path)
                        .ok()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .map(|pid| format!(", held by process {pid}"))
                        .unwrap_or_default();
                    return Err(Error::Locked { path, holder });
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io("locking", &path, e)),
            }
        }
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a queue state.
    pub fn dir(&self, state: QueueState) -> PathBuf {
        self.root.join(state.dir_name())
    }

    /// The path of a message in a queue state.
    pub fn path(&self, state: QueueState, id: &QueueId) -> PathBuf {
        self.dir(state).join(id.as_str())
    }

    /// Makes every later write fail with this OS error (0 turns it off).
    /// For tests of the disk-full path; never set in normal operation.
    #[doc(hidden)]
    pub fn inject_write_fault(&self, errno: i32) {
        self.fault.store(errno, Ordering::SeqCst);
    }

    /// Calls `hook` with every newly committed queue id, right after it became
    /// durable (the pipeline's wake-up). Only the first call takes effect.
    pub fn notify_commits(&self, hook: CommitHook) {
        let _ = self.notify.set(hook);
    }

    /// Where a message is now, if anywhere.
    pub fn locate(&self, id: &QueueId) -> Option<QueueState> {
        [
            QueueState::Active,
            QueueState::Incoming,
            QueueState::Deferred,
            QueueState::Hold,
            QueueState::Corrupt,
        ]
        .into_iter()
        .find(|s| self.path(*s, id).exists())
    }

    /// Renames a message between states; with `durable`, the move survives a
    /// crash (both directories fsynced). Without, a crash may undo it, which
    /// must be harmless (a claim or a deferral is simply redone).
    fn move_to(
        &self,
        id: &QueueId,
        from: QueueState,
        to: QueueState,
        durable: bool,
    ) -> Result<bool, Error> {
        let dst = self.path(to, id);
        match fs::rename(self.path(from, id), &dst) {
            Ok(()) => {
                match (from.in_flow(), to.in_flow()) {
                    (false, true) => self.flow.added(),
                    (true, false) => self.flow.removed(false),
                    _ => {}
                }
                if durable {
                    sync_dir(&self.dir(to))?;
                    sync_dir(&self.dir(from))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("moving", &dst, e)),
        }
    }

    /// Claims a message for a pipeline worker: `incoming/` or `deferred/` →
    /// `active/`. `None` if it is in neither (another worker or an
    /// administrator got there first).
    pub fn claim(&self, id: &QueueId) -> Result<Option<QueueState>, Error> {
        for from in [QueueState::Incoming, QueueState::Deferred] {
            // Not durable: after a crash, recovery returns active/ to incoming/ anyway.
            if self.move_to(id, from, QueueState::Active, false)? {
                return Ok(Some(from));
            }
        }
        Ok(None)
    }

    /// The message is finished (delivered, bounced or discarded): removes it,
    /// then its progress record. With `durable` the removal survives a crash;
    /// without, a crash may bring the message back, to be run again from its
    /// last checkpoint (every stage must be idempotent for that).
    pub fn complete(&self, id: &QueueId, durable: bool) -> Result<(), Error> {
        for state in [
            QueueState::Active,
            QueueState::Incoming,
            QueueState::Deferred,
            QueueState::Hold,
        ] {
            let p = self.path(state, id);
            match self.recycle(&p) {
                Ok(()) => {
                    if state.in_flow() {
                        self.flow.removed(true);
                    }
                    if durable {
                        sync_dir(&self.dir(state))?;
                        sync_dir(&self.dir(QueueState::Tmp))?;
                    }
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &p, e)),
            }
        }
        let p = self.progress_path(id);
        match fs::remove_file(&p) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// `active/` → `deferred/`, due at `next_attempt` (seconds since the
    /// epoch; recorded as the file's modification time, as Postfix does).
    pub fn defer(&self, id: &QueueId, next_attempt: u64) -> Result<(), Error> {
        let src = self.path(QueueState::Active, id);
        let when = UNIX_EPOCH + std::time::Duration::from_secs(next_attempt);
        File::options()
            .write(true)
            .open(&src)
            .and_then(|f| f.set_modified(when))
            .map_err(|e| Error::io("setting next attempt on", &src, e))?;
        // Not durable: the progress record (saved first) holds the retry time;
        // a lost rename only makes the retry come sooner.
        self.move_to(id, QueueState::Active, QueueState::Deferred, false)?;
        Ok(())
    }

    /// Puts a message on hold (from `active/`, `incoming/` or `deferred/`).
    pub fn hold(&self, id: &QueueId) -> Result<bool, Error> {
        for from in [
            QueueState::Active,
            QueueState::Incoming,
            QueueState::Deferred,
        ] {
            if self.move_to(id, from, QueueState::Hold, true)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Returns a message to `incoming/` for an immediate attempt (from
    /// `hold/` or `deferred/`).
    pub fn requeue(&self, id: &QueueId) -> Result<bool, Error> {
        for from in [QueueState::Hold, QueueState::Deferred] {
            if self.move_to(id, from, QueueState::Incoming, true)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a message deliberately (an administrator's `queue delete`).
    /// A message being processed (`active/`) is not touched.
    pub fn delete(&self, id: &QueueId) -> Result<bool, Error> {
        for state in [
            QueueState::Incoming,
            QueueState::Deferred,
            QueueState::Hold,
            QueueState::Corrupt,
        ] {
            let p = self.path(state, id);
            match fs::remove_file(&p) {
                Ok(()) => {
                    if state.in_flow() {
                        self.flow.removed(false);
                    }
                    sync_dir(&self.dir(state))?;
                    let _ = fs::remove_file(self.progress_path(id));
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", &p, e)),
            }
        }
        Ok(false)
    }

    /// Deferred messages due at or before `now` (seconds since the epoch), oldest first.
    pub fn due_deferred(&self, now: u64) -> Result<Vec<QueueId>, Error> {
        let dir = self.dir(QueueState::Deferred);
        let mut due = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
            let Ok(entry) = entry else { continue };
            let Some(id) = entry.file_name().to_str().and_then(QueueId::parse) else {
                continue;
            };
            let when = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if when <= now {
                due.push((when, id));
            }
        }
        due.sort();
        Ok(due.into_iter().map(|(_, id)| id).collect())
    }

    /// The path of a message's progress record.
    pub fn progress_path(&self, id: &QueueId) -> PathBuf {
        self.root.join(PROGRESS_DIR).join(id.as_str())
    }

    /// Reads a message's progress record, if it has one.
    pub fn load_progress(&self, id: &QueueId) -> Result<Option<Progress>, Error> {
        let p = self.progress_path(id);
        match fs::read(&p) {
            Ok(bytes) => Progress::decode(&bytes).map(Some).map_err(|why| {
                Error::io(
                    "reading",
                    &p,
                    io::Error::new(io::ErrorKind::InvalidData, why),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("reading", &p, e)),
        }
    }

    /// Replaces a message's progress record durably and atomically.
    pub fn save_progress(&self, id: &QueueId, progress: &Progress) -> Result<(), Error> {
        let dir = self.root.join(PROGRESS_DIR);
        let dst = dir.join(id.as_str());
        let tmp = dir.join(format!(".{id}.tmp"));
        let bytes = progress.encode()?;
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io("writing", &tmp, e));
        }
        fs::rename(&tmp, &dst).map_err(|e| Error::io("renaming", &dst, e))?;
        sync_dir(&dir)
    }

    /// Reads and validates the queue file of `id` in `state` (envelope and
    /// where its message lies, not the message itself).
    pub fn read_queue_file(&self, state: QueueState, id: &QueueId) -> Result<QueueFile, Error> {
        let path = self.path(state, id);
        read_header(&path).map_err(|source| Error::Format { path, source })
    }

    /// Reads `len` bytes (fewer at its end) of the message of `id` in
    /// `state`, starting `from` bytes into the message.
    pub fn read_message_range(
        &self,
        state: QueueState,
        id: &QueueId,
        queued: &QueueFile,
        from: u64,
        len: u64,
    ) -> Result<Vec<u8>, Error> {
        let path = self.path(state, id);
        File::open(&path)
            .and_then(|f| read_range(&f, queued, from, len))
            .map_err(|e| Error::io("reading", &path, e))
    }

    /// Opens the queue file of `id` in `state` and reads its header: the
    /// file stays open for reading the message (one open per attempt).
    pub fn open_queued(&self, state: QueueState, id: &QueueId) -> Result<(File, QueueFile), Error> {
        let path = self.path(state, id);
        File::open(&path)
            .map_err(queue_file::FormatError::from)
            .and_then(|f| Ok((queue_file::read_header_of(&f)?, f)))
            .map(|(q, f)| (f, q))
            .map_err(|source| Error::Format { path, source })
    }

    /// [`Spool::initial_progress`] from a queue file already open.
    pub fn initial_progress_of(&self, file: &File, queued: &QueueFile) -> Result<Progress, Error> {
        let head = read_range(file, queued, 0, MAX_HEADER_BYTES)
            .map_err(|e| Error::io("reading", &self.root, e))?;
        Ok(Progress::initial(&queued.envelope, &head))
    }

    /// The progress of a message that has none yet: its envelope with every
    /// recipient pending, and the queued fields parsed from the start of its
    /// message (at most 1 MiB of it).
    pub fn initial_progress(
        &self,
        state: QueueState,
        id: &QueueId,
        queued: &QueueFile,
    ) -> Result<Progress, Error> {
        let path = self.path(state, id);
        let file = File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        self.initial_progress_of(&file, queued)
    }

    /// Moves the unreadable queue file of `id` in `state` to `corrupt/`, for
    /// an administrator to inspect (it is never deleted); returns where.
    pub fn quarantine(&self, state: QueueState, id: &QueueId) -> Result<PathBuf, Error> {
        let to = self.path(QueueState::Corrupt, id);
        fs::rename(self.path(state, id), &to)
            .map_err(|e| Error::io("moving to corrupt", &to, e))?;
        if state.in_flow() {
            self.flow.removed(false);
        }
        Ok(to)
    }

    /// Moves an unreadable progress record of `id` aside to
    /// `corrupt/ID.progress` (best effort: the message starts over either
    /// way); returns where.
    pub fn quarantine_progress(&self, id: &QueueId) -> PathBuf {
        let kept = self.dir(QueueState::Corrupt).join(format!("{id}.progress"));
        let _ = fs::rename(self.progress_path(id), &kept);
        kept
    }

    /// How many messages are in `state` now (0 if the directory cannot be read).
    pub fn count(&self, state: QueueState) -> usize {
        fs::read_dir(self.dir(state))
            .map(|r| r.count())
            .unwrap_or(0)
    }

    /// Lists the queue ids in a state, oldest first.
    pub fn list(&self, state: QueueState) -> Result<Vec<QueueId>, Error> {
        let dir = self.dir(state);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(QueueId::parse) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Recovery at start: clears `tmp/` but for the recycled files (taken
    /// back into the pool, up to its bounds), returns `active/` to
    /// `incoming/`, and moves every unreadable queue file to `corrupt/`
    /// (never deleting it).
    pub fn recover(&self) -> Result<Recovery, Error> {
        let mut report = Recovery::default();
        let tmp = self.dir(QueueState::Tmp);
        let mut pool = self.recycled.lock().unwrap_or_else(|p| p.into_inner());
        // Rebuilt from what is in tmp/ (which holds every file it knew of).
        *pool = Pool::default();
        for entry in fs::read_dir(&tmp).map_err(|e| Error::io("listing", &tmp, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &tmp, e))?;
            let path = entry.path();
            let recycled = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("free."));
            if recycled {
                let len = entry.metadata().map(|m| m.len());
                if let Some(len) = len.ok().filter(|&l| pool.fits(l)) {
                    // One left by an older build may still hold a message.
                    let emptied = len == 0
                        || OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .and_then(|f| f.set_len(0))
                            .is_ok();
                    if emptied {
                        pool.push(path, len);
                        continue;
                    }
                }
            } else {
                report.tmp_removed += 1;
            }
            fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        }
        drop(pool);
        let active = self.dir(QueueState::Active);
        let incoming = self.dir(QueueState::Incoming);
        for entry in fs::read_dir(&active).map_err(|e| Error::io("listing", &active, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &active, e))?;
            let to = incoming.join(entry.file_name());
            fs::rename(entry.path(), &to).map_err(|e| Error::io("returning", &to, e))?;
            report.active_returned += 1;
        }
        for state in [QueueState::Incoming, QueueState::Deferred, QueueState::Hold] {
            let dir = self.dir(state);
            for entry in fs::read_dir(&dir).map_err(|e| Error::io("listing", &dir, e))? {
                let path = entry.map_err(|e| Error::io("listing", &dir, e))?.path();
                let name_ok = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(QueueId::parse)
                    .is_some();
                let verdict = if name_ok {
                    read_header(&path).map(|_| ()).map_err(|e| e.to_string())
                } else {
                    Err("file name is not a queue id".to_string())
                };
                match verdict {
                    Ok(()) => {
                        if state != QueueState::Hold {
                            report.queued += 1;
                        }
                    }
                    Err(why) => {
                        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
                        let to = self.dir(QueueState::Corrupt).join(name);
                        tracing::warn!(file = %path.display(), reason = %why, "moving unreadable queue file to corrupt/");
                        fs::rename(&path, &to)
                            .map_err(|e| Error::io("moving to corrupt", &to, e))?;
                        report.corrupt += 1;
                    }
                }
            }
        }
        let progress = self.root.join(PROGRESS_DIR);
        for entry in fs::read_dir(&progress).map_err(|e| Error::io("listing", &progress, e))? {
            let entry = entry.map_err(|e| Error::io("listing", &progress, e))?;
            let orphan = match entry.file_name().to_str().and_then(QueueId::parse) {
                Some(id) => self.locate(&id).is_none(),
                None => true,
            };
            if orphan {
                let _ = fs::remove_file(entry.path());
            }
        }
        for state in QueueState::ALL {
            sync_dir(&self.dir(state))?;
        }
        sync_dir(&progress)?;
        self.recount_pending();
        Ok(report)
    }
}

/// Reads `len` bytes (fewer at its end) of the message in `file`, starting
/// `from` bytes into the message: one positioned read of the exact size.
fn read_range(file: &File, queued: &QueueFile, from: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let n = len.min(queued.message_len.saturating_sub(from));
    let mut out = vec![0u8; usize::try_from(n).map_err(io::Error::other)?];
    file.read_exact_at(&mut out, queued.message_offset + from)?;
    Ok(out)
}

/// fsyncs a directory so that renames and creations in it are durable.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            mail_from: "a@x.test".into(),
            rcpt_to: vec!["b@localhost".into()],
            client_ip: "127.0.0.1".parse().expect("ip"),
            client_port: 40000,
            listener: finaldot_sdk::wire::Listener::Smtp,
            helo: "c".into(),
            protocol: "ESMTP".into(),
            received_at: 0,
            body_8bit: false,
            smtputf8: false,
            tls: None,
            auth: None,
            dsn: Default::default(),
        }
    }

    async fn put(spool: &Spool, body: &[u8]) -> Result<QueueId, Error> {
        let mut w = spool.begin(&envelope())?;
        w.write(body)?;
        let p = w.finish()?;
        spool.commit(p).await
    }

    #[test]
    fn a_second_daemon_cannot_lock_the_spool_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let held = spool.lock(std::time::Duration::ZERO).expect("first lock");
        let other = Spool::open(dir.path()).expect("open again");
        let started = std::time::Instant::now();
        match other.lock(std::time::Duration::from_millis(600)) {
            Err(Error::Locked { path, holder }) => {
                assert_eq!(path, dir.path().join("lock"));
                assert_eq!(holder, format!(", held by process {}", std::process::id()));
            }
            r => panic!("second lock: {r:?}"),
        }
        assert!(started.elapsed() >= std::time::Duration::from_millis(600));
        drop(held);
        other.lock(std::time::Duration::ZERO).expect("free again");
    }

    #[tokio::test]
    async fn commit_puts_a_complete_file_in_incoming() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let id = put(&spool, b"hello\r\n").await.expect("commit");
        let (h, m) = read_message(&spool.path(QueueState::Incoming, &id)).expect("read");
        assert_eq!(m, b"hello\r\n");
        assert_eq!(h.envelope, envelope());
        assert!(spool.list(QueueState::Tmp).expect("list").is_empty());
        assert_eq!(
            fs::read_dir(spool.dir(QueueState::Tmp))
                .expect("ls")
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn concurrent_commits_all_land_with_unique_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Arc::new(Spool::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let body = format!("message {i}\r\n");
                put(&spool, body.as_bytes()).await
            }));
        }
        let mut ids = std::collections::HashSet::new();
        for t in tasks {
            ids.insert(t.await.expect("join").expect("commit"));
        }
        assert_eq!(ids.len(), 32);
        assert_eq!(spool.list(QueueState::Incoming).expect("list").len(), 32);
    }

    #[tokio::test]
    async fn a_finished_file_is_recycled_and_a_shorter_message_reads_back_exact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let long = vec![b'x'; 20_000];
        let first = put(&spool, &long).await.expect("commit");
        let first_ino = fs::metadata(spool.path(QueueState::Incoming, &first))
            .expect("stat")
            .ino();
        spool.claim(&first).expect("claim");
        spool.complete(&first, false).expect("complete");
        // The file waits in tmp/ (no queue id: never listed as a message),
        // emptied: nothing of the message it carried is left in it.
        let waiting: Vec<_> = fs::read_dir(spool.dir(QueueState::Tmp))
            .expect("ls")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(waiting.len(), 1);
        assert_eq!(fs::metadata(&waiting[0]).expect("stat").len(), 0);
        assert_eq!(fs::metadata(&waiting[0]).expect("stat").ino(), first_ino);
        assert!(spool.list(QueueState::Tmp).expect("list").is_empty());

        let second = put(&spool, b"short\r\n").await.expect("commit");
        assert_ne!(second, first);
        let path = spool.path(QueueState::Incoming, &second);
        assert_eq!(fs::metadata(&path).expect("stat").ino(), first_ino);
        let (h, m) = read_message(&path).expect("read");
        assert_eq!(m, b"short\r\n");
        assert_eq!(h.envelope, envelope());
        assert_eq!(
            fs::read_dir(spool.dir(QueueState::Tmp))
                .expect("ls")
                .count(),
            0
        );

        // Large files are removed, not kept.
        spool.claim(&second).expect("claim");
        spool.complete(&second, true).expect("complete");
        let big = put(&spool, &vec![b'y'; RECYCLE_MAX_BYTES as usize + 1])
            .await
            .expect("commit");
        spool.claim(&big).expect("claim");
        spool.complete(&big, false).expect("complete");
        assert_eq!(
            fs::read_dir(spool.dir(QueueState::Tmp))
                .expect("ls")
                .count(),
            0
        );
        // Recovery keeps recycled files (a later process reuses them) and
        // removes half-written ones.
        let half = spool.begin(&envelope()).expect("begin");
        let half_path = half.path.clone();
        std::mem::forget(half);
        let third = put(&spool, b"t\r\n").await.expect("commit");
        spool.claim(&third).expect("claim");
        spool.complete(&third, false).expect("complete");
        let tmp_dir = spool.dir(QueueState::Tmp);
        let tmp_files = || fs::read_dir(&tmp_dir).expect("ls").count();
        assert_eq!(tmp_files(), 2);
        drop(spool);
        let spool = Spool::open(dir.path()).expect("reopen");
        assert_eq!(spool.recover().expect("recover").tmp_removed, 1);
        assert!(!half_path.exists(), "a half-written file is removed");
        assert_eq!(tmp_files(), 1, "the recycled file is kept");
        let recycled_ino = fs::read_dir(spool.dir(QueueState::Tmp))
            .expect("ls")
            .flatten()
            .next()
            .and_then(|e| e.metadata().ok())
            .map(|m| m.ino())
            .expect("the kept file");
        let fourth = put(&spool, b"four\r\n").await.expect("commit");
        assert_eq!(tmp_files(), 0, "the new process took the kept file");
        let ino = fs::metadata(spool.path(QueueState::Incoming, &fourth))
            .expect("stat")
            .ino();
        assert_eq!(ino, recycled_ino);
        assert_eq!(
            read_message(&spool.path(QueueState::Incoming, &fourth))
                .expect("read")
                .1,
            b"four\r\n"
        );
    }

    #[tokio::test]
    async fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let mut w = spool.begin(&envelope()).expect("begin");
        w.write(b"partial").expect("write");
        drop(w);
        assert_eq!(
            fs::read_dir(spool.dir(QueueState::Tmp))
                .expect("ls")
                .count(),
            0
        );
        assert!(spool.list(QueueState::Incoming).expect("list").is_empty());
    }

    #[tokio::test]
    async fn injected_enospc_is_storage_full_and_nothing_is_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let mut w = spool.begin(&envelope()).expect("begin");
        spool.inject_write_fault(libc::ENOSPC);
        let err = w.write(b"x").expect_err("must fail");
        assert!(err.is_storage_full());
        drop(w);
        spool.inject_write_fault(libc::EIO);
        let err = put(&spool, b"y").await.expect_err("must fail");
        assert!(!err.is_storage_full());
        assert!(spool.list(QueueState::Incoming).expect("list").is_empty());
    }

    #[tokio::test]
    async fn recovery_clears_tmp_returns_active_and_quarantines_torn_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path()).expect("open");
        let good = put(&spool, b"good\r\n").await.expect("commit");
        let active = put(&spool, b"active\r\n").await.expect("commit");
        fs::rename(
            spool.path(QueueState::Incoming, &active),
            spool.path(QueueState::Active, &active),
        )
        .expect("mv");
        fs::write(spool.dir(QueueState::Tmp).join("new.1.1"), b"half").expect("tmp");
        let torn = QueueId::parse("ABC").expect("id");
        let bytes = fs::read(spool.path(QueueState::Incoming, &good)).expect("read");
        fs::write(
            spool.path(QueueState::Incoming, &torn),
            &bytes[..bytes.len() - 3],
        )
        .expect("torn");

        let report = spool.recover().expect("recover");
        assert_eq!(
            report,
            Recovery {
                tmp_removed: 1,
                active_returned: 1,
                corrupt: 1,
                queued: 2
            }
        );
        assert!(spool.path(QueueState::Incoming, &active).exists());
        assert!(spool.path(QueueState::Corrupt, &torn).exists());
        assert_eq!(
            fs::read(spool.path(QueueState::Corrupt, &torn)).expect("kept"),
            &bytes[..bytes.len() - 3]
        );
    }
}
