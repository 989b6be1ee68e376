//! Outbound delivery end to end: a real daemon, a scripted next hop on
//! loopback (`finaldot_e2e::nexthop`), list expansion to members at other
//! domains, retries on 4xx, DSNs on 5xx (which leave the same way), a kill -9
//! after the next hop accepted, and MX routing through a DNS server on loopback.

use std::path::Path;
use std::time::Duration;

use finaldot_e2e::nexthop::NextHop;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

fn smarthost(hop: &NextHop) -> String {
    format!(
        "route = \"smarthost\"\nsmarthost = \"{}\"\nsmarthost_tls = \"none\"",
        hop.addr
    )
}

fn list(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join("lists")).expect("mkdir lists");
    std::fs::write(dir.join("lists").join(name), text).expect("list file");
}

#[test]
fn a_list_member_at_another_domain_gets_the_post_through_the_smarthost() {
    let dir = TestDir::new("out-list");
    let hop = NextHop::start();
    list(
        dir.path(),
        "team@localhost",
        "alice@localhost\nzed@remote.test\n",
    );
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &smarthost(&hop)));
    let body = b"From: carol@remote.test\r\nSubject: to the team\r\nMessage-ID: <t1@remote.test>\r\n\r\nhello all\r\n.a line with a leading dot\r\n";
    let (code, text) = d
        .connect()
        .send_message("carol@remote.test", &["team@localhost"], body);
    assert_eq!(code, 250, "{text}");

    let got = hop.wait_for(1, LONG);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].mail_from, "team-bounces@localhost");
    assert_eq!(got[0].rcpt_to, vec!["zed@remote.test".to_string()]);
    let data = String::from_utf8_lossy(&got[0].data);
    // Byte-exact: the original header lines and body as sent, CRLF kept,
    // after the trace and list headers the daemon and the plugin added.
    assert!(data.starts_with("Received: from client.test"), "{data}");
    assert!(data.contains("\r\nList-Id: "), "{data}");
    let (head, tail) = body.split_at(
        body.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("blank")
            + 2,
    );
    for line in String::from_utf8_lossy(head).split_terminator("\r\n") {
        assert!(
            data.contains(&format!("\r\n{line}\r\n")),
            "{line:?} missing: {data}"
        );
    }
    assert!(got[0].data.ends_with(tail), "{data}");

    // The local member got it too, and the queue is empty.
    assert_eq!(
        wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 1, LONG).len(),
        1
    );
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    assert!(d.log().contains("relayed to"), "{}", d.log());

    // A second post reuses the connection to the smarthost.
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: again\r\n\r\nsecond\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert_eq!(hop.wait_for(2, LONG).len(), 2);
    assert_eq!(
        hop.connections.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "a new connection for the second message"
    );
}

#[test]
fn a_next_hop_451_then_250_gets_the_message_on_the_retry() {
    let dir = TestDir::new("out-retry");
    let hop = NextHop::start();
    hop.answer_data(&["451 4.3.0 try again later"]);
    list(dir.path(), "team@localhost", "zed@remote.test\n");
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &smarthost(&hop)));
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: retry\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = hop.wait_for(1, LONG);
    assert_eq!(got[0].rcpt_to, vec!["zed@remote.test".to_string()]);
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hop.accepted().len(), 1, "sent again after the 250");
    let log = d.log();
    assert!(
        log.contains("deferred") && log.contains("(451): 4.3.0 try again later"),
        "{log}"
    );
    assert!(hop.connections.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn a_next_hop_550_bounces_and_the_dsn_to_a_remote_sender_leaves_the_same_way() {
    let dir = TestDir::new("out-550");
    let hop = NextHop::start();
    hop.answer_rcpt(
        "zed@remote.test",
        "550 5.1.1 <zed@remote.test>: no such user here",
    );
    list(
        dir.path(),
        "team@localhost",
        "bounces: owner@remote.test\nzed@remote.test\n",
    );
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &smarthost(&hop)));
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: will bounce\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    // The only transaction the hop accepts is the DSN, from <> to the list owner.
    let got = hop.wait_for(1, LONG);
    assert_eq!(got[0].mail_from, "");
    assert_eq!(got[0].rcpt_to, vec!["owner@remote.test".to_string()]);
    let dsn = String::from_utf8_lossy(&got[0].data);
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; zed@remote.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    assert!(dsn.contains("no such user here"), "{dsn}");
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
}

#[test]
fn kill9_after_the_next_hop_accepted_does_not_send_it_again() {
    let dir = TestDir::new("out-kill");
    let hop = NextHop::start();
    // zed is accepted; yan waits (451 at RCPT), so the message stays queued.
    hop.answer_rcpt("yan@remote.test", "451 4.2.1 mailbox busy");
    list(
        dir.path(),
        "team@localhost",
        "zed@remote.test\nyan@remote.test\n",
    );
    let cfg = list_chain_config(dir.path(), &smarthost(&hop)).replace(
        "retry_min_secs = 1\nretry_max_secs = 2",
        "retry_min_secs = 3\nretry_max_secs = 3",
    );
    let mut d = Daemon::start_with(dir.path(), &cfg);
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: once\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = hop.wait_for(1, LONG);
    assert_eq!(got[0].rcpt_to, vec!["zed@remote.test".to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();

    hop.answer_rcpt("yan@remote.test", "250 2.1.5 ok now");
    let d = Daemon::start_with(dir.path(), &cfg);
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    let all = hop.accepted();
    let zed = all
        .iter()
        .filter(|a| a.rcpt_to.contains(&"zed@remote.test".to_string()))
        .count();
    assert_eq!(zed, 1, "zed was sent again after the crash: {all:?}");
    // yan was not recorded by the hop (its scripted 250 bypasses acceptance),
    // but the message is done: yan was accepted on the retry.
    assert!(d.log().contains("yan@remote.test"), "{}", d.log());
}

#[test]
fn smarthost_tls_required_without_starttls_defers_and_says_why() {
    let dir = TestDir::new("out-tls-required");
    let hop = NextHop::start();
    list(dir.path(), "team@localhost", "zed@remote.test\n");
    let out = format!("route = \"smarthost\"\nsmarthost = \"{}\"", hop.addr);
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &out));
    let (code, _) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: tls\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250);
    assert!(
        wait_until(LONG, || d.log().contains("4.7.5")),
        "log:\n{}",
        d.log()
    );
    assert!(hop.accepted().is_empty());
    // The reason is logged just before the message moves to deferred/.
    assert!(
        wait_until(LONG, || d.spool_files(QueueState::Deferred).len() == 1),
        "not deferred; log:\n{}",
        d.log()
    );
}

#[test]
fn outbound_config_errors_name_the_key() {
    let dir = TestDir::new("out-config");
    for (outbound, key) in [
        ("route = \"smarthost\"", "outbound.smarthost"),
        ("route = \"carrier-pigeon\"", "outbound.route"),
        (
            "route = \"smarthost\"\nsmarthost = \"nohost\"",
            "outbound.smarthost",
        ),
        ("smarthost_tls = \"maybe\"", "outbound.smarthost_tls"),
        ("nameservers = [\"dns.example\"]", "outbound.nameservers"),
    ] {
        let path = dir.path().join("finaldot.toml");
        std::fs::write(&path, list_chain_config(dir.path(), outbound)).expect("write");
        let out = std::process::Command::new(finaldot_bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{outbound}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{outbound}: {err}");
    }
}

#[test]
fn mx_route_follows_preference_falls_back_and_bounces_what_dns_refuses() {
    use finaldot_e2e::dns::{DnsServer, Record};
    let dir = TestDir::new("out-mx");
    let hop = NextHop::start();
    let dns = DnsServer::start(vec![
        // The best MX has nothing listening: the next one must be tried.
        Record::Mx("remote.test".into(), 5, "mx0.remote.test".into()),
        Record::Mx("remote.test".into(), 10, "mx1.remote.test".into()),
        Record::A("mx0.remote.test".into(), "127.0.0.2".parse().expect("ip")),
        Record::A("mx1.remote.test".into(), "127.0.0.1".parse().expect("ip")),
        // No MX at all: the domain's own address is the implicit MX.
        Record::A("implicit.test".into(), "127.0.0.1".parse().expect("ip")),
        // Null MX (RFC 7505).
        Record::Mx("nomail.test".into(), 0, ".".into()),
    ]);
    list(
        dir.path(),
        "team@localhost",
        "zed@remote.test\nivy@implicit.test\nx@nowhere.test\ny@nomail.test\n",
    );
    let out = format!(
        "route = \"mx\"\nnameservers = [\"{}\"]\nmx_port = {}",
        dns.addr,
        hop.addr.port()
    );
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &out));
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: mx\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let got = hop.wait_for(2, LONG);
    let mut rcpts: Vec<String> = got.iter().flat_map(|a| a.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec!["ivy@implicit.test", "zed@remote.test"],
        "{got:?}"
    );
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    // The two refused by DNS bounce to the list's bounce address (local).
    let dsn = wait_for_files(&dir.path().join("mail/team-bounces/Maildir/new"), 1, LONG);
    assert_eq!(dsn.len(), 1, "log:\n{}", d.log());
    let text = std::fs::read_to_string(&dsn[0]).expect("read");
    assert!(text.contains("Status: 5.1.2"), "{text}");
    assert!(text.contains("Status: 5.1.10"), "{text}");
}

#[test]
fn a_plugin_routes_one_recipient_to_mx_while_the_rest_use_the_smarthost() {
    use finaldot_e2e::dns::{DnsServer, Record};
    let dir = TestDir::new("out-plugin-route");
    let smarthost_hop = NextHop::start();
    let mx_hop = NextHop::start();
    let dns = DnsServer::start(vec![
        Record::Mx("remote.test".into(), 10, "mx.remote.test".into()),
        Record::A("mx.remote.test".into(), "127.0.0.1".parse().expect("ip")),
    ]);
    list(
        dir.path(),
        "team@localhost",
        "zed@remote.test\nyan@other.test\n",
    );
    let out = format!(
        "{}\nnameservers = [\"{}\"]\nmx_port = {}",
        smarthost(&smarthost_hop),
        dns.addr,
        mx_hop.addr.port()
    );
    let router = plugin_toml(
        "router",
        "finaldot_testbed",
        "[plugins.config]\nmode = \"route-mx\"\nonly = [\"zed@remote.test\"]",
    );
    let cfg = list_chain_config(dir.path(), &out).replace(
        "[[plugins]]\nname = \"local-delivery\"",
        &format!("{router}[[plugins]]\nname = \"local-delivery\""),
    );
    assert!(cfg.contains("route-mx"), "{cfg}");
    let d = Daemon::start_with(dir.path(), &cfg);
    let (code, text) = d.connect().send_message(
        "carol@remote.test",
        &["team@localhost"],
        b"Subject: routed\r\n\r\nbody\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let via_mx = mx_hop.wait_for(1, LONG);
    let via_smarthost = smarthost_hop.wait_for(1, LONG);
    assert_eq!(via_mx[0].rcpt_to, vec!["zed@remote.test".to_string()]);
    assert_eq!(via_smarthost[0].rcpt_to, vec!["yan@other.test".to_string()]);
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
}

#[test]
fn connections_to_one_destination_are_capped() {
    let dir = TestDir::new("out-cap");
    let hop = NextHop::start();
    hop.delay_data(Duration::from_millis(300));
    list(dir.path(), "team@localhost", "zed@remote.test\n");
    let out = format!("{}\nmax_connections_per_destination = 1", smarthost(&hop));
    let d = Daemon::start_with(dir.path(), &list_chain_config(dir.path(), &out));
    for i in 0..4 {
        let (code, text) = d.connect().send_message(
            "carol@remote.test",
            &["team@localhost"],
            format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(hop.wait_for(4, LONG).len(), 4);
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    assert_eq!(
        hop.max_in_data.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "more than one connection at once to the smarthost"
    );
}

#[test]
fn verp_bounces_are_counted_and_the_member_disabled_after_the_limit() {
    let dir = TestDir::new("out-verp");
    let hop = NextHop::start();
    // yan's address is refused by the next hop: every post bounces for him.
    hop.answer_rcpt(
        "yan@remote.test",
        "550 5.1.1 <yan@remote.test>: no such user",
    );
    list(
        dir.path(),
        "team@localhost",
        "verp: yes\nowner: alice@localhost\nzed@remote.test\nyan@remote.test\nbob@localhost\n",
    );
    let cfg = list_chain_config(dir.path(), &smarthost(&hop)).replace(
        "dirs = [{ name = \"lists\", path = \"lists\" }]",
        "dirs = [{ name = \"lists\", path = \"lists\" }]\nkv = true\n[plugins.config]\nbounce_limit = 2",
    );
    assert!(cfg.contains("bounce_limit = 2"), "{cfg}");
    let d = Daemon::start_with(dir.path(), &cfg);
    let post = |i: usize| {
        d.send(
            "carol@remote.test",
            &["team@localhost"],
            format!("Subject: post {i}\r\n\r\nbody {i}\r\n").as_bytes(),
        );
        hop.wait_for(i, LONG);
        // The post, and the report its bounce brought back, are done.
        assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    };
    // The first post: the hop refuses yan, and finaldot's own report to
    // yan's VERP address is his first bounce.
    post(1);
    let log = d.log();
    let yan_verp = log
        .lines()
        .filter(|l| l.contains("DSN queued for the sender"))
        .find_map(|l| {
            let to = l.split("to=").nth(1)?.split_whitespace().next()?;
            to.contains("-yan=remote.test@").then(|| to.to_string())
        })
        .unwrap_or_else(|| panic!("no report to yan's VERP address:\n{log}"));
    let report = b"From: MAILER-DAEMON@mx.remote.test\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\nMailbox unknown.\r\n--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.remote.test\r\n\r\nFinal-Recipient: rfc822; yan@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--R--\r\n";
    // A forger who knows the scheme but not the key: dropped, not counted.
    d.send(
        "",
        &["team-bounces+0000000000-yan=remote.test@localhost"],
        report,
    );
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    assert!(d.log().contains("wrong tag"), "{}", d.log());
    // A report from another MTA to yan's real VERP address: the second
    // bounce, which disables him and goes to the owner.
    d.send("", &[&yan_verp], report);
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    post(2);
    post(3);
    // zed got every post, each in a transaction of his own, from his own
    // (always the same) envelope sender; yan was skipped once disabled; no
    // report left.
    let got = hop.accepted();
    assert_eq!(got.len(), 3, "{got:?}");
    for a in &got {
        assert!(
            a.mail_from.starts_with("team-bounces+")
                && a.mail_from.ends_with("-zed=remote.test@localhost"),
            "{}",
            a.mail_from
        );
        assert_eq!(a.mail_from, got[0].mail_from);
        assert_eq!(a.rcpt_to, vec!["zed@remote.test".to_string()]);
    }
    let log = d.log();
    assert!(
        log.contains("bounce 1 of 2 counted for member yan@remote.test"),
        "{log}"
    );
    assert!(
        log.contains("member yan@remote.test is disabled (bounces); skipped"),
        "{log}"
    );
    // The other members kept receiving: bob has the three posts, no report.
    let bob = wait_for_files(&dir.path().join("mail/bob/Maildir/new"), 3, LONG);
    assert_eq!(bob.len(), 3);
    for f in &bob {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(text.contains("Subject: post "), "{text}");
        assert!(
            !text.contains("delivery-status"),
            "a report reached the list: {text}"
        );
    }
    // The owner was told, with the report that disabled yan.
    let owner = wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 1, LONG);
    assert_eq!(owner.len(), 1);
    let text = std::fs::read_to_string(&owner[0]).expect("read");
    assert!(
        text.contains("X-List-Member-Disabled: yan@remote.test on team@localhost after 2 bounces"),
        "{text}"
    );
    assert!(
        text.contains("Final-Recipient: rfc822; yan@remote.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
}
