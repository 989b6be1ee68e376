//! The DSN extension (RFC 3461) end to end: the parameters over the wire
//! from Python's smtplib, and their effect in the reports that arrive (read
//! back from a real Dovecot over IMAP, parsed by Python's email package).
//! Local mail goes to Dovecot over LMTP; dave@localhost is unknown there
//! (550 at RCPT), and bob can be made to wait (451 after the data).

use std::time::Duration;

use finaldot_e2e::dovecot::Dovecot;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

fn start(dir: &std::path::Path, dovecot: &Dovecot, pipeline: &str) -> Daemon {
    let cfg = test_config(
        dir,
        "",
        &format!(
            "[pipeline]\nrescan_secs = 1\nretry_min_secs = 1\nretry_max_secs = 1\n{pipeline}\n\n[lmtp]\naddress = \"127.0.0.1:{}\"\n",
            dovecot.lmtp_port
        ),
    );
    Daemon::start_with(dir, &cfg)
}

/// Sends one message with smtplib: `mail` options on MAIL FROM, then each
/// recipient with its RCPT options.
fn send(d: &Daemon, from: &str, mail: &[&str], rcpts: &[(&str, &[&str])], body: &str) {
    let script = "import smtplib, sys, json\n\
        a = json.loads(sys.argv[2])\n\
        s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]))\n\
        s.ehlo('client.test')\n\
        assert s.has_extn('dsn'), s.esmtp_features\n\
        code, text = s.mail(a['from'], a['mail'])\n\
        assert code == 250, (code, text)\n\
        for to, opts in a['rcpts']:\n\
        \x20   code, text = s.rcpt(to, opts)\n\
        \x20   assert code == 250, (to, code, text)\n\
        code, text = s.data(a['body'].encode())\n\
        assert code == 250, (code, text)\n\
        s.quit()\n";
    let json = serde_json::json!({
        "from": from,
        "mail": mail,
        "rcpts": rcpts,
        "body": body,
    });
    let port = d.addr.port().to_string();
    run_python(
        python3(),
        script,
        &[&port, &json.to_string()],
        b"",
        &d.log(),
    );
}

/// carol@localhost sends `body` with RET=FULL to dave, whom Dovecot does
/// not know; the report she gets, parsed, once the queue is empty.
fn failure_with_ret_full(d: &Daemon, dovecot: &Dovecot, body: &str) -> serde_json::Value {
    send(
        d,
        "carol@localhost",
        &["RET=FULL"],
        &[("dave@localhost", &[])],
        body,
    );
    assert!(
        wait_until(LONG, || !dovecot.inbox("carol").is_empty()),
        "{}",
        d.log()
    );
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    parse_dsn(&dovecot.inbox("carol")[0])
}

#[test]
fn dsn_is_offered_and_bad_parameters_get_501_while_the_session_goes_on() {
    let dir = TestDir::new("dsn-syntax");
    let dovecot = Dovecot::start(dir.path());
    let d = start(dir.path(), &dovecot, "");
    let mut c = d.connect();
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines().any(|l| l.ends_with("DSN")), "{ehlo}");
    for (bad, code) in [
        ("MAIL FROM:<a@x.test> RET=SOME", 501),
        ("MAIL FROM:<a@x.test> RET=FULL RET=HDRS", 501),
        ("MAIL FROM:<a@x.test> ENVID=a+zz", 501),
        ("MAIL FROM:<a@x.test> ENVID=a=b", 501),
        // Not printable once decoded (RFC 3461 §4.4).
        ("MAIL FROM:<a@x.test> ENVID=a+0Ab", 501),
        ("MAIL FROM:<a@x.test> BOGUS=1", 555),
    ] {
        assert_eq!(c.cmd(bad).0, code, "{bad}");
    }
    c.expect("MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2B1", 250);
    for bad in [
        "RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<alice@example.test> NOTIFY=SOMETIMES",
        "RCPT TO:<alice@example.test> NOTIFY=SUCCESS,SUCCESS",
        "RCPT TO:<alice@example.test> NOTIFY=NEVER NOTIFY=NEVER",
        "RCPT TO:<alice@example.test> ORCPT=alice@example.test",
        "RCPT TO:<alice@example.test> ORCPT=rfc822;",
        "RCPT TO:<alice@example.test> ORCPT=rfc822;a+0D+0Ab@x.test",
    ] {
        assert_eq!(c.cmd(bad).0, 501, "{bad}");
    }
    c.expect(
        "RCPT TO:<alice@example.test> NOTIFY=success,Delay ORCPT=rfc822;Alice+40example.test",
        250,
    );
    c.expect("RSET", 250);
    // Parameters of an extension need EHLO.
    c.expect("HELO client.test", 250);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> RET=FULL").0, 555);
    c.expect("MAIL FROM:<a@x.test>", 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.test> NOTIFY=NEVER").0, 555);
    c.expect("QUIT", 221);
}

#[test]
fn notify_success_brings_a_delivered_report_with_envid_and_orcpt() {
    let dir = TestDir::new("dsn-success");
    let dovecot = Dovecot::start(dir.path());
    let d = start(dir.path(), &dovecot, "");
    send(
        &d,
        "carol@localhost",
        &["RET=HDRS", "ENVID=QQ314159+2Bx"],
        &[
            (
                "alice@example.test",
                &["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice+40Example.TEST"],
            ),
            // bob asked nothing: no report for him.
            ("bob@example.test", &[]),
        ],
        "Subject: report my success\r\n\r\ndelivered?\r\n",
    );
    let reports = dovecot.wait_for("carol", 1, &d);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    assert_eq!(dovecot.inbox("alice").len(), 1);
    assert_eq!(dovecot.inbox("bob").len(), 1);
    let report = parse_dsn(&reports[0]);
    assert_eq!(
        report["types"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]),
        "{report}"
    );
    assert_eq!(
        // Decoded: the report carries the ENVID as text (RFC 3461 §4.4).
        report["message"]["Original-Envelope-Id"],
        "QQ314159+x",
        "{report}"
    );
    let rcpts = report["recipients"].as_array().expect("recipients");
    assert_eq!(rcpts.len(), 1, "{report}");
    assert_eq!(rcpts[0]["Action"], "delivered", "{report}");
    assert_eq!(rcpts[0]["Status"], "2.0.0", "{report}");
    assert_eq!(rcpts[0]["Final-Recipient"], "rfc822; alice@example.test");
    assert_eq!(
        rcpts[0]["Original-Recipient"],
        // Decoded, as the ENVID.
        "rfc822; Alice@Example.TEST"
    );
    assert!(
        report["returned"]
            .as_str()
            .is_some_and(|t| t.contains("Subject: report my success") && !t.contains("delivered?")),
        "{report}"
    );
}

#[test]
fn notify_never_silences_a_failure_and_ret_full_returns_the_whole_message() {
    let dir = TestDir::new("dsn-failure");
    let dovecot = Dovecot::start(dir.path());
    let d = start(dir.path(), &dovecot, "");
    // Dovecot knows no dave: 550 at RCPT, a failure nobody is told of.
    send(
        &d,
        "carol@localhost",
        &[],
        &[("dave@localhost", &["NOTIFY=NEVER"])],
        "Subject: quietly\r\n\r\nnobody hears\r\n",
    );
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    // The line is written as the message completes; the log may lag.
    assert!(
        wait_until(LONG, || d.log().contains("no DSN for these")),
        "{}",
        d.log()
    );
    // The same failure with RET=FULL and the default NOTIFY.
    let report = failure_with_ret_full(
        &d,
        &dovecot,
        "Subject: the whole thing\r\n\r\nthe whole body comes back\r\n",
    );
    assert_eq!(dovecot.inbox("carol").len(), 1, "NOTIFY=NEVER was reported");
    assert_eq!(
        report["types"],
        serde_json::json!(["text/plain", "message/delivery-status", "message/rfc822"]),
        "{report}"
    );
    assert_eq!(report["recipients"][0]["Action"], "failed");
    assert_eq!(report["recipients"][0]["Status"], "5.1.1");
    assert!(report["returned"]
        .as_str()
        .is_some_and(|t| t.contains("the whole body comes back")));
}

#[test]
fn ret_full_from_a_sender_nothing_vouches_for_returns_only_the_headers() {
    let dir = TestDir::new("dsn-unverified");
    let dovecot = Dovecot::start(dir.path());
    // Loopback is an MX client like any other here, and nothing checks
    // its sender: it may be anyone's address.
    let d = start(
        dir.path(),
        &dovecot,
        "\n[auth]\nverify = false\ntrusted_networks = []\n",
    );
    let report = failure_with_ret_full(
        &d,
        &dovecot,
        "Subject: not for a forger\r\n\r\nthis body stays here\r\n",
    );
    assert_eq!(
        report["types"],
        serde_json::json!([
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]),
        "{report}"
    );
    let returned = report["returned"].as_str().unwrap_or_default();
    assert!(returned.contains("Subject: not for a forger"), "{report}");
    assert!(!returned.contains("this body stays here"), "{report}");
}

#[test]
fn delay_reports_go_only_where_notify_asked_for_delay() {
    let dir = TestDir::new("dsn-delay");
    let dovecot = Dovecot::start(dir.path());
    dovecot.break_user("bob");
    let d = start(dir.path(), &dovecot, "delay_warning_secs = 1");
    send(
        &d,
        "carol@localhost",
        &[],
        &[("bob@example.test", &["NOTIFY=FAILURE"])],
        "Subject: no delay report\r\n\r\nx\r\n",
    );
    send(
        &d,
        "carol@localhost",
        &["ENVID=second"],
        &[("bob@example.test", &["NOTIFY=DELAY,FAILURE"])],
        "Subject: delay report\r\n\r\ny\r\n",
    );
    assert!(
        wait_until(LONG, || !dovecot.inbox("carol").is_empty()),
        "{}",
        d.log()
    );
    // Both messages have been retried past the warning's second by now.
    assert!(
        wait_until(LONG, || d
            .log()
            .matches("451 4.2.0 <bob@example.test>")
            .count()
            >= 4),
        "{}",
        d.log()
    );
    let inbox = dovecot.inbox("carol");
    assert_eq!(inbox.len(), 1, "a delay report without NOTIFY=DELAY");
    let report = parse_dsn(&inbox[0]);
    assert_eq!(report["message"]["Original-Envelope-Id"], "second");
    assert_eq!(report["recipients"][0]["Action"], "delayed");
    // queue show lists what was asked.
    let shown: Vec<String> = queue_list(dir.path())
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .map(|id| queue_cmd(dir.path(), &["show", &id]).1)
        .collect();
    assert!(
        shown.iter().any(|t| t.contains("MAIL FROM: ENVID=second")
            && t.contains("<bob@example.test>: NOTIFY=FAILURE,DELAY")),
        "{shown:?}"
    );
    dovecot.fix_user("bob");
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    assert_eq!(dovecot.inbox("bob").len(), 2);
    // Nothing is in flight now: a delay report for the first message would
    // have arrived.
    assert_eq!(dovecot.inbox("carol").len(), 1, "{}", d.log());
}
