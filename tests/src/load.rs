//! The SMTP load generator: C connections, each sending messages back to back
//! over one session (EHLO once, then MAIL/RCPT/DATA per message), every
//! message with a unique Message-ID. It measures each message's ack latency,
//! from writing the final `.CRLF` to reading the whole reply, into an HDR
//! histogram. It talks to any `HOST:PORT`, so the same run can measure
//! finaldot and, say, Postfix.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowers the calling thread's priority (Linux, per thread), so that a load
/// generator on the same machine as the server under test does not take the
/// server's CPU: real clients are elsewhere. Applied alike whatever the server.
fn yield_to_server(nice: i32) {
    #[allow(unsafe_code)]
    // SAFETY: a plain system call on the calling thread; no memory involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Server address.
    pub addr: SocketAddr,
    /// Concurrent connections.
    pub concurrency: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many messages in all.
    pub count: Option<u64>,
    /// Body size in bytes (approximate; whole lines).
    pub size: usize,
    /// Recipients per message.
    pub recipients: usize,
    /// Recipient domain.
    pub domain: String,
    /// Local part of the recipients (`user`, then `user1`, `user2`… for several).
    pub user: String,
    /// Niceness of the load threads (0 = as the caller).
    pub nice: i32,
}

/// What a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Messages that got a 250 after DATA.
    pub accepted: u64,
    /// Messages refused or failed (any non-250 final reply or I/O error).
    pub errors: u64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Accepted messages per second.
    pub per_second: f64,
    /// Ack latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} accepted, {} errors in {:.1}s: {:.0} msg/s; ack latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            self.accepted,
            self.errors,
            self.seconds,
            self.per_second,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms
        )
    }
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut c = Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        c.expect(220)?;
        c.w.write_all(b"EHLO loadgen.test\r\n")?;
        c.expect(250)?;
        Ok(c)
    }

    fn reply(&mut self) -> std::io::Result<(u16, String)> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Ok((code, all));
            }
        }
    }

    fn expect(&mut self, code: u16) -> std::io::Result<()> {
        let (c, text) = self.reply()?;
        if c == code {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "expected {code}, got {}",
                text.trim()
            )))
        }
    }
}

fn body(size: usize, id: &str) -> Vec<u8> {
    let mut b = format!(
        "From: loadgen <load@loadgen.test>\r\nSubject: load {id}\r\nMessage-ID: <{id}@loadgen.test>\r\n\r\n"
    )
    .into_bytes();
    let line = b"0123456789 the quick brown fox jumps over the lazy dog 0123456789\r\n";
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

/// Runs the load and reports.
pub fn run(spec: &LoadSpec) -> LoadReport {
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
    ));
    let accepted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let run_id = std::process::id();
    let started = Instant::now();
    let threads: Vec<_> = (0..spec.concurrency)
        .map(|t| {
            let (spec, hist, accepted, errors, issued, stop, first_error) = (
                spec.clone(),
                hist.clone(),
                accepted.clone(),
                errors.clone(),
                issued.clone(),
                stop.clone(),
                first_error.clone(),
            );
            std::thread::spawn(move || {
                if spec.nice > 0 {
                    yield_to_server(spec.nice);
                }
                let mut local =
                    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
                let mut conn: Option<Conn> = None;
                let mut n = 0u64;
                let fail = |e: String| {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut f = first_error.lock().expect("lock");
                    if f.is_none() {
                        *f = Some(e);
                    }
                };
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(d) = spec.duration {
                        if started.elapsed() >= d {
                            break;
                        }
                    }
                    if let Some(c) = spec.count {
                        if issued.fetch_add(1, Ordering::Relaxed) >= c {
                            break;
                        }
                    }
                    n += 1;
                    let id = format!("{run_id}.{t}.{n}");
                    let result = (|| -> std::io::Result<Duration> {
                        if conn.is_none() {
                            conn = Some(Conn::open(spec.addr)?);
                        }
                        let c = conn
                            .as_mut()
                            .ok_or_else(|| std::io::Error::other("no connection"))?;
                        let mut cmds = String::from("MAIL FROM:<load@loadgen.test>\r\n");
                        for r in 0..spec.recipients {
                            let user = if r == 0 {
                                spec.user.clone()
                            } else {
                                format!("{}{r}", spec.user)
                            };
                            cmds.push_str(&format!("RCPT TO:<{user}@{}>\r\n", spec.domain));
                        }
                        cmds.push_str("DATA\r\n");
                        c.w.write_all(cmds.as_bytes())?;
                        for _ in 0..=spec.recipients {
                            c.expect(250)?;
                        }
                        c.expect(354)?;
                        let msg = body(spec.size, &id);
                        let (content, end) = msg.split_at(msg.len() - 3);
                        c.w.write_all(content)?;
                        let t = Instant::now();
                        c.w.write_all(end)?;
                        let (code, text) = c.reply()?;
                        let latency = t.elapsed();
                        if code != 250 {
                            return Err(std::io::Error::other(format!(
                                "final reply {}",
                                text.trim()
                            )));
                        }
                        Ok(latency)
                    })();
                    match result {
                        Ok(lat) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            let _ = local.record((lat.as_micros() as u64).max(1));
                        }
                        Err(e) => {
                            fail(e.to_string());
                            conn = None;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                if let Some(mut c) = conn {
                    let _ = c.w.write_all(b"QUIT\r\n");
                }
                if let Ok(mut h) = hist.lock() {
                    let _ = h.add(&local);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let h = hist.lock().expect("lock");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let accepted = accepted.load(Ordering::Relaxed);
    let first_error = first_error.lock().expect("lock").clone();
    LoadReport {
        accepted,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        per_second: accepted as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        first_error,
    }
}
