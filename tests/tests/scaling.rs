//! Several nodes, one Redis (issue 20): each node a real daemon with its own
//! spool and Maildirs, the dedup plugin's namespace on a real redis-server
//! that they share. A duplicate is caught whichever node it reaches, Redis
//! going away defers mail instead of losing it, and a node killed between
//! its dedup claim and its delivery delivers once after its restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use finaldot_e2e::redis::Redis;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(60);

/// dedup on `redis` (claims are leases of `lease_secs`) → (extra stages)
/// → local-delivery into `dir/mail` → dedup confirming, retries after a
/// second: the multi-node setup docs/SCALING.md describes.
fn node_config(dir: &Path, redis: &Redis, middle: &str) -> String {
    node_config_lease(dir, redis, middle, 30)
}

fn node_config_lease(dir: &Path, redis: &Redis, middle: &str, lease_secs: u64) -> String {
    let kv = format!(
        "kv = {{ backend = \"redis\", url = \"{}\", namespace = \"dedup\", timeout_ms = 500 }}",
        redis.url()
    );
    let dedup = plugin_toml(
        "dedup",
        "dedup",
        &format!("{kv}\nconfig = {{ lease_secs = {lease_secs} }}"),
    );
    let confirm = plugin_toml(
        "dedup-confirm",
        "dedup",
        &format!("{kv}\nconfig = {{ lease_secs = {lease_secs}, confirm = true }}"),
    );
    test_config(
        dir,
        "",
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pipeline]\nrescan_secs = 1\nretry_min_secs = 1\nretry_max_secs = 2\n\n{dedup}{middle}{}{confirm}",
            local_delivery_toml(&dir.join("mail"))
        ),
    )
}

fn alice_new(dir: &Path) -> PathBuf {
    dir.join("mail/alice/Maildir/new")
}

/// Every file delivered to alice on these nodes.
fn alice_files(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(alice_new(d)).into_iter().flatten())
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect()
}

/// How many of `files` have this subject.
fn with_subject(files: &[String], subject: &str) -> usize {
    files
        .iter()
        .filter(|f| f.lines().any(|l| l == format!("Subject: {subject}")))
        .count()
}

fn message(id: &str) -> Vec<u8> {
    format!("From: s@remote.test\r\nTo: alice@example.test\r\nMessage-ID: <{id}@remote.test>\r\nSubject: {id}\r\n\r\nbody of {id}\r\n").into_bytes()
}

#[test]
fn three_nodes_on_one_redis_deliver_each_message_once() {
    let top = TestDir::new("scaling-three");
    let redis = Redis::start(top.path());
    let dirs: Vec<PathBuf> = (0..3)
        .map(|i| top.path().join(format!("node{i}")))
        .collect();
    let nodes: Vec<Daemon> = dirs
        .iter()
        .map(|d| {
            std::fs::create_dir_all(d).expect("mkdir");
            Daemon::start_with(d, &node_config(d, &redis, ""))
        })
        .collect();
    let logs = || nodes.iter().map(|n| n.log()).collect::<Vec<_>>().join("\n");

    // The RFC 1047 duplicate: one message on two nodes at the same moment
    // (both final dots sent before either reply is read).
    let body = message("same");
    let mut a = nodes[0].connect();
    let mut b = nodes[1].connect();
    for c in [&mut a, &mut b] {
        c.expect("EHLO remote.test", 250);
        c.expect("MAIL FROM:<s@remote.test>", 250);
        c.expect("RCPT TO:<alice@example.test>", 250);
        c.expect("DATA", 354);
        c.send(&dot_stuff(&body));
    }
    a.send(b".\r\n");
    b.send(b".\r\n");
    assert_eq!(a.read_reply().0, 250);
    assert_eq!(b.read_reply().0, 250);

    // 200 distinct messages spread over the three nodes.
    for i in 0..200 {
        nodes[i % 3].send(
            "s@remote.test",
            &["alice@example.test"],
            &message(&format!("m{i}")),
        );
    }
    assert!(
        wait_until(LONG, || nodes.iter().all(|n| n.queue_drained())
            && alice_files(&dirs).len() >= 201),
        "{}",
        logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let files = alice_files(&dirs);
    assert_eq!(files.len(), 201, "{}", logs());
    assert_eq!(
        with_subject(&files, "same"),
        1,
        "the duplicate reached a mailbox twice:\n{}",
        logs()
    );
    for i in 0..200 {
        assert_eq!(with_subject(&files, &format!("m{i}")), 1, "m{i}");
    }
    assert_eq!(
        logs().matches("not delivered again").count(),
        1,
        "{}",
        logs()
    );
    // The claims are in Redis, under the plugin's prefix.
    let keys = redis
        .command(&["--raw", "KEYS", "finaldot:dedup:*"])
        .expect("KEYS");
    assert_eq!(keys.lines().count(), 201, "{keys}");
}

#[test]
fn redis_stopped_mid_run_defers_and_everything_arrives_once_after() {
    let top = TestDir::new("scaling-redis-down");
    let mut redis = Redis::start(top.path());
    let dir = top.path().join("node");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let d = Daemon::start_with(&dir, &node_config(&dir, &redis, ""));
    let dirs = [dir.clone()];
    for i in 0..20 {
        d.send(
            "s@remote.test",
            &["alice@example.test"],
            &message(&format!("a{i}")),
        );
    }
    assert!(
        wait_until(LONG, || alice_files(&dirs).len() == 20),
        "{}",
        d.log()
    );
    // The last file can land before its message's later stages (the
    // dedup confirmation) ran: all done before Redis goes away.
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());
    redis.stop();
    // While Redis is down the node still answers 250 (the spool is local)
    // and defers what it cannot check, with the reason.
    for i in 0..20 {
        d.send(
            "s@remote.test",
            &["alice@example.test"],
            &message(&format!("b{i}")),
        );
    }
    // Every one of them tried and deferred (counting log lines is not
    // enough: a message retried twice would stand in for one not yet run).
    assert!(
        wait_until(LONG, || {
            let listed = queue_list(&dir);
            listed.len() == 20
                && listed
                    .iter()
                    .all(|m| m.to_string().contains("is unavailable"))
        }),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(
        log.contains(&format!(
            "redis redis://127.0.0.1:{}/0 is unavailable",
            redis.port
        )),
        "{log}"
    );
    assert_eq!(alice_files(&dirs).len(), 20, "nothing delivered unchecked");
    let listed = queue_list(&dir);
    assert_eq!(listed.len(), 20, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|m| m.to_string().contains("is unavailable")),
        "{listed:?}"
    );
    let metrics = http_get(d.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("finaldot_plugin_unavailable_total{plugin=\"dedup\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("finaldot_plugin_faults_total{"),
        "{metrics}"
    );
    // Back: the queue drains, each message once, none held.
    redis.resume();
    assert!(
        wait_until(LONG, || alice_files(&dirs).len() >= 40 && d.queue_drained()),
        "{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let files = alice_files(&dirs);
    assert_eq!(files.len(), 40, "{}", d.log());
    for i in 0..20 {
        for p in ["a", "b"] {
            assert_eq!(with_subject(&files, &format!("{p}{i}")), 1, "{p}{i}");
        }
    }
}

#[test]
fn a_node_killed_between_its_claim_and_its_delivery_delivers_once() {
    let top = TestDir::new("scaling-kill");
    let redis = Redis::start(top.path());
    let dir = top.path().join("node");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // A slow stage between dedup and delivery holds the window open.
    let slow = plugin_toml(
        "slow",
        "finaldot_testbed",
        "timeout_ms = 20000\nconfig = { mode = \"spin\", ms = 4000 }",
    );
    let config = node_config(&dir, &redis, &slow);
    let mut d = Daemon::start_with(&dir, &config);
    let id = d.send("s@remote.test", &["alice@example.test"], &message("killed"));
    assert!(
        wait_until(LONG, || d.log().contains("stage 0 done")),
        "{}",
        d.log()
    );
    // The claim is taken, the message not yet delivered.
    let keys = redis
        .command(&["--raw", "KEYS", "finaldot:dedup:*"])
        .expect("KEYS");
    assert_eq!(keys.lines().count(), 1, "{keys}");
    d.kill9();
    assert_eq!(alice_files(std::slice::from_ref(&dir)).len(), 0);
    let d = Daemon::start_with(&dir, &config);
    assert!(
        wait_until(LONG, || d.queue_drained()
            && alice_files(std::slice::from_ref(&dir)).len() == 1),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("not delivered again"), "{}", d.log());
    // A retry of the same message on another node now is a duplicate.
    let other = top.path().join("other");
    std::fs::create_dir_all(&other).expect("mkdir");
    let o = Daemon::start_with(&other, &node_config(&other, &redis, ""));
    o.send("s@remote.test", &["alice@example.test"], &message("killed"));
    assert!(
        wait_until(LONG, || o.queue_drained()
            && o.log().contains("not delivered again")),
        "{}",
        o.log()
    );
    assert!(
        o.log().contains(&format!("duplicate of {id}")),
        "{}",
        o.log()
    );
    assert_eq!(alice_files(&[dir, other]).len(), 1);
}

#[test]
fn a_copy_waits_for_a_lease_and_takes_over_when_its_node_never_returns() {
    let top = TestDir::new("scaling-lease");
    let redis = Redis::start(top.path());
    let (a_dir, b_dir) = (top.path().join("a"), top.path().join("b"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    // Node A claims (a 3 s lease) and dies before it delivers.
    let slow = plugin_toml(
        "slow",
        "finaldot_testbed",
        "timeout_ms = 20000\nconfig = { mode = \"spin\", ms = 10000 }",
    );
    let a_config = node_config_lease(&a_dir, &redis, &slow, 3);
    let mut a = Daemon::start_with(&a_dir, &a_config);
    let first = a.send("s@remote.test", &["alice@example.test"], &message("orphan"));
    assert!(
        wait_until(LONG, || a.log().contains("stage 0 done")),
        "{}",
        a.log()
    );
    a.kill9();
    // The sender's retry reaches node B: deferred while A's lease lasts,
    // then B takes the claim over and delivers.
    let b = Daemon::start_with(&b_dir, &node_config_lease(&b_dir, &redis, "", 3));
    let second = b.send("s@remote.test", &["alice@example.test"], &message("orphan"));
    assert!(
        wait_until(LONG, || b
            .log()
            .contains(&format!("{first} holds the claim"))),
        "{}",
        b.log()
    );
    assert!(
        wait_until(LONG, || b.queue_drained()
            && alice_files(std::slice::from_ref(&b_dir)).len() == 1),
        "{}",
        b.log()
    );
    // A comes back with the message still in its spool: it is B's now, so
    // A does not deliver it a second time.
    let a = Daemon::start_with(&a_dir, &a_config);
    assert!(
        wait_until(LONG, || a.queue_drained()
            && a.log().contains(&format!("duplicate of {second}"))),
        "{}",
        a.log()
    );
    assert_eq!(alice_files(&[a_dir, b_dir]).len(), 1);
}
