//! Durability end to end: `kill -9` the real daemon and count what survived.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use finaldot_e2e::*;

#[test]
fn message_acked_then_kill9_survives_restart() {
    let dir = TestDir::new("kill-after-250");
    let mut d = Daemon::start(dir.path());
    let body = b"Subject: survive\r\n\r\nI was acked.\r\n";
    let mut c = d.connect();
    let (code, text) = c.send_message("a@b.test", &["alice@example.test"], body);
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    d.kill9();

    let d = Daemon::start(dir.path());
    let files = d.spool_files(QueueState::Incoming);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(&id));
    let (_, msg) = read_message(&files[0]).expect("complete after kill -9");
    assert!(msg.ends_with(body));
    assert!(d.log().contains("queued=1"), "{}", d.log());
}

#[test]
fn kill9_in_the_middle_of_data_leaves_nothing_queued_or_corrupt() {
    let dir = TestDir::new("kill-mid-data");
    let mut d = Daemon::start(dir.path());
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    for _ in 0..2000 {
        c.send(b"half a message, never finished .......................................\r\n");
    }
    // Wait until the daemon has started writing, so the kill tears a real file.
    assert!(wait_until(Duration::from_secs(10), || !d
        .spool_files(QueueState::Tmp)
        .is_empty()));
    d.kill9();

    let d = Daemon::start(dir.path());
    assert!(d.spool_files(QueueState::Incoming).is_empty());
    assert!(d.spool_files(QueueState::Corrupt).is_empty());
    assert!(d.spool_files(QueueState::Tmp).is_empty());
    assert!(d.log().contains("tmp_removed=1"), "{}", d.log());
}

#[test]
fn kill9_under_load_loses_no_acked_message() {
    let dir = TestDir::new("kill-under-load");
    let mut d = Daemon::start(dir.path());
    let acked = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..6 {
        let acked = acked.clone();
        let stop = stop.clone();
        let addr = d.addr;
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let body = format!(
                    "Subject: load {t}-{n}\r\nMessage-ID: <{t}.{n}@load.test>\r\n\r\n{}\r\n",
                    "z".repeat(200 * (n % 20))
                );
                // Any I/O failure is the kill landing; only a read 250 counts as acked.
                let r = std::panic::catch_unwind(|| {
                    let mut c = Client::connect_raw(addr);
                    if c.read_reply().0 != 220 {
                        return None;
                    }
                    let (code, text) =
                        c.send_message("load@b.test", &["bob@example.test"], body.as_bytes());
                    (code == 250).then(|| queued_id(&text))
                });
                match r {
                    Ok(Some(id)) => acked.lock().expect("lock").push((id, body.into_bytes())),
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    assert!(wait_until(Duration::from_secs(30), || acked
        .lock()
        .map(|a| a.len() >= 40)
        .unwrap_or(false)));
    d.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().expect("lock").clone();
    let d = Daemon::start(dir.path());
    let incoming = d.spool_files(QueueState::Incoming);
    assert!(
        d.spool_files(QueueState::Corrupt).is_empty(),
        "corrupt files after kill -9"
    );
    for (id, body) in &acked {
        let path = incoming
            .iter()
            .find(|p| p.ends_with(id))
            .unwrap_or_else(|| panic!("acked message {id} lost ({} acked)", acked.len()));
        let (_, msg) = read_message(path).expect("complete");
        assert!(msg.ends_with(body), "{id} content differs");
    }
    eprintln!(
        "{} acked before kill -9, all {} found complete; {} in incoming",
        acked.len(),
        acked.len(),
        incoming.len()
    );
}

#[test]
fn crash_soak_five_kills_nothing_lost_nothing_doubled() {
    let report = finaldot_e2e::soak::run(5, 4, (300, 900));
    eprintln!("{report}");
    assert_eq!(report.kills, 5);
    assert!(report.acked > 20, "too little mail got through: {report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.duplicated, 0, "{report}");
    assert_eq!(report.delivered, report.expected, "{report}");
}

/// Issue 15.3: a supervisor that starts finaldot again the moment `kill -9`
/// returns (the old process not yet reaped, its socket and spool lock maybe
/// not yet released) gets a daemon that comes up on the same port; across 20
/// such cycles every acked message is delivered exactly once.
#[test]
fn restart_right_after_kill9_comes_up_on_the_same_port() {
    let dir = TestDir::new("restart-after-kill9");
    let mail = dir.path().join("mail");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = chain_config(dir.path(), &local_delivery_toml(&mail))
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let mut killed = Vec::new();
    let mut d = Daemon::start_with(dir.path(), &config);
    for i in 0..20 {
        assert_eq!(d.addr.port(), port);
        let mut c = d.connect();
        let body =
            format!("Subject: cycle {i}\r\nMessage-ID: <{i}@restart.test>\r\n\r\ncycle {i}\r\n");
        let (code, text) =
            c.send_message("s@remote.test", &["alice@example.test"], body.as_bytes());
        assert_eq!(code, 250, "cycle {i}: {text}");
        // SIGKILL without waiting for the process to be reaped, then start at once.
        d.signal("KILL");
        killed.push(d);
        d = Daemon::start_with(dir.path(), &config);
    }
    drop(killed);
    let inbox = mail.join("alice/Maildir/new");
    let files = wait_for_files(&inbox, 20, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), || d.queue_drained()),
        "{}",
        d.log()
    );
    let mut subjects: Vec<String> = wait_for_files(&inbox, 20, Duration::from_secs(1))
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read delivery");
            text.lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(files.len(), 20, "{files:?}");
    assert_eq!(subjects.len(), 20, "{subjects:?}");
}
