//! The PROXY protocol behind a load balancer (issue 20): headers of both
//! versions, as HAProxy sends them (`send-proxy`, `send-proxy-v2` with its
//! TLVs), from a configured balancer set the client the Received field
//! shows; from anyone else the listener refuses; a missing or broken
//! header from the balancer closes the connection without a session.

use std::net::SocketAddr;
use std::time::Duration;

use finaldot_e2e::*;
use ppp::v2::{Builder, Command, IPv4, IPv6, Protocol, Type, Version};

/// A daemon whose one listener expects PROXY headers from `from`, its
/// chain local-delivery into `dir/mail`.
fn start(dir: &std::path::Path, from: &str) -> Daemon {
    let mail = dir.join("mail");
    let smtp = format!(
        "[smtp.proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\nfrom = [\"{from}\"]\ntimeout_secs = 2"
    );
    let tail = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\n[pipeline]\nrescan_secs = 1\n\n{}",
        local_delivery_toml(&mail)
    );
    Daemon::start_with(dir, &test_config(dir, &smtp, &tail))
}

/// Sends `header`, then a message through the session that follows;
/// returns the delivered message.
fn deliver_via(d: &Daemon, dir: &std::path::Path, header: &[u8]) -> String {
    let mut c = Client::connect_raw(d.addr);
    c.send(header);
    let (code, text) = c.read_reply();
    assert_eq!(code, 220, "{text}\n{}", d.log());
    let (code, text) = c.send_message(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: via the balancer\r\n\r\nhello\r\n",
    );
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    only_delivery(d, &dir.join("mail"))
}

/// Whether the server closed `c` (or reset it) without sending a byte.
fn closed_silently(addr: SocketAddr, first: &[u8]) -> bool {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Write::write_all(&mut s, first).expect("send");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset && got.is_empty(),
    }
}

fn received(msg: &str) -> String {
    msg.split("\n\n")
        .next()
        .unwrap_or_default()
        .replace("\n\t", " ")
        .lines()
        .find(|l| l.starts_with("Received: from"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_v1_header_from_the_balancer_names_the_client() {
    let dir = TestDir::new("proxy-v1");
    let d = start(dir.path(), "127.0.0.1");
    let msg = deliver_via(
        &d,
        dir.path(),
        b"PROXY TCP4 192.0.2.44 127.0.0.1 40000 25\r\n",
    );
    let line = received(&msg);
    assert!(line.contains("([192.0.2.44])"), "{line}");
    assert!(!msg.contains("127.0.0.1"), "{msg}");
    assert!(d.log().contains("client=192.0.2.44:40000"), "{}", d.log());
}

#[test]
fn a_v2_header_with_tlvs_names_an_ipv6_client_and_local_is_the_balancer() {
    let dir = TestDir::new("proxy-v2");
    let d = start(dir.path(), "127.0.0.0/8");
    let client: SocketAddr = "[2001:db8::7]:41000".parse().expect("addr");
    let server: SocketAddr = "[2001:db8::1]:25".parse().expect("addr");
    let (SocketAddr::V6(c6), SocketAddr::V6(s6)) = (client, server) else {
        unreachable!()
    };
    let header = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        IPv6::new(*c6.ip(), *s6.ip(), c6.port(), s6.port()),
    )
    .write_tlv(Type::Authority, b"mx.example.test")
    .and_then(|b| b.write_tlv(Type::UniqueId, b"haproxy-0001"))
    .and_then(|b| b.build())
    .expect("v2 header");
    let msg = deliver_via(&d, dir.path(), &header);
    let line = received(&msg);
    assert!(line.contains("([IPv6:2001:db8::7])"), "{line}");

    // LOCAL (the balancer's health check): the connection's own address
    // stands, and the session works.
    let local = Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Stream,
        IPv4::new([0, 0, 0, 0], [0, 0, 0, 0], 0, 0),
    )
    .build()
    .expect("v2 local");
    let mut c = Client::connect_raw(d.addr);
    c.send(&local);
    assert_eq!(c.read_reply().0, 220);
    c.expect("EHLO check.test", 250);
    c.expect("QUIT", 221);
}

#[test]
fn anyone_but_the_balancer_is_refused_with_or_without_a_header() {
    let dir = TestDir::new("proxy-untrusted");
    // The tests connect from 127.0.0.1; only 127.0.0.2 is the balancer.
    let d = start(dir.path(), "127.0.0.2");
    for first in [&b"PROXY TCP4 192.0.2.44 127.0.0.1 40000 25\r\n"[..], b""] {
        let mut c = Client::connect_raw(d.addr);
        c.send(first);
        let (code, text) = c.read_reply();
        assert_eq!(code, 554, "{text}");
    }
    let refused = "refused: this listener takes connections only from its load balancers";
    wait_until(Duration::from_secs(10), || d.log().contains(refused));
    assert!(d.log().contains(refused), "{}", d.log());
    let metrics = http_get(d.metrics_addr(), "/metrics");
    assert!(
        metrics.contains("\nfinaldot_smtp_proxy_refused_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nfinaldot_smtp_connections_total 0\n"),
        "{metrics}"
    );
}

#[test]
fn a_missing_or_broken_header_from_the_balancer_gets_no_session() {
    let dir = TestDir::new("proxy-broken");
    let d = start(dir.path(), "127.0.0.1");
    let cases: [&[u8]; 3] = [
        // SMTP straight away: the balancer is not sending headers.
        b"EHLO client.test\r\n",
        // v1 with an address that is not one.
        b"PROXY TCP4 999.0.2.44 127.0.0.1 40000 25\r\n",
        // v2's signature, then a version byte that is not 2.
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c",
    ];
    for first in cases {
        assert!(
            closed_silently(d.addr, first),
            "{:?} got a session",
            String::from_utf8_lossy(first)
        );
    }
    // Silence: closed when the header's time is up (2 s here).
    let started = std::time::Instant::now();
    assert!(closed_silently(d.addr, b""));
    assert!(started.elapsed() >= Duration::from_millis(1500));
    // The close can reach the client before the daemon's log line is written.
    wait_until(Duration::from_secs(10), || {
        d.log().matches("refused: bad PROXY header").count() >= 4
    });
    let log = d.log();
    assert_eq!(log.matches("refused: bad PROXY header").count(), 4, "{log}");
    assert!(log.contains("no PROXY header within 2s"), "{log}");
}

#[test]
fn per_ip_limits_count_the_named_client_not_the_balancer() {
    let dir = TestDir::new("proxy-per-ip");
    let smtp = "max_connections_per_ip = 1\nlimit_exceptions = []\n[smtp.proxy_protocol]\nlisteners = [\"127.0.0.1:0\"]\nfrom = [\"127.0.0.1\"]";
    let d = Daemon::start_with(dir.path(), &test_config(dir.path(), smtp, ""));
    let open = |client: &str| {
        let mut c = Client::connect_raw(d.addr);
        c.send(format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n").as_bytes());
        let reply = c.read_reply();
        (c, reply.0)
    };
    // Two clients behind the one balancer: one slot each.
    let (_a, code_a) = open("192.0.2.1");
    let (_b, code_b) = open("192.0.2.2");
    assert_eq!((code_a, code_b), (220, 220), "{}", d.log());
    // A second connection of the first client is over its limit.
    let (_a2, code) = open("192.0.2.1");
    assert_eq!(code, 421, "{}", d.log());
}

#[test]
fn through_a_real_haproxy_both_versions_name_the_client() {
    for send in ["send-proxy", "send-proxy-v2"] {
        let dir = TestDir::new(&format!("proxy-haproxy-{send}"));
        let d = start(dir.path(), "127.0.0.1");
        let lb = finaldot_e2e::haproxy::Haproxy::start(dir.path(), d.addr, send);
        // A real client (Python's smtplib) from 127.0.0.2, through HAProxy,
        // which connects to finaldot from 127.0.0.1.
        let out = python3()
            .arg("-c")
            .arg(
                "import smtplib, sys\n\
                 s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), source_address=('127.0.0.2', 0))\n\
                 s.sendmail('s@remote.test', ['alice@example.test'], b'Subject: via haproxy\\r\\n\\r\\nhi\\r\\n')\n\
                 s.quit()\n",
            )
            .arg(lb.port.to_string())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{send}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
        let msg = only_delivery(&d, &dir.path().join("mail"));
        let line = received(&msg);
        assert!(line.contains("([127.0.0.2])"), "{send}: {line}");
    }
}
