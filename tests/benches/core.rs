//! Micro-benchmarks of the core without plugins: the SMTP session's parsing
//! throughput (bytes/s through DATA, dot-unstuffing and the framing checks)
//! and the spool's commit alone (write, fsync, rename, batched directory
//! fsync) at concurrency 1, 8 and 64.
//!
//! Reproduce: `./dev bench` (or `cargo bench -p finaldot-e2e --bench core`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use finaldot::smtp::policy::{DomainUsers, Recipients};
use finaldot::smtp::session::{Session, SessionConfig, Step};
use finaldot::spool::{Envelope, Spool};

fn parser() {
    let cfg = Arc::new(SessionConfig {
        hostname: "bench".into(),
        max_message_size: 1 << 30,
        max_recipients: 1000,
        max_errors: 20,
        recipients: Recipients::new([("localhost".to_string(), DomainUsers::CatchAll)], None),
        starttls: false,
        submission: false,
        sender_login: Default::default(),
        postmaster: finaldot::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain: "localhost".into(),
        },
        door: Default::default(),
    });
    let mut body = Vec::new();
    let line: &[u8] = b"..a line of text that starts with a dot and is sixty-odd octets long\r\n";
    while body.len() < 8 << 20 {
        body.extend_from_slice(line);
    }
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b".\r\n");
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut s = Session::new(cfg.clone(), "127.0.0.1".parse().expect("ip"));
        let t = Instant::now();
        let mut out = 0usize;
        for chunk in input.chunks(64 * 1024) {
            s.feed(chunk);
            loop {
                match s.next_step() {
                    Step::NeedInput => break,
                    Step::Begin(_) => s.begun(Ok(())),
                    Step::Data(d) => out += d.len(),
                    Step::Commit => s.committed(Ok("Q".into())),
                    _ => {}
                }
            }
        }
        best = best.min(t.elapsed());
        assert!(out > body.len() / 2);
    }
    println!(
        "smtp session: {:.0} MiB/s through DATA (8 MiB message, 64 KiB reads, best of 5)",
        input.len() as f64 / best.as_secs_f64() / (1 << 20) as f64
    );
}

fn spool_commits(concurrency: usize, total: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(Spool::open(dir.path()).expect("spool"));
    let env = Envelope {
        mail_from: "a@b.test".into(),
        rcpt_to: vec!["x@localhost".into()],
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
    };
    let body = vec![b'x'; 4096];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    let mut lat: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (spool, env, body) = (spool.clone(), env.clone(), body.clone());
            let n = total / concurrency;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let (spool2, env2, body2) = (spool.clone(), env.clone(), body.clone());
                    let prepared = tokio::task::spawn_blocking(move || {
                        let mut w = spool2.begin(&env2)?;
                        w.write(&body2)?;
                        w.finish()
                    })
                    .await
                    .expect("join")
                    .expect("write");
                    spool.commit(prepared).await.expect("commit");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("join"));
        }
        all
    });
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "spool commit, concurrency {concurrency:>2}: {:>6.0} commits/s, latency ms p50 {:.2} p99 {:.2}",
        lat.len() as f64 / secs,
        q(0.5),
        q(0.99)
    );
}

fn main() {
    parser();
    for c in [1, 8, 64] {
        spool_commits(c, 2048);
    }
}
