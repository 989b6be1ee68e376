//! The SMTP receiver (sans-IO session: command reader, DATA and BDAT framing,
//! header checks): the input is fed whole and again split where its first
//! bytes say; both runs must give the same replies and commits, and every
//! reply line must be well formed. A third run offers STARTTLS, where bytes
//! pipelined behind the command are discarded by design (CVE-2011-0411), so
//! replies there depend on the split and only their shape is checked.
#![no_main]

use std::sync::Arc;

use finaldot::smtp::policy::{DomainUsers, Recipients};
use finaldot::smtp::session::{Session, SessionConfig};
use finaldot::smtp::transcript::Transcript;
use libfuzzer_sys::fuzz_target;

fn config(starttls: bool) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 100_000,
        max_recipients: 100,
        max_errors: 1000,
        recipients: Recipients::new(
            [("localhost".to_string(), DomainUsers::CatchAll)],
            Some('+'),
        ),
        starttls,
        submission: starttls,
        sender_login: Default::default(),
        postmaster: finaldot::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain: "localhost".into(),
        },
        // A door that judges every stage (the transcript answers continue).
        door: finaldot::door::DoorWants {
            anonymous: [true; 4],
            authenticated: [true; 4],
        },
    })
}

fn run(input: &[u8], cuts: &[usize], starttls: bool) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut s = Session::new(config(starttls), "127.0.0.1".parse().expect("ip"));
    let t = Transcript::default().run(&mut s, input, cuts);
    let messages = t.committed.into_iter().map(|(_, m)| m).collect();
    (t.replies, messages)
}

fuzz_target!(|data: &[u8]| {
    let (cut_bytes, input) = data.split_at(data.len().min(4));
    let cuts: Vec<usize> = cut_bytes.iter().map(|b| *b as usize * 7).collect();
    let whole = run(input, &[], false);
    let split = run(input, &cuts, false);
    assert_eq!(whole, split, "replies depend on how the input was split");
    let tls = run(input, &cuts, true);
    for replies in [&whole.0, &tls.0] {
        let text = String::from_utf8_lossy(replies);
        for line in text.split_terminator("\r\n") {
            assert!(line.len() >= 4, "short reply line {line:?}");
            assert!(
                line.as_bytes()[..3].iter().all(|b| b.is_ascii_digit()),
                "{line:?}"
            );
            assert!(matches!(line.as_bytes()[3], b' ' | b'-'), "{line:?}");
        }
    }
});
