//! The crash soak: a steady stream of mail through the default chain (dedup →
//! local-delivery into a Maildir) while the daemon is `kill -9`ed at random
//! moments and restarted on the same spool; then the queue is drained and the
//! Maildirs are counted against what got a 250. Nothing acked may be missing,
//! nothing may be delivered twice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{plugin_toml, test_config, Client, Daemon, QueueState, TestDir};

/// A message that got a 250: its token and its recipients.
type Acked = (String, Vec<String>);

/// What a soak found.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Times the daemon was killed with SIGKILL.
    pub kills: usize,
    /// Messages that got a 250.
    pub acked: usize,
    /// Deliveries expected from them (acked messages × recipients).
    pub expected: usize,
    /// Maildir files found for acked messages.
    pub delivered: usize,
    /// Acked deliveries missing.
    pub lost: usize,
    /// Deliveries found more than once.
    pub duplicated: usize,
    /// Messages delivered although their 250 never arrived (allowed: the
    /// kill came between the commit and the reply).
    pub unacked_delivered: usize,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills; {} messages acked ({} deliveries expected), {} delivered, {} lost, {} delivered more than once; {} delivered without their 250 reaching the client",
            self.kills, self.acked, self.expected, self.delivered, self.lost, self.duplicated, self.unacked_delivered
        )
    }
}

fn config(dir: &Path) -> String {
    let mail = dir.join("mail");
    let plugins = format!(
        "{}{}",
        plugin_toml("dedup", "dedup", "kv = true"),
        plugin_toml(
            "local-delivery",
            "local_delivery",
            &format!("dirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"localhost\"] }}"),
        )
    );
    test_config(
        dir,
        "max_connections_per_ip = 200",
        &format!(
            "[pipeline]\nrescan_secs = 1\nretry_min_secs = 1\nretry_max_secs = 2\n\n{plugins}"
        ),
    )
}

/// Counts every token's deliveries per mailbox (token = the Subject's `soak-N`).
fn count_deliveries(mail: &Path) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for user in ["alice", "bob"] {
        let dir = mail.join(user).join("Maildir/new");
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Some(token) = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(|s| s.trim().to_string())
            {
                *out.entry((user.to_string(), token)).or_insert(0) += 1;
            }
        }
    }
    out
}

/// A connection cut by a kill makes the test client panic (caught); keep
/// those expected panics out of the output, and every other one in it.
fn quiet_sender_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let soak = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("soak-sender-"));
            if !soak {
                default(info);
            }
        }));
    });
}

/// Runs a soak with `kills` kills, `senders` concurrent clients, and
/// `between` as the range of run time between kills (milliseconds).
pub fn run(kills: usize, senders: usize, between: (u64, u64)) -> SoakReport {
    let dir = TestDir::new("soak");
    let cfg = config(dir.path());
    let addr: Arc<Mutex<SocketAddr>> = Arc::new(Mutex::new("127.0.0.1:9".parse().expect("addr")));
    let stop = Arc::new(AtomicBool::new(false));
    // token -> recipients, for messages that got a 250.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut d = Daemon::start_with(dir.path(), &cfg);
    *addr.lock().expect("lock") = d.addr;
    quiet_sender_panics();
    let threads: Vec<_> = (0..senders)
        .map(|t| {
            let (addr, stop, acked) = (addr.clone(), stop.clone(), acked.clone());
            std::thread::Builder::new()
                .name(format!("soak-sender-{t}"))
                .spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let token = format!("soak-{t}-{n}");
                    let rcpts: Vec<String> = if n.is_multiple_of(3) {
                        vec!["alice@localhost".into(), "bob@localhost".into()]
                    } else {
                        vec!["alice@localhost".into()]
                    };
                    let a = *addr.lock().expect("lock");
                    let result = std::panic::catch_unwind(|| {
                        let mut c = Client::connect_raw(a);
                        if c.read_reply().0 != 220 {
                            return false;
                        }
                        let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
                        let body = format!("Subject: {token}\r\nMessage-ID: <{token}@soak.test>\r\n\r\nsoak\r\n");
                        c.send_message("soak@remote.test", &to, body.as_bytes()).0 == 250
                    });
                    match result {
                        Ok(true) => acked.lock().expect("lock").push((token, rcpts)),
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
            .expect("spawn sender")
        })
        .collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    for _ in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = between.0 + seed % (between.1 - between.0).max(1);
        std::thread::sleep(Duration::from_millis(wait));
        d.kill9();
        d = Daemon::start_with(dir.path(), &cfg);
        *addr.lock().expect("lock") = d.addr;
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Drain: everything queued must be delivered.
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        && ![
            QueueState::Incoming,
            QueueState::Active,
            QueueState::Deferred,
        ]
        .iter()
        .all(|s| d.spool_files(*s).is_empty())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let found = count_deliveries(&dir.path().join("mail"));
    let acked = acked.lock().expect("lock").clone();
    let mut report = SoakReport {
        kills,
        acked: acked.len(),
        ..SoakReport::default()
    };
    let mut acked_keys = std::collections::HashSet::new();
    for (token, rcpts) in &acked {
        for r in rcpts {
            let user = r.split('@').next().unwrap_or("").to_string();
            acked_keys.insert((user.clone(), token.clone()));
            report.expected += 1;
            match found.get(&(user, token.clone())) {
                None => report.lost += 1,
                Some(&n) => {
                    report.delivered += 1;
                    if n > 1 {
                        report.duplicated += 1;
                    }
                }
            }
        }
    }
    for (key, n) in &found {
        if !acked_keys.contains(key) {
            report.unacked_delivered += 1;
            if *n > 1 {
                report.duplicated += 1;
            }
        }
    }
    if report.lost > 0 || report.duplicated > 0 {
        eprintln!("soak failed; daemon log at {}", d.log_path().display());
        // Keep the directory for inspection.
        std::mem::forget(dir);
    }
    report
}
