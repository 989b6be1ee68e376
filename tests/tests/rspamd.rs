//! The rspamd plugin against a real rspamd (Debian's package, started by the
//! harness on 127.0.0.1 with a configuration of its own): a GTUBE message is
//! spam (rspamd says reject) and is held, never bounced; a clean message is
//! delivered with rspamd's headers; with rspamd stopped the message is
//! deferred, and delivered once rspamd is back.

use std::time::Duration;

use finaldot_e2e::rspamd::Rspamd;
use finaldot_e2e::*;

const LONG: Duration = Duration::from_secs(30);

const GTUBE: &[u8] = b"Subject: test spam\r\nFrom: s@remote.test\r\nTo: alice@example.test\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
const CLEAN: &[u8] = b"Subject: clean\r\nFrom: s@remote.test\r\nTo: alice@example.test\r\nMessage-ID: <clean@remote.test>\r\nDate: Wed, 02 Dec 2026 01:00:00 +0000\r\n\r\nhello there\r\n";

#[test]
fn spam_is_held_clean_mail_delivered_and_a_down_rspamd_defers() {
    let dir = TestDir::new("rspamd");
    let mut rspamd = Rspamd::start(dir.path());
    let mail = dir.path().join("mail");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "rspamd",
            "rspamd",
            &format!(
                "timeout_ms = 20000\nhttp = {{ allow = [\"{}\"], timeout_ms = 15000 }}\n[plugins.config]\nurl = \"{}\"\n",
                rspamd.url, rspamd.url
            ),
        ),
        local_delivery_toml(&mail)
    );
    let config = chain_config(dir.path(), &plugins).replace(
        "[pipeline]",
        "[pipeline]\nretry_min_secs = 1\nretry_max_secs = 2",
    );
    let d = Daemon::start_with(dir.path(), &config);
    let send = |body: &[u8]| {
        let mut c = d.connect();
        let (code, text) = c.send_message("s@remote.test", &["alice@example.test"], body);
        assert_eq!(code, 250, "{text}");
        queued_id(&text)
    };

    let spam = send(GTUBE);
    assert!(
        wait_until(LONG, || d
            .spool_files(QueueState::Hold)
            .iter()
            .any(|f| f.ends_with(&spam))),
        "{}",
        d.log()
    );
    assert!(d.log().contains("rspamd: reject"), "{}", d.log());

    send(CLEAN);
    let text = only_delivery(&d, &mail);
    assert!(text.contains("X-Spam: No\n"), "{text}");
    assert!(text.contains("X-Spam-Action: no action\n"), "{text}");
    assert!(text.contains("X-Spam-Score: "), "{text}");

    rspamd.stop();
    let waiting = send(b"Subject: while rspamd is down\r\n\r\nlater\r\n");
    assert!(
        wait_until(LONG, || d
            .spool_files(QueueState::Deferred)
            .iter()
            .any(|f| f.ends_with(&waiting))),
        "{}",
        d.log()
    );
    rspamd.resume();
    let files = wait_for_files(&mail.join("alice/Maildir/new"), 2, LONG);
    assert_eq!(files.len(), 2, "{}", d.log());
    assert!(!d.log().contains("DSN queued"), "{}", d.log());
}
