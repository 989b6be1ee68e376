//! Session tests: transcripts fed whole, split at every byte boundary, and byte by byte.

use super::*;
use crate::smtp::policy::DomainUsers;
use crate::smtp::transcript::{test_tls, Transcript};

fn config() -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        max_message_size: 100_000,
        max_recipients: 100,
        max_errors: 20,
        recipients: Recipients::new(
            [
                ("localhost".to_string(), DomainUsers::CatchAll),
                (
                    "example.test".to_string(),
                    DomainUsers::Listed(["alice".to_string()].into_iter().collect()),
                ),
            ],
            Some('+'),
        ),
        starttls: false,
        submission: false,
        sender_login: Default::default(),
        postmaster: crate::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain: "localhost".into(),
        },
        door: Default::default(),
    })
}

fn session() -> Session {
    fixed_clock(Session::new(config(), "192.0.2.1".parse().expect("ip")))
}

/// A session whose clock stands still: envelopes carry the time they were
/// received, and runs compared byte for byte must not straddle a second.
fn fixed_clock(mut s: Session) -> Session {
    s.now = || 1_795_000_000;
    s
}

/// Feeds `input` in pieces cut at `cuts` and returns what the session did.
fn run_cuts(input: &[u8], cuts: &[usize]) -> Transcript {
    Transcript::default().run(&mut session(), input, cuts)
}

fn run(input: &[u8]) -> Transcript {
    run_cuts(input, &[])
}

/// Runs `input` whole, at every single split, and byte by byte; all must agree.
fn run_every_split(input: &[u8]) -> Transcript {
    let whole = run(input);
    for split in 0..=input.len() {
        let d = run_cuts(input, &[split]);
        assert_eq!(
            String::from_utf8_lossy(&d.replies),
            String::from_utf8_lossy(&whole.replies),
            "split at {split}"
        );
        assert_eq!(d.committed, whole.committed, "split at {split}");
    }
    let cuts: Vec<usize> = (1..input.len()).collect();
    let d = run_cuts(input, &cuts);
    assert_eq!(d.replies, whole.replies, "byte by byte");
    assert_eq!(d.committed, whole.committed, "byte by byte");
    whole
}

const HELLO: &[u8] =
    b"EHLO client.test\r\nMAIL FROM:<s@x.test>\r\nRCPT TO:<alice@example.test>\r\n";

fn with_hello(rest: &[u8]) -> Vec<u8> {
    let mut v = HELLO.to_vec();
    v.extend_from_slice(rest);
    v
}

#[test]
fn pipelined_transaction_queues_exact_bytes() {
    let input = with_hello(
        b"RCPT TO:<bob@localhost>\r\nDATA\r\nSubject: t\r\n\r\n..dot\r\nline\r\n.\r\nMAIL FROM:<>\r\nQUIT\r\n",
    );
    let d = run_every_split(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 354, 250, 250, 221]);
    assert_eq!(d.committed.len(), 1);
    let (env, body) = &d.committed[0];
    assert_eq!(body, b"Subject: t\r\n\r\n.dot\r\nline\r\n");
    assert_eq!(env.mail_from, "s@x.test");
    assert_eq!(env.rcpt_to, vec!["alice@example.test", "bob@localhost"]);
    assert_eq!(env.protocol, "ESMTP");
    assert!(d.closed);
    let text = String::from_utf8_lossy(&d.replies);
    assert!(
        text.contains("250 2.0.0 Ok: queued as Q1\r\n250 2.1.0 Ok\r\n221 2.0.0"),
        "{text}"
    );
}

#[test]
fn ehlo_advertises_the_extensions() {
    let d = run(b"EHLO c\r\n");
    let text = String::from_utf8_lossy(&d.replies);
    for ext in [
        "PIPELINING",
        "SIZE 100000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
    ] {
        assert!(
            text.contains(&format!("250-{ext}\r\n")) || text.contains(&format!("250 {ext}\r\n")),
            "{ext} in {text}"
        );
    }
}

#[test]
fn every_error_reply_has_an_enhanced_code() {
    let d = run(b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<a@localhost>\r\nFOO\r\nDATA\r\nVRFY x\r\nNOOP\r\n");
    let text = String::from_utf8_lossy(&d.replies);
    // EHLO's reply is the one exception (RFC 2034 section 3): skip its lines.
    for line in text
        .lines()
        .filter(|l| !l.starts_with("250-") && l != &"250 DSN")
    {
        let enhanced = line.get(4..9).unwrap_or("");
        let class = &line[..1];
        assert!(
            enhanced.starts_with(class) && enhanced.as_bytes()[1] == b'.',
            "no enhanced code: {line}"
        );
    }
}

#[test]
fn out_of_order_commands_get_503_and_the_session_goes_on() {
    let d = run(b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<a@localhost>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nNOOP\r\n");
    assert_eq!(d.codes(), vec![503, 250, 503, 503, 250, 503, 554, 250]);
    assert_eq!(d.begins, 0);
}

#[test]
fn bad_syntax_gets_500_or_501() {
    let d =
        run(b"EHLO c\r\nXYZZY\r\nMAIL FROM:a@b\r\nMAIL FROM:<a@b.test> FOO=1\r\nEHLO\r\nNOOP\r\n");
    assert_eq!(d.codes(), vec![250, 500, 501, 555, 501, 250]);
}

#[test]
fn relay_and_unknown_users_are_refused_at_rcpt() {
    let d = run(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<mallory@example.test>\r\nRCPT TO:<alice+tag@example.test>\r\nRCPT TO:<postmaster>\r\n");
    let text = String::from_utf8_lossy(&d.replies);
    assert!(text.contains("550 5.7.1"), "{text}");
    assert!(text.contains("550 5.1.1"), "{text}");
    assert_eq!(d.codes(), vec![250, 250, 550, 550, 250, 250]);
}

#[test]
fn smuggling_variants_are_refused_and_nothing_inside_runs() {
    for sep in [&b"\n.\n"[..], b"\r\n.\n", b"\n.\r\n", b"\r.\r"] {
        let mut input = with_hello(b"DATA\r\nSubject: x\r\n\r\nhello");
        input.extend_from_slice(sep);
        input.extend_from_slice(b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n");
        let d = run_every_split(&input);
        assert!(d.committed.is_empty(), "{sep:?} queued a message");
        assert_eq!(d.begins, 1, "{sep:?}: smuggled DATA ran");
        assert_eq!(d.aborts, 1);
        assert_eq!(d.codes(), vec![250, 250, 250, 354, 550, 250], "{sep:?}");
        assert!(String::from_utf8_lossy(&d.replies).contains("550 5.6.0"));
    }
}

#[test]
fn overlong_text_line_is_refused() {
    let mut input = with_hello(b"DATA\r\n");
    input.extend(std::iter::repeat_n(b'a', 1001));
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    let d = run(&input);
    assert!(d.committed.is_empty());
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 550, 250]);
}

#[test]
fn size_is_checked_at_mail_and_during_data() {
    let d =
        run(b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=100001\r\nMAIL FROM:<a@b.test> SIZE=100000\r\n");
    assert_eq!(d.codes(), vec![250, 552, 250]);
    let mut input = with_hello(b"DATA\r\n");
    for _ in 0..2000 {
        input.extend_from_slice(b"0123456789012345678901234567890123456789012345678\r\n");
    }
    input.extend_from_slice(b".\r\nNOOP\r\n");
    let d = run(&input);
    assert!(d.committed.is_empty());
    assert_eq!(d.aborts, 1);
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 552, 250]);
}

#[test]
fn too_many_recipients_get_452() {
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..101 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@localhost>\r\n").as_bytes());
    }
    let d = run(&input);
    let codes = d.codes();
    assert_eq!(codes.iter().filter(|&&c| c == 250).count(), 102);
    assert_eq!(*codes.last().expect("reply"), 452);
}

#[test]
fn a_pipelining_client_far_over_the_recipient_limit_keeps_its_transaction() {
    // RFC 5321 §4.5.3.1.10: the client sends the rest later. 452s past the
    // limit count as errors (max_errors 20 ends the session) only after an
    // overshoot of 1000.
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..1030 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@localhost>\r\n").as_bytes());
    }
    input.extend_from_slice(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
    let d = run(&input);
    let codes = d.codes();
    assert_eq!(codes.iter().filter(|&&c| c == 452).count(), 930);
    assert!(!codes.contains(&421), "not cut off");
    assert_eq!(&codes[codes.len() - 2..], &[354, 250]);
    assert_eq!(d.committed[0].0.rcpt_to.len(), 100);
    // Past the overshoot, they count.
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n".to_vec();
    for i in 0..1200 {
        input.extend_from_slice(format!("RCPT TO:<u{i}@localhost>\r\n").as_bytes());
    }
    let d = run(&input);
    assert_eq!(*d.codes().last().expect("reply"), 421);
    assert!(d.closed);
}

#[test]
fn one_mailbox_twice_is_one_recipient_whatever_the_domain_case() {
    let input = with_hello(
        b"RCPT TO:<alice@EXAMPLE.test>\r\nRCPT TO:<\"alice\"@example.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n",
    );
    let d = run(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 250, 250, 354, 250]);
    assert_eq!(
        d.committed[0].0.rcpt_to,
        vec!["alice@example.test", "bob@localhost"]
    );
}

#[test]
fn auth_parameter_is_refused_where_auth_is_not_offered() {
    let d = run(b"EHLO c\r\nMAIL FROM:<a@b.test> AUTH=<>\r\nMAIL FROM:<a@b.test>\r\n");
    assert_eq!(d.codes(), vec![250, 555, 250]);
}

#[test]
fn a_rcpt_line_with_dsn_parameters_may_pass_512_octets() {
    let local = "a".repeat(64);
    let domain = format!("{}.test", "d".repeat(200));
    let orcpt = format!("rfc822;{}+40{}", "o".repeat(64), "e".repeat(300));
    let line = format!("RCPT TO:<{local}@{domain}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n");
    assert!(
        line.len() > 600 && line.len() <= MAX_COMMAND_LINE,
        "{}",
        line.len()
    );
    let input = [&b"EHLO c\r\nMAIL FROM:<s@x.test>\r\n"[..], line.as_bytes()].concat();
    let d = run_every_split(&input);
    assert_eq!(d.codes()[..2], [250, 250]);
    // The recipient's domain is not ours (relay refused), so not 500: the
    // line was read whole and parsed.
    assert_ne!(d.codes()[2], 500, "{}", String::from_utf8_lossy(&d.replies));
    // Past 512 + 500 even RCPT is too long.
    let long = format!("RCPT TO:<a@b.test> ORCPT=rfc822;{}\r\n", "x".repeat(1000));
    let input = [&b"EHLO c\r\nMAIL FROM:<s@x.test>\r\n"[..], long.as_bytes()].concat();
    assert_eq!(run_every_split(&input).codes()[2], 500);
}

#[test]
fn long_and_bare_lf_command_lines_are_refused() {
    // 512 octets (RFC 5321 §4.5.3.1.4); only MAIL and RCPT may be longer
    // (RFC 3461 §5).
    let mut input = b"EHLO c\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 600));
    input.extend_from_slice(b"\r\nNOOP\nNOOP\r\n");
    let d = run_every_split(&input);
    assert_eq!(d.codes(), vec![250, 500, 500, 250]);
    let text = String::from_utf8_lossy(&d.replies);
    assert!(text.contains("500 5.5.2"), "{text}");
}

#[test]
fn bdat_chunks_are_joined_exactly() {
    let input = with_hello(b"BDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\nNOOP\r\n");
    let d = run_every_split(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 250, 250]);
    assert_eq!(d.committed.len(), 1);
    // "ab" is not a header field: an empty line goes first, so that it is
    // body and not a continuation of the daemon's Received field.
    assert_eq!(d.committed[0].1, b"\r\nab\r\ncd\r\n");
}

#[test]
fn content_without_headers_gets_an_empty_line_before_it() {
    for (content, stored) in [
        (&b"hello world\r\n"[..], &b"\r\nhello world\r\n"[..]),
        (b" indented\r\n", b"\r\n indented\r\n"),
        (
            b"no-colon-here\r\nSubject: x\r\n",
            b"\r\nno-colon-here\r\nSubject: x\r\n",
        ),
        (b"From me Mon Jan 1\r\n", b"\r\nFrom me Mon Jan 1\r\n"),
        // Unchanged: a header field first, or an empty header section.
        (b"Subject: x\r\n\r\nbody\r\n", b"Subject: x\r\n\r\nbody\r\n"),
        (b"X-A:b\r\n", b"X-A:b\r\n"),
        (
            b"Subject : old style\r\n\r\nx\r\n",
            b"Subject : old style\r\n\r\nx\r\n",
        ),
        (b"Subject \t: old style\r\n", b"Subject \t: old style\r\n"),
        (b"two words: no\r\n", b"\r\ntwo words: no\r\n"),
        (b"\r\nbody only\r\n", b"\r\nbody only\r\n"),
        (b"", b""),
    ] {
        let mut input = with_hello(b"DATA\r\n");
        input.extend_from_slice(content);
        input.extend_from_slice(b".\r\n");
        let d = run_every_split(&input);
        assert_eq!(d.committed.len(), 1, "{content:?}");
        assert_eq!(
            d.committed[0].1,
            stored,
            "{}",
            String::from_utf8_lossy(content)
        );
    }
    let d = run_every_split(&with_hello(b"BDAT 4 LAST\r\nabcd"));
    assert_eq!(d.committed[0].1, b"\r\nabcd");
    // Held bytes are counted as they arrive (BDAT reports them).
    let d = run(&with_hello(b"BDAT 3\r\nSubBDAT 0 LAST\r\n"));
    let text = String::from_utf8_lossy(&d.replies);
    assert!(text.contains("Ok: 3 octets received"), "{text}");
}

#[test]
fn the_empty_line_does_not_count_against_the_size_limit() {
    // 100 000 is the limit in config(): exactly that much, headerless, fits.
    let mut input = with_hello(b"DATA\r\n");
    let line = [vec![b'a'; 98], b"\r\n".to_vec()].concat();
    for _ in 0..1000 {
        input.extend_from_slice(&line);
    }
    input.extend_from_slice(b".\r\n");
    let d = run(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 250]);
    assert_eq!(d.committed[0].1.len(), 100_002);
}

#[test]
fn bdat_refused_still_consumes_its_octets() {
    let d = run_every_split(b"EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(d.codes(), vec![250, 503, 250]);
    assert!(!d.closed);
    let d =
        run(b"HELO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@localhost>\r\nBDAT 1 LAST\r\nxNOOP\r\n");
    assert_eq!(d.codes(), vec![250, 250, 250, 503, 250]);
}

#[test]
fn bdat_with_bare_lf_is_refused() {
    let d = run_every_split(&with_hello(b"BDAT 4\r\na\r\nbBDAT 2 LAST\r\n\n\nNOOP\r\n"));
    assert!(d.committed.is_empty());
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 550, 250]);
}

#[test]
fn bdat_bare_cr_across_chunks_is_refused_but_split_crlf_is_fine() {
    let d = run(&with_hello(b"BDAT 2\r\na\rBDAT 3 LAST\r\n\nb\r"));
    assert!(d.committed.is_empty(), "final bare CR");
    let d = run(&with_hello(b"BDAT 2\r\na\rBDAT 3 LAST\r\n\nb\r\n"));
    // "a\r" + "\nb\r\n" is clean once joined... but the 3-octet chunk is "\nb\r": CR at the end.
    assert!(d.committed.is_empty());
    let d = run(&with_hello(b"BDAT 2\r\na\rBDAT 4 LAST\r\n\nb\r\n"));
    assert_eq!(d.committed.len(), 1);
    // (With the empty line that keeps header-less content out of the header section.)
    assert_eq!(d.committed[0].1, b"\r\na\r\nb\r\n");
}

#[test]
fn rset_during_bdat_aborts_the_message() {
    let d = run(&with_hello(b"BDAT 3\r\nabcRSET\r\nBDAT 1 LAST\r\nx"));
    assert_eq!(d.aborts, 1);
    assert!(d.committed.is_empty());
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 250, 503]);
}

#[test]
fn data_after_bdat_is_503() {
    let d = run(&with_hello(b"BDAT 1\r\naDATA\r\n"));
    assert_eq!(d.codes(), vec![250, 250, 250, 250, 503]);
}

#[test]
fn spool_failures_become_the_drivers_replies() {
    let mut s = session();
    let mut d = Transcript {
        begin_fail: Some(Reply::new(452, "4.3.1", "full")),
        ..Transcript::default()
    };
    s.feed(&with_hello(b"DATA\r\nx\r\n.\r\nNOOP\r\n"));
    d.drive(&mut s);
    // No 354: the 452 comes instead, and the content lines are then commands.
    assert_eq!(d.codes(), vec![250, 250, 250, 452, 500, 500, 250]);

    let mut s = session();
    let mut d = Transcript {
        commit_fail: Some(Reply::new(451, "4.3.0", "err")),
        ..Transcript::default()
    };
    s.feed(&with_hello(b"DATA\r\nx\r\n.\r\nNOOP\r\n"));
    d.drive(&mut s);
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 451, 250]);
    assert!(d.committed.is_empty());
}

#[test]
fn too_many_errors_close_with_421() {
    let input: Vec<u8> = b"BAD\r\n".repeat(25);
    let d = run(&input);
    let codes = d.codes();
    assert_eq!(codes.len(), 21);
    assert_eq!(codes[20], 421);
    assert!(d.closed);
}

#[test]
fn helo_session_has_no_extensions() {
    let d = run(b"HELO c\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@localhost>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(d.codes(), vec![250, 555, 250, 250, 354, 250]);
    assert_eq!(d.committed[0].0.protocol, "SMTP");
}

#[test]
fn smtputf8_transaction() {
    let d = run("EHLO c\r\nMAIL FROM:<jøran@x.test> SMTPUTF8\r\nRCPT TO:<ålice@localhost>\r\nDATA\r\nx\r\n.\r\n".as_bytes());
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 250]);
    assert_eq!(d.committed[0].0.protocol, "UTF8SMTP");
    assert!(d.committed[0].0.smtputf8);
    let d = run("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<ålice@localhost>\r\n".as_bytes());
    assert_eq!(d.codes(), vec![250, 250, 553]);
}

#[test]
fn vrfy_never_reveals_users_and_help_answers() {
    let d = run(b"VRFY alice\r\nHELP\r\nEXPN list\r\nSTARTTLS\r\n");
    assert_eq!(d.codes(), vec![252, 214, 502, 502]);
}

#[test]
fn empty_message_and_duplicate_recipients() {
    let d = run(&with_hello(
        b"RCPT TO:<alice@example.test>\r\nDATA\r\n.\r\n",
    ));
    assert_eq!(d.committed.len(), 1);
    assert_eq!(d.committed[0].1, b"");
    assert_eq!(d.committed[0].0.rcpt_to.len(), 1);
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets_the_session() {
    let mut cfg = (*config()).clone();
    cfg.starttls = true;
    let mut s = fixed_clock(Session::new(
        Arc::new(cfg),
        "192.0.2.1".parse().expect("ip"),
    ));
    let mut d = Transcript::default();
    s.feed(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n");
    d.drive(&mut s);
    assert_eq!(d.tls_started, 1);
    let text = String::from_utf8_lossy(&d.replies).to_string();
    assert!(
        text.contains("250-STARTTLS\r\n") || text.contains("250 STARTTLS\r\n"),
        "{text}"
    );
    assert!(
        text.ends_with("220 2.0.0 Ready to start TLS\r\n"),
        "the pipelined MAIL was answered: {text}"
    );
    // Inside TLS: EHLO again, no STARTTLS offered, STARTTLS refused, TLS in the protocol.
    s.feed(b"MAIL FROM:<a@b.test>\r\nEHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nx\r\n.\r\n");
    d.replies.clear();
    d.drive(&mut s);
    let text = String::from_utf8_lossy(&d.replies).to_string();
    assert!(!text.contains("STARTTLS"), "{text}");
    assert_eq!(d.codes(), vec![503, 250, 503, 250, 250, 354, 250]);
    assert_eq!(d.committed[0].0.protocol, "ESMTPS");
    assert_eq!(d.committed[0].0.tls, Some(test_tls()));
}

#[test]
fn starttls_without_a_certificate_is_502_and_not_offered() {
    let d = run(b"EHLO c\r\nSTARTTLS\r\nSTARTTLS now\r\n");
    let text = String::from_utf8_lossy(&d.replies).to_string();
    assert!(
        !text.contains("250-STARTTLS") && !text.contains("250 STARTTLS"),
        "{text}"
    );
    assert_eq!(d.codes(), vec![250, 502, 501]);
}

#[test]
fn looping_mail_gets_554_too_many_hops_and_the_session_goes_on() {
    let mut input = with_hello(b"DATA\r\n");
    input.extend(b"Received: from a by b\r\n".repeat(100));
    input.extend_from_slice(b"\r\nbody\r\n.\r\n");
    input.extend_from_slice(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<a@localhost>\r\nDATA\r\n");
    input.extend(b"Received: from a by b\r\n".repeat(99));
    input.extend_from_slice(b"\r\nbody\r\n.\r\n");
    let d = run(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 554, 250, 250, 354, 250]);
    assert!(String::from_utf8_lossy(&d.replies).contains("554 5.4.6"));
    assert_eq!(d.committed.len(), 1);
}

#[test]
fn too_many_header_fields_get_552() {
    let mut input = with_hello(b"DATA\r\n");
    input.extend(b"X-A: b\r\n".repeat(1001));
    input.extend_from_slice(b"\r\nbody\r\n.\r\nNOOP\r\n");
    let d = run(&input);
    assert_eq!(d.codes(), vec![250, 250, 250, 354, 552, 250]);
    assert!(d.committed.is_empty());
}

fn submission_session() -> Session {
    let cfg = SessionConfig {
        starttls: true,
        submission: true,
        sender_login: Default::default(),
        postmaster: crate::smtp::session::Mailbox {
            local: "postmaster".into(),
            domain: "localhost".into(),
        },
        ..(*config()).clone()
    };
    fixed_clock(Session::new(
        Arc::new(cfg),
        "192.0.2.1".parse().expect("ip"),
    ))
}

fn run_in(mut s: Session, input: &[u8]) -> Transcript {
    Transcript::default().run(&mut s, input, &[])
}

#[test]
fn submission_offers_auth_only_after_tls_and_needs_it_for_mail() {
    let d = run_in(
        submission_session(),
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@localhost>\r\n",
    );
    let text = String::from_utf8_lossy(&d.replies);
    assert!(!text.contains("AUTH"), "AUTH offered in plaintext: {text}");
    assert_eq!(d.codes(), vec![250, 538, 530]);

    // After STARTTLS: AUTH PLAIN with an initial response, then relay.
    let d = run_in(submission_session(), b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(d.tls_started, 1);
    let mut s = submission_session();
    s.tls_established(test_tls());
    let mut d = Transcript::default();
    s.feed(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@elsewhere.test>\r\nDATA\r\nhi\r\n.\r\n");
    d.drive(&mut s);
    let text = String::from_utf8_lossy(&d.replies);
    assert!(
        text.contains("250-AUTH PLAIN LOGIN\r\n") || text.contains("250 AUTH PLAIN LOGIN\r\n"),
        "{text}"
    );
    assert_eq!(d.codes(), vec![250, 235, 250, 250, 354, 250]);
    assert_eq!(s.authenticated(), Some("alice"));
    assert_eq!(d.committed.len(), 1);
    assert_eq!(d.committed[0].0.protocol, "ESMTPSA");
    assert_eq!(
        d.committed[0].0.rcpt_to,
        vec!["bob@elsewhere.test".to_string()]
    );
}

#[test]
fn auth_login_plain_continuation_cancel_and_bad_input() {
    let tls = || {
        let mut s = submission_session();
        s.tls_established(test_tls());
        s
    };
    // LOGIN in two steps (YWxpY2U= alice, c2VjcmV0 secret), every split.
    let input = b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nNOOP\r\n";
    for cut in 0..=input.len() {
        let mut s = tls();
        let mut d = Transcript::default();
        s.feed(&input[..cut]);
        d.drive(&mut s);
        s.feed(&input[cut..]);
        d.drive(&mut s);
        assert_eq!(d.codes(), vec![250, 334, 334, 235, 250], "cut {cut}");
        assert!(String::from_utf8_lossy(&d.replies).contains("334 VXNlcm5hbWU6\r\n"));
    }
    // PLAIN without an initial response: an empty 334, then the response.
    let d = run_in(tls(), b"EHLO c\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.codes(), vec![250, 334, 235]);
    // Wrong password, cancel, garbage, unknown mechanism, then success.
    let d = run_in(
        tls(),
        b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH CRAM-MD5\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    );
    assert_eq!(d.codes(), vec![250, 535, 334, 501, 501, 504, 235, 503]);
    // An over-long response (RFC 4954 §4: 12288 octets): 500 5.5.6, and
    // the session goes on; an over-long command stays 500 5.5.2.
    let mut input = b"EHLO c\r\nAUTH PLAIN\r\n".to_vec();
    input.extend_from_slice(&vec![b'A'; 13_000]);
    input.extend_from_slice(b"\r\nNOOP\r\n");
    input.extend_from_slice(&vec![b'N'; 600]);
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let d = run_in(tls(), &input);
    assert_eq!(d.codes(), vec![250, 334, 500, 250, 500, 250]);
    let text = String::from_utf8_lossy(&d.replies);
    assert!(
        text.contains("500 5.5.6") && text.contains("500 5.5.2"),
        "{text}"
    );
    // Port 25 never offers AUTH.
    let d = run(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(d.codes(), vec![250, 502]);
}

#[test]
fn postmaster_at_this_hosts_address_literal_is_this_hosts_postmaster() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<PostMaster@[192.0.2.25]>\r\nRCPT TO:<postmaster@[192.0.2.99]>\r\nRCPT TO:<alice@[192.0.2.25]>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n";
    let mut s = session().with_local_ip(Some("192.0.2.25".parse().expect("ip")));
    let mut d = Transcript::default();
    s.feed(input);
    d.drive(&mut s);
    // Another host's literal, or another user at ours, is not ours to take.
    assert_eq!(d.codes(), vec![250, 250, 250, 550, 550, 354, 250]);
    assert_eq!(d.committed[0].0.rcpt_to, vec!["postmaster@localhost"]);
}

#[test]
fn a_nul_anywhere_in_content_refuses_the_message_and_the_session_goes_on() {
    for body in [
        &b"Subject: x\r\n\r\n.\0hidden\r\n.\r\n"[..],
        b"Subject: x\0y\r\n\r\nbody\r\n.\r\n",
        b"Subject: x\r\n\r\nbo\0dy\r\n.\r\n",
    ] {
        let mut input = with_hello(b"DATA\r\n");
        input.extend_from_slice(body);
        input.extend_from_slice(b"NOOP\r\n");
        let d = run_every_split(&input);
        assert_eq!(d.codes(), vec![250, 250, 250, 354, 550, 250], "{body:?}");
        assert!(d.committed.is_empty());
        assert!(String::from_utf8_lossy(&d.replies).contains("550 5.6.0"));
    }
    // BDAT too.
    let d = run_every_split(&with_hello(b"BDAT 9 LAST\r\nA: b\r\n\0\r\nNOOP\r\n"));
    assert_eq!(d.codes(), vec![250, 250, 250, 550, 250]);
    assert!(d.committed.is_empty());
}

/// A session whose door judges every stage.
fn door_session() -> Session {
    let cfg = SessionConfig {
        door: crate::door::DoorWants {
            anonymous: [true; 4],
            authenticated: [true; 4],
        },
        ..(*config()).clone()
    };
    fixed_clock(Session::new(
        Arc::new(cfg),
        "192.0.2.1".parse().expect("ip"),
    ))
}

fn refuse(code: u16, status: &str, text: &str, disconnect: bool) -> crate::door::DoorAnswer {
    crate::door::DoorAnswer::Refuse {
        code,
        status: status.into(),
        text: text.into(),
        disconnect,
    }
}

/// Runs `input` on a door session whose door answers `answers` in order
/// (then continue), whole and at every split: the same replies each time.
fn run_door(input: &[u8], answers: &[crate::door::DoorAnswer]) -> Transcript {
    let go = |cuts: &[usize]| {
        let d = Transcript {
            door_answers: answers.iter().cloned().collect(),
            ..Transcript::default()
        };
        d.run(&mut door_session(), input, cuts)
    };
    let whole = go(&[]);
    for split in 0..=input.len() {
        let d = go(&[split]);
        assert_eq!(d.replies, whole.replies, "split at {split}");
        assert_eq!(d.door_asks, whole.door_asks, "split at {split}");
    }
    whole
}

#[test]
fn a_door_refusal_at_rcpt_keeps_pipelined_replies_in_order_and_the_recipient_out() {
    use crate::door::DoorAnswer::Continue;
    let input = b"EHLO c.test\r\nMAIL FROM:<s@remote.test> SIZE=100\r\nRCPT TO:<a@localhost>\r\nRCPT TO:<grey@localhost> NOTIFY=FAILURE\r\nRCPT TO:<b@localhost>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let d = run_door(
        input,
        &[
            Continue,
            Continue,
            Continue,
            refuse(450, "4.7.1", "greylisted, try again later", false),
            Continue,
        ],
    );
    assert_eq!(d.codes(), vec![250, 250, 250, 450, 250, 354, 250, 221]);
    let text = String::from_utf8_lossy(&d.replies);
    assert!(
        text.contains("450 4.7.1 greylisted, try again later\r\n"),
        "{text}"
    );
    let (env, _) = &d.committed[0];
    assert_eq!(env.rcpt_to, vec!["a@localhost", "b@localhost"]);
    // What the door was asked, stage by stage, with the facts so far.
    let stages: Vec<_> = d.door_asks.iter().map(|a| a.stage.as_str()).collect();
    assert_eq!(stages, vec!["helo", "mail", "rcpt", "rcpt", "rcpt"]);
    let grey = &d.door_asks[3];
    assert_eq!(grey.session.helo, "c.test");
    assert_eq!(grey.session.client_ip, "192.0.2.1");
    assert_eq!(grey.mail_from.as_deref(), Some("s@remote.test"));
    assert_eq!(
        grey.mail_params,
        vec![("SIZE".to_string(), "100".to_string())]
    );
    assert_eq!(grey.rcpt_to.as_deref(), Some("grey@localhost"));
    assert_eq!(
        grey.rcpt_params,
        vec![("NOTIFY".to_string(), "FAILURE".to_string())]
    );
    assert_eq!(grey.recipients, vec!["a@localhost".to_string()]);
    // Nothing is asked at DATA or after it.
    assert_eq!(d.door_asks.len(), 5);
}

#[test]
fn a_door_refusal_at_helo_leaves_the_client_unintroduced() {
    let d = run_door(
        b"EHLO bad.test\r\nMAIL FROM:<s@remote.test>\r\nHELO good.test\r\nMAIL FROM:<s@remote.test>\r\nQUIT\r\n",
        &[refuse(550, "5.7.1", "we do not talk to bad.test", false)],
    );
    assert_eq!(d.codes(), vec![550, 503, 250, 250, 221]);
}

#[test]
fn a_door_disconnect_sends_its_reply_and_closes() {
    let d = run_door(
        b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<a@localhost>\r\nQUIT\r\n",
        &[
            crate::door::DoorAnswer::Continue,
            refuse(421, "4.7.0", "too many messages from you", true),
        ],
    );
    assert_eq!(d.codes(), vec![250, 421]);
    assert!(d.closed);
}

#[test]
fn without_a_door_plugin_the_session_never_asks() {
    let d = run(b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<a@localhost>\r\nQUIT\r\n");
    assert!(d.door_asks.is_empty());
    assert_eq!(d.codes(), vec![250, 250, 250, 221]);
}

#[test]
fn a_5xx_at_connect_is_a_554_greeting_after_which_only_quit_is_accepted() {
    let mut s = door_session();
    let ask = s.connect_ask().expect("the door judges connect");
    assert_eq!(ask.stage, finaldot_sdk::wire::DoorStage::Connect);
    assert_eq!(ask.session.helo, "");
    let (greeting, close) =
        s.connect_answered(refuse(550, "5.7.1", "listed in zen.example", false));
    assert!(!close);
    assert_eq!(
        greeting.to_string(),
        "554 5.7.1 mx.test listed in zen.example"
    );
    let d = Transcript::default().run(
        &mut s,
        b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nQUIT\r\n",
        &[],
    );
    assert_eq!(d.codes(), vec![503, 503, 221]);
    // A 4xx (or a disconnect) closes at once, a 4xx as 421.
    let mut s = door_session();
    let (greeting, close) = s.connect_answered(refuse(450, "4.7.1", "busy", false));
    assert!(close);
    assert_eq!(greeting.to_string(), "421 4.7.1 mx.test busy");
    let mut s = door_session();
    let (greeting, close) = s.connect_answered(crate::door::DoorAnswer::Continue);
    assert!(!close);
    assert_eq!(greeting.code, 220);
}

#[test]
fn a_refused_ehlo_leaves_the_greeting_and_the_transaction_as_they_were() {
    let d = run_door(
        b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nEHLO no.test\r\nRCPT TO:<a@localhost>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n",
        &[
            crate::door::DoorAnswer::Continue,
            crate::door::DoorAnswer::Continue,
            refuse(450, "4.7.1", "not now", false),
        ],
    );
    assert_eq!(d.codes(), vec![250, 250, 450, 250, 354, 250]);
    assert_eq!(d.committed[0].0.helo, "c.test");
}

#[test]
fn door_4xx_refusals_do_not_count_as_errors_and_a_421_closes() {
    // Thirty greylisted recipients, max_errors 20: the session goes on.
    let mut input = b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\n".to_vec();
    for n in 0..30 {
        input.extend(format!("RCPT TO:<u{n}@localhost>\r\n").as_bytes());
    }
    input.extend(b"QUIT\r\n");
    let mut answers = vec![crate::door::DoorAnswer::Continue; 2];
    answers.extend(std::iter::repeat_n(
        refuse(451, "4.7.1", "greylisted", false),
        30,
    ));
    let d = Transcript {
        door_answers: answers.into_iter().collect(),
        ..Transcript::default()
    }
    .run(&mut door_session(), &input, &[]);
    let codes = d.codes();
    assert_eq!(codes.len(), 33, "{codes:?}");
    assert_eq!(codes.last(), Some(&221));
    // A 421 closes, even as a plain reply.
    let d = run_door(
        b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nNOOP\r\n",
        &[
            crate::door::DoorAnswer::Continue,
            refuse(421, "4.7.0", "going away", false),
        ],
    );
    assert_eq!(d.codes(), vec![250, 421]);
    assert!(d.closed);
}

#[test]
fn after_a_554_greeting_a_bdat_chunk_is_consumed_not_read_as_commands() {
    let mut s = door_session();
    let (_, close) = s.connect_answered(refuse(550, "5.7.1", "listed", false));
    assert!(!close);
    let d = Transcript::default().run(&mut s, b"BDAT 14 LAST\r\nMAIL FROM:<>\r\nQUIT\r\n", &[]);
    // The 14 octets "MAIL FROM:<>\\r\\n" were the chunk: refused, then QUIT.
    assert_eq!(d.codes(), vec![503, 221]);
    // A long greeting text is cut to one reply line of 512 octets.
    let mut s = door_session();
    let (greeting, _) = s.connect_answered(refuse(550, "5.7.1", &"x".repeat(400), false));
    assert!(
        greeting.to_bytes().len() <= 512,
        "{}",
        greeting.to_bytes().len()
    );
}
