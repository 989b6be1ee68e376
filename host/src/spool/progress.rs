//! Per-message progress: where the pipeline stands with a message, kept
//! durably beside it in `state/<queue id>` and replaced atomically (write a
//! temp file, fsync, rename, fsync the directory), so a restart resumes where
//! the work stopped and never repeats a finished stage's effect.
//!
//! Format: `"FDPROG"`, a u16 LE version, then the postcard-encoded
//! [`Progress`] (fields only appended, never reordered), then the
//! postcard-encoded extension (the mail authentication results, added
//! later): a build that predates it decodes the record and ignores the
//! bytes after it, and a record without it decodes with no results.

use finaldot_sdk::wire::{parse_headers, AuthFacts, EnvelopeState, MessageState, Recipient};
use serde::{Deserialize, Serialize};

/// Magic of a progress file.
pub const MAGIC: &[u8; 6] = b"FDPROG";
/// Format version.
pub const VERSION: u16 = 2;

/// One pipeline stage that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The stage's index in the chain.
    pub stage: u32,
    /// The plugin's name in the configuration.
    pub plugin: String,
    /// The module's version label (crate name, version, content hash).
    pub version: String,
    /// What happened, in a few words.
    pub outcome: String,
    /// When (seconds since the epoch).
    pub at: u64,
}

/// Where the pipeline stands with one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Envelope (with per-recipient states) and headers as the stages left them.
    pub state: MessageState,
    /// Where the body starts within the queued message.
    pub body_offset: u64,
    /// The next stage to run.
    pub next_stage: u32,
    /// The stages that ran, in order (retries included).
    pub stages: Vec<StageRecord>,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Consecutive plugin faults (reset by any clean stage).
    pub faults: u32,
    /// When the message was queued (seconds since the epoch).
    pub queued_at: u64,
    /// When the next attempt is due (seconds since the epoch; 0 = now).
    pub next_attempt: u64,
    /// The last error, for `queue list` and `queue show`.
    pub last_error: Option<String>,
    /// Why the message is on hold, if it is.
    pub hold_reason: Option<String>,
    /// Recipients already reported to the sender in a DSN.
    pub notified: Vec<String>,
    /// Whether a delay warning was sent.
    pub delay_warned: bool,
    /// The chain's plugin names when `next_stage` was recorded (so a
    /// configuration change resumes at the right plugin).
    pub chain: Vec<String>,
    /// Routes plugins chose for recipients outside the local domains.
    pub routes: Vec<(String, finaldot_sdk::wire::Route)>,
    /// The mail authentication results, once verified (kept in the
    /// extension after the record, see the module's format).
    #[serde(skip)]
    pub auth: Option<AuthFacts>,
    /// Recipients handed to a next hop that does not pass DSNs on: a
    /// success report for them says `relayed`, not `delivered` (kept in the
    /// second extension).
    #[serde(skip)]
    pub relayed: Vec<String>,
    /// Envelope senders plugins gave single recipients (VERP), by address
    /// (kept in the second extension).
    #[serde(skip)]
    pub senders: Vec<(String, String)>,
}

/// What follows the record: fields added after version 2 was fixed.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Extension {
    auth: Option<AuthFacts>,
}

/// What follows the first extension (each extension decodes on its own, so
/// a file written before one was added still reads).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Extension2 {
    relayed: Vec<String>,
    senders: Vec<(String, String)>,
}

impl Progress {
    /// The progress of a message no stage has run on: its envelope with
    /// every recipient pending, and the header fields parsed from `head`
    /// (the start of its message).
    pub fn initial(envelope: &super::Envelope, head: &[u8]) -> Progress {
        let (headers, body_offset) = parse_headers(head);
        Progress {
            state: MessageState {
                envelope: EnvelopeState {
                    mail_from: envelope.mail_from.clone(),
                    recipients: envelope.rcpt_to.iter().map(Recipient::new).collect(),
                },
                headers,
            },
            body_offset: body_offset as u64,
            next_stage: 0,
            stages: Vec::new(),
            attempts: 0,
            faults: 0,
            queued_at: envelope.received_at,
            next_attempt: 0,
            last_error: None,
            hold_reason: None,
            notified: Vec::new(),
            delay_warned: false,
            chain: Vec::new(),
            routes: Vec::new(),
            auth: None,
            relayed: Vec::new(),
            senders: Vec::new(),
        }
    }

    /// The envelope sender of recipient `address`: its own (VERP), or the
    /// message's.
    pub fn sender_of(&self, address: &str) -> &str {
        self.senders
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(address))
            .map_or(self.state.envelope.mail_from.as_str(), |(_, s)| s.as_str())
    }

    /// Encodes with magic and version.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let out = postcard::to_extend(self, out)?;
        let out = postcard::to_extend(
            &Extension {
                auth: self.auth.clone(),
            },
            out,
        )?;
        if self.relayed.is_empty() && self.senders.is_empty() {
            return Ok(out);
        }
        postcard::to_extend(
            &Extension2 {
                relayed: self.relayed.clone(),
                senders: self.senders.clone(),
            },
            out,
        )
    }

    /// Decodes, checking magic and version.
    pub fn decode(bytes: &[u8]) -> Result<Progress, String> {
        if bytes.len() < 8 || &bytes[..6] != MAGIC {
            return Err("not a progress file".into());
        }
        let version = u16::from_le_bytes([bytes[6], bytes[7]]);
        if version != VERSION {
            return Err(format!("unsupported progress version {version}"));
        }
        let (mut progress, rest): (Progress, _) = postcard::take_from_bytes(&bytes[8..])
            .map_err(|e| format!("progress does not decode: {e}"))?;
        if !rest.is_empty() {
            let (ext, rest): (Extension, _) = postcard::take_from_bytes(rest)
                .map_err(|e| format!("progress extension does not decode: {e}"))?;
            progress.auth = ext.auth;
            if !rest.is_empty() {
                let ext: Extension2 = postcard::from_bytes(rest)
                    .map_err(|e| format!("progress extension 2 does not decode: {e}"))?;
                progress.relayed = ext.relayed;
                progress.senders = ext.senders;
            }
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::wire::Header;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let p = Progress {
            state: MessageState {
                envelope: EnvelopeState {
                    mail_from: "a@b".into(),
                    recipients: vec![Recipient::new("c@d")],
                },
                headers: vec![Header::new("Subject", "x")],
            },
            body_offset: 42,
            next_stage: 1,
            stages: vec![StageRecord {
                stage: 0,
                plugin: "p".into(),
                version: "v".into(),
                outcome: "continue".into(),
                at: 1,
            }],
            attempts: 1,
            faults: 0,
            queued_at: 5,
            next_attempt: 0,
            last_error: None,
            hold_reason: None,
            notified: vec![],
            delay_warned: false,
            chain: vec!["p".into()],
            routes: Vec::new(),
            auth: None,
            relayed: Vec::new(),
            senders: Vec::new(),
        };
        let bytes = p.encode().expect("encode");
        assert_eq!(Progress::decode(&bytes).expect("decode"), p);
        // Cut inside the record (the last byte is the extension's).
        assert!(Progress::decode(&bytes[..bytes.len() - 2]).is_err());
        assert!(Progress::decode(b"garbage!").is_err());
        // The second extension (relayed recipients, VERP senders) round
        // trips, and a record without it is the same record with none.
        let mut q = p.clone();
        q.relayed = vec!["c@d".into()];
        q.senders = vec![("c@d".into(), "l-bounces+c=d@b".into())];
        let with = q.encode().expect("encode");
        let back = Progress::decode(&with).expect("decode");
        assert_eq!((&back.relayed, &back.senders), (&q.relayed, &q.senders));
        assert_eq!(back.state, p.state);
        assert!(with.starts_with(&bytes));
        assert_eq!(q.sender_of("C@D"), "l-bounces+c=d@b");
        assert_eq!(p.sender_of("c@d"), "a@b");
    }

    /// Today's progress record, byte for byte (`host/tests/golden/`), with
    /// the first four recipient states and both routes: a restart after an
    /// upgrade must read what the old build checkpointed. (`Discarded`,
    /// appended later, has a fixture of its own in the SDK's golden tests.)
    #[test]
    fn version_2_progress_matches_its_golden_bytes_and_still_decodes() {
        use finaldot_sdk::wire::{RecipientState, Route};
        let recipient = |address: &str, state| Recipient {
            address: address.into(),
            state,
            original: Some("list@example.test".into()),
        };
        let p = Progress {
            state: MessageState {
                envelope: EnvelopeState {
                    mail_from: "sender@example.org".into(),
                    recipients: vec![
                        Recipient::new("a@example.test"),
                        recipient(
                            "b@example.test",
                            RecipientState::Delivered {
                                note: "maildir b".into(),
                            },
                        ),
                        recipient(
                            "c@example.test",
                            RecipientState::Failed {
                                status: "5.1.1".into(),
                                reason: "no such user".into(),
                            },
                        ),
                        recipient(
                            "d@remote.test",
                            RecipientState::Deferred {
                                reason: "4.4.1".into(),
                            },
                        ),
                    ],
                },
                headers: vec![Header::new("Subject", "golden")],
            },
            body_offset: 42,
            next_stage: 2,
            stages: vec![StageRecord {
                stage: 1,
                plugin: "list-expand".into(),
                version: "list-expand 0.1.0 #acd06c33227f".into(),
                outcome: "continue".into(),
                at: 1_796_000_001,
            }],
            attempts: 3,
            faults: 1,
            queued_at: 1_796_000_000,
            next_attempt: 1_796_000_600,
            last_error: Some("mailbox d: disk full".into()),
            hold_reason: Some("review".into()),
            notified: vec!["c@example.test".into()],
            delay_warned: true,
            chain: vec![
                "dedup".into(),
                "list-expand".into(),
                "local-delivery".into(),
            ],
            routes: vec![
                ("d@remote.test".into(), Route::Mx),
                ("e@remote.test".into(), Route::Smarthost),
            ],
            auth: None,
            relayed: Vec::new(),
            senders: Vec::new(),
        };
        let fixture =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/progress_v2.hex");
        let now = p.encode().expect("encode");
        // The record as it was, then today's extension (no results: one 0).
        assert_eq!(now.last(), Some(&0));
        let golden = finaldot_sdk::testing::assert_golden(&fixture, &now[..now.len() - 1]);
        assert_eq!(Progress::decode(&golden).expect("the fixture decodes"), p);
    }

    /// The extension with authentication results round-trips, and a build
    /// that knows only the record still reads it (postcard stops where the
    /// record ends).
    #[test]
    fn the_extension_carries_the_auth_results_and_old_readers_skip_it() {
        use finaldot_sdk::wire::{AuthResult, DmarcFact, DmarcPolicy, SpfFact};
        let envelope = crate::spool::Envelope {
            mail_from: "a@example.org".into(),
            rcpt_to: vec!["b@example.test".into()],
            client_ip: std::net::IpAddr::from([192, 0, 2, 1]),
            client_port: 1,
            listener: finaldot_sdk::wire::Listener::Smtp,
            helo: "h.example.org".into(),
            protocol: "ESMTP".into(),
            received_at: 1,
            body_8bit: false,
            smtputf8: false,
            tls: None,
            auth: None,
            dsn: Default::default(),
        };
        let mut p = Progress::initial(&envelope, b"Subject: x\r\n\r\nbody");
        p.auth = Some(AuthFacts {
            authserv_id: "mx.example.test".into(),
            spf: SpfFact {
                result: AuthResult::Fail,
                domain: "example.org".into(),
            },
            spf_helo: SpfFact {
                result: AuthResult::None,
                domain: "h.example.org".into(),
            },
            dkim: Vec::new(),
            dmarc: DmarcFact {
                result: AuthResult::None,
                domain: "example.org".into(),
                policy: DmarcPolicy::Unspecified,
                pct: 100,
                spf_aligned: false,
                dkim_aligned: false,
            },
            arc: AuthResult::None,
        });
        let bytes = p.encode().expect("encode");
        assert_eq!(Progress::decode(&bytes).expect("decode"), p);
        let old: Progress = postcard::from_bytes(&bytes[8..]).expect("an old reader decodes it");
        assert_eq!(old.auth, None);
        assert_eq!(old.state, p.state);
    }
}
