//! The plugins' DNS capability end to end: a plugin granted `dns` asks the
//! test suite's loopback DNS server through the daemon's resolver and gets
//! records, NXDOMAIN, no data, SERVFAIL and timeouts told apart; its
//! per-message budget is enforced; a plugin without the grant is refused.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use finaldot_e2e::dns::{DnsServer, Record};
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_granted_plugin_gets_every_kind_of_answer_within_its_budget() {
    let dns = DnsServer::start(vec![
        Record::A("2.0.0.127.zen.test".into(), Ipv4Addr::new(127, 0, 0, 2)),
        Record::Txt("2.0.0.127.zen.test".into(), "listed for testing".into()),
        Record::A("host.test".into(), Ipv4Addr::new(192, 0, 2, 1)),
        Record::Aaaa(
            "host.test".into(),
            "2001:db8::1".parse::<Ipv6Addr>().expect("ip"),
        ),
        Record::Mx("host.test".into(), 10, "mx.host.test".into()),
        Record::Ptr("7.2.0.192.in-addr.arpa".into(), "client.example.org".into()),
        Record::ServFail("broken.test".into()),
        Record::Silent("silent.test".into()),
    ]);
    let dir = TestDir::new("plugin-dns");
    let mail = dir.path().join("mail");
    let lookups = [
        "2.0.0.127.zen.test/A",
        "2.0.0.127.zen.test/TXT",
        "host.test/AAAA",
        "host.test/MX",
        "7.2.0.192.in-addr.arpa/PTR",
        "nothere.test/A",
        "host.test/TXT",
        "broken.test/A",
        "silent.test/A",
        "host.test/A",
    ];
    let only = toml_strings(&lookups);
    let plugins = format!(
        "{}{}{}",
        plugin_toml(
            "no-grant",
            "finaldot_testbed",
            "[plugins.config]\nmode = \"dns\"\nonly = [\"host.test/A\"]\n"
        ),
        plugin_toml(
            "asker",
            "finaldot_testbed",
            &format!("timeout_ms = 10000\ndns = {{ timeout_ms = 500, max_lookups = 9 }}\n[plugins.config]\nmode = \"dns\"\nonly = [{only}]\n"),
        ),
        local_delivery_toml(&mail)
    );
    let config = with_dns(&chain_config(dir.path(), &plugins), dns.addr);
    let d = Daemon::start_with(dir.path(), &config);
    d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: dns\r\n\r\nhi\r\n",
    );
    let text = only_delivery(&d, &mail);
    let answers = field_values(&text, "X-Dns");
    assert_eq!(
        answers,
        [
            "host.test/A error Some(NotGranted)",
            "2.0.0.127.zen.test/A Found 127.0.0.2",
            "2.0.0.127.zen.test/TXT Found listed for testing",
            "host.test/AAAA Found 2001:db8::1",
            "host.test/MX Found 10 mx.host.test",
            "7.2.0.192.in-addr.arpa/PTR Found client.example.org",
            "nothere.test/A NxDomain",
            "host.test/TXT NoData",
            "broken.test/A ServFail",
            "silent.test/A Timeout",
            "host.test/A error Some(LimitReached)",
        ],
        "{text}"
    );
}

/// Issue 17.4: the dnsbl plugin against the loopback DNS server: a listed
/// client gets the header and, with `action = "hold"`, its message is held
/// (never bounced); an unlisted zone leaves it alone.
#[test]
fn dnsbl_marks_and_holds_a_listed_client() {
    let dns = DnsServer::start(vec![Record::A(
        "1.0.0.127.zen.test".into(),
        Ipv4Addr::new(127, 0, 0, 2),
    )]);
    for action in ["header", "hold"] {
        let dir = TestDir::new("dnsbl");
        let mail = dir.path().join("mail");
        let plugins = format!(
            "{}{}",
            plugin_toml(
                "dnsbl",
                "dnsbl",
                &format!("dns = true\n[plugins.config]\nzones = [{{ zone = \"zen.test\" }}, {{ zone = \"clean.test\" }}]\naction = \"{action}\"\nskip_networks = []\n"),
            ),
            local_delivery_toml(&mail)
        );
        let config = with_dns(&chain_config(dir.path(), &plugins), dns.addr);
        let d = Daemon::start_with(dir.path(), &config);
        let id = d.send(
            "s@remote.test",
            &["alice@example.test"],
            b"Subject: from a listed host\r\n\r\nhi\r\n",
        );
        if action == "header" {
            let text = only_delivery(&d, &mail);
            assert!(
                text.contains("X-DNSBL: 127.0.0.1 listed in zen.test (127.0.0.2); score 1"),
                "{text}"
            );
            assert!(!text.contains("clean.test"), "{text}");
        } else {
            assert!(
                wait_until(LONG, || d
                    .spool_files(QueueState::Hold)
                    .iter()
                    .any(|f| f.ends_with(&id))),
                "{}",
                d.log()
            );
            assert!(!d.log().contains("DSN queued"), "{}", d.log());
            assert!(d.log().contains("blocklisted"), "{}", d.log());
        }
    }
}

/// A DNS server that never answers costs the plugin Timeout answers, not
/// its life: the lookups end before the plugin's own time limit (1 s here,
/// under the grant's 2 s per lookup), the call succeeds, the message is
/// delivered and nothing faults.
#[test]
fn a_dead_dns_server_gives_timeouts_within_the_plugins_time_limit() {
    let dns = DnsServer::start(vec![Record::Silent("silent.test".into())]);
    let dir = TestDir::new("dns-dead");
    let mail = dir.path().join("mail");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "asker",
            "finaldot_testbed",
            "timeout_ms = 1000\ndns = true\n[plugins.config]\nmode = \"dns\"\nonly = [\"silent.test/A\", \"silent.test/TXT\", \"other.test/A\"]\n",
        ),
        local_delivery_toml(&mail)
    );
    let config = with_dns(&chain_config(dir.path(), &plugins), dns.addr);
    let d = Daemon::start_with(dir.path(), &config);
    d.send(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: dead dns\r\n\r\nhi\r\n",
    );
    let text = only_delivery(&d, &mail);
    let answers = field_values(&text, "X-Dns");
    assert_eq!(
        answers,
        [
            "silent.test/A Timeout",
            "silent.test/TXT Timeout",
            "other.test/A Timeout"
        ],
        "{text}"
    );
    assert!(!d.log().contains("plugin fault"), "{}", d.log());
}
