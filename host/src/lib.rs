//! finaldot: a mail server whose 250 comes as soon as the message is durable.
//!
//! Data flows one way: [`smtp`] (sessions) → [`spool`] (durable queue) →
//! [`pipeline`] (scheduler, retries, bounces) → [`plugins`] (wasmtime runtime,
//! limits, capabilities) → delivery. [`config`] turns the TOML file into what
//! each part needs; [`daemon`] wires them together for `finaldot run`.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod group_commit;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod plugins;
pub mod queue;
pub mod smtp;
pub mod spool;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A copy of the value behind `lock`. A lock poisoned by a writer that
/// panicked still holds the last value written, which is what every reader
/// here wants (settings, the chain, a stage's plugin), so poison is ignored.
pub fn read_clone<T: Clone>(lock: &std::sync::RwLock<T>) -> T {
    match lock.read() {
        Ok(v) => v.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// How long a start keeps retrying an address that is in use.
pub const BIND_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds a listening socket. An address in use is retried every half second
/// for up to [`BIND_RETRY_FOR`], each retry logged, as Exim's
/// `daemon_startup_retries` and nginx do: a supervisor that restarts finaldot
/// the moment `kill -9` returns finds the old process's socket not yet gone.
/// A port another program keeps still fails, with the same clear error.
pub async fn bind_listener(
    addr: std::net::SocketAddr,
    what: &str,
) -> std::io::Result<tokio::net::TcpListener> {
    let started = std::time::Instant::now();
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < BIND_RETRY_FOR =>
            {
                tracing::warn!(%addr, listener = what, error = %e, "address in use; retrying in 0.5 s");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{what}: cannot listen on {addr}: {e}"),
                ))
            }
            Ok(l) => return Ok(l),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_taken_for_good_fails_after_the_retries_with_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let started = std::time::Instant::now();
        let e = bind_listener(addr, "smtp")
            .await
            .expect_err("port is taken");
        assert!(started.elapsed() >= BIND_RETRY_FOR);
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            e.to_string()
                .starts_with(&format!("smtp: cannot listen on {addr}: ")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_port_freed_during_the_retries_is_taken() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1200));
            drop(taken);
        });
        let l = bind_listener(addr, "smtp").await.expect("bound once freed");
        assert_eq!(l.local_addr().expect("addr"), addr);
        release.join().expect("thread");
    }
}
