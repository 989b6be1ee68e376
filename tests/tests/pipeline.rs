//! The pipeline end to end: the real daemon, test plugins built to wasm, and
//! what they leave on disk.

use std::path::Path;
use std::time::Duration;

use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

/// A config with fast retries and these plugins.
fn config(dir: &Path, plugins: &str) -> String {
    test_config(
        dir,
        "",
        &format!(
            "[pipeline]\nretry_min_secs = 1\nretry_max_secs = 2\nrescan_secs = 1\nmax_faults = 3\ndelay_warning_secs = 0\n\n{plugins}"
        ),
    )
}

/// A config whose only plugin defers every message, with these `[pipeline]` settings.
fn always_defer(dir: &Path, pipeline: &str) -> String {
    let plugins = plugin_toml(
        "later",
        "finaldot_testbed",
        "config = { mode = \"verdict\", verdict = \"defer\" }",
    );
    test_config(
        dir,
        "",
        &format!("[pipeline]\nrescan_secs = 1\n{pipeline}\n\n{plugins}"),
    )
}

fn deliver_to(out: &Path, extra: &str) -> String {
    plugin_toml(
        "deliver",
        "finaldot_testbed",
        &format!(
            "dirs = [{{ name = \"out\", path = {:?}, writable = true }}]\nconfig = {{ mode = \"deliver\", grant = \"out\"{extra} }}",
            out
        ),
    )
}

fn queue_empty(d: &Daemon) -> bool {
    [
        QueueState::Incoming,
        QueueState::Active,
        QueueState::Deferred,
    ]
    .iter()
    .all(|s| d.spool_files(*s).is_empty())
}

fn delivered(out: &Path, id: &str) -> Option<String> {
    std::fs::read(out.join(id))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn send(d: &Daemon, from: &str, to: &[&str], body: &str) -> String {
    let mut c = d.connect();
    let (code, text) = c.send_message(from, to, body.as_bytes());
    assert_eq!(code, 250, "{text}");
    queued_id(&text)
}

#[test]
fn chain_of_two_plugins_each_adds_a_header_then_delivery() {
    let dir = TestDir::new("chain");
    let out = dir.path().join("out");
    let plugins = format!(
        "{}{}{}",
        plugin_toml("first", "stamp", "config = { by = \"first\" }"),
        plugin_toml("second", "stamp", "config = { by = \"second\" }"),
        deliver_to(&out, "")
    );
    let d = Daemon::start_with(dir.path(), &config(dir.path(), &plugins));
    let id = send(
        &d,
        "a@b.test",
        &["alice@example.test"],
        "Subject: chain\r\n\r\nbody\r\n",
    );
    assert!(
        wait_until(LONG, || delivered(&out, &id).is_some()),
        "not delivered; log:\n{}",
        d.log()
    );
    let text = delivered(&out, &id).expect("file");
    let first = text.find("X-Stamped-By: first\r\n").expect("first header");
    let second = text
        .find("X-Stamped-By: second\r\n")
        .expect("second header");
    let body = text.find("\r\n\r\nbody\r\n").expect("body");
    assert!(first < second && second < body, "{text}");
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(wait_until(LONG, || queue_empty(&d)));
    assert!(d.log().contains(&format!("queue_id={id}")));
}

#[test]
fn a_deferring_plugin_is_retried_and_then_succeeds() {
    let dir = TestDir::new("defer-once");
    let out = dir.path().join("out");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "gate",
            "finaldot_testbed",
            "kv = true\nconfig = { mode = \"defer-once\" }"
        ),
        deliver_to(&out, "")
    );
    let d = Daemon::start_with(dir.path(), &config(dir.path(), &plugins));
    let id = send(
        &d,
        "a@b.test",
        &["bob@example.test"],
        "Subject: later\r\n\r\nx\r\n",
    );
    // First it waits in deferred/ with the plugin's reason...
    assert!(wait_until(LONG, || {
        queue_list(dir.path()).iter().any(|e| {
            e["id"] == id.as_str()
                && e["state"] == "deferred"
                && e["last_error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("testbed defers the first attempt")
        }) || delivered(&out, &id).is_some()
    }));
    // ...then the retry delivers it.
    assert!(
        wait_until(LONG, || delivered(&out, &id).is_some()),
        "log:\n{}",
        d.log()
    );
    assert!(delivered(&out, &id)
        .expect("file")
        .contains("X-Deferred-Once: yes\r\n"));
    assert!(wait_until(LONG, || queue_empty(&d)));
}

#[test]
fn a_plugin_that_always_traps_ends_in_hold_and_can_be_released() {
    let dir = TestDir::new("poison");
    let plugins = plugin_toml(
        "poison",
        "finaldot_testbed",
        "config = { mode = \"unreachable\" }",
    );
    let d = Daemon::start_with(dir.path(), &config(dir.path(), &plugins));
    let id = send(
        &d,
        "a@b.test",
        &["bob@example.test"],
        "Subject: poison\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LONG, || d.spool_files(QueueState::Hold).len() == 1),
        "log:\n{}",
        d.log()
    );
    let (ok, show, err) = queue_cmd(dir.path(), &["show", &id, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&show).expect("json");
    assert_eq!(v["state"], "hold");
    assert!(
        v["hold_reason"]
            .as_str()
            .unwrap_or("")
            .contains("3 consecutive plugin faults"),
        "{show}"
    );
    assert_eq!(v["attempts"], 3);
    assert!(d.log().contains("message held"), "{}", d.log());
    // Other mail is not stopped by the poison message.
    let (ok, _, err) = queue_cmd(dir.path(), &["release", &id]);
    assert!(ok, "{err}");
    assert!(wait_until(LONG, || d
        .spool_files(QueueState::Hold)
        .is_empty()));
}

#[test]
fn an_undeliverable_recipient_produces_a_valid_dsn_to_the_sender() {
    let dir = TestDir::new("dsn");
    let out = dir.path().join("out");
    let plugins = deliver_to(&out, ", only = [\"alice@localhost\"]");
    let d = Daemon::start_with(dir.path(), &config(dir.path(), &plugins));
    let id = send(
        &d,
        "alice@localhost",
        &["alice@localhost", "bob@example.test"],
        "Subject: half of it\r\nMessage-ID: <dsn-test@x>\r\n\r\nhello\r\n",
    );
    // The original reaches alice; the DSN about bob reaches alice (the sender) too.
    assert!(
        wait_until(LONG, || std::fs::read_dir(&out)
            .map(|r| r.count())
            .unwrap_or(0)
            == 2),
        "log:\n{}",
        d.log()
    );
    assert!(wait_until(LONG, || queue_empty(&d)));
    let dsn_file = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| !p.ends_with(&id))
        .expect("dsn file");
    let script = r#"
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.default)
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
parts = list(m.iter_parts())
assert [p.get_content_type() for p in parts] == ['text/plain', 'message/delivery-status', 'text/rfc822-headers'], [p.get_content_type() for p in parts]
blocks = parts[1].get_payload()
per_rcpt = blocks[1]
assert per_rcpt['Final-Recipient'] == 'rfc822; bob@example.test', per_rcpt['Final-Recipient']
assert per_rcpt['Action'] == 'failed'
assert per_rcpt['Status'] == '5.1.1'
assert 'Message-ID: <dsn-test@x>' in parts[2].get_content() or 'dsn-test@x' in parts[2].as_string()
assert 'alice@localhost' in str(m['To']), str(m['To'])
print('ok')
"#;
    let parsed = python3()
        .arg("-c")
        .arg(script)
        .arg(&dsn_file)
        .output()
        .expect("run python3");
    assert!(
        parsed.status.success(),
        "python's email parser rejects the DSN:\n{}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        std::fs::read_to_string(&dsn_file).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&dsn_file).expect("dsn");
    assert!(
        text.contains("Status: 5.1.1\r\n") && text.contains("Action: failed\r\n"),
        "{text}"
    );

    // A message from <> is never bounced.
    let mut c = d.connect();
    let (code, _) = c.send_message(
        "",
        &["bob@example.test"],
        b"Subject: from nobody\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    assert!(wait_until(LONG, || d
        .log()
        .contains("not sending a DSN: the message has the null sender")));
    assert!(wait_until(LONG, || queue_empty(&d)));
    // (The testbed writes every message it sees; only one of them is a DSN.)
    let dsns = std::fs::read_dir(&out)
        .expect("out")
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path())
                .map(|t| t.contains("multipart/report"))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(dsns, 1);
}

#[test]
fn kill9_mid_chain_resumes_at_the_next_stage_without_repeating_one() {
    let dir = TestDir::new("resume");
    let out = dir.path().join("out");
    let plugins = format!(
        "{}{}{}",
        plugin_toml(
            "count",
            "finaldot_testbed",
            "kv = true\nconfig = { mode = \"kv\" }"
        ),
        plugin_toml(
            "slow",
            "finaldot_testbed",
            "timeout_ms = 20000\nconfig = { mode = \"spin\", ms = 3000 }"
        ),
        deliver_to(&out, "")
    );
    let cfg = config(dir.path(), &plugins);
    let mut d = Daemon::start_with(dir.path(), &cfg);
    let id = send(
        &d,
        "a@b.test",
        &["bob@example.test"],
        "Subject: resume\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LONG, || d.log().contains("stage 0 done")),
        "log:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !d.log().contains("stage 1 done"),
        "too late to kill inside stage 1"
    );
    d.kill9();
    let d = Daemon::start_with(dir.path(), &cfg);
    assert!(
        wait_until(LONG, || delivered(&out, &id).is_some()),
        "log:\n{}",
        d.log()
    );
    let text = delivered(&out, &id).expect("file");
    assert_eq!(text.matches("X-Count:").count(), 1, "{text}");
    assert!(text.contains("X-Count: 1\r\n"), "stage 0 ran twice: {text}");
    assert_eq!(text.matches("X-Spun:").count(), 1, "{text}");
    assert!(
        !d.log().contains("stage 0 done"),
        "stage 0 re-ran after restart:\n{}",
        d.log()
    );
}

#[test]
fn queue_commands_list_show_hold_release_retry_bounce_delete() {
    let dir = TestDir::new("queue-cmds");
    let cfg = always_defer(
        dir.path(),
        "retry_min_secs = 3600\nretry_max_secs = 7200\ndelay_warning_secs = 0",
    );
    let mut d = Daemon::start_with(dir.path(), &cfg);
    let a = send(
        &d,
        "sender@remote.test",
        &["alice@example.test"],
        "Subject: a\r\n\r\nx\r\n",
    );
    let b = send(
        &d,
        "sender@remote.test",
        &["bob@example.test"],
        "Subject: b\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(LONG, || d.spool_files(QueueState::Deferred).len() == 2),
        "log:\n{}",
        d.log()
    );

    let list = queue_list(dir.path());
    assert_eq!(list.len(), 2);
    for e in &list {
        assert_eq!(e["state"], "deferred");
        assert_eq!(e["sender"], "sender@remote.test");
        assert!(e["next_attempt"].as_u64().unwrap_or(0) > 0);
        assert!(e["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("testbed defers"));
    }
    let (ok, text, _) = queue_cmd(dir.path(), &["list"]);
    assert!(
        ok && text.contains(&a) && text.contains("deferred"),
        "{text}"
    );

    let (ok, show, err) = queue_cmd(dir.path(), &["show", &a, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&show).expect("json");
    assert_eq!(v["recipient_states"][0][0], "alice@example.test");
    assert_eq!(v["recipient_states"][0][1], "pending");
    assert!(v["stages"][0]["outcome"]
        .as_str()
        .unwrap_or("")
        .starts_with("defer"));
    assert!(v["stages"][0]["version"]
        .as_str()
        .unwrap_or("")
        .starts_with("finaldot-testbed 0.1.0"));
    assert!(v["headers"]
        .as_array()
        .map(|h| h.iter().any(|h| h[0] == "Subject"))
        .unwrap_or(false));

    let (ok, _, err) = queue_cmd(dir.path(), &["hold", &a]);
    assert!(ok, "{err}");
    assert_eq!(d.spool_files(QueueState::Hold).len(), 1);
    let (ok, _, err) = queue_cmd(dir.path(), &["release", &a]);
    assert!(ok, "{err}");
    // Released: tried again at once (and deferred again by the plugin).
    assert!(wait_until(LONG, || {
        queue_list(dir.path())
            .iter()
            .any(|e| e["id"] == a.as_str() && e["state"] == "deferred")
            && d.log().matches(&format!("queue{{queue_id={a}}}")).count() >= 2
    }));
    let (ok, _, err) = queue_cmd(dir.path(), &["retry", "--all"]);
    assert!(ok, "{err}");
    let (ok, _, err) = queue_cmd(dir.path(), &["bounce", &b]);
    assert!(ok, "{err}");
    // The bounced message leaves the queue; its DSN (from <>) takes its place.
    assert!(
        wait_until(LONG, || {
            let l = queue_list(dir.path());
            !l.iter().any(|e| e["id"] == b.as_str()) && l.iter().any(|e| e["sender"] == "<>")
        }),
        "log:\n{}",
        d.log()
    );
    let (ok, _, err) = queue_cmd(dir.path(), &["delete", &a]);
    // It may be mid-attempt right after retry --all; then try again.
    if !ok {
        assert!(err.contains("being processed"), "{err}");
        assert!(wait_until(LONG, || queue_cmd(dir.path(), &["delete", &a]).0));
    }
    assert!(!queue_list(dir.path()).iter().any(|e| e["id"] == a.as_str()));
    let (ok, _, err) = queue_cmd(dir.path(), &["show", "ABCDEF"]);
    assert!(!ok && err.contains("no message ABCDEF"), "{err}");
    let (ok, _, err) = queue_cmd(dir.path(), &["show", "not-an-id"]);
    assert!(!ok && err.contains("not a queue id"), "{err}");

    // The same commands work on a stopped daemon.
    d.kill9();
    let list = queue_list(dir.path());
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["sender"], "<>");
}

#[test]
fn delay_warning_then_bounce_when_the_queue_lifetime_runs_out() {
    let dir = TestDir::new("lifetime");
    let cfg = always_defer(
        dir.path(),
        "retry_min_secs = 1\nretry_max_secs = 1\ndelay_warning_secs = 1\nmax_queue_lifetime_secs = 3",
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    let id = send(
        &d,
        "sender@remote.test",
        &["bob@example.test"],
        "Subject: never\r\n\r\nx\r\n",
    );
    let line = |needle: &str| {
        d.log()
            .lines()
            .any(|l| l.contains(&format!("queue_id={id}")) && l.contains(needle))
    };
    assert!(
        wait_until(LONG, || line("kind=Delayed")),
        "no delay warning; log:\n{}",
        d.log()
    );
    assert!(
        wait_until(LONG, || line("kind=Failed")),
        "no bounce; log:\n{}",
        d.log()
    );
    assert!(wait_until(LONG, || line("status=5.4.7")), "{}", d.log());
    assert!(line("queue lifetime exceeded"));
    assert!(wait_until(LONG, || !queue_list(dir.path())
        .iter()
        .any(|e| e["id"] == id.as_str())));
    // The DSNs (from <>) meet the same deferring chain, and never get a DSN of their own.
    assert!(wait_until(LONG, || d
        .log()
        .contains("not sending a DSN: the message has the null sender")));
    assert_eq!(
        d.log().matches("DSN queued for the sender").count(),
        2,
        "{}",
        d.log()
    );
}
