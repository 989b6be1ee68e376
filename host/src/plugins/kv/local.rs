//! The local key-value backend (the default): one redb database
//! (`kv.redb`) in the namespace's directory. Writes are durable when they return and are group
//! committed: puts and deletes from concurrent pipeline workers share one
//! database commit (one fsync) instead of a file, an fsync and a directory
//! fsync each. Entries with an expiry are purged a few hundred at a time by
//! later commits, so a dedup window keeps the database bounded.
//!
//! Keys are stored as the SHA-256 of the plugin's key (as the file-per-key
//! layout of earlier versions named its files); such files found in the
//! directory are imported once and removed.
//!
//! One process-wide store per directory: every loaded version of a plugin
//! (a hot reload loads the new one while the old one finishes its calls)
//! shares it, since the database file can be open only once.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock, Weak};

use redb::{Database, ReadableTable, TableDefinition};

use crate::group_commit::IoGroupCommit;
use crate::unix_now;

/// SHA-256 of the key (hex) → 8-byte little-endian expiry (seconds since the
/// epoch, 0 = never) followed by the value.
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// 8-byte big-endian expiry followed by the key's hash → nothing: the values
/// with an expiry, in expiry order.
const EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("expiry");

/// How many expired entries one commit removes at most.
const PURGE_PER_COMMIT: usize = 256;

/// The database file in the namespace directory.
pub const KV_FILE: &str = "kv.redb";

enum Op {
    Put {
        name: String,
        record: Vec<u8>,
    },
    Delete {
        name: String,
    },
    /// A put that happens only if no live value is there; `found` receives
    /// what was there (`None`: this op stored).
    PutIfAbsent {
        name: String,
        record: Vec<u8>,
        found: Arc<OnceLock<Option<Vec<u8>>>>,
    },
    /// Adds `delta` to the counter (decimal text) under `name`; a counter
    /// it creates expires at `expires`. `value` receives the new value, or
    /// why there is none (the value is not a counter).
    Incr {
        name: String,
        delta: i64,
        expires: u64,
        value: Arc<OnceLock<Result<i64, String>>>,
    },
}

struct Store {
    /// The database file.
    path: PathBuf,
    /// `None` only between a failure and the reopen that follows it.
    db: RwLock<Option<Database>>,
    writes: IoGroupCommit<Op>,
}

/// redb's page cache per namespace (its default is 1 GiB).
const CACHE_BYTES: usize = 16 << 20;

fn open_db(path: &Path) -> io::Result<Database> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(io_err)
}

impl Store {
    /// Runs `f` on the database. After a failure the database is closed and
    /// opened again (redb refuses all further work after an I/O error, until
    /// reopened, and repairs itself on open), so a disk that was full for a
    /// moment does not break the namespace until a restart.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> io::Result<T>) -> io::Result<T> {
        let poisoned = || io::Error::other("kv lock poisoned");
        if self.db.read().map_err(|_| poisoned())?.is_none() {
            // Closed by an earlier failure that could not reopen: try again.
            self.reopen();
        }
        let result = match self.db.read().map_err(|_| poisoned())?.as_ref() {
            Some(db) => f(db),
            None => {
                return Err(io::Error::other(format!(
                    "key-value database {} could not be reopened",
                    self.path.display()
                )))
            }
        };
        if result.is_err() {
            self.reopen();
        }
        result
    }

    fn reopen(&self) {
        let Ok(mut guard) = self.db.write() else {
            return;
        };
        // Close first: the file is locked while a handle is open.
        drop(guard.take());
        match open_db(&self.path) {
            Ok(db) => *guard = Some(db),
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "key-value database could not be reopened")
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Close under the registry lock: closing commits and fsyncs while the
        // file is still locked, and a `Local::open` of the same namespace in that
        // moment would find it "already open".
        let _registry = STORES.lock();
        if let Ok(db) = self.db.get_mut() {
            drop(db.take());
        }
    }
}

static STORES: LazyLock<Mutex<HashMap<PathBuf, Weak<Store>>>> = LazyLock::new(Default::default);

/// A handle on a namespace in the local store.
pub struct Local {
    store: Arc<Store>,
}

fn io_err(e: impl Into<redb::Error>) -> io::Error {
    match e.into() {
        redb::Error::Io(e) => e,
        other => io::Error::other(other),
    }
}

fn expiry_of(record: &[u8]) -> u64 {
    record
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// What `VALUES` holds for `value` expiring at `expires`.
fn record(value: &[u8], expires: u64) -> Vec<u8> {
    let mut record = expires.to_le_bytes().to_vec();
    record.extend_from_slice(value);
    record
}

/// The value a record holds, unless it is malformed or expired at `now`.
fn live_value(record: &[u8], now: u64) -> Option<&[u8]> {
    let expires = expiry_of(record);
    record.get(8..).filter(|_| expires == 0 || expires > now)
}

fn index_key(expires: u64, name: &str) -> Vec<u8> {
    let mut k = expires.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Local {
    /// Opens (creating) the namespace in `path`, a directory.
    pub fn open(path: &Path) -> io::Result<Local> {
        std::fs::create_dir_all(path)?;
        let key = std::fs::canonicalize(path)?;
        let mut stores = STORES
            .lock()
            .map_err(|_| io::Error::other("kv registry lock poisoned"))?;
        if let Some(store) = stores.get(&key).and_then(Weak::upgrade) {
            return Ok(Local { store });
        }
        let path = key.join(KV_FILE);
        let store = Arc::new(Store {
            db: RwLock::new(Some(open_db(&path)?)),
            path,
            writes: IoGroupCommit::io("key-value commit"),
        });
        if let Err(e) = import_files(&key, &store) {
            // The registry lock first: dropping the store takes it.
            drop(stores);
            drop(store);
            return Err(e);
        }
        stores.retain(|_, w| w.strong_count() > 0);
        stores.insert(key, Arc::downgrade(&store));
        Ok(Local { store })
    }

    fn name(key: &[u8]) -> String {
        crate::plugins::content_hash(key)
    }

    /// The value, if present and not expired at `now`.
    pub fn get(&self, key: &[u8], now: u64) -> io::Result<Option<Vec<u8>>> {
        let name = Self::name(key);
        self.store.with_db(|db| {
            let txn = db.begin_read().map_err(io_err)?;
            let table = match txn.open_table(VALUES) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(io_err(e)),
            };
            let Some(record) = table.get(name.as_str()).map_err(io_err)? else {
                return Ok(None);
            };
            Ok(live_value(record.value(), now).map(<[u8]>::to_vec))
        })
    }

    /// Stores a value durably; `expires` 0 means never.
    pub fn put(&self, key: &[u8], value: &[u8], expires: u64) -> io::Result<()> {
        self.write(Op::Put {
            name: Self::name(key),
            record: record(value, expires),
        })
    }

    /// Stores a value durably unless a live (unexpired) one is there,
    /// atomically with every other write: `None` when this call stored it,
    /// else the value already there.
    pub fn put_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        expires: u64,
    ) -> io::Result<Option<Vec<u8>>> {
        let found = Arc::new(OnceLock::new());
        self.write(Op::PutIfAbsent {
            name: Self::name(key),
            record: record(value, expires),
            found: found.clone(),
        })?;
        found
            .get()
            .cloned()
            .ok_or_else(|| io::Error::other("kv commit did not answer"))
    }

    /// Adds `delta` to the counter under `key` durably, atomically with
    /// every other write; a counter it creates expires at `expires`. The
    /// new value, or `InvalidData` when the value there is not a counter.
    pub fn incr(&self, key: &[u8], delta: i64, expires: u64) -> io::Result<i64> {
        let value = Arc::new(OnceLock::new());
        self.write(Op::Incr {
            name: Self::name(key),
            delta,
            expires,
            value: value.clone(),
        })?;
        match value.get() {
            Some(Ok(n)) => Ok(*n),
            Some(Err(why)) => Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())),
            None => Err(io::Error::other("kv commit did not answer")),
        }
    }

    /// Deletes a key durably (absent is fine).
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.write(Op::Delete {
            name: Self::name(key),
        })
    }

    fn write(&self, op: Op) -> io::Result<()> {
        let store = &self.store;
        store
            .writes
            .submit_io(op, |ops| store.with_db(|db| commit(db, ops, unix_now())))
    }
}

/// One transaction for a batch of writes, plus a bounded purge of entries
/// expired at `now`; durable when it returns.
// Long on purpose: one redb write transaction (puts, deletes, expiry purge) that a whole batch shares.
fn commit(db: &Database, ops: Vec<Op>, now: u64) -> io::Result<()> {
    let txn = db.begin_write().map_err(io_err)?;
    {
        let mut values = txn.open_table(VALUES).map_err(io_err)?;
        let mut expiry = txn.open_table(EXPIRY).map_err(io_err)?;
        for op in ops {
            let op = match op {
                Op::PutIfAbsent {
                    name,
                    record,
                    found,
                } => {
                    let live = values
                        .get(name.as_str())
                        .map_err(io_err)?
                        .and_then(|g| live_value(g.value(), now).map(<[u8]>::to_vec));
                    let stored = live.is_none();
                    let _ = found.set(live);
                    if !stored {
                        continue;
                    }
                    Op::Put { name, record }
                }
                Op::Incr {
                    name,
                    delta,
                    expires,
                    value,
                } => {
                    let live = values.get(name.as_str()).map_err(io_err)?.and_then(|g| {
                        let r = g.value();
                        live_value(r, now).map(|v| (v.to_vec(), expiry_of(r)))
                    });
                    let (current, expires) = match live {
                        None => (Ok(0), expires),
                        Some((v, e)) => (
                            std::str::from_utf8(&v)
                                .ok()
                                .and_then(|t| t.parse::<i64>().ok())
                                .ok_or_else(|| "the value is not a counter".to_string()),
                            e,
                        ),
                    };
                    let next = current.map(|c| c.saturating_add(delta));
                    let _ = value.set(next.clone());
                    match next {
                        Ok(n) => Op::Put {
                            name,
                            record: record(n.to_string().as_bytes(), expires),
                        },
                        Err(_) => continue,
                    }
                }
                op => op,
            };
            let (name, old) = match op {
                Op::Put { name, record } => {
                    let old = values
                        .insert(name.as_str(), record.as_slice())
                        .map_err(io_err)?
                        .map(|g| expiry_of(g.value()));
                    let expires = expiry_of(&record);
                    if expires != 0 {
                        expiry
                            .insert(index_key(expires, &name).as_slice(), ())
                            .map_err(io_err)?;
                    }
                    (name, old.filter(|&o| o != expires))
                }
                Op::Delete { name } => {
                    let old = values
                        .remove(name.as_str())
                        .map_err(io_err)?
                        .map(|g| expiry_of(g.value()));
                    (name, old)
                }
                Op::PutIfAbsent { .. } | Op::Incr { .. } => continue,
            };
            if let Some(old) = old.filter(|&o| o != 0) {
                expiry
                    .remove(index_key(old, &name).as_slice())
                    .map_err(io_err)?;
            }
        }
        let upto = index_key(now, "\u{7f}");
        let due: Vec<Vec<u8>> = expiry
            .range(..upto.as_slice())
            .map_err(io_err)?
            .take(PURGE_PER_COMMIT)
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(io_err)?;
        for k in due {
            expiry.remove(k.as_slice()).map_err(io_err)?;
            // A malformed index entry is dropped; a good one names its value.
            if let Some(Ok(name)) = k.get(8..).map(std::str::from_utf8) {
                values.remove(name).map_err(io_err)?;
            }
        }
    }
    txn.commit().map_err(io_err)
}

/// Imports the file-per-key layout of earlier versions (a file named by the
/// key's hash holding the record), then removes those files.
fn import_files(dir: &Path, store: &Store) -> io::Result<()> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let legacy_tmp = name.starts_with('.') && name.ends_with(".tmp");
        let legacy = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if legacy_tmp {
            std::fs::remove_file(entry.path())?;
        } else if legacy && entry.file_type()?.is_file() {
            let mut record = Vec::new();
            std::fs::File::open(entry.path())?.read_to_end(&mut record)?;
            found.push((entry.path(), name, record));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    let ops = found
        .iter()
        .filter(|(_, _, record)| record.len() >= 8)
        .map(|(_, name, record)| Op::Put {
            name: name.clone(),
            record: record.clone(),
        })
        .collect();
    store.with_db(|db| commit(db, ops, unix_now()))?;
    for (path, _, _) in &found {
        std::fs::remove_file(path)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    tracing::info!(
        dir = %dir.display(),
        entries = found.len(),
        "key-value files of an earlier version imported into {KV_FILE}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata;

    #[test]
    fn put_get_delete_and_expiry() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Local::open(dir.path()).expect("open");
        assert_eq!(kv.get(b"a", 100).expect("get"), None);
        kv.put(b"a", b"1", 0).expect("put");
        let later = unix_now() + 3600;
        kv.put(b"b", b"2", later).expect("put");
        assert_eq!(kv.get(b"a", 100).expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"b", later - 1).expect("get"), Some(b"2".to_vec()));
        assert_eq!(kv.get(b"b", later).expect("get"), None, "expired");
        kv.put(b"a", b"3", 0).expect("overwrite");
        assert_eq!(kv.get(b"a", 100).expect("get"), Some(b"3".to_vec()));
        kv.delete(b"a").expect("delete");
        kv.delete(b"never").expect("deleting an absent key is fine");
        assert_eq!(kv.get(b"a", 100).expect("get"), None);
    }

    #[test]
    fn put_if_absent_stores_exactly_once_among_concurrent_callers() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Arc::new(Local::open(dir.path()).expect("open"));
        for round in 0..20 {
            let key = format!("k{round}");
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (kv, key) = (kv.clone(), key.clone());
                    std::thread::spawn(move || {
                        kv.put_if_absent(key.as_bytes(), format!("{t}").as_bytes(), 0)
                            .expect("put_if_absent")
                    })
                })
                .collect();
            let found: Vec<Option<Vec<u8>>> = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            let winners = found.iter().filter(|f| f.is_none()).count();
            assert_eq!(winners, 1, "round {round}: {found:?}");
            let stored = kv.get(key.as_bytes(), 1).expect("get").expect("stored");
            assert!(found.iter().flatten().all(|f| *f == stored));
        }
        // An expired value counts as absent.
        kv.put(b"old", b"x", 1).expect("put");
        assert_eq!(kv.put_if_absent(b"old", b"y", 0).expect("pia"), None);
        assert_eq!(
            kv.put_if_absent(b"old", b"z", 0).expect("pia"),
            Some(b"y".to_vec())
        );
    }

    /// A file backend whose fsyncs fail with ENOSPC while `fail` is set.
    #[derive(Debug)]
    struct Flaky {
        inner: redb::backends::FileBackend,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> Result<u64, io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
            self.inner.read(offset, len)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.inner.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.inner.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            self.inner.write(offset, data)
        }
    }

    #[test]
    fn a_failed_commit_reads_as_disk_full_and_the_namespace_recovers() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Local::open(dir.path()).expect("open");
        kv.put(b"before", b"1", 0).expect("put");
        // Swap in a database over a backend that fails its fsyncs.
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let mut guard = kv.store.db.write().expect("lock");
            drop(guard.take());
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&kv.store.path)
                .expect("file");
            let backend = Flaky {
                inner: redb::backends::FileBackend::new(file).expect("backend"),
                fail: fail.clone(),
            };
            *guard = Some(
                Database::builder()
                    .create_with_backend(backend)
                    .expect("db"),
            );
        }
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let e = kv.put(b"during", b"2", 0).expect_err("the fsync fails");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        // The failed database was closed and the file opened again: the
        // namespace works without a restart, and nothing committed was lost.
        kv.put(b"after", b"3", 0).expect("works again");
        assert_eq!(kv.get(b"before", 1).expect("get"), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"after", 1).expect("get"), Some(b"3".to_vec()));
    }

    #[test]
    fn expired_entries_are_purged_by_later_commits() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Local::open(dir.path()).expect("open");
        kv.put(b"old", b"x", 1).expect("put");
        kv.put(b"extended", b"x", 1).expect("put");
        kv.put(b"extended", b"y", u64::MAX)
            .expect("put again, later expiry");
        kv.put(b"now", b"z", 0).expect("a later commit purges");
        let guard = kv.store.db.read().expect("lock");
        let txn = guard.as_ref().expect("open").begin_read().expect("read");
        let values = txn.open_table(VALUES).expect("values");
        assert!(values
            .get(Local::name(b"old").as_str())
            .expect("get")
            .is_none());
        assert!(values
            .get(Local::name(b"extended").as_str())
            .expect("get")
            .is_some());
        let expiry = txn.open_table(EXPIRY).expect("expiry");
        assert_eq!(
            expiry.len().expect("len"),
            1,
            "only the live entry's index remains"
        );
    }

    #[test]
    fn values_survive_reopening_and_versions_share_one_store() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = Local::open(dir.path()).expect("open");
        let b = Local::open(dir.path()).expect("a second handle while the first lives");
        a.put(b"k", b"v", 0).expect("put");
        assert_eq!(b.get(b"k", 1).expect("get"), Some(b"v".to_vec()));
        drop((a, b));
        let c = Local::open(dir.path()).expect("reopen");
        assert_eq!(c.get(b"k", 1).expect("get"), Some(b"v".to_vec()));
    }

    #[test]
    fn files_of_the_earlier_layout_are_imported() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut record = 0u64.to_le_bytes().to_vec();
        record.extend_from_slice(b"legacy");
        std::fs::write(dir.path().join(Local::name(b"k")), &record).expect("write");
        std::fs::write(
            dir.path().join(format!(".{}.tmp", Local::name(b"j"))),
            b"junk",
        )
        .expect("write");
        let kv = Local::open(dir.path()).expect("open");
        assert_eq!(kv.get(b"k", 1).expect("get"), Some(b"legacy".to_vec()));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(left, [std::ffi::OsString::from(KV_FILE)]);
    }

    #[test]
    fn concurrent_puts_are_all_durable() {
        let dir = tempfile::tempdir().expect("tmp");
        let kv = Arc::new(Local::open(dir.path()).expect("open"));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        kv.put(format!("{t}-{i}").as_bytes(), b"v", 0).expect("put");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        drop(kv);
        let kv = Local::open(dir.path()).expect("reopen");
        for t in 0..8 {
            for i in 0..25 {
                assert!(kv
                    .get(format!("{t}-{i}").as_bytes(), 1)
                    .expect("get")
                    .is_some());
            }
        }
    }
}
