//! The pipeline against a temporary spool and a fake [`Delivery`] that
//! records what it is handed and answers per recipient (chasquid's
//! `TestCourier`): no daemon, no plugin, no network.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use finaldot_sdk::wire::{DsnNotify, DsnRcpt, DsnRequest, RecipientState, Route};

use super::Pipeline;
use crate::delivery::{Delivery, Handoff, OnAccepted};
use crate::spool::{Envelope, QueueId, QueueState, Spool};

/// One call of [`FakeDelivery::deliver`].
#[derive(Debug, Clone)]
struct Call {
    mail_from: String,
    recipients: Vec<String>,
    message: Vec<u8>,
}

/// Delivers to "the next hop" by a table: each address's answer (a 2xx is
/// accepted and reported through `accepted` before it returns), the rest
/// accepted. Remote domains route to the smarthost; local ones are not
/// routed (no plugin delivers them either, so they fail 5.1.1).
#[derive(Default)]
struct FakeDelivery {
    answers: HashMap<String, RecipientState>,
    calls: Mutex<Vec<Call>>,
    /// Run once, at the first call, before it answers (a reload, say).
    on_first_call: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for FakeDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDelivery")
            .field("answers", &self.answers)
            .finish()
    }
}

impl FakeDelivery {
    /// A fake that answers these addresses so, and accepts everyone else.
    fn answering(answers: &[(&str, RecipientState)]) -> Arc<FakeDelivery> {
        Arc::new(FakeDelivery {
            answers: answers
                .iter()
                .map(|(a, state)| (a.to_string(), state.clone()))
                .collect(),
            ..Default::default()
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Delivery for FakeDelivery {
    fn route(&self, _domain: &str, local: bool) -> Option<Route> {
        (!local).then_some(Route::Smarthost)
    }

    fn delivers_local(&self) -> bool {
        true // run without plugins
    }

    fn deliver(
        &self,
        mail_from: &str,
        recipients: &[(String, Route)],
        message: &[u8],
        _dsn: &DsnRequest,
        accepted: OnAccepted<'_>,
    ) -> Vec<(String, RecipientState)> {
        if let Some(hook) = self.on_first_call.lock().ok().and_then(|mut h| h.take()) {
            hook();
        }
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(Call {
                mail_from: mail_from.to_string(),
                recipients: recipients.iter().map(|(r, _)| r.clone()).collect(),
                message: message.to_vec(),
            });
        }
        let mut out = Vec::new();
        let mut taken = Vec::new();
        for (r, _) in recipients {
            match self.answers.get(r) {
                Some(state) => out.push((r.clone(), state.clone())),
                None => taken.push(r.clone()),
            }
        }
        if !taken.is_empty() {
            if let Err(e) = accepted(&taken, "250 ok (fake)", Handoff::Relayed) {
                panic!("recording an acceptance failed: {e}");
            }
            for r in taken {
                out.push((
                    r,
                    RecipientState::Delivered {
                        note: "250 ok (fake)".into(),
                    },
                ));
            }
        }
        out
    }
}

/// The configuration of the tests' pipelines: a spool in `dir`, retries
/// after a second (unless `extra` sets them), then `extra` (more `[pipeline]` keys, other sections).
pub(super) fn config(dir: &Path, extra: &str) -> crate::config::Config {
    let retries = if extra.contains("retry_") {
        ""
    } else {
        "retry_min_secs = 1\nretry_max_secs = 1\n"
    };
    let text = format!(
        "hostname = \"mx.test\"\ndata_dir = {:?}\n[domains.localhost]\n[pipeline]\nworkers = 2\n{retries}rescan_secs = 1\n{extra}\n",
        dir.join("data")
    );
    crate::config::Config::parse(&text, "test", dir).expect("config")
}

/// The spool in `dir`, recovered, with no pipeline yet.
fn spool_in(dir: &Path) -> Arc<Spool> {
    let spool = Arc::new(Spool::open(&config(dir, "").spool_dir()).expect("spool"));
    spool.recover().expect("recover");
    spool
}

/// A pipeline on a spool in `dir`, delivering through `delivery`, with
/// retries after a second.
fn start(dir: &Path, delivery: Arc<FakeDelivery>) -> (Arc<Spool>, Pipeline) {
    start_with(dir, delivery, "")
}

/// [`start`] with `extra` configuration (see [`config`]).
fn start_with(dir: &Path, delivery: Arc<FakeDelivery>, extra: &str) -> (Arc<Spool>, Pipeline) {
    let spool = spool_in(dir);
    let settings = config(dir, extra)
        .pipeline_settings(delivery)
        .expect("settings");
    let chain = Arc::new(RwLock::new(Arc::new(Vec::new())));
    let pipeline = Pipeline::start(spool.clone(), chain, settings).expect("start");
    (spool, pipeline)
}

/// The envelope of a message from `from` to `to`, submitted by an
/// authenticated client (a sender we vouch for), with this DSN request.
pub(super) fn envelope(from: &str, to: &[&str], dsn: DsnRequest) -> Envelope {
    Envelope {
        mail_from: from.into(),
        rcpt_to: to.iter().map(|s| s.to_string()).collect(),
        client_ip: "192.0.2.7".parse().expect("ip"),
        client_port: 40000,
        listener: finaldot_sdk::wire::Listener::Smtp,
        helo: "client.test".into(),
        protocol: "ESMTP".into(),
        received_at: crate::unix_now(),
        body_8bit: false,
        smtputf8: false,
        tls: None,
        auth: Some("sender".into()),
        dsn,
    }
}

/// Queues the test message with `envelope`.
fn queue_envelope(spool: &Spool, envelope: &Envelope) -> QueueId {
    let mut w = spool.begin(envelope).expect("begin");
    w.write(b"Subject: fake\r\n\r\nthe body\r\n")
        .expect("write");
    spool
        .commit_blocking(w.finish().expect("finish"))
        .expect("commit")
}

/// Queues a message from `from` to `to` with the client's DSN request.
fn queue(spool: &Spool, from: &str, to: &[&str], dsn: DsnRequest) {
    queue_envelope(spool, &envelope(from, to, dsn));
}

/// The reports (calls from `<>`) the fake was handed, as text.
fn reports(fake: &FakeDelivery) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| c.mail_from.is_empty())
        .map(|c| String::from_utf8_lossy(&c.message).into_owned())
        .collect()
}

/// Whether no message is waiting in incoming/, active/ or deferred/.
fn settled(spool: &Spool) -> bool {
    [
        QueueState::Incoming,
        QueueState::Active,
        QueueState::Deferred,
    ]
    .iter()
    .all(|s| spool.list(*s).is_ok_and(|l| l.is_empty()))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn failed(status: &str, reason: &str) -> RecipientState {
    RecipientState::Failed {
        status: status.into(),
        reason: reason.into(),
    }
}

fn deferred(reason: &str) -> RecipientState {
    RecipientState::Deferred {
        reason: reason.into(),
    }
}

#[test]
fn each_recipient_gets_its_hops_answer_and_the_failure_one_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeDelivery::answering(&[
        ("later@remote.test", deferred("451 4.3.0 try later")),
        ("bad@remote.test", failed("5.1.1", "550 5.1.1 no such user")),
    ]);
    let (spool, pipeline) = start(dir.path(), fake.clone());
    queue(
        &spool,
        "alice@sender.test",
        &["ok@remote.test", "later@remote.test", "bad@remote.test"],
        DsnRequest::default(),
    );
    // The failure report comes back through the spool and the same
    // delivery, from <> to the sender, naming bad@ only.
    wait_for("a report to the sender", || {
        fake.calls().iter().any(|c| c.mail_from.is_empty())
    });
    let calls = fake.calls();
    let report = calls
        .iter()
        .find(|c| c.mail_from.is_empty())
        .expect("report");
    assert_eq!(report.recipients, vec!["alice@sender.test".to_string()]);
    let text = String::from_utf8_lossy(&report.message);
    assert!(text.contains("bad@remote.test"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; ok@remote.test"),
        "{text}"
    );
    // The first transaction took all three; the message waits in deferred/
    // for later@ alone, with ok@ recorded as delivered.
    let first = &calls[0];
    assert_eq!(first.mail_from, "alice@sender.test");
    assert_eq!(first.recipients.len(), 3);
    wait_for("the message deferred", || {
        spool.list(QueueState::Deferred).is_ok_and(|l| l.len() == 1)
    });
    let id = spool.list(QueueState::Deferred).expect("list")[0].clone();
    let progress = spool.load_progress(&id).expect("progress").expect("some");
    let state = |a: &str| {
        progress
            .state
            .envelope
            .recipients
            .iter()
            .find(|r| r.address == a)
            .map(|r| r.state.clone())
            .expect(a)
    };
    assert!(matches!(
        state("ok@remote.test"),
        RecipientState::Delivered { .. }
    ));
    assert!(matches!(
        state("later@remote.test"),
        RecipientState::Deferred { .. }
    ));
    // The retry (a second later) hands over later@ alone: ok@ is not sent
    // again, bad@ is not retried.
    wait_for("the retry", || {
        fake.calls()
            .iter()
            .filter(|c| c.mail_from == "alice@sender.test")
            .count()
            >= 2
    });
    let retry = fake
        .calls()
        .into_iter()
        .filter(|c| c.mail_from == "alice@sender.test")
        .nth(1)
        .expect("retry");
    assert_eq!(retry.recipients, vec!["later@remote.test".to_string()]);
    pipeline.shutdown();
}

#[test]
fn notify_never_sends_no_report_and_notify_success_sends_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake =
        FakeDelivery::answering(&[("bad@remote.test", failed("5.1.1", "550 5.1.1 no such user"))]);
    let (spool, pipeline) = start(dir.path(), fake.clone());
    let notify = |failure: bool, success: bool| DsnNotify {
        failure,
        success,
        delay: false,
    };
    let dsn = DsnRequest {
        ret: None,
        envid: Some("env-1".into()),
        recipients: vec![
            DsnRcpt {
                address: "bad@remote.test".into(),
                notify: Some(notify(false, false)),
                orcpt: None,
            },
            DsnRcpt {
                address: "ok@remote.test".into(),
                notify: Some(notify(false, true)),
                orcpt: None,
            },
        ],
    };
    queue(
        &spool,
        "alice@sender.test",
        &["bad@remote.test", "ok@remote.test"],
        dsn,
    );
    wait_for("the message done", || {
        !fake.calls().is_empty()
            && spool.list(QueueState::Incoming).is_ok_and(|l| l.is_empty())
            && spool.list(QueueState::Active).is_ok_and(|l| l.is_empty())
            && fake.calls().iter().any(|c| c.mail_from.is_empty())
    });
    // One report: ok@'s success (relayed: the fake hop offers no DSN), with
    // the ENVID; nothing for bad@, whose NOTIFY was NEVER.
    let reports: Vec<Call> = fake
        .calls()
        .into_iter()
        .filter(|c| c.mail_from.is_empty())
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let text = String::from_utf8_lossy(&reports[0].message);
    assert!(
        text.contains("ok@remote.test") && text.contains("relayed"),
        "{text}"
    );
    assert!(text.contains("Original-Envelope-Id: env-1"), "{text}");
    assert!(!text.contains("bad@remote.test"), "{text}");
    pipeline.shutdown();
}

#[test]
fn a_restarted_pipeline_resumes_from_the_checkpoint_and_sends_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = FakeDelivery::answering(&[("later@remote.test", deferred("451 4.3.0 try later"))]);
    let (spool, pipeline) = start(dir.path(), first.clone());
    queue(
        &spool,
        "alice@sender.test",
        &["ok@remote.test", "later@remote.test"],
        DsnRequest::default(),
    );
    wait_for("the message deferred", || {
        spool.list(QueueState::Deferred).is_ok_and(|l| l.len() == 1)
    });
    pipeline.shutdown();
    drop(spool);
    // A new process: the spool recovered, a hop that now takes everyone.
    let second = Arc::new(FakeDelivery::default());
    let (spool, pipeline) = start(dir.path(), second.clone());
    wait_for("the retry", || !second.calls().is_empty());
    wait_for("the queue empty", || {
        [
            QueueState::Incoming,
            QueueState::Active,
            QueueState::Deferred,
        ]
        .iter()
        .all(|s| spool.list(*s).is_ok_and(|l| l.is_empty()))
    });
    let calls = second.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].recipients, vec!["later@remote.test".to_string()]);
    pipeline.shutdown();
}

#[test]
fn past_the_queue_lifetime_a_deferred_recipient_fails_5_4_7_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeDelivery::answering(&[("later@remote.test", deferred("451 4.3.0 try later"))]);
    let (spool, pipeline) = start_with(dir.path(), fake.clone(), "max_queue_lifetime_secs = 3600");
    let mut env = envelope(
        "alice@sender.test",
        &["later@remote.test", "ok@remote.test"],
        DsnRequest::default(),
    );
    env.received_at -= 3600; // queued an hour ago
    queue_envelope(&spool, &env);
    wait_for("a report", || !reports(&fake).is_empty());
    wait_for("the message gone", || settled(&spool));
    let reports = reports(&fake);
    assert_eq!(reports.len(), 1, "{reports:?}");
    let text = &reports[0];
    assert!(
        text.contains("Final-Recipient: rfc822; later@remote.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.4.7"), "{text}");
    assert!(text.contains("451 4.3.0 try later"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; ok@remote.test"),
        "{text}"
    );
    // It was tried once, not deferred for a retry.
    let tries = fake
        .calls()
        .iter()
        .filter(|c| c.mail_from == "alice@sender.test")
        .count();
    assert_eq!(tries, 1);
    pipeline.shutdown();
}

#[test]
fn a_deferred_message_waits_its_backoff_in_deferred() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeDelivery::answering(&[("later@remote.test", deferred("451 4.3.0 try later"))]);
    let (spool, pipeline) = start_with(
        dir.path(),
        fake.clone(),
        "retry_min_secs = 600\nretry_max_secs = 3600",
    );
    let before = crate::unix_now();
    queue(
        &spool,
        "alice@sender.test",
        &["later@remote.test"],
        DsnRequest::default(),
    );
    wait_for("the message deferred", || {
        spool.list(QueueState::Deferred).is_ok_and(|l| l.len() == 1)
    });
    let id = spool.list(QueueState::Deferred).expect("list")[0].clone();
    let p = spool.load_progress(&id).expect("progress").expect("some");
    // The first retry: 600 s, ±10 %.
    assert!(
        p.next_attempt >= before + 540 && p.next_attempt <= crate::unix_now() + 660,
        "next attempt in {} s",
        p.next_attempt.saturating_sub(before)
    );
    assert_eq!(p.attempts, 1);
    assert_eq!(
        p.last_error.as_deref(),
        Some("<later@remote.test>: 451 4.3.0 try later")
    );
    assert!(spool
        .due_deferred(crate::unix_now())
        .expect("due")
        .is_empty());
    pipeline.shutdown();
}

/// A DSN request asking RET=FULL for `to`.
fn ret_full(to: &str) -> DsnRequest {
    DsnRequest {
        ret: Some(finaldot_sdk::wire::DsnRet::Full),
        envid: None,
        recipients: vec![DsnRcpt {
            address: to.into(),
            notify: None,
            orcpt: None,
        }],
    }
}

#[test]
fn ret_full_returns_the_body_only_to_a_sender_we_vouch_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake =
        FakeDelivery::answering(&[("bad@remote.test", failed("5.1.1", "550 5.1.1 no such user"))]);
    let (spool, pipeline) = start_with(dir.path(), fake.clone(), "[auth]\nverify = false");
    // Submitted (authenticated): the whole message comes back.
    queue(
        &spool,
        "alice@sender.test",
        &["bad@remote.test"],
        ret_full("bad@remote.test"),
    );
    wait_for("the first report", || reports(&fake).len() == 1);
    // From the MX, unauthenticated, authentication unknown: headers only.
    let mut env = envelope(
        "mallory@elsewhere.test",
        &["bad@remote.test"],
        ret_full("bad@remote.test"),
    );
    env.auth = None;
    queue_envelope(&spool, &env);
    wait_for("the second report", || reports(&fake).len() == 2);
    let reports = reports(&fake);
    let to = |who: &str| {
        reports
            .iter()
            .find(|r| r.contains(&format!("To: <{who}>")) || r.contains(&format!("To: {who}")))
            .unwrap_or_else(|| panic!("no report to {who}: {reports:?}"))
            .clone()
    };
    let vouched = to("alice@sender.test");
    assert!(vouched.contains("the body"), "{vouched}");
    assert!(
        vouched.contains("Content-Type: message/rfc822"),
        "{vouched}"
    );
    let unknown = to("mallory@elsewhere.test");
    assert!(unknown.contains("Subject: fake"), "{unknown}");
    assert!(!unknown.contains("the body"), "{unknown}");
    assert!(unknown.contains("text/rfc822-headers"), "{unknown}");
    pipeline.shutdown();
}

/// Queues a message from the MX whose recorded authentication says its
/// envelope sender failed SPF (as the verifier would have checkpointed).
fn queue_forged(spool: &Spool, to: &[&str]) -> QueueId {
    let mut env = envelope("victim@forged.test", to, DsnRequest::default());
    env.auth = None;
    let id = queue_envelope(spool, &env);
    let (file, queued) = spool.open_queued(QueueState::Incoming, &id).expect("open");
    let mut p = spool.initial_progress_of(&file, &queued).expect("progress");
    p.auth = Some(finaldot_sdk::wire::AuthFacts {
        authserv_id: "mx.test".into(),
        spf: finaldot_sdk::wire::SpfFact {
            result: finaldot_sdk::wire::AuthResult::Fail,
            domain: "forged.test".into(),
        },
        spf_helo: finaldot_sdk::wire::SpfFact {
            result: finaldot_sdk::wire::AuthResult::None,
            domain: "client.test".into(),
        },
        dkim: Vec::new(),
        dmarc: finaldot_sdk::wire::DmarcFact {
            result: finaldot_sdk::wire::AuthResult::None,
            domain: "forged.test".into(),
            policy: finaldot_sdk::wire::DmarcPolicy::Unspecified,
            pct: 100,
            spf_aligned: false,
            dkim_aligned: false,
        },
        arc: finaldot_sdk::wire::AuthResult::None,
    });
    spool.save_progress(&id, &p).expect("save");
    id
}

#[test]
fn no_report_goes_to_a_forged_sender_the_message_is_held_or_dropped() {
    for (policy, kept) in [("hold", true), ("drop", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeDelivery::answering(&[(
            "bad@remote.test",
            failed("5.1.1", "550 5.1.1 no such user"),
        )]);
        let spool = spool_in(dir.path());
        let id = queue_forged(&spool, &["bad@remote.test", "ok@remote.test"]);
        drop(spool);
        let (spool, pipeline) = start_with(
            dir.path(),
            fake.clone(),
            &format!("[auth]\nverify = false\nforged_sender = \"{policy}\""),
        );
        wait_for("the message settled", || {
            !fake.calls().is_empty() && settled(&spool)
        });
        assert!(reports(&fake).is_empty(), "{policy}: {:?}", reports(&fake));
        let held = spool.list(QueueState::Hold).expect("list");
        if kept {
            assert_eq!(held, vec![id.clone()]);
            let p = spool.load_progress(&id).expect("progress").expect("some");
            let reason = p.hold_reason.unwrap_or_default();
            assert!(
                reason.starts_with(
                    "no DSN sent to <victim@forged.test>: the envelope sender failed SPF"
                ),
                "{reason}"
            );
        } else {
            assert!(held.is_empty(), "{held:?}");
            assert_eq!(spool.locate(&id), None);
        }
        pipeline.shutdown();
    }
}

#[test]
fn a_reload_during_an_attempt_applies_to_the_next_one_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake =
        FakeDelivery::answering(&[("bad@remote.test", failed("5.1.1", "550 5.1.1 no such user"))]);
    let (spool, pipeline) = start(dir.path(), fake.clone());
    // While the first attempt is at the next hop, the configuration is
    // reloaded with another host name.
    let reloaded = {
        let text = format!(
            "hostname = \"other.test\"\ndata_dir = {:?}\n[domains.localhost]\n",
            dir.path().join("data")
        );
        let config = crate::config::Config::parse(&text, "test", dir.path()).expect("config");
        config.pipeline_settings(fake.clone()).expect("settings")
    };
    let ctx = pipeline.ctx.clone();
    if let Ok(mut hook) = fake.on_first_call.lock() {
        *hook = Some(Box::new(move || {
            if let Ok(mut s) = ctx.settings.write() {
                *s = Arc::new(reloaded);
            }
        }));
    }
    queue(
        &spool,
        "alice@sender.test",
        &["bad@remote.test"],
        DsnRequest::default(),
    );
    wait_for("the first report", || reports(&fake).len() == 1);
    // Its report was made by the attempt's own settings, from before.
    let first = &reports(&fake)[0];
    assert!(first.contains("Reporting-MTA: dns; mx.test"), "{first}");
    // The next message is reported under the new name.
    queue(
        &spool,
        "alice@sender.test",
        &["bad@remote.test"],
        DsnRequest::default(),
    );
    wait_for("the second report", || reports(&fake).len() == 2);
    let second = &reports(&fake)[1];
    assert!(
        second.contains("Reporting-MTA: dns; other.test"),
        "{second}"
    );
    pipeline.shutdown();
}
