//! The write path: a message streamed into a file in `tmp/` (a recycled
//! one when the pool has one), finished with its end marker and an fsync,
//! then committed: renamed into `incoming/` by the one committer thread,
//! which covers every rename waiting with a single directory fsync (group
//! commit) before any of them is acknowledged. Also the recycle pool that
//! keeps finished files for reuse instead of unlinking them.
//!
//! Invariant: `Spool::commit` returns `Ok` only once the message's file and
//! the `incoming/` entry are both on stable storage; a failed directory
//! fsync takes the renamed files back out, so nothing unacknowledged is
//! delivered.

use super::*;

/// Finished files waiting to be overwritten, and their total size.
#[derive(Debug, Default)]
pub(super) struct Pool {
    files: Vec<(PathBuf, u64)>,
    bytes: u64,
}

impl Pool {
    /// Whether a file of `len` bytes fits.
    pub(super) fn fits(&self, len: u64) -> bool {
        len <= RECYCLE_MAX_BYTES
            && self.files.len() < RECYCLE_MAX_FILES
            && self.bytes + len <= RECYCLE_POOL_BYTES
    }

    pub(super) fn push(&mut self, path: PathBuf, len: u64) {
        self.bytes += len;
        self.files.push((path, len));
    }

    pub(super) fn pop(&mut self) -> Option<PathBuf> {
        let (path, len) = self.files.pop()?;
        self.bytes -= len;
        Some(path)
    }
}

/// One message handed to the committer thread.
pub(super) struct CommitRequest {
    tmp: PathBuf,
    id: QueueId,
    done: tokio::sync::oneshot::Sender<Result<(), Error>>,
}

/// A message being written into `tmp/`. Dropping it without
/// [`SpoolWriter::finish`] removes the file.
pub struct SpoolWriter {
    id: QueueId,
    pub(super) path: PathBuf,
    file: Option<BufWriter<File>>,
    message_len: u64,
    file_len: u64,
    fault: Arc<AtomicI32>,
}

/// A message whose file is complete and fsynced in `tmp/`, ready for [`Spool::commit`].
#[derive(Debug)]
pub struct Prepared {
    id: QueueId,
    tmp: PathBuf,
    armed: bool,
}

impl Prepared {
    /// The queue id the message will have.
    pub fn id(&self) -> &QueueId {
        &self.id
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Spool {
    /// A fresh name in `tmp/`, unique within this process (recovery clears
    /// `tmp/` before a daemon starts).
    pub(super) fn tmp_name(&self, kind: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        self.dir(QueueState::Tmp)
            .join(format!("{kind}.{}.{n}", self.tmp_prefix))
    }

    /// A recycled file from `tmp/` opened for overwriting, or a new one.
    pub(super) fn open_tmp(&self) -> Result<(PathBuf, File), Error> {
        loop {
            let reused = self.recycled.lock().ok().and_then(|mut pool| pool.pop());
            let Some(path) = reused else { break };
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                // Gone (an administrator cleaned `tmp/`): take another.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("opening", &path, e)),
            }
        }
        let path = self.tmp_name("new");
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("creating", &path, e))?;
        Ok((path, file))
    }

    /// Recycles a completed message's file: keeps it in `tmp/` for
    /// [`Spool::begin`] to overwrite, or removes it. Not durable by itself: `from`'s directory is fsynced by the
    /// caller when the removal must survive a crash.
    pub(super) fn recycle(&self, path: &Path) -> io::Result<()> {
        let len = fs::metadata(path)?.len();
        if let Ok(mut pool) = self.recycled.lock() {
            if pool.fits(len) {
                let to = self.tmp_name("free");
                fs::rename(path, &to)?;
                // The message's bytes go now, not when the file is reused:
                // a recycled file holds nothing of the mail it carried
                // (emptied once out of the queue, so a crash between the two
                // steps never leaves an empty message file behind).
                match OpenOptions::new()
                    .write(true)
                    .open(&to)
                    .and_then(|f| f.set_len(0))
                {
                    Ok(()) => pool.push(to, len),
                    Err(_) => fs::remove_file(&to)?,
                }
                return Ok(());
            }
        }
        fs::remove_file(path)
    }

    /// Starts a message: opens its file in `tmp/` (a recycled one when there
    /// is one) and writes the envelope. Blocking; call it off the async runtime.
    pub fn begin(&self, envelope: &Envelope) -> Result<SpoolWriter, Error> {
        check_fault(&self.fault, &self.root)?;
        let prelude = queue_file::encode_prelude(envelope)?;
        let (path, file) = self.open_tmp()?;
        let ino = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .ino();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = QueueId(format!(
            "{:X}{:05X}{:X}",
            now.as_secs(),
            now.subsec_micros(),
            ino
        ));
        let mut writer = SpoolWriter {
            id,
            path,
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            message_len: 0,
            file_len: 0,
            fault: self.fault.clone(),
        };
        writer.write_raw(&prelude)?;
        Ok(writer)
    }

    /// Hands a prepared message to the committer thread.
    pub(super) fn send_to_committer(
        &self,
        mut prepared: Prepared,
    ) -> Result<(QueueId, tokio::sync::oneshot::Receiver<Result<(), Error>>), Error> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let id = prepared.id.clone();
        self.committer
            .send(CommitRequest {
                tmp: prepared.tmp.clone(),
                id: id.clone(),
                done,
            })
            .map_err(|_| Error::CommitterGone)?;
        // The committer owns the file now: it renames it or removes it.
        prepared.armed = false;
        Ok((id, wait))
    }

    /// Makes a prepared message durable in `incoming/`. When this returns `Ok`,
    /// the message survives a crash and power loss; only then may it be acked.
    pub async fn commit(&self, prepared: Prepared) -> Result<QueueId, Error> {
        let (id, wait) = self.send_to_committer(prepared)?;
        wait.await.map_err(|_| Error::CommitterGone)??;
        Ok(id)
    }

    /// Like [`Spool::commit`], for threads outside the async runtime.
    pub fn commit_blocking(&self, prepared: Prepared) -> Result<QueueId, Error> {
        let (id, wait) = self.send_to_committer(prepared)?;
        wait.blocking_recv().map_err(|_| Error::CommitterGone)??;
        Ok(id)
    }
}

pub(super) fn check_fault(fault: &AtomicI32, path: &Path) -> Result<(), Error> {
    match fault.load(Ordering::Relaxed) {
        0 => Ok(()),
        errno => Err(Error::io(
            "writing",
            path,
            io::Error::from_raw_os_error(errno),
        )),
    }
}

impl SpoolWriter {
    /// The queue id this message will have.
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Bytes of message written so far.
    pub fn message_len(&self) -> u64 {
        self.message_len
    }

    fn write_raw(&mut self, data: &[u8]) -> Result<(), Error> {
        check_fault(&self.fault, &self.path)?;
        let file = self.file.as_mut().ok_or_else(|| {
            Error::io(
                "writing",
                &self.path,
                io::Error::other("writer already failed"),
            )
        })?;
        if let Err(e) = file.write_all(data) {
            self.file = None;
            return Err(Error::io("writing", &self.path, e));
        }
        self.file_len += data.len() as u64;
        Ok(())
    }

    /// Appends message bytes. Blocking.
    pub fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.write_raw(data)?;
        self.message_len += data.len() as u64;
        Ok(())
    }

    /// Writes the end marker, flushes and fsyncs the file. Blocking.
    pub fn finish(mut self) -> Result<Prepared, Error> {
        let trailer = queue_file::encode_trailer(self.message_len);
        self.write_raw(&trailer)?;
        let buffered = self.file.take().ok_or_else(|| {
            Error::io(
                "writing",
                &self.path,
                io::Error::other("writer already failed"),
            )
        })?;
        let file = buffered
            .into_inner()
            .map_err(|e| Error::io("flushing", &self.path, e.into_error()))?;
        // A recycled file may be longer than this message: cut the old tail.
        file.set_len(self.file_len)
            .map_err(|e| Error::io("truncating", &self.path, e))?;
        file.sync_all()
            .map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(Prepared {
            id: self.id.clone(),
            tmp: std::mem::take(&mut self.path),
            armed: true,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The committer thread: renames every waiting message into `incoming/`, then
/// covers all of them with one directory fsync.
pub(super) fn committer(
    rx: mpsc::Receiver<CommitRequest>,
    incoming: PathBuf,
    notify: Arc<std::sync::OnceLock<CommitHook>>,
    flow: Arc<Flow>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut renamed = Vec::with_capacity(batch.len());
        for req in batch {
            let to = incoming.join(req.id.as_str());
            match fs::rename(&req.tmp, &to) {
                Ok(()) => renamed.push((req, to)),
                Err(e) => {
                    let _ = fs::remove_file(&req.tmp);
                    let _ = req.done.send(Err(Error::io("renaming into", &to, e)));
                }
            }
        }
        if renamed.is_empty() {
            continue;
        }
        match sync_dir(&incoming) {
            Ok(()) => {
                for (req, _) in renamed {
                    flow.added();
                    if let Some(hook) = notify.get() {
                        hook(&req.id);
                    }
                    let _ = req.done.send(Ok(()));
                }
            }
            Err(e) => {
                // Not durable, so not acked: take the files back out rather than
                // risk delivering a message whose sender will retry it.
                let why = e.to_string();
                for (req, to) in renamed {
                    let _ = fs::remove_file(&to);
                    let _ = req.done.send(Err(Error::io(
                        "fsync",
                        &incoming,
                        io::Error::other(why.clone()),
                    )));
                }
            }
        }
    }
}
