//! Property tests: the decoders that face hostile input never panic, and the
//! session's replies always keep the protocol's shape, whatever the bytes.

use std::sync::Arc;

use finaldot::smtp::command;
use finaldot::smtp::policy::{DomainUsers, Recipients};
use finaldot::smtp::session::{Session, SessionConfig};
use finaldot::smtp::transcript::Transcript;
use proptest::prelude::*;

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 100_000,
        max_recipients: 100,
        max_errors: 1000,
        recipients: Recipients::new(
            [("localhost".to_string(), DomainUsers::CatchAll)],
            Some('+'),
        ),
        starttls: false,
        submission: false,
        sender_login: Default::default(),
        postmaster: finaldot::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain: "localhost".into(),
        },
        door: Default::default(),
    })
}

/// Bytes that look like SMTP often enough to reach deep states.
fn smtp_ish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"EHLO c\r\n".to_vec()),
        Just(b"HELO c\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.test>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n".to_vec()),
        Just(b"RCPT TO:<x@localhost>\r\n".to_vec()),
        Just(b"RCPT TO:<x@elsewhere.test>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 3\r\n".to_vec()),
        Just(b"BDAT 0 LAST\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b".".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(token, 0..30).prop_map(|v| v.concat())
}

fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
    let mut s = Session::new(config(), "127.0.0.1".parse().expect("ip"));
    let t = Transcript::default().run(&mut s, input, cuts);
    (t.replies, t.committed.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn command_parser_never_panics(line in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = command::parse(&line);
    }

    #[test]
    fn session_replies_keep_their_shape_however_input_is_split(
        input in smtp_ish(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (whole, commits) = run(&input, &[]);
        let (split, split_commits) = run(&input, &cuts);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(commits, split_commits);
        let text = String::from_utf8_lossy(&whole);
        for line in text.split_terminator("\r\n") {
            prop_assert!(line.len() >= 4, "short reply line {:?}", line);
            prop_assert!(line[..3].bytes().all(|b| b.is_ascii_digit()), "bad code {:?}", line);
            prop_assert!(matches!(line.as_bytes()[3], b' ' | b'-'), "bad separator {:?}", line);
        }
    }

    #[test]
    fn queue_file_reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("q");
        std::fs::write(&p, &bytes).expect("write");
        let _ = finaldot::spool::read_header(&p);
        let _ = finaldot::spool::read_message(&p);
    }

    #[test]
    fn wire_and_progress_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        use finaldot_sdk::wire::*;
        let _ = postcard::from_bytes::<GuestResult<MessageOutput>>(&bytes);
        let _ = postcard::from_bytes::<GuestResult<PluginInfo>>(&bytes);
        let _ = postcard::from_bytes::<HostRequest>(&bytes);
        let _ = postcard::from_bytes::<MessageInput>(&bytes);
        let _ = finaldot::spool::Progress::decode(&bytes);
        let _ = parse_headers(&bytes);
    }
}
