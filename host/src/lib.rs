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
pub mod delivery;
pub mod dns;
pub mod door;
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

/// Text from outside (a client's user name, HELO or address, a PROXY
/// field, a plugin's log line) as it may appear in a log line: control
/// characters (CR, LF, ESC, NEL, …) and the bidirectional overrides are
/// written escaped (`\n`, `\u{1b}`), never raw, so nobody can forge a log
/// line, colour a terminal or reorder what an administrator reads.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            // A backslash is escaped too, so a client's literal `\n` cannot
            // pass for one of these escapes.
            let unsafe_char = c.is_control()
                || matches!(
                    c,
                    '\\' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                );
            if unsafe_char {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Lowers the calling thread's scheduling priority: `nice` 19 puts it in
/// the SCHED_IDLE class (it runs only when nothing else wants the CPU),
/// lower values set that niceness. Used for work that must never take
/// the CPU from SMTP replies (the pipeline, AUTH checks). False when the
/// system refused.
pub fn lower_thread_priority(nice: i32) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on the calling thread (who/pid 0), with a
    // fully initialised parameter struct; no memory is shared.
    let r = unsafe {
        if nice >= 19 {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        } else {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice)
        }
    };
    r == 0
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

    #[test]
    fn printable_escapes_what_could_forge_or_colour_a_log_line() {
        let forged = "bob\r\n2026-12-07T00:00:00Z INFO smtp{client=198.51.100.9:4242}: authenticated user=admin\u{1b}[32m\u{202e}";
        let shown = Printable(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{1b}'));
        assert!(!shown.contains('\u{202e}'));
        assert!(shown.starts_with("bob\\r\\n2026"), "{shown}");
        assert!(shown.contains("\\u{1b}[32m"), "{shown}");
        assert_eq!(
            Printable("jörg@example.test \"x\"").to_string(),
            "jörg@example.test \"x\""
        );
        // A client's literal backslash-n stays told apart from an escape.
        assert_eq!(Printable("a\\nb").to_string(), "a\\\\nb");
        assert!(!Printable("\u{200f}x").to_string().contains('\u{200f}'));
    }

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
