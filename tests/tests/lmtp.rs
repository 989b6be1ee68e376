//! LMTP delivery to a real Dovecot (issue 21): local recipients handed to
//! Dovecot's LMTP over TCP and over its Unix socket, read back over IMAP by
//! Python's imaplib; one reply per recipient after the data; Dovecot down,
//! then back; a kill -9 after Dovecot's replies; a recipient Dovecot does
//! not know bounces to its sender.

use std::time::Duration;

use finaldot_e2e::dovecot::Dovecot;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

/// A daemon config delivering every local domain over LMTP to `address`,
/// no plugins, retries after 1 s.
fn lmtp_config(dir: &std::path::Path, address: &str) -> String {
    test_config(
        dir,
        "",
        &format!(
            "[pipeline]\nrescan_secs = 1\nretry_min_secs = 1\nretry_max_secs = 1\n\n[lmtp]\naddress = {address:?}\n"
        ),
    )
}

/// The part of a message Dovecot stored that finaldot received: what the
/// client sent must be its tail; before it, Dovecot's Return-Path and
/// finaldot's Received.
fn assert_tail(stored: &[u8], sent: &[u8]) {
    let text = String::from_utf8_lossy(stored);
    assert!(stored.ends_with(sent), "not the bytes sent:\n{text}");
    let added = &text[..stored.len() - sent.len()];
    assert!(added.starts_with("Return-Path: <"), "{added}");
    assert!(added.contains("by mx.test"), "{added}");
}

#[test]
fn a_message_over_lmtp_reads_back_byte_for_byte_over_imap() {
    let dir = TestDir::new("lmtp-imap");
    let dovecot = Dovecot::start(dir.path());
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let d = Daemon::start_with(dir.path(), &lmtp_config(dir.path(), &addr));
    // A leading dot, 8-bit text, a long line: nothing may change on the way.
    let sent = "Subject: over LMTP\r\nFrom: s@remote.test\r\n\r\n.a line with a dot\r\n\u{e9}t\u{e9} \u{2014} 8-bit\r\n..two dots\r\n"
        .as_bytes()
        .to_vec();
    d.send("s@remote.test", &["alice@example.test"], &sent);
    assert_tail(&dovecot.wait_for("alice", 1, &d)[0], &sent);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    // Logged as the message completes; the log may lag.
    assert!(
        wait_until(LONG, || d.log().contains("delivered over LMTP 127.0.0.1")),
        "{}",
        d.log()
    );
}

#[test]
fn over_the_unix_socket_too() {
    let dir = TestDir::new("lmtp-unix");
    let dovecot = Dovecot::start(dir.path());
    let addr = format!("unix:{}", dovecot.socket().display());
    let d = Daemon::start_with(dir.path(), &lmtp_config(dir.path(), &addr));
    let sent = b"Subject: over the socket\r\n\r\nhello\r\n".to_vec();
    d.send("s@remote.test", &["bob@example.test"], &sent);
    assert_tail(&dovecot.wait_for("bob", 1, &d)[0], &sent);
}

#[test]
fn two_recipients_in_one_transaction_each_get_their_own_reply() {
    let dir = TestDir::new("lmtp-two");
    let dovecot = Dovecot::start(dir.path());
    // bob's mailbox cannot be written for now: Dovecot takes his RCPT, then
    // answers 451 for him after the data and 250 for alice.
    dovecot.break_user("bob");
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let d = Daemon::start_with(dir.path(), &lmtp_config(dir.path(), &addr));
    let sent = b"Subject: two\r\n\r\nfor both\r\n".to_vec();
    let id = d.send(
        "s@remote.test",
        &["alice@example.test", "bob@example.test"],
        &sent,
    );
    dovecot.wait_for("alice", 1, &d);
    assert!(
        wait_until(LONG, || d.log().contains("451 4.2.0 <bob@example.test>")),
        "{}",
        d.log()
    );
    let shown = queue_cmd(dir.path(), &["show", &id]).1;
    assert!(shown.contains("alice@example.test"), "{shown}");
    assert!(shown.contains("delivered"), "{shown}");
    dovecot.fix_user("bob");
    dovecot.wait_for("bob", 1, &d);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    // alice was not sent again on bob's retry.
    assert_eq!(dovecot.inbox("alice").len(), 1);
    assert_tail(&dovecot.inbox("bob")[0], &sent);
}

#[test]
fn dovecot_down_defers_and_delivers_once_it_is_back() {
    let dir = TestDir::new("lmtp-down");
    let mut dovecot = Dovecot::start(dir.path());
    dovecot.stop();
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let d = Daemon::start_with(dir.path(), &lmtp_config(dir.path(), &addr));
    d.send(
        "s@remote.test",
        &["carol@localhost"],
        b"Subject: later\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LONG, || d.log().contains("4.4.1 LMTP 127.0.0.1")),
        "{}",
        d.log()
    );
    assert!(!d.queue_drained());
    dovecot.resume();
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    assert_eq!(dovecot.inbox("carol").len(), 1);
}

#[test]
fn kill9_after_dovecots_replies_delivers_once() {
    let dir = TestDir::new("lmtp-kill");
    let dovecot = Dovecot::start(dir.path());
    dovecot.break_user("bob");
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let cfg = lmtp_config(dir.path(), &addr).replace(
        "retry_min_secs = 1\nretry_max_secs = 1",
        "retry_min_secs = 3\nretry_max_secs = 3",
    );
    let mut d = Daemon::start_with(dir.path(), &cfg);
    d.send(
        "s@remote.test",
        &["alice@example.test", "bob@example.test"],
        b"Subject: once\r\n\r\nonce\r\n",
    );
    dovecot.wait_for("alice", 1, &d);
    assert!(
        wait_until(LONG, || d.log().contains("451 4.2.0 <bob@example.test>")),
        "{}",
        d.log()
    );
    d.kill9();
    dovecot.fix_user("bob");
    let d = Daemon::start_with(dir.path(), &cfg);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    assert_eq!(dovecot.inbox("bob").len(), 1, "{}", d.log());
    assert_eq!(
        dovecot.inbox("alice").len(),
        1,
        "alice got it again after the crash: {}",
        d.log()
    );
}

#[test]
fn a_recipient_dovecot_does_not_know_bounces_to_the_sender() {
    let dir = TestDir::new("lmtp-unknown");
    let dovecot = Dovecot::start(dir.path());
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let d = Daemon::start_with(dir.path(), &lmtp_config(dir.path(), &addr));
    // localhost takes any local part at RCPT; Dovecot knows no dave.
    d.send(
        "carol@localhost",
        &["dave@localhost"],
        b"Subject: to dave\r\n\r\nhi\r\n",
    );
    let report = parse_dsn(&dovecot.wait_for("carol", 1, &d)[0]);
    let dave = &report["recipients"][0];
    assert_eq!(dave["Status"], "5.1.1", "{report}");
    assert_eq!(
        dave["Final-Recipient"], "rfc822; dave@localhost",
        "{report}"
    );
    assert_eq!(dave["Action"], "failed", "{report}");
}

#[test]
fn connections_are_reused_and_capped() {
    let dir = TestDir::new("lmtp-cap");
    let dovecot = Dovecot::start(dir.path());
    let addr = format!("127.0.0.1:{}", dovecot.lmtp_port);
    let cfg = lmtp_config(dir.path(), &addr).replace(
        &format!("address = {addr:?}"),
        &format!("address = {addr:?}\nmax_connections = 2"),
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    // Four clients at once, 40 messages: the pipeline's workers deliver
    // side by side, through at most two connections, kept open between.
    let smtp = d.addr;
    let clients: Vec<_> = (0..4)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = Client::connect_raw(smtp);
                assert_eq!(c.read_reply().0, 220);
                c.expect("EHLO client.test", 250);
                for i in 0..10 {
                    let body = format!("Subject: {k}.{i}\r\n\r\nx\r\n");
                    assert_eq!(
                        c.send_message("s@remote.test", &["alice@example.test"], body.as_bytes())
                            .0,
                        250
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    dovecot.wait_for("alice", 40, &d);
    let opened = d.log().matches("LMTP connection opened").count();
    assert!(
        (1..=2).contains(&opened),
        "{opened} connections:\n{}",
        d.log()
    );
}

#[test]
fn lmtp_config_errors_name_the_key() {
    let dir = TestDir::new("lmtp-config");
    for (lmtp, key, words) in [
        ("[lmtp]\n", "lmtp.address", "missing"),
        (
            "[lmtp]\naddress = \"dovecot\"\n",
            "lmtp.address",
            "neither HOST:PORT",
        ),
        (
            "[lmtp]\naddress = \"127.0.0.1:24\"\ndomains = [\"elsewhere.test\"]\n",
            "lmtp.domains",
            "not a local domain",
        ),
    ] {
        let path = dir.path().join("finaldot.toml");
        std::fs::write(&path, test_config(dir.path(), "", lmtp)).expect("write");
        let out = std::process::Command::new(finaldot_bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{lmtp}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(words), "{lmtp}: {err}");
    }
}

/// An LMTP server for the one window Dovecot cannot be made to hold open:
/// after the data it answers alice's 250 at once and holds bob's reply
/// back for as long as the test keeps `hold` set. It records the
/// recipients of every transaction that reached the end of its data.
struct SlowLmtp {
    addr: std::net::SocketAddr,
    transactions: std::sync::Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowLmtp {
    fn start() -> SlowLmtp {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let s = SlowLmtp {
            addr: l.local_addr().expect("addr"),
            transactions: Default::default(),
            hold: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let (seen, hold) = (s.transactions.clone(), s.hold.clone());
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (seen, hold) = (seen.clone(), hold.clone());
                std::thread::spawn(move || -> std::io::Result<()> {
                    let mut w = conn.try_clone()?;
                    let mut r = BufReader::new(conn);
                    w.write_all(b"220 slow.test LMTP\r\n")?;
                    let mut rcpts: Vec<String> = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        let up = line.to_ascii_uppercase();
                        if up.starts_with("LHLO") {
                            w.write_all(
                                b"250-slow.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
                            )?;
                        } else if up.starts_with("RCPT TO:<") {
                            rcpts.push(line[9..].split('>').next().unwrap_or("").to_string());
                            w.write_all(b"250 2.1.5 ok\r\n")?;
                        } else if up.starts_with("DATA") {
                            w.write_all(b"354 go\r\n")?;
                            loop {
                                let mut l = String::new();
                                if r.read_line(&mut l)? == 0 || l == ".\r\n" {
                                    break;
                                }
                            }
                            seen.lock().expect("lock").push(rcpts.clone());
                            for rc in std::mem::take(&mut rcpts) {
                                while rc.starts_with("bob@") && hold.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                w.write_all(format!("250 2.0.0 <{rc}> saved\r\n").as_bytes())?;
                                w.flush()?;
                            }
                        } else if up.starts_with("QUIT") {
                            w.write_all(b"221 bye\r\n")?;
                            return Ok(());
                        } else {
                            w.write_all(b"250 2.0.0 ok\r\n")?;
                        }
                    }
                });
            }
        });
        s
    }
}

#[test]
fn kill9_while_the_next_reply_is_awaited_does_not_deliver_the_first_again() {
    let dir = TestDir::new("lmtp-window");
    let slow = SlowLmtp::start();
    let cfg = lmtp_config(dir.path(), &slow.addr.to_string());
    let mut d = Daemon::start_with(dir.path(), &cfg);
    let id = d.send(
        "s@remote.test",
        &["alice@example.test", "bob@example.test"],
        b"Subject: the window\r\n\r\nx\r\n",
    );
    // alice's 250 has been read and bob's is held: finaldot records alice
    // before it waits, so her delivery is in the progress record.
    let spool = d
        .data_dir
        .join("spool")
        .join(finaldot::spool::PROGRESS_DIR)
        .join(&id);
    let recorded = wait_until(LONG, || {
        std::fs::read(&spool)
            .ok()
            .and_then(|b| finaldot::spool::Progress::decode(&b).ok())
            .is_some_and(|p| {
                p.state.envelope.recipients.iter().any(|r| {
                    r.address == "alice@example.test"
                        && matches!(
                            r.state,
                            finaldot_sdk::wire::RecipientState::Delivered { .. }
                        )
                })
            })
    });
    assert!(
        recorded,
        "alice not recorded while bob's reply was awaited:\n{}",
        d.log()
    );
    d.kill9();
    slow.hold.store(false, std::sync::atomic::Ordering::SeqCst);
    let d = Daemon::start_with(dir.path(), &cfg);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    let all = slow.transactions.lock().expect("lock").clone();
    let alice = all
        .iter()
        .filter(|t| t.contains(&"alice@example.test".to_string()))
        .count();
    assert_eq!(alice, 1, "alice was sent again after the crash: {all:?}");
    assert!(
        all.iter()
            .any(|t| t == &vec!["bob@example.test".to_string()]),
        "bob not retried alone: {all:?}"
    );
}
