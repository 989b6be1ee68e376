//! End to end: the real daemon, real SMTP clients (lettre, Python's smtplib,
//! raw sockets), and the bytes it leaves in the spool.

use std::time::Duration;

use finaldot_e2e::*;

/// The message as spooled, without its leading Received: header (which is checked separately).
fn split_received(message: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with("Received: from "),
        "no Received header first: {text}"
    );
    // The header ends at the first CRLF not followed by folding whitespace.
    let mut end = 0;
    let bytes = message;
    while let Some(off) = bytes[end..].windows(2).position(|w| w == b"\r\n") {
        end += off + 2;
        if end >= bytes.len() || (bytes[end] != b' ' && bytes[end] != b'\t') {
            break;
        }
    }
    (text[..end].to_string(), bytes[end..].to_vec())
}

#[test]
fn lettre_message_is_spooled_byte_exact() {
    use lettre::address::Envelope as LEnvelope;
    use lettre::{SmtpTransport, Transport};
    let dir = TestDir::new("lettre");
    let d = Daemon::start(dir.path());
    let body = b"From: Sender <sender@remote.test>\r\nTo: alice@example.test\r\nSubject: byte exact\r\nMessage-ID: <1@remote.test>\r\n\r\nLine one\r\n.starts with a dot\r\n..two dots\r\n\r\n8bit: \xc3\xa6\xc3\xb8\xc3\xa5\r\n";
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(d.addr.port())
        .build();
    let env = LEnvelope::new(
        Some("sender@remote.test".parse().expect("from")),
        vec![
            "alice@example.test".parse().expect("to"),
            "anyone@localhost".parse().expect("to"),
        ],
    )
    .expect("envelope");
    let resp = mailer.send_raw(&env, body).expect("lettre send");
    assert_eq!(resp.code().to_string(), "250");
    let id = resp.message().collect::<Vec<_>>().join(" ");
    let id = queued_id(&id);

    let files = d.spool_files(QueueState::Incoming);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with(&id), "{files:?} vs {id}");
    let (header, message) = read_message(&files[0]).expect("complete queue file");
    assert_eq!(header.envelope.mail_from, "sender@remote.test");
    assert_eq!(
        header.envelope.rcpt_to,
        vec!["alice@example.test", "anyone@localhost"]
    );
    assert_eq!(header.envelope.client_ip.to_string(), "127.0.0.1");
    let (received, rest) = split_received(&message);
    // lettre always ends DATA with "\r\n.\r\n" after the body, so the message on
    // the wire (and in the spool, exactly) is the body plus one empty line.
    let mut sent = body.to_vec();
    sent.extend_from_slice(b"\r\n");
    assert_eq!(rest, sent, "spooled bytes differ from what was sent");
    assert!(
        received.contains("by mx.test (finaldot) with ESMTP id "),
        "{received}"
    );
    assert!(received.contains(&id), "{received}");
    assert!(received.contains("([127.0.0.1])"), "{received}");
    assert!(d.spool_files(QueueState::Tmp).is_empty());
}

/// Issue 17.1: the session's facts are in the queue file before the 250
/// (no plugins here, so the message waits in `incoming/`).
#[test]
fn the_queue_file_records_the_session_facts() {
    let dir = TestDir::new("facts-in-spool");
    let d = Daemon::start(dir.path());
    let mut c = d.connect();
    let port = c.local_port();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test> BODY=8BITMIME SMTPUTF8", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: facts\r\n\r\nhi\r\n.\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    let file = d.spool_dir(QueueState::Incoming).join(&id);
    let (queued, _) = read_message(&file).expect("queue file");
    let env = queued.envelope;
    assert_eq!(env.client_ip.to_string(), "127.0.0.1");
    assert_eq!(env.client_port, port);
    assert_eq!(env.listener, finaldot_sdk::Listener::Smtp);
    assert_eq!(env.helo, "client.test");
    assert!(env.body_8bit && env.smtputf8);
    assert_eq!(env.tls, None);
    assert_eq!(env.auth, None);
    assert!(env.received_at > 1_700_000_000);
}

#[test]
fn python_smtplib_sends_with_pipelining_and_bdat_free_dialog() {
    let dir = TestDir::new("smtplib");
    let d = Daemon::start(dir.path());
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
code, _ = s.ehlo("py.test")
assert code == 250
assert s.has_extn("pipelining") and s.has_extn("chunking") and s.has_extn("smtputf8")
assert s.has_extn("size") and int(s.esmtp_features["size"]) > 0
refused = s.sendmail("py@remote.test", ["bob@example.test"], b"Subject: from python\r\n\r\nhi\r\n.dot\r\n")
assert refused == {{}}, refused
try:
    s.sendmail("py@remote.test", ["nobody@elsewhere.test"], b"Subject: relay\r\n\r\nx\r\n")
    raise SystemExit("relay was accepted")
except smtplib.SMTPRecipientsRefused as e:
    code, text = e.recipients["nobody@elsewhere.test"]
    assert code == 550 and text.startswith(b"5.7.1"), (code, text)
s.quit()
print("ok")
"#,
        port = d.addr.port()
    );
    let out = python3()
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = d.spool_files(QueueState::Incoming);
    assert_eq!(files.len(), 1);
    let (_, msg) = read_message(&files[0]).expect("read");
    assert!(msg.ends_with(b"Subject: from python\r\n\r\nhi\r\n.dot\r\n"));
}

#[test]
fn malformed_commands_get_5xx_and_the_session_goes_on() {
    let dir = TestDir::new("malformed");
    let d = Daemon::start(dir.path());
    let mut c = d.connect();
    c.expect("MAIL FROM:<a@b.test>", 503);
    c.expect("EHLO c.test", 250);
    c.expect("RCPT TO:<alice@example.test>", 503);
    c.expect("DATA", 503);
    c.expect("FROB", 500);
    c.expect("MAIL FROM:a@b.test", 501);
    c.expect("MAIL FROM:<a@b.test> XYZ=1", 555);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("MAIL FROM:<a@b.test>", 503);
    c.expect("RCPT TO:<x@elsewhere.test>", 550);
    c.expect("RCPT TO:<mallory@example.test>", 550);
    c.expect("DATA", 554);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.send(format!("NOOP {}\r\n", "x".repeat(600)).as_bytes());
    assert_eq!(c.read_reply().0, 500);
    c.send(b"NOOP\n");
    assert_eq!(c.read_reply().0, 500);
    c.expect("VRFY alice", 252);
    c.expect("DATA", 354);
    c.send(b"Subject: still fine\r\n\r\nok\r\n.\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    assert_eq!(d.spool_files(QueueState::Incoming).len(), 1);
}

#[test]
fn smuggling_over_the_wire_is_refused_and_nothing_is_queued() {
    let dir = TestDir::new("smuggle");
    let d = Daemon::start(dir.path());
    for sep in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n", b"\r.\r"] {
        let mut c = d.connect();
        c.expect("EHLO c.test", 250);
        c.expect("MAIL FROM:<a@b.test>", 250);
        c.expect("RCPT TO:<alice@example.test>", 250);
        c.expect("DATA", 354);
        let mut payload = b"Subject: legit\r\n\r\nhello".to_vec();
        payload.extend_from_slice(sep);
        payload.extend_from_slice(
            b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n",
        );
        c.send(&payload);
        let (code, text) = c.read_reply();
        assert_eq!(code, 550, "{sep:?}: {text}");
        assert!(text.contains("5.6.0"), "{text}");
        // The session goes on: the next command is answered normally.
        c.expect("NOOP", 250);
    }
    assert!(d.spool_files(QueueState::Incoming).is_empty());
    assert!(wait_until(Duration::from_secs(5), || d
        .spool_files(QueueState::Tmp)
        .is_empty()));
}

#[test]
fn bdat_message_is_spooled() {
    let dir = TestDir::new("bdat");
    let d = Daemon::start(dir.path());
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    c.expect("MAIL FROM:<a@b.test> BODY=8BITMIME", 250);
    c.expect("RCPT TO:<bob@example.test>", 250);
    c.send(b"BDAT 19\r\nSubject: chunks\r\n\r\n");
    assert_eq!(c.read_reply().0, 250);
    c.send(b"BDAT 8 LAST\r\nbody\r\n\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    let files = d.spool_files(QueueState::Incoming);
    assert!(files[0].ends_with(&id));
    let (h, msg) = read_message(&files[0]).expect("read");
    assert!(h.envelope.body_8bit);
    assert!(msg.ends_with(b"\r\nSubject: chunks\r\n\r\nbody\r\n\r\n"));
}

#[test]
fn size_limit_is_enforced_at_mail_and_during_data() {
    let dir = TestDir::new("size");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(dir.path(), "max_message_size = 65536", ""),
    );
    let mut c = d.connect();
    let ehlo = c.expect("EHLO c.test", 250);
    assert!(ehlo.contains("SIZE 65536"), "{ehlo}");
    c.expect("MAIL FROM:<a@b.test> SIZE=70000", 552);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<bob@example.test>", 250);
    c.expect("DATA", 354);
    let line = format!("{}\r\n", "x".repeat(98));
    for _ in 0..700 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 552, "{text}");
    c.expect("NOOP", 250);
    assert!(d.spool_files(QueueState::Incoming).is_empty());
}

#[test]
fn connection_caps_answer_421() {
    let dir = TestDir::new("caps");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(
            dir.path(),
            // Loopback is exempt by default: exempt another network instead.
            "max_connections = 3\nmax_connections_per_ip = 2\nlimit_exceptions = [\"192.0.2.0/24\"]",
            "",
        ),
    );
    let a = d.connect();
    let b = d.connect();
    let mut c = Client::connect_raw(d.addr);
    let (code, text) = c.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(c.is_closed());
    drop(a);
    // The slot comes back once the first connection is gone.
    assert!(wait_until(Duration::from_secs(5), || {
        let mut c = Client::connect_raw(d.addr);
        c.read_reply().0 == 220
    }));
    drop(b);
}

#[test]
fn connection_rate_per_ip_answers_421_over_the_limit() {
    let dir = TestDir::new("rate");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(
            dir.path(),
            "max_connection_rate_per_ip = 3\nlimit_exceptions = [\"2001:db8::/32\"]",
            "",
        ),
    );
    for _ in 0..3 {
        let mut c = d.connect();
        c.expect("QUIT", 221);
    }
    let mut c = Client::connect_raw(d.addr);
    let (code, text) = c.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("per minute"), "{text}");
    assert!(c.is_closed());
}

/// Issue 15.2: loopback (the default `smtp.limit_exceptions`) is exempt from
/// the per-IP connection count and rate, not from the total cap, and its
/// idle connections still time out.
#[test]
fn loopback_is_exempt_from_per_ip_limits_but_not_from_the_total_cap() {
    let dir = TestDir::new("limit-exceptions");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(
            dir.path(),
            "max_connections = 201\nmax_connections_per_ip = 50\nmax_connection_rate_per_ip = 10\ncommand_timeout_secs = 10",
            "",
        ),
    );
    let mut idle: Vec<Client> = (0..200).map(|_| d.connect()).collect();
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: x\r\n\r\nhi\r\n",
    );
    assert_eq!(code, 250, "{text}");
    // 201 connections are open now, the total cap: it answers the next one.
    let mut over = Client::connect_raw(d.addr);
    let (code, text) = over.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("too many connections, try again"), "{text}");
    // Idle connections still time out.
    for client in idle.iter_mut().take(3) {
        let (code, text) = client.read_reply();
        assert_eq!(code, 421, "{text}");
        assert!(text.contains("4.4.2"), "{text}");
    }
}

#[test]
fn idle_client_times_out_with_421() {
    let dir = TestDir::new("timeout");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(dir.path(), "command_timeout_secs = 1", ""),
    );
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    let (code, text) = c.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
    assert!(c.is_closed());
}

/// Sends `bytes` a byte every 300 ms, over and over, and expects the
/// server to cut the client off with `421 4.4.2` well before 20 s (a
/// single read never waits longer than 300 ms, so only a deadline can).
fn trickled_out(c: &mut Client, bytes: &[u8]) {
    let started = std::time::Instant::now();
    for b in bytes.iter().cycle() {
        if started.elapsed() > Duration::from_secs(30) || c.try_send(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "still open after {took:?}");
    let (code, text) = c.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(text.contains("4.4.2"), "{text}");
}

#[test]
fn a_client_trickling_a_command_or_its_content_is_cut_off() {
    let dir = TestDir::new("trickle");
    let d = Daemon::start_with(
        dir.path(),
        &test_config(
            dir.path(),
            "command_timeout_secs = 2\ndata_timeout_secs = 2",
            "",
        ),
    );
    // Inside a command line: a byte every 300 ms never lets a read time
    // out, but the whole line must come within the command timeout.
    let mut c = d.connect();
    trickled_out(&mut c, b"NOOP NOOP NOOP ");
    // Inside DATA: the content must come at 500 octets a second past the
    // data timeout.
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    trickled_out(&mut c, b"Subject: slow\r\n");
    assert!(d.spool_files(QueueState::Incoming).is_empty());
    // A client that sends at a fair pace is not affected.
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: fine\r\n\r\nfine\r\n",
    );
    assert_eq!(code, 250, "{text}");
}

#[test]
fn sigterm_lets_data_finish_and_421s_the_idle() {
    let dir = TestDir::new("shutdown");
    let mut d = Daemon::start(dir.path());
    let mut idle = d.connect();
    idle.expect("EHLO idle.test", 250);
    let mut busy = d.connect();
    busy.expect("EHLO busy.test", 250);
    busy.expect("MAIL FROM:<a@b.test>", 250);
    busy.expect("RCPT TO:<alice@example.test>", 250);
    busy.expect("DATA", 354);
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n");
    d.signal("TERM");
    let (code, text) = idle.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(idle.is_closed());
    busy.send(b"second half\r\n.\r\n");
    let (code, text) = busy.read_reply();
    assert_eq!(code, 250, "message in flight must be accepted: {text}");
    let (code, _) = busy.read_reply();
    assert_eq!(code, 421);
    let status = d.wait_exit(Duration::from_secs(20)).expect("daemon exits");
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(d.spool_files(QueueState::Incoming).len(), 1);
    assert!(d.spool_files(QueueState::Tmp).is_empty());
    // No new connections after shutdown.
    assert!(std::net::TcpStream::connect(d.addr).is_err());
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = TestDir::new("badconfig");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[smtp]\nlisten = [\"127.0.0.1:0\"]\nmax_conections = 5\n[domains.localhost]\n",
    )
    .expect("write");
    let out = std::process::Command::new(finaldot_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");
    // `run` refuses the same file before listening.
    let out = std::process::Command::new(finaldot_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_conections"));
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../finaldot.example.toml");
    let out = std::process::Command::new(finaldot_bin())
        .arg("check-config")
        .arg(example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny tmpfs makes the disk really full. Needs root (mount); CI runs as root.
#[test]
fn full_disk_gets_452_and_no_250() {
    if !required_on_ci(
        nix_is_root(),
        "not root: the tmpfs disk-full test needs mount (the injected-fault test covers this path)",
    ) {
        return;
    }
    let dir = TestDir::new("diskfull");
    let mnt = dir.path().join("data");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !required_on_ci(ok, "mounting a tmpfs is not permitted here") {
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let d = Daemon::start(dir.path());
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    let line = format!("{}\r\n", "y".repeat(510));
    for _ in 0..1000 {
        c.send(line.as_bytes());
    }
    c.send(b".\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");
    assert!(d.spool_files(QueueState::Incoming).is_empty());
    // The space is freed again and the session goes on to deliver a small one.
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: small\r\n\r\nfits\r\n.\r\n");
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(d.spool_files(QueueState::Incoming).len(), 1);
}

fn nix_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn in_flow_delay_pauses_new_messages_while_the_pipeline_is_behind() {
    // No plugins: every accepted message stays in incoming/, so the backlog
    // only grows. Above 2 waiting messages, a new DATA waits (here the full
    // 600 ms, as nothing drains) before its 354; the message is still taken.
    let dir = TestDir::new("in-flow");
    let cfg = test_config(
        dir.path(),
        "in_flow_delay_ms = 600\nin_flow_backlog = 2",
        "",
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    let mut c = d.connect();
    c.expect("EHLO c.test", 250);
    let mut data_waits = Vec::new();
    for i in 0..4 {
        c.expect("MAIL FROM:<a@b.test>", 250);
        c.expect("RCPT TO:<alice@example.test>", 250);
        let t = std::time::Instant::now();
        c.expect("DATA", 354);
        data_waits.push(t.elapsed());
        c.send(format!("Subject: {i}\r\n\r\nbody\r\n.\r\n").as_bytes());
        let (code, text) = c.read_reply();
        assert_eq!(code, 250, "{text}");
        // Let the backlog count (refreshed every 250 ms) see this message.
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(d.spool_files(QueueState::Incoming).len(), 4);
    assert!(
        data_waits[3] >= Duration::from_millis(550),
        "no pause with 3 messages waiting: {data_waits:?}"
    );
}
