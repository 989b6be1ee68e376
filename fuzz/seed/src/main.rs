//! Writes the seed corpora under `fuzz/corpus/` (committed): inputs taken from
//! the unit, session and e2e tests, encoded with the real encoders so that
//! the fuzzer starts from valid records. Run from the repository root:
//! `cargo run --manifest-path fuzz/seed/Cargo.toml`.

use std::path::Path;

use finaldot::spool::{Envelope as SpoolEnvelope, Progress, Spool, StageRecord};
use finaldot_sdk::wire::{
    Change, EnvelopeState, GuestResult, Header, HostRequest, MessageOutput, MessageState, Recipient,
    Verdict, ABI_VERSION,
};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

const COMMANDS: &[&[u8]] = &[
    b"EHLO client.example.test",
    b"HELO c",
    b"MAIL FROM:<a@b.test>",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8",
    b"MAIL FROM:<@relay.test:a@b.test> BODY=7BIT",
    b"RCPT TO:<x@localhost>",
    b"RCPT TO:<\"quoted local\"@[127.0.0.1]>",
    b"RCPT TO:<Postmaster>",
    b"RCPT TO:<j\xc3\xbcrgen@localhost>",
    b"DATA",
    b"BDAT 3",
    b"BDAT 0 LAST",
    b"RSET",
    b"NOOP hello",
    b"VRFY alice",
    b"HELP",
    b"STARTTLS",
    b"QUIT",
];

const SESSIONS: &[&[u8]] = &[
    b"\x01\x05\x09\x0dEHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nSubject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n",
    b"\x00\x00\x00\x00EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\nNOOP\r\n",
    b"\x02\x03\x04\x05EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\na\n.\nb\r\n.\r\nRSET\r\n",
    b"\x10\x20\x30\x40EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\nEHLO c\r\n",
    b"\x07\x07\x07\x07HELO c\r\nMAIL FROM:<> SIZE=10 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nReceived: x\r\nX: y\r\n\r\nb\r\n.\r\n",
    b"\x01\x01\x01\x01EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a@localhost>\r\nBDAT 2\r\na\rBDAT 4 LAST\r\n\nb\r\n",
    b"\x00\x00\x00\x00EHLO c\r\nSTARTTLS\r\nEHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@localhost>\r\nRCPT TO:<bob@elsewhere.test>\r\n",
];

fn main() {
    for (i, c) in COMMANDS.iter().enumerate() {
        put("smtp_command", &format!("seed-{i:02}"), c);
    }
    for (i, s) in SESSIONS.iter().enumerate() {
        put("smtp_session", &format!("seed-{i:02}"), s);
    }

    // Queue files, written by the spool itself.
    let tmp = std::env::temp_dir().join(format!("finaldot-seed-{}", std::process::id()));
    let spool = Spool::open(&tmp).expect("spool");
    let envelope = SpoolEnvelope {
        mail_from: "a@b.test".into(),
        rcpt_to: vec!["x@localhost".into(), "y@localhost".into()],
        client_ip: "127.0.0.1".parse().expect("ip"),
        client_port: 40000,
        listener: finaldot_sdk::wire::Listener::Smtp,
        helo: "client.test".into(),
        protocol: "ESMTPS".into(),
        received_at: 1_700_000_000,
        body_8bit: true,
        smtputf8: false,
        tls: Some(finaldot_sdk::wire::TlsFacts {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        }),
        auth: None,
    };
    for (i, body) in [&b""[..], b"Subject: hi\r\n\r\nbody\r\n"]
        .iter()
        .enumerate()
    {
        let mut w = spool.begin(&envelope).expect("begin");
        w.write(body).expect("write");
        let id = spool
            .commit_blocking(w.finish().expect("finish"))
            .expect("commit");
        let file = spool.path(finaldot::spool::QueueState::Incoming, &id);
        put(
            "spool_record",
            &format!("queue-{i}"),
            &std::fs::read(file).expect("read"),
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);

    let state = MessageState {
        envelope: EnvelopeState {
            mail_from: "a@b.test".into(),
            recipients: vec![Recipient::new("x@localhost")],
        },
        headers: vec![Header::new("Subject", "hi")],
    };
    let progress = Progress {
        state: state.clone(),
        body_offset: 14,
        next_stage: 1,
        stages: vec![StageRecord {
            stage: 0,
            plugin: "dedup".into(),
            version: "dedup 0.1.0 abcd".into(),
            outcome: "continue".into(),
            at: 1_700_000_000,
        }],
        attempts: 1,
        faults: 0,
        queued_at: 1_700_000_000,
        next_attempt: 0,
        last_error: Some("451 try later".into()),
        hold_reason: None,
        notified: vec![],
        delay_warned: false,
        chain: vec!["dedup".into(), "local-delivery".into()],
        routes: Vec::new(),
    };
    put(
        "spool_record",
        "progress-0",
        &progress.encode().expect("encode"),
    );

    let outputs = [
        GuestResult::Ok(MessageOutput {
            abi: ABI_VERSION,
            verdict: Verdict::Continue,
            changes: vec![
                Change::AddHeader(Header::new("X-Stamp", "1")),
                Change::ReplaceHeader(Header::new("Subject", "new")),
                Change::RemoveHeader {
                    name: "x-spam".into(),
                },
                Change::AddRecipient {
                    address: "m@localhost".into(),
                    original: Some("list@localhost".into()),
                },
            ],
        }),
        GuestResult::Err("plugin failed".into()),
    ];
    for (i, o) in outputs.iter().enumerate() {
        put(
            "plugin_abi",
            &format!("output-{i}"),
            &postcard::to_allocvec(o).expect("encode"),
        );
    }
    let requests = [
        HostRequest::KvGet { key: b"k".to_vec() },
        HostRequest::KvPut {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ttl_secs: Some(60),
        },
        HostRequest::ReadFile {
            grant: "maildir".into(),
            path: "../etc/passwd".into(),
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        put(
            "plugin_abi",
            &format!("request-{i}"),
            &postcard::to_allocvec(r).expect("encode"),
        );
    }
    println!("seeds written under fuzz/corpus/");
}
