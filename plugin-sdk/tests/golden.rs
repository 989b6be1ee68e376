//! Golden bytes for every ABI v1 payload: a sample of each, with every enum
//! variant, encoded with postcard and compared byte for byte with the
//! fixture checked in under `tests/golden/`, then decoded from that fixture.
//!
//! postcard is positional: a reordered or removed field, or a variant moved,
//! changes these bytes and would silently break every plugin already built.
//! A mismatch writes the new encoding beside the fixture (`NAME.actual.hex`)
//! and fails. A change that only appends (a field at the end of a struct, a
//! variant at the end of an enum) adds a new sample; it never edits an old
//! fixture. `FINALDOT_BLESS=1 cargo test -p finaldot-sdk --test golden`
//! writes missing fixtures (review them before committing).

use std::fmt::Debug;

use finaldot_sdk::testing::assert_golden;
use finaldot_sdk::wire::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

/// Encodes `value`, checks the bytes against the fixture and decodes the
/// fixture's bytes back into `value`.
fn check<T: Serialize + DeserializeOwned + PartialEq + Debug>(name: &str, value: &T) {
    let bytes = postcard::to_allocvec(value).expect("encode");
    let golden = assert_golden(&fixture(name), &bytes);
    let back: T = postcard::from_bytes(&golden).expect("the fixture decodes");
    assert_eq!(
        &back, value,
        "{name}: the fixture decodes to something else"
    );
}

fn state() -> MessageState {
    MessageState {
        envelope: EnvelopeState {
            mail_from: "sender@example.org".into(),
            recipients: vec![
                Recipient::new("alice@example.test"),
                Recipient {
                    address: "bob@example.test".into(),
                    state: RecipientState::Delivered {
                        note: "maildir bob".into(),
                    },
                    original: Some("team@example.test".into()),
                },
                Recipient {
                    address: "carol@example.test".into(),
                    state: RecipientState::Failed {
                        status: "5.1.1".into(),
                        reason: "no such user".into(),
                    },
                    original: None,
                },
                Recipient {
                    address: "dave@example.test".into(),
                    state: RecipientState::Deferred {
                        reason: "disk full".into(),
                    },
                    original: None,
                },
            ],
        },
        headers: vec![
            Header::new("Subject", "golden"),
            Header {
                name: "X-Bytes".into(),
                value: vec![b' ', 0, 0x7f, 0xff, b'\r', b'\n', b'\t', b'x'],
            },
        ],
    }
}

fn auth_facts() -> AuthFacts {
    AuthFacts {
        authserv_id: "mx.example.test".into(),
        spf: SpfFact {
            result: AuthResult::Pass,
            domain: "example.org".into(),
        },
        spf_helo: SpfFact {
            result: AuthResult::None,
            domain: "client.example.org".into(),
        },
        dkim: vec![
            DkimFact {
                result: AuthResult::Pass,
                domain: "example.org".into(),
                selector: "2026".into(),
                algorithm: "ed25519-sha256".into(),
                reason: String::new(),
            },
            DkimFact {
                result: AuthResult::Fail,
                domain: "list.example".into(),
                selector: "s1".into(),
                algorithm: "rsa-sha256".into(),
                reason: "body hash did not verify".into(),
            },
        ],
        dmarc: DmarcFact {
            result: AuthResult::Pass,
            domain: "example.org".into(),
            policy: DmarcPolicy::Reject,
            pct: 100,
            spf_aligned: true,
            dkim_aligned: true,
        },
        arc: AuthResult::None,
    }
}

/// The host's input to `on_message`. `message_input` is what the first
/// ABI v1 host sent; today's input, with the session facts appended
/// (`message_input_session`), must start with exactly those bytes, so a
/// plugin built before the facts decodes the same message it always did
/// (postcard ignores the bytes after what it decodes).
#[test]
fn message_input() {
    let input = MessageInput {
        abi: ABI_VERSION,
        queue_id: "4E8F1A2B3C4D5".into(),
        state: state(),
        body_len: 1234,
        client_ip: "192.0.2.7".into(),
        helo: "client.example.org".into(),
        received_at: 1_796_000_000,
        session: SessionFacts {
            client_ip: "192.0.2.7".into(),
            client_port: 40123,
            listener: Listener::Submission,
            helo: "client.example.org".into(),
            tls: Some(TlsFacts {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
            auth: Some("alice".into()),
            received_at: 1_796_000_000,
            body_8bit: true,
            smtputf8: false,
        },
        auth: None,
        dsn: None,
    };
    // The session facts came second, the authentication results third,
    // the DSN request fourth: each input starts with the bytes of the one
    // before it.
    let mut input = input;
    input.auth = Some(auth_facts());
    input.dsn = Some(DsnRequest {
        ret: Some(DsnRet::Headers),
        envid: Some("QQ314159".into()),
        recipients: vec![
            DsnRcpt {
                address: "alice@example.test".into(),
                notify: Some(DsnNotify {
                    success: true,
                    failure: true,
                    delay: false,
                }),
                orcpt: Some(Orcpt {
                    addr_type: "rfc822".into(),
                    address: "alice@example.test".into(),
                }),
            },
            DsnRcpt {
                address: "bob@example.test".into(),
                notify: Some(DsnNotify {
                    success: false,
                    failure: false,
                    delay: false,
                }),
                orcpt: None,
            },
        ],
    });
    check("message_input_dsn", &input);
    let now = postcard::to_allocvec(&input).expect("encode");
    for earlier in [
        "message_input",
        "message_input_session",
        "message_input_auth",
    ] {
        let before = assert_golden(&fixture(earlier), &now[..golden_len(earlier)]);
        assert!(now.starts_with(&before), "{earlier} is not a prefix");
    }
    for result in [
        AuthResult::None,
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::TempError,
        AuthResult::PermError,
    ] {
        check(&format!("auth_result_{}", result.as_str()), &result);
    }
    for policy in [
        DmarcPolicy::Unspecified,
        DmarcPolicy::None,
        DmarcPolicy::Quarantine,
        DmarcPolicy::Reject,
    ] {
        check(&format!("dmarc_policy_{}", policy.as_str()), &policy);
    }
    for listener in [
        Listener::Smtp,
        Listener::Submission,
        Listener::ImplicitTls,
        Listener::Local,
        Listener::Unknown,
    ] {
        check(&format!("listener_{listener:?}"), &listener);
    }
}

/// The length in bytes of a fixture.
fn golden_len(name: &str) -> usize {
    std::fs::read_to_string(fixture(name))
        .map(|t| t.bytes().filter(u8::is_ascii_hexdigit).count() / 2)
        .unwrap_or(0)
}

#[test]
fn message_output_with_every_change_and_verdict() {
    let changes = vec![
        Change::AddHeader(Header::new("X-A", "1")),
        Change::PrependHeader(Header::new("Received", "from x")),
        Change::RemoveHeader {
            name: "X-Old".into(),
        },
        Change::ReplaceHeader(Header::new("Subject", "new")),
        Change::AddRecipient {
            address: "m@example.test".into(),
            original: Some("list@example.test".into()),
        },
        Change::RemoveRecipient {
            address: "gone@example.test".into(),
        },
        Change::RewriteRecipient {
            from: "a@example.test".into(),
            to: "b@example.test".into(),
        },
        Change::SetSender {
            address: "list-bounces@example.test".into(),
        },
        Change::MarkDelivered {
            address: "b@example.test".into(),
            note: "n".into(),
        },
        Change::MarkFailed {
            address: "c@example.test".into(),
            status: "5.7.1".into(),
            reason: "r".into(),
        },
        Change::MarkDeferred {
            address: "d@example.test".into(),
            reason: "later".into(),
        },
        Change::Route {
            address: "e@remote.test".into(),
            route: Route::Smarthost,
        },
        Change::Route {
            address: "f@remote.test".into(),
            route: Route::Mx,
        },
    ];
    let verdicts = [
        ("continue", Verdict::Continue),
        (
            "discard",
            Verdict::Discard {
                reason: "dup".into(),
            },
        ),
        (
            "hold",
            Verdict::Hold {
                reason: "review".into(),
            },
        ),
        (
            "bounce",
            Verdict::Bounce {
                code: 550,
                status: "5.7.1".into(),
                text: "refused".into(),
            },
        ),
        (
            "defer",
            Verdict::Defer {
                reason: "busy".into(),
                retry_after_secs: Some(300),
            },
        ),
    ];
    for (name, verdict) in verdicts {
        let changes = if name == "continue" {
            changes.clone()
        } else {
            Vec::new()
        };
        check(
            &format!("message_output_{name}"),
            &GuestResult::Ok(MessageOutput {
                abi: ABI_VERSION,
                verdict,
                changes,
            }),
        );
    }
    check(
        "message_output_error",
        &GuestResult::<MessageOutput>::Err("plugin error".into()),
    );
}

#[test]
fn configure_input_and_plugin_info() {
    check(
        "configure_input",
        &ConfigureInput {
            abi: ABI_VERSION,
            name: "filter".into(),
            config: Value::Table(vec![
                ("b".into(), Value::Bool(true)),
                ("i".into(), Value::Int(-42)),
                ("f".into(), Value::Float(1.5)),
                ("s".into(), Value::String("text".into())),
                (
                    "a".into(),
                    Value::Array(vec![Value::Int(1), Value::Table(vec![])]),
                ),
            ]),
        },
    );
    // Before `needs`: the fixture of an older SDK still decodes, needing nothing.
    let old = std::fs::read_to_string(fixture("plugin_info")).expect("fixture");
    let old: Vec<u8> = (0..old.trim().len() / 2)
        .filter_map(|i| u8::from_str_radix(old.trim().get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    assert_eq!(
        PluginInfo::decode(&old).expect("the old fixture decodes"),
        GuestResult::Ok(PluginInfo {
            abi: ABI_VERSION,
            name: "filter".into(),
            version: "0.1.0".into(),
            needs: Vec::new(),
        })
    );
    let needs = PluginInfo {
        abi: ABI_VERSION,
        name: "filter".into(),
        version: "0.1.0".into(),
        needs: vec!["discarded".into(), "kv-mac".into()],
    };
    check("plugin_info_needs", &GuestResult::Ok(needs.clone()));
    // Appended: the old encoding is a prefix of the new.
    let new = postcard::to_allocvec(&GuestResult::Ok(needs)).expect("encode");
    assert!(new.starts_with(&old));
}

/// The ABI feature names are only ever appended: a host names what it
/// lacks by them, so a renamed or removed one would break the refusal.
#[test]
fn feature_names_only_grow() {
    // The names as they were first published; new ones go after them.
    let published = [
        "discarded",
        "session-facts",
        "dns",
        "http",
        "auth-results",
        "lmtp-route",
        "dsn",
        "recipient-sender",
        "kv-mac",
        "door-stages",
        "kv-incr",
    ];
    assert!(
        FEATURES.starts_with(&published),
        "FEATURES must keep {published:?} in front, unchanged: {FEATURES:?}"
    );
}

#[test]
fn host_requests() {
    let header = || vec![Header::new("Return-Path", "<a@b>")];
    let requests = [
        (
            "read_file",
            HostRequest::ReadFile {
                grant: "lists".into(),
                path: "team@example.test".into(),
            },
        ),
        (
            "write_file",
            HostRequest::WriteFile {
                grant: "mail".into(),
                path: "p".into(),
                data: vec![0, 1, 2, 255],
            },
        ),
        (
            "list_dir",
            HostRequest::ListDir {
                grant: "mail".into(),
                path: String::new(),
            },
        ),
        (
            "create_dir",
            HostRequest::CreateDir {
                grant: "mail".into(),
                path: "alice/Maildir/new".into(),
            },
        ),
        (
            "exists",
            HostRequest::Exists {
                grant: "mail".into(),
                path: "x".into(),
            },
        ),
        (
            "write_message",
            HostRequest::WriteMessage {
                grant: "mail".into(),
                tmp_path: "alice/Maildir/tmp/n".into(),
                path: "alice/Maildir/new/n".into(),
                headers: header(),
                lf_endings: true,
            },
        ),
        ("kv_get", HostRequest::KvGet { key: b"k".to_vec() }),
        (
            "kv_put",
            HostRequest::KvPut {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_secs: Some(86_400),
            },
        ),
        ("kv_delete", HostRequest::KvDelete { key: b"k".to_vec() }),
        (
            "kv_put_if_absent",
            HostRequest::KvPutIfAbsent {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ttl_secs: None,
            },
        ),
        (
            "kv_mac",
            HostRequest::KvMac {
                data: b"team\0yan@remote.test".to_vec(),
            },
        ),
        (
            "kv_incr",
            HostRequest::KvIncr {
                key: b"rate:192.0.2.1:28333333".to_vec(),
                delta: 1,
                ttl_secs: Some(60),
            },
        ),
    ];
    for (name, request) in requests {
        check(&format!("host_request_{name}"), &request);
    }
}

#[test]
fn host_responses() {
    let kinds = [
        HostErrorKind::NotGranted,
        HostErrorKind::Escape,
        HostErrorKind::NotFound,
        HostErrorKind::StorageFull,
        HostErrorKind::Io,
        HostErrorKind::Invalid,
    ];
    let mut responses = vec![
        ("done".to_string(), HostResponse::Done),
        ("data_none".into(), HostResponse::Data(None)),
        ("data".into(), HostResponse::Data(Some(vec![1, 2, 3]))),
        (
            "entries".into(),
            HostResponse::Entries(vec!["a".into(), "b".into()]),
        ),
        ("bool".into(), HostResponse::Bool(true)),
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        responses.push((
            format!("error_{i}"),
            HostResponse::Error {
                kind,
                message: format!("{kind:?}"),
            },
        ));
    }
    for (name, response) in responses {
        check(&format!("host_response_{name}"), &response);
    }
}

#[test]
fn log_levels_keep_their_numbers() {
    for (level, n) in [
        (Level::Error, 1),
        (Level::Warn, 2),
        (Level::Info, 3),
        (Level::Debug, 4),
    ] {
        assert_eq!(level as u32, n);
        assert_eq!(Level::from_u32(n), level);
    }
}

/// Variants appended after the fixtures above were first written: each gets
/// fixtures of its own, and the old ones stay as they were.
#[test]
fn appended_variants() {
    check(
        "message_output_mark_discarded",
        &GuestResult::Ok(MessageOutput {
            abi: ABI_VERSION,
            verdict: Verdict::Continue,
            changes: vec![Change::MarkDiscarded {
                address: "alice@example.test".into(),
                reason: "duplicate of Q1".into(),
            }],
        }),
    );
    check(
        "message_output_set_recipient_sender",
        &GuestResult::Ok(MessageOutput {
            abi: ABI_VERSION,
            verdict: Verdict::Continue,
            changes: vec![
                Change::SetRecipientSender {
                    address: "bob@remote.test".into(),
                    sender: "team-bounces+bob=remote.test@example.test".into(),
                },
                Change::Route {
                    address: "alice@example.test".into(),
                    route: Route::Lmtp,
                },
            ],
        }),
    );
    check(
        "recipient_discarded",
        &Recipient {
            address: "alice@example.test".into(),
            state: RecipientState::Discarded {
                reason: "filter: spam".into(),
            },
            original: None,
        },
    );
}

/// The DNS capability's request and answers (appended after the first
/// fixtures).
#[test]
fn dns_payloads() {
    for (i, rtype) in [
        DnsType::A,
        DnsType::Aaaa,
        DnsType::Mx,
        DnsType::Txt,
        DnsType::Ptr,
        DnsType::Tlsa,
    ]
    .into_iter()
    .enumerate()
    {
        check(
            &format!("host_request_dns_lookup_{i}"),
            &HostRequest::DnsLookup {
                name: "2.0.0.127.zen.test".into(),
                rtype,
            },
        );
    }
    check(
        "host_response_dns_found",
        &HostResponse::Dns(DnsAnswer {
            outcome: DnsOutcome::Found,
            ttl_secs: 300,
            records: vec![
                DnsRecord::A("127.0.0.2".into()),
                DnsRecord::Aaaa("2001:db8::1".into()),
                DnsRecord::Mx {
                    preference: 10,
                    exchange: "mx.example.test".into(),
                },
                DnsRecord::Txt(b"v=spf1 -all".to_vec()),
                DnsRecord::Ptr("client.example.org".into()),
                DnsRecord::Tlsa {
                    usage: 3,
                    selector: 1,
                    matching: 1,
                    data: vec![0xab; 32],
                },
            ],
        }),
    );
    for (i, outcome) in [
        DnsOutcome::NxDomain,
        DnsOutcome::NoData,
        DnsOutcome::ServFail,
        DnsOutcome::Timeout,
    ]
    .into_iter()
    .enumerate()
    {
        check(
            &format!("host_response_dns_outcome_{i}"),
            &HostResponse::Dns(DnsAnswer::empty(outcome)),
        );
    }
    check(
        "host_response_error_limit_reached",
        &HostResponse::Error {
            kind: HostErrorKind::LimitReached,
            message: "budget".into(),
        },
    );
}

/// The HTTP capability's request and answer (appended after the first
/// fixtures).
#[test]
fn http_payloads() {
    for (name, body) in [
        ("empty", HttpBody::Empty),
        ("bytes", HttpBody::Bytes(b"{\"a\":1}".to_vec())),
        (
            "message",
            HttpBody::Message {
                headers: vec![Header::new("Subject", "x")],
            },
        ),
    ] {
        check(
            &format!("host_request_http_{name}"),
            &HostRequest::Http {
                method: "POST".into(),
                url: "http://127.0.0.1:11333/checkv2".into(),
                headers: vec![("IP".into(), "192.0.2.7".into())],
                body,
            },
        );
    }
    check(
        "host_response_http",
        &HostResponse::Http(HttpResponse {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: b"{\"action\":\"no action\"}".to_vec(),
        }),
    );
    check(
        "host_response_error_timeout",
        &HostResponse::Error {
            kind: HostErrorKind::Timeout,
            message: "slow".into(),
        },
    );
}

/// A plugin is never shown a discarded recipient (a plugin built before the
/// variant could not decode it): it sees it delivered.
#[test]
fn plugins_see_discarded_recipients_as_delivered() {
    let mut s = state();
    s.apply(&Change::MarkDiscarded {
        address: "alice@example.test".into(),
        reason: "dup".into(),
    });
    assert_eq!(
        s.envelope.recipients[0].state,
        RecipientState::Discarded {
            reason: "dup".into()
        }
    );
    let view = s.plugin_view();
    assert_eq!(
        view.envelope.recipients[0].state,
        RecipientState::Delivered {
            note: "discarded: dup".into()
        }
    );
    assert_eq!(view.envelope.recipients[1..], s.envelope.recipients[1..]);
}

#[test]
fn door_payloads() {
    check("host_response_count", &HostResponse::Count(-7));
    for stage in DoorStage::ALL {
        check(&format!("door_stage_{}", stage.as_str()), &stage);
    }
    let mut session = SessionFacts::local(1_700_000_000);
    session.client_ip = "192.0.2.1".into();
    session.client_port = 40000;
    session.listener = Listener::Smtp;
    session.helo = "client.example".into();
    check(
        "door_input",
        &DoorInput {
            abi: ABI_VERSION,
            stage: DoorStage::Rcpt,
            session,
            mail_from: Some("sender@example.org".into()),
            mail_params: vec![
                ("SIZE".into(), "1000".into()),
                ("SMTPUTF8".into(), String::new()),
            ],
            rcpt_to: Some("bob@example.test".into()),
            rcpt_params: vec![("NOTIFY".into(), "FAILURE".into())],
            recipients: vec!["alice@example.test".into()],
            earlier: vec![DoorRecord {
                stage: DoorStage::Connect,
                rcpt_to: None,
                answer: "continue".into(),
            }],
        },
    );
    for (name, verdict) in [
        ("continue", DoorVerdict::Continue),
        (
            "reply",
            DoorVerdict::reply(450, "4.7.1", "greylisted, try again later"),
        ),
        (
            "disconnect",
            DoorVerdict::disconnect(554, "5.7.1", "listed in zen.example"),
        ),
    ] {
        check(
            &format!("door_output_{name}"),
            &GuestResult::Ok(DoorOutput {
                abi: ABI_VERSION,
                verdict,
            }),
        );
    }
}
