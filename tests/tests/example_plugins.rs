//! The example plugins in the daemon's default chain (dedup → list-expand →
//! filter → local-delivery), end to end: real SMTP in, real Maildirs out,
//! read back by Python's `mailbox` module.

use std::path::Path;
use std::time::Duration;

use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

fn start_default(dir: &Path) -> Daemon {
    install_example_plugins(dir);
    Daemon::start_default(dir)
}

/// How many of `files` contain `needle`.
fn count_containing(files: &[std::path::PathBuf], needle: &str) -> usize {
    files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains(needle)
        })
        .count()
}

fn maildir_new(dir: &Path, user: &str) -> std::path::PathBuf {
    dir.join("var/mail").join(user).join("Maildir/new")
}

#[test]
fn default_run_delivers_into_a_maildir_that_python_reads() {
    let dir = TestDir::new("default-maildir");
    let d = start_default(dir.path());
    let body = b"From: Sender <s@remote.test>\r\nTo: alice@localhost\r\nSubject: first message\r\nMessage-ID: <first@remote.test>\r\n\r\nHello Alice.\r\n.leading dot\r\n";
    d.send("s@remote.test", &["alice@localhost"], body);
    let files = wait_for_files(&maildir_new(dir.path(), "alice"), 1, LONG);
    assert_eq!(files.len(), 1, "log:\n{}", d.log());
    let on_disk = std::fs::read(&files[0]).expect("read");
    let text = String::from_utf8_lossy(&on_disk);
    assert!(text.starts_with("Return-Path: <s@remote.test>\nDelivered-To: alice@localhost\nReceived: from client.test"), "{text}");
    let original_lf = String::from_utf8_lossy(body).replace("\r\n", "\n");
    assert!(text.ends_with(&original_lf), "{text}");
    assert!(wait_until(LONG, || d.queue_drained()));

    let script = r#"
import mailbox, sys
md = mailbox.Maildir(sys.argv[1], factory=None, create=False)
keys = md.keys()
assert len(keys) == 1, keys
sys.stdout.buffer.write(md.get_bytes(keys[0]))
"#;
    let out = python3()
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("var/mail/alice/Maildir"))
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout, on_disk,
        "python's mailbox reads different bytes"
    );
}

#[test]
fn a_list_message_reaches_every_member_once_with_list_headers() {
    let dir = TestDir::new("default-list");
    std::fs::create_dir_all(dir.path().join("var/lists")).expect("mkdir");
    std::fs::write(
        dir.path().join("var/lists/team@localhost"),
        "name: The Team\nalice@localhost\nbob@localhost\n",
    )
    .expect("list file");
    let d = start_default(dir.path());
    // alice is also addressed directly: she still gets one copy.
    d.send(
        "carol@remote.test",
        &["team@localhost", "alice@localhost"],
        b"Subject: to the team\r\nMessage-ID: <team-1@remote.test>\r\n\r\nhi all\r\n",
    );
    for user in ["alice", "bob"] {
        let files = wait_for_files(&maildir_new(dir.path(), user), 1, LONG);
        assert_eq!(files.len(), 1, "{user}; log:\n{}", d.log());
        let text = std::fs::read_to_string(&files[0]).expect("read");
        assert!(
            text.contains("\nList-Id: The Team <team.localhost>\n"),
            "{text}"
        );
        assert!(
            text.contains("\nList-Post: <mailto:team@localhost>\n"),
            "{text}"
        );
        assert!(text.contains("\nPrecedence: list\n"), "{text}");
        assert!(
            text.starts_with("Return-Path: <team-bounces@localhost>\n"),
            "{text}"
        );
    }
    assert!(wait_until(LONG, || d.queue_drained()));
    assert!(
        !maildir_new(dir.path(), "team").exists(),
        "the list address got a mailbox"
    );
    assert_eq!(
        wait_for_files(&maildir_new(dir.path(), "alice"), 1, LONG).len(),
        1
    );
}

#[test]
fn recipients_differing_only_in_case_are_delivered_once_and_never_reported_failed() {
    // Found by a black-box probe: two RCPTs the session keeps apart (a local
    // part may be case-sensitive) that name one mailbox.
    let dir = TestDir::new("default-case");
    let d = start_default(dir.path());
    d.send(
        "s@remote.test",
        &["Alice@localhost", "alice@LOCALHOST"],
        b"Subject: case\r\n\r\nhi\r\n",
    );
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    let files = wait_for_files(&maildir_new(dir.path(), "alice"), 1, LONG);
    assert_eq!(files.len(), 1);
    let log = d.log();
    assert!(!log.contains("failed to="), "{log}");
    assert!(!log.contains("DSN queued"), "{log}");
}

#[test]
fn the_same_message_sent_twice_is_delivered_once() {
    let dir = TestDir::new("default-dedup");
    let d = start_default(dir.path());
    let body =
        b"Subject: RFC 1047\r\nMessage-ID: <dup@remote.test>\r\n\r\nsent twice after a timeout\r\n";
    let first = d.send("s@remote.test", &["alice@localhost", "bob@localhost"], body);
    let second = d.send("s@remote.test", &["alice@localhost"], body);
    assert_ne!(first, second);
    assert!(
        wait_until(LONG, || d.queue_drained()
            && d.log().contains("not delivered again")),
        "log:\n{}",
        d.log()
    );
    assert_eq!(
        wait_for_files(&maildir_new(dir.path(), "alice"), 1, LONG).len(),
        1
    );
    assert_eq!(
        wait_for_files(&maildir_new(dir.path(), "bob"), 1, LONG).len(),
        1
    );
    // Two workers may take the copies in either order: whichever ran second
    // is the duplicate of the other.
    let log = d.log();
    assert!(
        log.contains(&format!("duplicate of {first}"))
            || log.contains(&format!("duplicate of {second}")),
        "{log}"
    );
    // The duplicate is counted as discarded, not as a delivery.
    let metrics = http_get(d.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("\nfinaldot_deliveries_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nfinaldot_discards_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn copies_sent_at_the_same_moment_are_delivered_once() {
    // Eight copies of one message on eight connections at once: the default
    // chain's workers run them concurrently, and dedup's check-and-record is
    // one atomic step, so exactly one reaches the mailbox.
    let dir = TestDir::new("default-dedup-race");
    let d = start_default(dir.path());
    let body = b"Subject: retry storm\r\nMessage-ID: <storm@remote.test>\r\n\r\nonce\r\n";
    let mut clients: Vec<_> = (0..8).map(|_| d.connect()).collect();
    for c in &mut clients {
        c.expect("EHLO remote.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        c.expect("RCPT TO:<alice@localhost>", 250);
        c.expect("DATA", 354);
        c.send(body);
    }
    for c in &mut clients {
        c.send(b".\r\n");
    }
    for c in &mut clients {
        assert_eq!(c.read_reply().0, 250);
    }
    assert!(wait_until(LONG, || d.queue_drained()), "log:\n{}", d.log());
    assert_eq!(
        d.log().matches("not delivered again").count(),
        7,
        "log:\n{}",
        d.log()
    );
    assert_eq!(
        std::fs::read_dir(maildir_new(dir.path(), "alice"))
            .expect("maildir")
            .count(),
        1
    );
}

#[test]
fn a_filter_rule_holds_a_matching_message() {
    let dir = TestDir::new("filter-hold");
    let mail = dir.path().join("mail");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "filter",
            "filter",
            "[plugins.config]\n[[plugins.config.rules]]\nname = \"quarantine\"\nheader = \"Subject\"\ncontains = \"quarantine me\"\naction = \"hold\"\n"
        ),
        plugin_toml(
            "local-delivery",
            "local_delivery",
            &format!("dirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"example.test\"], users = [\"alice\", \"bob\"], aliases = {{ postmaster = \"alice\" }} }}"),
        )
    );
    let d = Daemon::start_with(dir.path(), &chain_config(dir.path(), &plugins));
    let held = d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: please QUARANTINE me\r\n\r\nx\r\n",
    );
    d.send(
        "s@remote.test",
        &["bob@example.test"],
        b"Subject: ordinary\r\n\r\nx\r\n",
    );
    assert_eq!(
        wait_for_files(&mail.join("bob/Maildir/new"), 1, LONG).len(),
        1,
        "log:\n{}",
        d.log()
    );
    assert!(
        wait_until(LONG, || d.spool_files(QueueState::Hold).len() == 1),
        "log:\n{}",
        d.log()
    );
    let list = queue_list(dir.path());
    let e = list
        .iter()
        .find(|e| e["id"] == held.as_str())
        .expect("held message listed");
    assert_eq!(e["state"], "hold");
    assert_eq!(e["hold_reason"], "filter: filter rule quarantine");
    assert!(
        d.log().contains("filter rule quarantine: hold"),
        "{}",
        d.log()
    );
    assert!(!mail.join("alice/Maildir/new").exists());
}

/// Issue 15.1: a local part that local delivery cannot store is refused at
/// RCPT time (550 5.1.1, the session goes on), so no DSN is ever sent for
/// it; unusual but valid addresses are delivered end to end.
#[test]
fn undeliverable_local_parts_are_refused_at_rcpt_and_never_bounced() {
    let dir = TestDir::new("rcpt-mailbox-rule");
    let d = start_default(dir.path());
    let mut c = d.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<forged@victim.test> SMTPUTF8", 250);
    let long = "a".repeat(65);
    // What the address grammar already forbids is a syntax error (501); what
    // it allows but no mailbox can hold is 550 5.1.1.
    for (bad, want) in [
        ("\"victim@relay-target.example\"@localhost", "550 5.1.1 "),
        ("\"john smith\"@localhost", "550 5.1.1 "),
        ("\".hidden\"@localhost", "550 5.1.1 "),
        ("\"a..b\"@example.test", "550 5.1.1 "),
        ("\"a\\\\b\"@localhost", "550 5.1.1 "),
        ("a/b@localhost", "550 5.1.1 "),
        (&format!("{long}@localhost"), "501 5.1.3 "),
        (".hidden@localhost", "501 5.1.3 "),
        ("a..b@localhost", "501 5.1.3 "),
        ("trailing.@example.test", "501 5.1.3 "),
    ] {
        let (_, text) = c.cmd(&format!("RCPT TO:<{bad}>"));
        assert!(text.starts_with(want), "{bad}: {text}");
    }
    for ok in [
        "first.last@localhost",
        "a+tag@localhost",
        "o'brien@localhost",
        "jörg@localhost",
    ] {
        c.expect(&format!("RCPT TO:<{ok}>"), 250);
    }
    c.expect("DATA", 354);
    c.send(b"Subject: unusual\r\n\r\nbody\r\n.\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    c.expect("QUIT", 221);
    for user in ["first.last", "a", "o'brien", "jörg"] {
        let files = wait_for_files(&maildir_new(dir.path(), user), 1, LONG);
        assert_eq!(files.len(), 1, "{user}; log:\n{}", d.log());
    }
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    // Nothing was bounced: no DSN waits in any queue, none was logged, and
    // no other mailbox exists.
    assert!(!d.log().contains("DSN queued"), "{}", d.log());
    let mut boxes: Vec<String> = std::fs::read_dir(dir.path().join("var/mail"))
        .expect("mail dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    boxes.sort();
    assert_eq!(boxes, ["a", "first.last", "jörg", "o'brien"]);
}

/// `finaldot plugin list --json` run by `bin` in `dir` (embedded default config).
fn plugin_list_json(bin: &Path, dir: &Path) -> serde_json::Value {
    let out = std::process::Command::new(bin)
        .args(["plugin", "list", "--json"])
        .current_dir(dir)
        .output()
        .expect("plugin list");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The `source` of every plugin in `list`, by name.
fn sources(list: &serde_json::Value) -> Vec<(String, String)> {
    list.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["source"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 15.4: the binary alone, copied into an empty directory, delivers
/// mail with the default chain from its built-in plugins; a file the
/// administrator puts in the plugin directory wins (hot-reloaded), and when
/// it is removed the built-in copy serves again. `plugin list` and the
/// status page say where each plugin came from.
#[test]
fn a_bare_binary_in_an_empty_directory_delivers_with_its_built_in_plugins() {
    let dir = TestDir::new("bare-binary");
    let bin = dir.path().join("finaldot");
    std::fs::copy(finaldot_bin(), &bin).expect("copy the binary");
    let d = Daemon::start_default_binary(dir.path(), &bin);
    let first = d.send(
        "s@remote.test",
        &["alice@localhost"],
        b"Subject: one\r\n\r\nfrom a bare binary\r\n",
    );
    let files = wait_for_files(&maildir_new(dir.path(), "alice"), 1, LONG);
    assert_eq!(files.len(), 1, "{first}; log:\n{}", d.log());
    let builtin = |name: &str| (name.to_string(), "built-in".to_string());
    let all_builtin = vec![
        builtin("dedup"),
        builtin("list-expand"),
        builtin("filter"),
        builtin("local-delivery"),
    ];
    assert!(
        wait_until(LONG, || sources(&plugin_list_json(&bin, dir.path()))
            == all_builtin),
        "{:?}",
        plugin_list_json(&bin, dir.path())
    );
    let page = http_get(d.metrics_addr(), "/");
    assert!(
        page.contains("<td>local-delivery</td><td>local-delivery 0.1.0</td><td>built-in</td>"),
        "{page}"
    );

    // The administrator's file wins: stamp.wasm in place of the filter.
    let plugins = dir.path().join("var/plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    std::fs::copy(wasm("stamp"), plugins.join(".filter.tmp")).expect("copy");
    std::fs::rename(plugins.join(".filter.tmp"), plugins.join("filter.wasm")).expect("rename");
    assert!(
        wait_until(LONG, || {
            let list = plugin_list_json(&bin, dir.path());
            list[2]["source"] == "file" && list[2]["version"] == "stamp 0.1.0"
        }),
        "{}",
        d.log()
    );
    d.send(
        "s@remote.test",
        &["alice@localhost"],
        b"Subject: two\r\n\r\nstamped\r\n",
    );
    let files = wait_for_files(&maildir_new(dir.path(), "alice"), 2, LONG);
    let stamped = count_containing(&files, "X-Stamped-By: finaldot");
    assert_eq!(stamped, 1, "{files:?}");

    // Removed: the built-in filter serves again.
    std::fs::remove_file(plugins.join("filter.wasm")).expect("rm");
    assert!(
        wait_until(LONG, || sources(&plugin_list_json(&bin, dir.path()))
            == all_builtin),
        "{}",
        d.log()
    );
    d.send(
        "s@remote.test",
        &["alice@localhost"],
        b"Subject: three\r\n\r\nnot stamped\r\n",
    );
    let files = wait_for_files(&maildir_new(dir.path(), "alice"), 3, LONG);
    assert_eq!(files.len(), 3, "{}", d.log());
    let stamped = count_containing(&files, "X-Stamped-By");
    assert_eq!(stamped, 1, "{files:?}");
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
}

/// Issue 17.1: plugins see the session's facts: a filter rule on the client
/// network, TLS, authentication and HELO acts on a loopback message (the
/// queue file's side is `smtp.rs`'s `the_queue_file_records_the_session_facts`).
#[test]
fn session_facts_are_recorded_and_plugins_act_on_them() {
    let dir = TestDir::new("session-facts");
    let mail = dir.path().join("mail");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "filter",
            "filter",
            "[plugins.config]\n[[plugins.config.rules]]\nname = \"loopback\"\nclient_network = \"127.0.0.0/8\"\ntls = false\nauthenticated = false\nhelo_regex = \"^client\\\\.test$\"\naction = \"add-header\"\nadd_header = \"X-Loopback: yes\"\n"
        ),
        local_delivery_toml(&mail)
    );
    let d = Daemon::start_with(dir.path(), &chain_config(dir.path(), &plugins));
    d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: facts\r\n\r\nhi\r\n",
    );
    let text = only_delivery(&d, &mail);
    assert!(text.contains("X-Loopback: yes"), "{text}");
}

/// Issue 17.1: a plugin binary built with the SDK before the session facts
/// (kept as a fixture, never rebuilt) loads and runs unchanged.
#[test]
fn a_plugin_built_with_the_previous_sdk_still_runs() {
    let dir = TestDir::new("old-sdk-plugin");
    let mail = dir.path().join("mail");
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/plugins/stamp-sdk-7cbcdca.wasm");
    let plugins = format!(
        "[[plugins]]\nname = \"old-stamp\"\nfile = {old:?}\nconfig = {{ by = \"old-sdk\" }}\n\n{}",
        local_delivery_toml(&mail)
    );
    let d = Daemon::start_with(dir.path(), &chain_config(dir.path(), &plugins));
    let id = d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: old\r\n\r\nhi\r\n",
    );
    let files = wait_for_files(&mail.join("alice/Maildir/new"), 1, LONG);
    assert_eq!(files.len(), 1, "{id}: {}", d.log());
    let text = std::fs::read_to_string(&files[0]).expect("read");
    assert!(text.contains("X-Stamped-By: old-sdk"), "{text}");
    assert!(!d.log().contains("fault"), "{}", d.log());
}

#[test]
fn mail_to_postmaster_is_delivered_with_the_embedded_default() {
    let dir = TestDir::new("default-postmaster");
    let d = start_default(dir.path());
    // The bare <postmaster> (RFC 5321 §4.1.1.3), at a local domain, and at
    // this host's address literal (§4.5.1), in any case.
    let mut c = d.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    for r in [
        "<postmaster>",
        "<PostMaster@[127.0.0.1]>",
        "<postmaster@localhost>",
    ] {
        c.expect(&format!("RCPT TO:{r}"), 250);
    }
    c.expect("DATA", 354);
    c.send(b"Subject: to the postmaster\r\n\r\nhello\r\n.\r\n");
    let (code, text) = c.read_reply();
    assert_eq!(code, 250, "{text}");
    // The default config aliases postmaster to root: every spelling ends
    // in that one mailbox, one copy.
    let files = wait_for_files(&maildir_new(dir.path(), "root"), 1, LONG);
    assert!(wait_until(LONG, || d.queue_drained()));
    let files = wait_for_files(&maildir_new(dir.path(), "root"), files.len(), LONG);
    assert_eq!(
        count_containing(&files, "Subject: to the postmaster"),
        1,
        "{files:?}"
    );
    assert!(
        !d.log().contains("no plugin in the chain delivered"),
        "{}",
        d.log()
    );
}
