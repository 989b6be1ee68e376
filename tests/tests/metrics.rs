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

/// A daemon with metrics on whose one plugin delivers every message as a
/// file into the returned directory.
fn start_delivering(dir: &std::path::Path) -> (Daemon, std::path::PathBuf) {
    let out = dir.join("out");
    let plugins = plugin_toml(
        "deliver",
        "finaldot_testbed",
        &format!("dirs = [{{ name = \"out\", path = {out:?}, writable = true }}]\nconfig = {{ mode = \"deliver\", grant = \"out\" }}"),
    );
    let cfg = test_config(
        dir,
        "",
        &format!("[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pipeline]\nrescan_secs = 1\n\n{plugins}"),
    );
    (Daemon::start_with(dir, &cfg), out)
}

#[test]
fn metrics_count_mail_and_the_status_page_lists_plugins() {
    let dir = TestDir::new("metrics");
    let (d, out) = start_delivering(dir.path());
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

/// The text between `start` (found after `from`) and the next `end`.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let at = text.find(start)? + start.len();
    let len = text[at..].find(end)?;
    Some(&text[at..at + len])
}

#[test]
fn the_status_page_in_chromium_has_its_graphs_and_the_numbers_of_metrics() {
    let dir = TestDir::new("status-chromium");
    let (d, out) = start_delivering(dir.path());
    let url = format!("http://{}/", d.metrics_addr());
    let profile = dir.path().join("chromium");

    // Mail flows while the browser loads the page.
    let smtp = d.addr;
    let sender = std::thread::spawn(move || {
        let mut c = Client::connect_raw(smtp);
        assert_eq!(c.read_reply().0, 220);
        c.expect("EHLO client.test", 250);
        for i in 0..60 {
            let (code, _) = c.send_message(
                "a@b.test",
                &["alice@example.test"],
                format!("Subject: flowing {i}\r\n\r\nbody\r\n").as_bytes(),
            );
            assert_eq!(code, 250);
            std::thread::sleep(Duration::from_millis(25));
        }
    });
    // The rate and latency lines need two samples half a second apart: the
    // first is taken as the daemon starts, so load until they are drawn.
    let mut during = String::new();
    let drawn = wait_until(LONG, || {
        during = chromium::dump_dom(&profile, &url);
        during.contains("class=\"series\" data-series=\"p99\"")
    });
    assert!(drawn, "no p99 line:\n{during}");
    for id in ["graph-queue", "graph-rates", "graph-latency"] {
        assert!(
            during.contains(&format!("<svg id=\"{id}\"")),
            "{id}:\n{during}"
        );
    }
    for series in [
        "incoming",
        "deferred",
        "accepted",
        "delivered",
        "p50",
        "p99",
    ] {
        assert!(
            during.contains(&format!("class=\"series\" data-series=\"{series}\"")),
            "no {series} line:\n{during}"
        );
    }
    sender.join().expect("sender");
    assert!(wait_until(LONG, || std::fs::read_dir(&out)
        .map(|r| r.count())
        .unwrap_or(0)
        == 60));
    assert!(wait_until(LONG, || d.queue_drained()), "{}", d.log());

    // Mail has stopped: the page's numbers are /metrics' numbers.
    let page = chromium::dump_dom(&profile, &url);
    let metrics = http_get(d.metrics_addr(), "/metrics");
    let number = |start: &str| -> f64 {
        between(&page, start, "<")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{start} not on the page:\n{page}"))
    };
    assert_eq!(
        number("<span id=\"accepted\">"),
        sample(
            &metrics,
            "finaldot_smtp_messages_total",
            &["result=\"accepted\""]
        )
    );
    assert_eq!(number("<span id=\"accepted\">"), 60.0);
    assert_eq!(
        number("<span id=\"delivered\">"),
        sample(&metrics, "finaldot_deliveries_total", &[])
    );
    for state in ["incoming", "active", "deferred", "hold", "corrupt"] {
        let shown = number(&format!(
            "<tr data-state=\"{state}\"><td>{state}</td><td class=\"n\">"
        ));
        let label = format!("state=\"{state}\"");
        assert_eq!(
            shown,
            sample(&metrics, "finaldot_queue_messages", &[&label]),
            "{state}"
        );
    }
    let row = between(&page, "<tr data-plugin=\"deliver\">", "</tr>").expect("deliver row");
    let calls: f64 = between(row, "<td class=\"n calls\">", "<")
        .and_then(|v| v.parse().ok())
        .expect("calls");
    assert_eq!(
        calls,
        sample(
            &metrics,
            "finaldot_plugin_calls_total",
            &["plugin=\"deliver\""]
        )
    );
    assert!(calls >= 60.0, "{row}");
    assert!(row.contains(" ms</td>"), "no time per call: {row}");
    // The queue graph's last point is the gauge now (empty).
    let latest = between(&page, "data-series=\"incoming\" data-latest=\"", "\"");
    assert_eq!(latest, Some("0"), "{page}");

    // A picture of it, kept for whoever looks at the run.
    let png = chromium::artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium::screenshot(&profile, &url, &png, 1280, 1400);
    let bytes = std::fs::read(&png).expect("screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!((width, height), (1280, 1400));
    // Graphs, tables and text are far from an empty page's few kilobytes.
    assert!(bytes.len() > 30_000, "{} bytes: a blank page?", bytes.len());
    eprintln!("status page screenshot: {}", png.display());
}

/// Whether the server has closed `s` (EOF) within `wait`.
fn closed_within(mut s: &std::net::TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_half_sent_requests_are_capped_and_closed() {
    use std::io::Write;
    let dir = TestDir::new("metrics-idle");
    let cfg = test_config(dir.path(), "", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let d = Daemon::start_with(dir.path(), &cfg);
    let addr = d.metrics_addr();
    // 100 sockets: half say nothing, half send half a request.
    let socks: Vec<std::net::TcpStream> = (0..100)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            if i % 2 == 1 {
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .expect("half");
            }
            s
        })
        .collect();
    // Past the cap (64), sockets are closed at once; those within it are
    // served (waited for) until the header timeout.
    let early = socks[64..]
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(500)))
        .count();
    assert_eq!(early, 100 - 64, "sockets past the cap were kept");
    assert!(!closed_within(&socks[0], Duration::from_millis(100)));
    // The rest are closed once the header timeout has passed...
    let all = socks
        .iter()
        .all(|s| closed_within(s, Duration::from_secs(15)));
    assert!(all, "a silent socket was kept open");
    // ...and the page answers again.
    let page = http_get(addr, "/metrics");
    assert!(
        page.contains(" 200 ") && page.contains("finaldot_"),
        "{page}"
    );
}
