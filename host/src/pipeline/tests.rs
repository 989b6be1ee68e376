//! The pipeline against a temporary spool and a fake [`Delivery`] that
//! records what it is handed and answers per recipient (chasquid's
//! `TestCourier`): no daemon, no plugin, no network.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use finaldot_sdk::wire::{DsnNotify, DsnRcpt, DsnRequest, RecipientState, Route};

use super::{Pipeline, Settings};
use crate::delivery::{Delivery, Handoff, OnAccepted};
use crate::spool::{Envelope, QueueState, Spool};

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
#[derive(Debug, Default)]
struct FakeDelivery {
    answers: HashMap<String, RecipientState>,
    calls: Mutex<Vec<Call>>,
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

/// A pipeline on a spool in `dir`, delivering through `delivery`, with
/// retries after a second.
fn start(dir: &Path, delivery: Arc<FakeDelivery>) -> (Arc<Spool>, Pipeline) {
    let text = format!(
        "hostname = \"mx.test\"\ndata_dir = {:?}\n[domains.localhost]\n[pipeline]\nworkers = 2\nretry_min_secs = 1\nretry_max_secs = 1\nrescan_secs = 1\n",
        dir.join("data")
    );
    let config = crate::config::Config::parse(&text, "test", dir).expect("config");
    let spool = Arc::new(Spool::open(&config.spool_dir()).expect("spool"));
    spool.recover().expect("recover");
    let settings = Settings::of(&config, delivery).expect("settings");
    let chain = Arc::new(RwLock::new(Arc::new(Vec::new())));
    let pipeline = Pipeline::start(spool.clone(), chain, settings).expect("start");
    (spool, pipeline)
}

/// Queues a message from `from` to `to` with the client's DSN request.
fn queue(spool: &Spool, from: &str, to: &[&str], dsn: DsnRequest) {
    let envelope = Envelope {
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
        auth: Some("sender".into()), // submitted: a sender we vouch for
        dsn,
    };
    let mut w = spool.begin(&envelope).expect("begin");
    w.write(b"Subject: fake\r\n\r\nthe body\r\n")
        .expect("write");
    spool
        .commit_blocking(w.finish().expect("finish"))
        .expect("commit");
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
