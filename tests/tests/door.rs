//! The door end to end: `[[door]]` plugins judging real clients before
//! DATA in the real daemon. A DNSBL-listed client (a loopback source
//! address the tests' DNS server lists) is refused at connect and nothing
//! of it reaches the spool; greylisting shared by two nodes on a real
//! redis-server; a rate limit; a door plugin that traps, hangs, bombs its
//! memory or loses its Redis gets its failure policy while the session goes
//! on; PIPELINING keeps its reply order through a door call (a raw client
//! and Python's smtplib).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use finaldot::spool::QueueState;
use finaldot_e2e::dns::{DnsServer, Record};
use finaldot_e2e::redis::Redis;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

/// Every file in the spool (every state, `tmp/` too).
fn spool_files_all(d: &Daemon) -> Vec<std::path::PathBuf> {
    let mut all = Vec::new();
    for state in [
        QueueState::Tmp,
        QueueState::Incoming,
        QueueState::Active,
        QueueState::Deferred,
        QueueState::Hold,
        QueueState::Corrupt,
    ] {
        all.extend(d.spool_files(state));
    }
    all
}

/// A metric's value in `/metrics` (the first sample whose line starts with `prefix`).
fn metric(d: &Daemon, prefix: &str) -> f64 {
    http_get(d.metrics_addr(), "/metrics")
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The configuration of a daemon whose door runs `door` (`[[door]]`
/// tables) and whose chain delivers into `dir/mail`, with the metrics
/// listener on.
fn door_config(dir: &TestDir, door: &str, extra: &str) -> String {
    let mail = dir.path().join("mail");
    test_config(
        dir.path(),
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[pipeline]\nrescan_secs = 1\n\n{}{door}{extra}",
            local_delivery_toml(&mail)
        ),
    )
}

/// A daemon with [`door_config`].
fn start(dir: &TestDir, door: &str, extra: &str) -> Daemon {
    Daemon::start_with(dir.path(), &door_config(dir, door, extra))
}

/// A daemon with [`door_config`] asking the tests' DNS server at `dns`.
fn start_with_dns(dir: &TestDir, door: &str, dns: std::net::SocketAddr) -> Daemon {
    Daemon::start_with(dir.path(), &with_dns(&door_config(dir, door, ""), dns))
}

#[test]
fn a_listed_client_is_refused_at_connect_and_nothing_reaches_the_spool() {
    // 127.0.0.2 is listed (RFC 5782's test address); 127.0.0.1 is not.
    let dns = DnsServer::start(vec![Record::A(
        "2.0.0.127.zen.test".into(),
        Ipv4Addr::new(127, 0, 0, 2),
    )]);
    let dir = TestDir::new("door-dnsbl");
    let door = door_toml(
        "dnsbl-door",
        "dnsbl",
        "stages = [\"connect\"]\ndns = true\n[door.config]\nzones = [{ zone = \"zen.test\" }]\nskip_networks = [\"192.0.2.0/24\"]\n",
    );
    let d = start_with_dns(&dir, &door, dns.addr);
    let before = spool_files_all(&d);
    let mut c = Client::connect_from(d.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let (code, text) = c.read_reply();
    assert_eq!(code, 554, "{text}");
    assert!(
        text.contains("5.7.1") && text.contains("blocked using zen.test"),
        "{text}"
    );
    // RFC 5321 §3.1: after a 554 greeting, 503 to everything but QUIT.
    c.expect("EHLO spammer.test", 503);
    c.expect("MAIL FROM:<spam@spammer.test>", 503);
    c.expect("DATA", 503);
    c.expect("QUIT", 221);
    assert_eq!(
        spool_files_all(&d),
        before,
        "the refused client wrote nothing"
    );
    assert_eq!(metric(&d, "finaldot_smtp_messages_total"), 0.0);
    assert_eq!(
        metric(
            &d,
            "finaldot_door_refusals_total{plugin=\"dnsbl-door\",stage=\"connect\",code=\"554\"}"
        ),
        1.0
    );
    assert!(
        wait_until(LONG, || d.log().contains("door refused"))
            && d.log().contains("client=127.0.0.2"),
        "{}",
        d.log()
    );
    // A refused client that never QUITs is closed after a short while
    // (not command_timeout_secs: it holds a connection slot).
    let mut idle = Client::connect_from(d.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    assert_eq!(idle.read_reply().0, 554);
    let started = Instant::now();
    let (code, text) = idle.read_reply();
    assert_eq!(code, 421, "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The status page shows the door's refusal beside its calls.
    let page = http_get(d.metrics_addr(), "/");
    let row = page
        .split("<tr ")
        .find(|r| r.contains("data-door=\"dnsbl-door\" data-stage=\"connect\""))
        .unwrap_or_else(|| panic!("no door row in:\n{page}"));
    assert!(row.contains("class=\"n refusals\">2<"), "{row}");
    // An unlisted client is served and its mail delivered.
    let id = d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: ok\r\n\r\nhi\r\n",
    );
    let files = wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 1, LONG);
    assert_eq!(files.len(), 1, "{id}");
}

#[test]
fn one_clients_slow_dns_answer_never_delays_another_clients_greeting() {
    // 127.0.0.3's blocklist query is never answered; 127.0.0.1's is (NXDOMAIN).
    let dns = DnsServer::start(vec![Record::Silent("3.0.0.127.zen.test".into())]);
    let dir = TestDir::new("door-slow-dns");
    let door = door_toml(
        "dnsbl-door",
        "dnsbl",
        "stages = [\"connect\"]\ntimeout_ms = 5000\ndns = { timeout_ms = 2000 }\n[door.config]\nzones = [{ zone = \"zen.test\" }]\nskip_networks = [\"192.0.2.0/24\"]\n",
    );
    let d = start_with_dns(&dir, &door, dns.addr);
    // Warm the plugin and the resolver's cache for 127.0.0.1.
    d.connect().expect("QUIT", 221);
    let slow = std::thread::spawn({
        let addr = d.addr;
        move || {
            let started = Instant::now();
            let mut c = Client::connect_from(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
            let (code, _) = c.read_reply();
            (code, started.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // While that greeting waits on DNS, other clients are greeted at once.
    for _ in 0..5 {
        let started = Instant::now();
        let mut c = d.connect();
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(700),
            "a greeting took {waited:?} while another client's DNS answer was slow"
        );
        c.expect("QUIT", 221);
    }
    let (code, waited) = slow.join().expect("slow client");
    // Its lookup timed out (a failing zone counts as not listed): let in.
    assert_eq!(code, 220);
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
}

#[test]
fn greylisting_defers_the_first_try_and_passes_the_retry_on_another_node() {
    let dir = TestDir::new("door-greylist");
    let redis = Redis::start(dir.path());
    let door = door_toml(
        "greylist",
        "greylist",
        &format!(
            "stages = [\"rcpt\"]\nkv = {{ backend = \"redis\", url = \"{}\", prefix = \"grey:\" }}\n[door.config]\ndelay_secs = 2\nskip_networks = [\"192.0.2.0/24\"]\n",
            redis.url()
        ),
    );
    let a_dir = TestDir::new("door-greylist-a");
    let b_dir = TestDir::new("door-greylist-b");
    let a = start(&a_dir, &door, "");
    let b = start(&b_dir, &door, "");
    let mut c = a.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    let text = c.expect("RCPT TO:<alice@example.test>", 451);
    assert!(text.contains("4.7.1 Greylisted"), "{text}");
    c.expect("QUIT", 221);
    assert!(spool_files_all(&a).is_empty());
    // Too early on the other node: still greylisted.
    let mut c = b.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 451);
    c.expect("QUIT", 221);
    std::thread::sleep(Duration::from_millis(2100));
    // After the delay, node B lets the retry in: the nodes share one Redis.
    let id = b.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: grey\r\n\r\nhi\r\n",
    );
    let files = wait_for_files(&b_dir.path().join("mail/alice/Maildir/new"), 1, LONG);
    assert_eq!(files.len(), 1, "{id}");
    // And the triplet is remembered on node A.
    a.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: again\r\n\r\nhi\r\n",
    );
}

#[test]
fn the_message_over_the_rate_limit_gets_450_and_the_session_goes_on() {
    let dir = TestDir::new("door-ratelimit");
    let door = door_toml(
        "ratelimit",
        "ratelimit",
        "stages = [\"mail\"]\nkv = true\n[door.config]\nlimits = [{ by = \"client_ip\", max = 2, window_secs = 3600 }]\n",
    );
    let d = start(&dir, &door, "");
    let mut c = d.connect();
    for n in 0..2 {
        let (code, text) = c.send_message(
            "s@remote.test",
            &["alice@example.test"],
            format!("Subject: {n}\r\n\r\nhi\r\n").as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
    }
    c.expect("RSET", 250);
    let text = c.expect("MAIL FROM:<s@remote.test>", 450);
    assert!(text.contains("4.7.1 Rate limit exceeded"), "{text}");
    // The session goes on: no transaction was opened.
    c.expect("RCPT TO:<alice@example.test>", 503);
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    let files = wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 2, LONG);
    assert_eq!(files.len(), 2);
}

/// A daemon whose door runs the testbed with `door_mode` at every stage,
/// time limit 300 ms, and `on_failure`.
fn testbed_door(dir: &TestDir, door_mode: &str, on_failure: &str, extra: &str) -> Daemon {
    let door = door_toml(
        "bed",
        "finaldot_testbed",
        &format!("timeout_ms = 300\nmemory_mb = 16\non_failure = \"{on_failure}\"\n{extra}\n[door.config]\ndoor = \"{door_mode}\"\n"),
    );
    start(dir, &door, "")
}

#[test]
fn a_door_plugin_that_traps_hangs_bombs_or_lies_gets_its_failure_policy() {
    for mode in ["unreachable", "loop", "membomb", "bad-reply"] {
        // tempfail: 421 at connect, and the connection closes.
        let dir = TestDir::new(&format!("door-fail-{mode}"));
        let d = testbed_door(&dir, mode, "tempfail", "");
        let mut c = Client::connect_raw(d.addr);
        let started = Instant::now();
        let (code, text) = c.read_reply();
        assert_eq!(code, 421, "{mode}: {text}");
        assert!(text.contains("4.7.1"), "{mode}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode}: bounded"
        );
        assert!(c.is_closed(), "{mode}");
        // The log is read from the daemon's output as it comes.
        assert!(
            wait_until(LONG, || d.log().contains("door plugin failed")),
            "{mode}: {}",
            d.log()
        );
        assert!(metric(&d, "finaldot_door_failures_total") >= 1.0, "{mode}");
        // continue: the client is served as if the plugin had said continue.
        let dir = TestDir::new(&format!("door-open-{mode}"));
        let d = testbed_door(&dir, mode, "continue", "");
        d.send(
            "s@remote.test",
            &["alice@example.test"],
            b"Subject: in\r\n\r\nhi\r\n",
        );
        wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 1, LONG);
    }
    // At a command, tempfail is 451 4.7.1 and the session goes on.
    let dir = TestDir::new("door-fail-rcpt");
    let d = testbed_door(&dir, "unreachable", "tempfail", "stages = [\"rcpt\"]");
    let mut c = d.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    let text = c.expect("RCPT TO:<alice@example.test>", 451);
    assert!(text.contains("4.7.1"), "{text}");
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
}

#[test]
fn an_unreachable_redis_gets_the_failure_policy_never_a_hang() {
    // A port nobody listens on.
    let dead = format!("redis://127.0.0.1:{}/0", free_port());
    for (policy, code) in [("tempfail", 451), ("continue", 250)] {
        let dir = TestDir::new(&format!("door-redis-{policy}"));
        let d = testbed_door(
            &dir,
            "kv",
            policy,
            &format!("stages = [\"rcpt\"]\nkv = {{ backend = \"redis\", url = \"{dead}\" }}"),
        );
        let mut c = d.connect();
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        let started = Instant::now();
        c.expect("RCPT TO:<alice@example.test>", code);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{policy}: answered in {:?}",
            started.elapsed()
        );
        c.expect("QUIT", 221);
    }
}

#[test]
fn the_final_dots_250_never_waits_for_the_next_commands_door_call() {
    // A door plugin that spins to its time limit (2 s) at MAIL, fail open.
    let dir = TestDir::new("door-dot-first");
    let door = door_toml(
        "slow",
        "finaldot_testbed",
        "stages = [\"mail\"]\ntimeout_ms = 2000\n[door.config]\ndoor = \"loop\"\n",
    );
    let d = start(&dir, &door, "");
    let mut c = d.connect();
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@remote.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    // The final dot and the next MAIL in one write, as a pipelining client.
    c.send(b"Subject: first\r\n\r\nhi\r\n.\r\nMAIL FROM:<s@remote.test>\r\n");
    let started = Instant::now();
    let (code, text) = c.read_reply();
    let dot = started.elapsed();
    assert_eq!(code, 250, "{text}");
    assert!(
        dot < Duration::from_millis(1000),
        "the 250 after the final dot waited {dot:?} for the next MAIL's door call"
    );
    // Then the MAIL's answer, after the door call failed open.
    assert_eq!(c.read_reply().0, 250);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn pipelined_commands_keep_their_reply_order_through_door_calls() {
    let dir = TestDir::new("door-pipelining");
    let d = testbed_door(
        &dir,
        "refuse-no",
        "continue",
        "stages = [\"helo\", \"mail\", \"rcpt\"]",
    );
    let mut c = d.connect();
    // Everything in one write, as a PIPELINING client sends it.
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@localhost>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
    );
    let replies: Vec<(u16, String)> = (0..6).map(|_| c.read_reply()).collect();
    let codes: Vec<u16> = replies.iter().map(|r| r.0).collect();
    assert_eq!(codes, vec![250, 250, 250, 550, 250, 354], "{replies:?}");
    assert!(replies[3].1.contains("5.7.1 no thanks"), "{replies:?}");
    c.send(b"Subject: pipelined\r\n\r\nhi\r\n.\r\nQUIT\r\n");
    assert_eq!(c.read_reply().0, 250);
    assert_eq!(c.read_reply().0, 221);
    wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 1, LONG);
    wait_for_files(&dir.path().join("mail/bob/Maildir/new"), 1, LONG);
    // Python's smtplib (which pipelines nothing but reads every reply):
    // the refused recipient is reported, the others get the message.
    let out = run_python(
        python3(),
        &format!(
            r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=30)
refused = s.sendmail("s@remote.test", ["alice@example.test", "nope@localhost"], "Subject: smtplib\r\n\r\nhi\r\n")
print(refused)
s.quit()
"#,
            port = d.addr.port()
        ),
        &[],
        b"",
        "smtplib",
    );
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("nope@localhost") && out.contains("550") && out.contains("no thanks"),
        "{out}"
    );
    wait_for_files(&dir.path().join("mail/alice/Maildir/new"), 2, LONG);
}

#[test]
fn door_entries_are_checked_like_plugins_and_named_apart() {
    let dir = TestDir::new("door-config");
    for (entry, want) in [
        ("stages = [\"data\"]", "door[0].stages"),
        ("listeners = [\"lmtp\"]", "door[0].listeners"),
        ("on_failure = \"bounce\"", "door[0].on_failure"),
    ] {
        let config = test_config(dir.path(), "", &door_toml("x", "finaldot_testbed", entry));
        let (ok, err) = check_config(&dir, &config);
        assert!(!ok && err.contains(want), "{entry}: {err}");
    }
    let config = test_config(
        dir.path(),
        "",
        &format!(
            "{}{}",
            plugin_toml("x", "finaldot_testbed", ""),
            door_toml("x", "finaldot_testbed", "")
        ),
    );
    let (ok, err) = check_config(&dir, &config);
    assert!(!ok && err.contains("a [[plugins]] name too"), "{err}");
}

#[test]
fn plugin_test_runs_a_door_stage_against_given_facts() {
    let dir = TestDir::new("door-plugin-test");
    let config = test_config(
        dir.path(),
        "",
        &door_toml(
            "greylist",
            "greylist",
            "stages = [\"rcpt\"]\nkv = true\n[door.config]\ndelay_secs = 120\n",
        ),
    );
    std::fs::write(dir.path().join("finaldot.toml"), &config).expect("write");
    let out = std::process::Command::new(finaldot_bin())
        .args(["plugin", "test"])
        .arg(wasm("greylist"))
        .args([
            "--door",
            "rcpt",
            "--client-ip",
            "198.51.100.7",
            "--to",
            "bob@localhost",
        ])
        .arg("--config")
        .arg(dir.path().join("finaldot.toml"))
        .output()
        .expect("plugin test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("stage:    rcpt"), "{text}");
    assert!(
        text.contains("verdict:  451 4.7.1 Greylisted, please try again in 120 seconds"),
        "{text}"
    );
    assert!(text.contains("greylisted 198.51.100.0/24"), "{text}");
    // There is no door stage at DATA.
    let out = std::process::Command::new(finaldot_bin())
        .args(["plugin", "test"])
        .arg(wasm("greylist"))
        .args(["--door", "data"])
        .output()
        .expect("plugin test");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no door stage at or after DATA"));
    // plugin check says it can judge at the door.
    let out = std::process::Command::new(finaldot_bin())
        .args(["plugin", "check"])
        .arg(wasm("greylist"))
        .output()
        .expect("plugin check");
    assert!(String::from_utf8_lossy(&out.stdout).contains("door:     yes"));
}

#[test]
fn the_example_files_door_entries_validate_once_uncommented() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../finaldot.example.toml"
    ))
    .expect("example");
    let block: String = example
        .split("# --- door examples begin\n")
        .nth(1)
        .and_then(|rest| rest.split("# --- door examples end").next())
        .expect("the door examples block")
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .or_else(|| l.strip_prefix('#'))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(block.contains("[[door]]"), "{block}");
    let dir = TestDir::new("door-example");
    let config = test_config(dir.path(), "", &block);
    let (ok, err) = check_config(&dir, &config);
    assert!(ok, "{err}\n{block}");
}

#[test]
fn a_door_plugin_is_hot_reloaded_and_a_sighup_applies_a_new_door() {
    let dir = TestDir::new("door-reload");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    let land = |name: &str, from: &std::path::Path| {
        let tmp = plugins.join(format!(".{name}.part"));
        std::fs::copy(from, &tmp).expect("copy");
        std::fs::rename(&tmp, plugins.join(name)).expect("rename");
    };
    land("swap.wasm", &wasm("finaldot_testbed"));
    let config = |door: &str| {
        test_config(
            dir.path(),
            "",
            &format!(
                "[pipeline]\nrescan_secs = 1\nplugin_dir = {plugins:?}\n\n{}{door}",
                local_delivery_toml(&dir.path().join("mail"))
            ),
        )
    };
    let swap = "[[door]]\nname = \"swap\"\nfile = \"swap.wasm\"\nstages = [\"rcpt\"]\nkv = true\n[door.config]\ndoor = \"refuse-no\"\nskip_networks = [\"192.0.2.0/24\"]\n";
    let d = Daemon::start_with(dir.path(), &config(swap));
    let rcpt = |to: &str| {
        let mut c = d.connect();
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        let (code, text) = c.cmd(&format!("RCPT TO:<{to}>"));
        c.expect("QUIT", 221);
        (code, text)
    };
    let (code, text) = rcpt("nobody@localhost");
    assert_eq!(code, 550, "{text}");
    // Another plugin lands under the same file name: the door serves it.
    land("swap.wasm", &wasm("greylist"));
    let started = Instant::now();
    loop {
        let (code, text) = rcpt("nobody@localhost");
        if code == 451 {
            assert!(text.contains("Greylisted"), "{text}");
            break;
        }
        assert!(
            started.elapsed() < LONG,
            "still {code} {text}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGHUP with the door entry gone: the client is let in.
    std::fs::write(dir.path().join("finaldot.toml"), config("")).expect("write");
    d.signal("HUP");
    let started = Instant::now();
    while rcpt("nobody@localhost").0 != 250 {
        assert!(started.elapsed() < LONG, "the door stayed:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `finaldot check-config` on `config`: whether it passed, and its stderr.
fn check_config(dir: &TestDir, config: &str) -> (bool, String) {
    let file = dir.path().join("check.toml");
    std::fs::write(&file, config).expect("write");
    let out = std::process::Command::new(finaldot_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run finaldot");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
