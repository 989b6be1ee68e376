//! Hot reload end to end: plugin files replaced, broken, removed and restored
//! under the running daemon, and configuration reloads on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(60);
const MARKER: &[u8] = b"FINALDOT-VERSION-";

/// The testbed's wasm with its version marker rewritten to `v` (6 digits).
fn testbed_version(v: u32) -> Vec<u8> {
    let mut wasm = std::fs::read(wasm("finaldot_testbed")).expect("testbed wasm");
    let at: Vec<usize> = wasm
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the version marker must appear exactly once");
    let digits = format!("{v:06}");
    wasm[at[0] + MARKER.len()..at[0] + MARKER.len() + 6].copy_from_slice(digits.as_bytes());
    wasm
}

/// Puts a file in place the way a deployment does: write aside, then rename.
fn land(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn setup(dir: &Path, extra_plugins: &str) -> (PathBuf, PathBuf, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    land(&plugins, "stamp.wasm", &testbed_version(1));
    let out = dir.join("out");
    let cfg = test_config(
        dir,
        "",
        &format!(
            "[pipeline]\nplugin_dir = {plugins:?}\nrescan_secs = 1\nretry_min_secs = 1\nretry_max_secs = 1\nmax_faults = 100\n\n\
             [[plugins]]\nname = \"version\"\nfile = \"stamp.wasm\"\nconfig = {{ mode = \"version\" }}\n\n\
             {extra_plugins}\
             [[plugins]]\nname = \"deliver\"\nfile = {:?}\ndirs = [{{ name = \"out\", path = {out:?}, writable = true }}]\nconfig = {{ mode = \"deliver\", grant = \"out\" }}\n",
            wasm("finaldot_testbed")
        ),
    );
    (plugins, out, cfg)
}

fn version_of(out: &Path, id: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(out.join(id)).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("X-Version: "))
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn fifty_swaps_under_load_lose_and_double_nothing() {
    let dir = TestDir::new("reload-50");
    let (plugins, out, cfg) = setup(dir.path(), "");
    let d = Daemon::start_with(dir.path(), &cfg);
    let addr = d.addr;

    // A steady stream of mail while the plugin is swapped.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut c = Client::connect_raw(addr);
                assert_eq!(c.read_reply().0, 220);
                let (code, text) = c.send_message(
                    "load@remote.test",
                    &["alice@example.test"],
                    format!("Subject: stream {n}\r\n\r\nx\r\n").as_bytes(),
                );
                assert_eq!(code, 250, "{text}");
                sent.lock().expect("lock").push(queued_id(&text));
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    let good = testbed_version(1);
    let mut valid = vec!["000001".to_string()];
    let mut landed: Vec<(String, SystemTime)> = Vec::new();
    let refusal = "new plugin version refused; keeping the running version";
    // A broken version must be looked at before the next one lands (the
    // reloader may otherwise see only the next): wait for its refusal.
    let refused = |n: usize| {
        wait_until(LONG, || d.log().matches(refusal).count() >= n);
    };
    let mut broken = 0;
    for v in 2..=51u32 {
        std::thread::sleep(Duration::from_millis(120));
        match v % 10 {
            3 => {
                land(&plugins, "stamp.wasm", &good[..good.len() / 3]);
                broken += 1;
                refused(broken);
            }
            7 => {
                land(
                    &plugins,
                    "stamp.wasm",
                    b"\0asm\x01\0\0\0 this is not a module",
                );
                broken += 1;
                refused(broken);
            }
            _ => {
                let bytes = testbed_version(v);
                land(&plugins, "stamp.wasm", &bytes);
                valid.push(format!("{v:06}"));
                landed.push((format!("{v:06}"), SystemTime::now()));
            }
        }
    }
    let last = valid.last().cloned().expect("a last version");
    // Wait until the last version is live, then send a few more.
    assert!(
        wait_until(LONG, || d.log().lines().any(|l| l
            .contains("plugin reloaded")
            && l.contains(&format!(
                "#{}",
                hash_prefix(&plugins.join("stamp.wasm"))
            )))),
        "last version never loaded; log:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sender.join().expect("sender");
    let after: Vec<String> = (0..5)
        .map(|i| {
            let mut c = d.connect();
            let (code, text) = c.send_message(
                "late@remote.test",
                &["alice@example.test"],
                format!("Subject: after {i}\r\n\r\nx\r\n").as_bytes(),
            );
            assert_eq!(code, 250);
            queued_id(&text)
        })
        .collect();

    let sent = sent.lock().expect("lock").clone();
    let all: Vec<&String> = sent.iter().chain(after.iter()).collect();
    assert!(
        sent.len() > 100,
        "only {} messages in the stream",
        sent.len()
    );
    assert!(
        wait_until(LONG, || all.iter().all(|id| out.join(id).exists())),
        "not every message was delivered; log:\n{}",
        d.log()
    );
    assert!(wait_until(LONG, || [
        QueueState::Incoming,
        QueueState::Active,
        QueueState::Deferred
    ]
    .iter()
    .all(|s| d.spool_files(*s).is_empty())));
    // Exactly once: one file per message, nothing else in the Maildir stand-in.
    assert_eq!(std::fs::read_dir(&out).expect("out").count(), all.len());
    for id in &all {
        let stamps = version_of(&out, id).expect("delivered");
        assert_eq!(stamps.len(), 1, "{id} carries {stamps:?}");
        assert!(
            valid.contains(&stamps[0]),
            "{id} carries {stamps:?}, never a valid version"
        );
    }
    for id in &after {
        assert_eq!(
            version_of(&out, id).expect("delivered"),
            vec![last.clone()],
            "{id} was sent after the last version went live"
        );
    }
    // Every broken version was refused, by name.
    assert!(d.log().matches(refusal).count() >= broken, "{}", d.log());
    assert!(d.log().contains("stamp.wasm"));

    // Time from landing to the first message processed by each version.
    let log = d.log();
    let mut waits: Vec<Duration> = Vec::new();
    for (v, at) in &landed {
        let first = all
            .iter()
            .filter(|id| version_of(&out, id).map(|s| s[0] == *v).unwrap_or(false))
            .filter_map(|id| {
                log.lines()
                    .find(|l| l.contains(&format!("queue_id={id}")) && l.contains("stage 0 done"))
                    .and_then(log_time)
            })
            .min();
        if let Some(first) = first {
            if let Ok(w) = first.duration_since(*at) {
                waits.push(w);
            }
        }
    }
    waits.sort();
    assert!(!waits.is_empty());
    eprintln!(
        "reload: {} good swaps, {} messages; landing -> first message processed: median {:?}, max {:?} ({} versions measured)",
        landed.len(),
        all.len(),
        waits[waits.len() / 2],
        waits[waits.len() - 1],
        waits.len()
    );
}

fn hash_prefix(file: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..12].to_string()
}

#[test]
fn a_half_written_copy_keeps_the_old_version_until_the_file_is_whole() {
    let dir = TestDir::new("reload-half");
    let (plugins, out, cfg) = setup(dir.path(), "");
    let d = Daemon::start_with(dir.path(), &cfg);
    let v9 = testbed_version(9);
    // A copy in progress: the first half, written in place (no rename).
    std::fs::write(plugins.join("stamp.wasm"), &v9[..v9.len() / 2]).expect("write half");
    assert!(
        wait_until(LONG, || d.log().contains("new plugin version refused")),
        "log:\n{}",
        d.log()
    );
    let refusal = d
        .log()
        .lines()
        .find(|l| l.contains("new plugin version refused"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(refusal.contains("stamp.wasm"), "{refusal}");
    let mut c = d.connect();
    let (_, text) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: during\r\n\r\nx\r\n",
    );
    let during = queued_id(&text);
    assert!(wait_until(LONG, || out.join(&during).exists()));
    assert_eq!(version_of(&out, &during).expect("file"), vec!["000001"]);
    // The copy completes: the next event loads it.
    std::fs::write(plugins.join("stamp.wasm"), &v9).expect("write whole");
    assert!(
        wait_until(LONG, || d.log().contains("plugin reloaded")),
        "log:\n{}",
        d.log()
    );
    let (_, text) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: after\r\n\r\nx\r\n",
    );
    let after = queued_id(&text);
    assert!(wait_until(LONG, || out.join(&after).exists()));
    assert_eq!(version_of(&out, &after).expect("file"), vec!["000009"]);
}

#[test]
fn a_removed_plugin_makes_messages_wait_then_flow_when_it_returns() {
    let dir = TestDir::new("reload-removed");
    let (plugins, out, cfg) = setup(dir.path(), "");
    let d = Daemon::start_with(dir.path(), &cfg);
    std::fs::remove_file(plugins.join("stamp.wasm")).expect("rm");
    assert!(
        wait_until(LONG, || d.log().contains("plugin file removed")),
        "log:\n{}",
        d.log()
    );
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: wait\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    let id = queued_id(&text);
    assert!(
        wait_until(LONG, || d.spool_files(QueueState::Deferred).len() == 1),
        "log:\n{}",
        d.log()
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!out.join(&id).exists(), "delivered without its plugin");
    let (ok, listed, _) = queue_cmd(dir.path(), &["list"]);
    assert!(ok && listed.contains("is not available"), "{listed}");
    land(&plugins, "stamp.wasm", &testbed_version(4));
    assert!(
        wait_until(LONG, || out.join(&id).exists()),
        "log:\n{}",
        d.log()
    );
    assert_eq!(version_of(&out, &id).expect("file"), vec!["000004"]);
}

#[test]
fn sighup_refuses_an_invalid_config_and_applies_a_valid_one() {
    let dir = TestDir::new("reload-config");
    let (_plugins, out, cfg) = setup(dir.path(), "");
    let d = Daemon::start_with(dir.path(), &cfg);
    let config_path = dir.path().join("finaldot.toml");
    std::fs::write(&config_path, format!("{cfg}\nthis is = not toml =\n")).expect("write");
    d.signal("HUP");
    assert!(
        wait_until(LONG, || d.log().contains("configuration reload refused")),
        "log:\n{}",
        d.log()
    );
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: old\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "the old configuration still serves: {text}");
    let old = queued_id(&text);
    assert!(wait_until(LONG, || out.join(&old).exists()));

    // A valid change: a second stamping stage and a new local user.
    let stamp = format!(
        "[[plugins]]\nname = \"extra\"\nfile = {:?}\nconfig = {{ by = \"reloaded\" }}\n\n",
        wasm("stamp")
    );
    let new_cfg = cfg
        .replace(
            "recipients = [\"alice\", \"bob\"]",
            "recipients = [\"alice\", \"bob\", \"carol\"]",
        )
        .replace(
            "[[plugins]]\nname = \"deliver\"",
            &format!("{stamp}[[plugins]]\nname = \"deliver\""),
        );
    assert_ne!(new_cfg, cfg);
    std::fs::write(&config_path, &new_cfg).expect("write");
    d.signal("HUP");
    assert!(
        wait_until(LONG, || d.log().contains("configuration reloaded")),
        "log:\n{}",
        d.log()
    );
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "a@b.test",
        &["carol@example.test"],
        b"Subject: new\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250, "carol exists after the reload: {text}");
    let new = queued_id(&text);
    assert!(
        wait_until(LONG, || out.join(&new).exists()),
        "log:\n{}",
        d.log()
    );
    let text = std::fs::read_to_string(out.join(&new)).expect("file");
    assert!(text.contains("X-Stamped-By: reloaded\r\n"), "{text}");
}

#[test]
fn plugin_list_shows_what_is_loaded() {
    let dir = TestDir::new("plugin-list");
    let (_plugins, _out, cfg) = setup(dir.path(), "");
    let d = Daemon::start_with(dir.path(), &cfg);
    let mut c = d.connect();
    let (code, _) = c.send_message(
        "a@b.test",
        &["alice@example.test"],
        b"Subject: x\r\n\r\nx\r\n",
    );
    assert_eq!(code, 250);
    let run = |args: &[&str]| {
        std::process::Command::new(finaldot_bin())
            .args(["plugin", "list", "--config"])
            .arg(dir.path().join("finaldot.toml"))
            .args(args)
            .output()
            .expect("plugin list")
    };
    assert!(wait_until(LONG, || {
        let out = run(&["--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v[0]["calls"].as_u64().unwrap_or(0) >= 1
    }));
    let out = run(&["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["name"], "version");
    assert_eq!(v[0]["abi"], 1);
    assert_eq!(v[0]["version"], "finaldot-testbed 0.1.0");
    assert_eq!(v[0]["hash"].as_str().map(str::len), Some(64));
    assert!(v[0]["loaded_at"].as_u64().unwrap_or(0) > 0);
    assert_eq!(v[0]["faults"], 0);
    let out = run(&[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("stamp.wasm") && text.contains("calls:"),
        "{text}"
    );
    drop(d);
    let _ = Instant::now();
}
