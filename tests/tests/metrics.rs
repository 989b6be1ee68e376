//! Metrics and the status page: scraped before and after real mail, the
//! counters must move by the right amounts.

use std::time::Duration;

use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

/// The value of a sample line whose name and labels contain all of `parts`.
fn sample(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn metrics_count_mail_and_the_status_page_lists_plugins() {
    let dir = TestDir::new("metrics");
    let out = dir.path().join("out");
    let plugins = plugin_toml(
        "deliver",
        "finaldot_testbed",
        &format!("dirs = [{{ name = \"out\", path = {out:?}, writable = true }}]\nconfig = {{ mode = \"deliver\", grant = \"out\" }}"),
    );
    let cfg = test_config(
        dir.path(),
        "",
        &format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pipeline]\nrescan_secs = 1\n\n{plugins}"),
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    let addr = d.metrics_addr();
    let before = http_get(addr, "/metrics");
    assert!(
        before.starts_with("HTTP/1.0 200") || before.starts_with("HTTP/1.1 200"),
        "{before}"
    );
    assert!(before.contains("text/plain; version=0.0.4"), "{before}");

    let mut c = d.connect();
    for i in 0..3 {
        let (code, _) = c.send_message(
            "a@b.test",
            &["alice@example.test"],
            format!("Subject: m{i}\r\n\r\nbody\r\n").as_bytes(),
        );
        assert_eq!(code, 250);
    }
    // One refused: a bare LF in the content.
    c.expect("MAIL FROM:<a@b.test>", 250);
    c.expect("RCPT TO:<alice@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: bad\r\n\r\nbare\nlf\r\n.\r\n");
    assert_eq!(c.read_reply().0, 550);
    assert!(wait_until(LONG, || std::fs::read_dir(&out)
        .map(|r| r.count())
        .unwrap_or(0)
        == 3));

    assert!(wait_until(LONG, || {
        let after = http_get(addr, "/metrics");
        sample(&after, "finaldot_deliveries_total", &[]) >= 3.0
    }));
    let after = http_get(addr, "/metrics");
    let delta =
        |name: &str, parts: &[&str]| sample(&after, name, parts) - sample(&before, name, parts);
    assert_eq!(
        delta(
            "finaldot_smtp_messages_total",
            &["result=\"accepted\"", "code=\"250\""]
        ),
        3.0,
        "{after}"
    );
    assert_eq!(
        delta(
            "finaldot_smtp_messages_total",
            &["result=\"refused\"", "code=\"550\""]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        delta("finaldot_smtp_ack_latency_seconds_count", &[]),
        3.0,
        "{after}"
    );
    assert!(
        delta("finaldot_smtp_message_bytes_total", &[]) > 3.0 * 20.0,
        "{after}"
    );
    assert_eq!(delta("finaldot_deliveries_total", &[]), 3.0, "{after}");
    assert_eq!(
        delta("finaldot_plugin_calls_total", &["plugin=\"deliver\""]),
        3.0,
        "{after}"
    );
    assert_eq!(delta("finaldot_plugin_faults_total", &[]), 0.0, "{after}");
    assert_eq!(
        delta(
            "finaldot_pipeline_stage_duration_seconds_count",
            &["plugin=\"deliver\""]
        ),
        3.0,
        "{after}"
    );
    assert!(sample(&after, "finaldot_smtp_connections_total", &[]) >= 1.0);
    assert!(
        after.contains("finaldot_queue_messages{state=\"deferred\"} 0"),
        "{after}"
    );

    let page = http_get(addr, "/");
    assert!(page.contains("text/html"), "{page}");
    assert!(
        page.contains("<h2>Queue</h2>") && page.contains("<td>hold</td>"),
        "{page}"
    );
    assert!(page.contains("Ack latency"), "{page}");
    assert!(
        wait_until(LONG, || http_get(addr, "/")
            .contains("<td>deliver</td><td>finaldot-testbed 0.1.0</td>")),
        "{}",
        http_get(addr, "/")
    );
    assert!(http_get(addr, "/nope").contains("404"));
}
