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
    let dsn = String::from_utf8_lossy(&dovecot.wait_for("carol", 1, &d)[0]).to_string();
    let out = python3()
        .arg("-c")
        .arg(
            "import email, sys\n\
             m = email.message_from_string(sys.stdin.read())\n\
             assert m.get_content_type() == 'multipart/report', m.get_content_type()\n\
             st = [p for p in m.walk() if p.get_content_type() == 'message/delivery-status'][0]\n\
             fields = {k.lower(): v for part in st.get_payload() for k, v in part.items()}\n\
             print(fields['status'], fields['final-recipient'], fields['action'])\n",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(dsn.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3 email");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{dsn}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("5.1.1 rfc822; dave@localhost failed"),
        "{said}\n{dsn}"
    );
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
