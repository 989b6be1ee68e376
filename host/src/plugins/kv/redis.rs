//! The Redis key-value backend: a namespace is the keys under one prefix on
//! a Redis server that several finaldot nodes share, so a dedup claim,
//! a rate count or a greylist entry taken on one node is seen by the others.
//!
//! Every operation is one Redis command, atomic on the server: `GET`, `SET`
//! with `EX` for a lifetime, `DEL`, and `SET … NX GET` for put-if-absent
//! (Redis 7.0 or later). Lifetimes are counted by Redis's clock, the same
//! for every node. Connections are opened on first use, kept in a small
//! pool, and dropped after any error; every command has a bounded wait, so
//! a Redis that is down or stuck costs a plugin call at most its timeout and
//! the message is deferred ([`super::KvError::Unavailable`]), never lost.

use std::sync::Mutex;
use std::time::Duration;

use ::redis::{Client, Connection, IntoConnectionInfo, RedisError};

use super::KvError;

/// Idle connections kept per namespace (one per concurrent pipeline worker
/// is all that is ever used; 64 workers by default with a Redis namespace).
const MAX_IDLE: usize = 64;

/// A Redis namespace as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisGrant {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: String,
    /// A password that overrides the URL's (read from `password_file`).
    pub password: Option<String>,
    /// What every key of the namespace starts with.
    pub prefix: String,
    /// The longest wait for a connection or one reply.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisGrant")
            .field("url", &redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The URL without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(an unparsable URL)".into(),
    }
}

/// A namespace on a Redis server.
pub struct RedisKv {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    prefix: Vec<u8>,
    timeout: Duration,
    /// The server, as logs name it (no password).
    what: String,
}

impl RedisKv {
    /// Checks the URL; connects only when first used (a Redis that is down
    /// when the daemon starts defers messages, it does not stop the daemon).
    pub fn open(grant: &RedisGrant) -> Result<RedisKv, RedisError> {
        let mut info = grant.url.as_str().into_connection_info()?;
        if let Some(p) = &grant.password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        Ok(RedisKv {
            client: Client::open(info)?,
            idle: Mutex::new(Vec::new()),
            prefix: grant.prefix.as_bytes().to_vec(),
            timeout: grant.timeout,
            what: redacted(&grant.url),
        })
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    /// Runs one command on a pooled connection within `limit` (and the
    /// namespace's own timeout).
    fn run<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
        limit: Option<Duration>,
    ) -> Result<T, KvError> {
        let wait = limit.map_or(self.timeout, |l| l.min(self.timeout));
        if wait.is_zero() {
            return Err(
                self.unavailable("the plugin call's time limit leaves no time to ask", true)
            );
        }
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let ask = |conn: &mut Connection| {
            conn.set_read_timeout(Some(wait))
                .and_then(|()| conn.set_write_timeout(Some(wait)))
                .and_then(|()| cmd.query::<T>(conn))
        };
        let fresh = || {
            self.client
                .get_connection_with_timeout(wait)
                .map_err(|e| self.failed(&e))
        };
        let was_pooled = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => fresh()?,
        };
        let mut answer = ask(&mut conn);
        // A pooled connection that Redis closed (it restarted, or dropped
        // idle clients) fails at once: ask once more on a new one. Every
        // command here gives the same answer when repeated (a put-if-absent
        // whose first try did store finds its own value).
        let dropped =
            |e: &RedisError| !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped());
        if was_pooled && matches!(&answer, Err(e) if dropped(e)) {
            conn = fresh()?;
            answer = ask(&mut conn);
        }
        match answer {
            Ok(v) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(conn);
                    }
                }
                Ok(v)
            }
            // The connection may be mid-reply or dead: never reuse it.
            Err(e) => Err(self.failed(&e)),
        }
    }

    fn failed(&self, e: &RedisError) -> KvError {
        self.unavailable(&e.to_string(), e.is_timeout())
    }

    fn unavailable(&self, why: &str, timed_out: bool) -> KvError {
        KvError::Unavailable {
            backend: format!("redis {}", self.what),
            message: why.to_string(),
            timed_out,
        }
    }

    /// The value, if present and not expired.
    pub fn get(&self, key: &[u8], limit: Option<Duration>) -> Result<Option<Vec<u8>>, KvError> {
        self.run(::redis::cmd("GET").arg(self.key(key)), limit)
    }

    /// Stores a value; `ttl_secs` `None` means for ever, `Some(0)` stores
    /// nothing that a later read could see (as the local backend).
    pub fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<(), KvError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        match ttl_secs {
            None => {}
            Some(0) => return self.delete(key, limit),
            Some(t) => {
                cmd.arg("EX").arg(t);
            }
        }
        self.run::<()>(&cmd, limit)
    }

    /// Stores a value unless a live one is there, atomically on the server:
    /// `None` when this call stored it, else the value already there.
    pub fn put_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, KvError> {
        if ttl_secs == Some(0) {
            // Stored and expired at once: only what is there counts.
            return self.get(key, limit);
        }
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("NX").arg("GET");
        if let Some(t) = ttl_secs {
            cmd.arg("EX").arg(t);
        }
        self.run(&cmd, limit)
    }

    /// Adds `delta` to the counter under `key` in one atomic step (a Lua
    /// script: INCRBY, then EXPIRE when the key has no lifetime yet, so a
    /// counter made here expires and an existing one keeps its window).
    pub fn incr(
        &self,
        key: &[u8],
        delta: i64,
        ttl_secs: Option<u64>,
        limit: Option<Duration>,
    ) -> Result<i64, KvError> {
        const SCRIPT: &str = "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) \
            if tonumber(ARGV[2]) > 0 and redis.call('TTL', KEYS[1]) == -1 then \
            redis.call('EXPIRE', KEYS[1], ARGV[2]) end return v";
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(1)
            .arg(self.key(key))
            .arg(delta)
            .arg(ttl_secs.unwrap_or(0));
        self.run(&cmd, limit)
    }

    /// Deletes a key (absent is fine).
    pub fn delete(&self, key: &[u8], limit: Option<Duration>) -> Result<(), KvError> {
        self.run::<()>(::redis::cmd("DEL").arg(self.key(key)), limit)
    }
}
