//! A plugin's key-value namespace, on the backend its `[[plugins]]` entry
//! chooses: the local redb store in the data directory (the default; one
//! node) or a prefix on a Redis server (shared by several nodes). Plugins
//! see no difference: the same five operations with the same meaning,
//! which one conformance suite (`tests/tests/kv.rs`) checks on both.
//!
//! A backend that cannot answer (Redis down, slow, refusing) is
//! [`KvError::Unavailable`]: the plugin call that needed it ends in a
//! deferral of the message, not a fault, so the message waits in the
//! spool until the backend is back.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub mod local;
pub mod redis;

pub use local::KV_FILE;

/// Which backend holds a namespace, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvGrant {
    /// The local store in this directory.
    Local(PathBuf),
    /// Keys under a prefix on a Redis server.
    Redis(redis::RedisGrant),
}

/// Why a key-value operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The local store failed (a full disk, an I/O error).
    #[error("{0}")]
    Storage(#[from] io::Error),
    /// The backend did not answer, or answered with an error: nothing is
    /// known about the key, and the message must wait.
    #[error("{backend} is unavailable: {message}")]
    Unavailable {
        /// Which backend (`redis redis://host:port/db`).
        backend: String,
        /// What went wrong.
        message: String,
        /// Whether it was a timeout (else a refusal or an error reply).
        timed_out: bool,
    },
}

enum Backend {
    Local(local::Local),
    Redis(Box<redis::RedisKv>),
}

/// A handle on one namespace.
pub struct Kv {
    backend: Backend,
}

/// A value's expiry in the local store (seconds since the epoch, 0 = never).
fn expires_at(now: u64, ttl_secs: Option<u64>) -> u64 {
    ttl_secs.map(|t| now.saturating_add(t)).unwrap_or(0)
}

impl Kv {
    /// Opens the namespace (the local store's directory is created; Redis
    /// is only connected to when first used).
    pub fn open(grant: &KvGrant) -> io::Result<Kv> {
        let backend = match grant {
            KvGrant::Local(path) => Backend::Local(local::Local::open(path)?),
            KvGrant::Redis(g) => {
                Backend::Redis(Box::new(redis::RedisKv::open(g).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("redis {}: {e}", redis::redacted(&g.url)),
                    )
                })?))
            }
        };
        Ok(Kv { backend })
    }

    /// Whether the namespace is on another machine (its reads wait on the network).
    pub fn is_remote(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// The value, if present and not expired at `now` (seconds since the
    /// epoch; Redis counts lifetimes by its own clock). `limit` bounds the
    /// wait for a remote backend.
    pub fn get(
        &self,
        key: &[u8],
        now: u64,
        limit: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, KvError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.get(key, now)?),
            Backend::Redis(r) => r.get(key, limit),
        }
    }

    /// Stores a value durably, for `ttl_secs` from `now` (`None`: for ever).
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        now: u64,
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<(), KvError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.put(key, value, expires_at(now, ttl_secs))?),
            Backend::Redis(r) => r.put(key, value, ttl_secs, limit),
        }
    }

    /// Stores a value unless a live one is there, atomically: `None` when
    /// this call stored it, else the value already there.
    pub fn put_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        now: u64,
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, KvError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.put_if_absent(key, value, expires_at(now, ttl_secs))?),
            Backend::Redis(r) => r.put_if_absent(key, value, ttl_secs, limit),
        }
    }

    /// Adds `delta` to the counter under `key` atomically (absent or
    /// expired: 0) and returns the new value; a counter it creates lives
    /// `ttl_secs` from `now`.
    pub fn incr(
        &self,
        key: &[u8],
        delta: i64,
        now: u64,
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<i64, KvError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.incr(key, delta, expires_at(now, ttl_secs))?),
            Backend::Redis(r) => r.incr(key, delta, ttl_secs, limit),
        }
    }

    /// Deletes a key (absent is fine).
    pub fn delete(&self, key: &[u8], limit: Option<Duration>) -> Result<(), KvError> {
        match &self.backend {
            Backend::Local(l) => Ok(l.delete(key)?),
            Backend::Redis(r) => r.delete(key, limit),
        }
    }
}
