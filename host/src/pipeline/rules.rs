//! The pipeline's decisions, as pure functions: what a verdict, a plugin
//! fault, an unavailable service, the end of the chain, the queue lifetime
//! and a forged sender make of an attempt. Each returns one [`Outcome`] and
//! touches nothing but the message's in-memory [`Progress`]; the worker
//! carries the outcome out in one place (`worker::carry_out`): no spool, no
//! network, no clock here (the time is an argument), so every rule is unit
//! tested below.
//!
//! Verdicts (after the plugin's changes are applied):
//! - `Continue`: the next stage.
//! - `Discard`: every open recipient is discarded (not delivered, never bounced).
//! - `Hold`: to `hold/`; released, it resumes after this stage.
//! - `Bounce`: every open recipient fails with the given status; DSN.
//! - `Defer`: to `deferred/`; the retry runs this stage again.
//!
//! A plugin fault (trap, panic, timeout, memory limit, malformed output, an
//! error returned) or a plugin that is not loaded is a temporary failure: the
//! message is deferred with exponential backoff and jitter and the stage runs
//! again; after `max_faults` consecutive faults it is held, so a poison
//! message never loops forever. A service that did not answer defers without
//! counting as a fault. At the end of the chain a recipient still open fails
//! with `5.1.1`; past the queue lifetime, deferred recipients fail with
//! `5.4.7`. A sender that failed SPF or DMARC gets no report: the failures
//! are withheld and the message held or removed (`[auth] forged_sender`).

use std::hash::{Hash, Hasher};

use finaldot_sdk::wire::{Recipient, RecipientState, Verdict};
use tracing::{info, warn};

use super::{ForgedSender, PipelineConfig};
use crate::spool::{Progress, QueueId, StageRecord};
use crate::unix_now;

/// What an attempt does next: the one answer every rule gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The next stage (or settling, after the last).
    Next,
    /// To `hold/` for an administrator, with this reason.
    Hold(String),
    /// To `deferred/`: retried after the plugin's hint in seconds, or after
    /// the backoff.
    Defer(Option<u64>),
    /// Settled for good: report, count, remove from the queue.
    Complete,
}

/// How the stage history records a bounce verdict (its outcome's prefix).
pub(super) const BOUNCED: &str = "bounce:";

/// Whether `r` still waits for a final state.
pub(super) fn is_open(r: &Recipient) -> bool {
    matches!(
        r.state,
        RecipientState::Pending | RecipientState::Deferred { .. }
    )
}

/// Gives every recipient still open this final state.
pub(super) fn close_open(progress: &mut Progress, state: RecipientState) {
    for r in progress
        .state
        .envelope
        .recipients
        .iter_mut()
        .filter(|r| is_open(r))
    {
        r.state = state.clone();
    }
}

/// Adds a stage's line to the message's history (`queue show`).
pub(super) fn record(
    progress: &mut Progress,
    stage: u32,
    plugin: &str,
    version: String,
    outcome: String,
) {
    progress.stages.push(StageRecord {
        stage,
        plugin: plugin.to_string(),
        version,
        outcome,
        at: unix_now(),
    });
}

/// A verdict in a few words, for the log and the stage history.
pub(super) fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Continue => "continue".to_string(),
        Verdict::Discard { reason } => format!("discard: {reason}"),
        Verdict::Hold { reason } => format!("hold: {reason}"),
        Verdict::Bounce { code, status, text } => format!("{BOUNCED} {code} {status} {text}"),
        Verdict::Defer { reason, .. } => format!("defer: {reason}"),
        other => format!("{other:?}"),
    }
}

/// What plugin `name`'s verdict makes of the message (Postfix's after-queue
/// verbs); `total` is the number of stages.
pub(super) fn on_verdict(
    progress: &mut Progress,
    name: &str,
    verdict: Verdict,
    total: u32,
) -> Outcome {
    let i = progress.next_stage;
    match verdict {
        Verdict::Continue => {
            progress.next_stage = i + 1;
            Outcome::Next
        }
        Verdict::Discard { reason } => {
            close_open(
                progress,
                RecipientState::Discarded {
                    reason: format!("{name}: {reason}"),
                },
            );
            progress.next_stage = total;
            Outcome::Next
        }
        Verdict::Hold { reason } => {
            progress.next_stage = i + 1;
            info!(plugin = %name, reason = %crate::Printable(&reason), "held");
            Outcome::Hold(format!("{name}: {reason}"))
        }
        Verdict::Bounce { code, status, text } => {
            close_open(
                progress,
                RecipientState::Failed {
                    reason: format!("{code} {status} {text}"),
                    status,
                },
            );
            progress.next_stage = total;
            Outcome::Next
        }
        Verdict::Defer {
            reason,
            retry_after_secs,
        } => {
            progress.last_error = Some(format!("{name}: {reason}"));
            Outcome::Defer(retry_after_secs)
        }
        // Decoded, so known to the SDK, but not given a meaning here: the
        // message waits rather than guess.
        other => {
            progress.last_error = Some(format!("{name}: verdict {other:?} is not handled"));
            Outcome::Defer(None)
        }
    }
}

/// Plugin `name` (at `version`) faulted with `error`: deferred, or held
/// after `max_faults` consecutive faults.
pub(super) fn on_fault(
    progress: &mut Progress,
    name: &str,
    version: &str,
    error: &str,
    fault: &str,
    max_faults: u32,
) -> Outcome {
    let i = progress.next_stage;
    progress.faults += 1;
    progress.last_error = Some(error.to_string());
    record(
        progress,
        i,
        name,
        version.to_string(),
        format!("fault: {fault}"),
    );
    if progress.faults >= max_faults {
        let reason = format!(
            "{} consecutive plugin faults; last: {error}",
            progress.faults
        );
        warn!(plugin = %name, "{reason}; message held");
        return Outcome::Hold(reason);
    }
    warn!(plugin = %name, error = %error, faults = progress.faults, "plugin fault; message deferred");
    Outcome::Defer(None)
}

/// A stage that could not finish because a service it needed did not
/// answer: deferred, with the reason, and not counted as a fault (a Redis
/// that is down for an hour must not get the queue held).
pub(super) fn on_unavailable(
    progress: &mut Progress,
    name: &str,
    version: &str,
    why: &str,
) -> Outcome {
    let i = progress.next_stage;
    progress.last_error = Some(format!("plugin {name}: {why}"));
    record(
        progress,
        i,
        name,
        version.to_string(),
        format!("deferred: {why}"),
    );
    warn!(plugin = %name, "{why}; message deferred");
    Outcome::Defer(None)
}

/// After the chain and the next hop: a recipient nobody took fails with
/// `5.1.1`; if any is deferred, the message is (the retry resumes at
/// `deferred_from`, the first stage that deferred one in this attempt, or
/// after the chain when only the next hop did), else it is complete.
pub(super) fn after_chain(progress: &mut Progress, deferred_from: Option<u32>) -> Outcome {
    for r in progress.state.envelope.recipients.iter_mut() {
        if r.state == RecipientState::Pending {
            r.state = RecipientState::Failed {
                status: "5.1.1".into(),
                reason: "undeliverable: no plugin in the chain delivered this recipient".into(),
            };
        }
    }
    let first_deferred = progress
        .state
        .envelope
        .recipients
        .iter()
        .find_map(|r| match &r.state {
            RecipientState::Deferred { reason } => Some(format!("<{}>: {reason}", r.address)),
            _ => None,
        });
    match first_deferred {
        Some(why) => {
            progress.next_stage = deferred_from.unwrap_or(progress.chain.len() as u32);
            progress.last_error = Some(why);
            Outcome::Defer(None)
        }
        None => Outcome::Complete,
    }
}

/// The last word before an outcome is carried out, at `now`: a deferral
/// past the queue lifetime bounces what is left (`5.4.7`) and completes;
/// a completion with failures to report to a forged sender withholds the
/// report (see [`withhold`]).
pub(super) fn resolve(
    outcome: Outcome,
    progress: &mut Progress,
    config: &PipelineConfig,
    forged_policy: ForgedSender,
    now: u64,
) -> Outcome {
    let outcome = match outcome {
        Outcome::Defer(_) if expired(progress, config, now) => {
            let age = now.saturating_sub(progress.queued_at);
            let why = progress
                .last_error
                .clone()
                .unwrap_or_else(|| "temporary failures".into());
            close_open(
                progress,
                RecipientState::Failed {
                    status: "5.4.7".into(),
                    reason: format!("delivery time expired after {age}s in the queue: {why}"),
                },
            );
            warn!(
                age_secs = age,
                "queue lifetime exceeded; bouncing what is left"
            );
            Outcome::Complete
        }
        other => other,
    };
    match outcome {
        Outcome::Complete => withhold(progress, forged_policy).unwrap_or(Outcome::Complete),
        other => other,
    }
}

/// Whether the message has outlived `max_queue_lifetime` at `now`.
fn expired(progress: &Progress, config: &PipelineConfig, now: u64) -> bool {
    now.saturating_sub(progress.queued_at) >= config.max_queue_lifetime.as_secs()
}

/// Why a report to this message's sender would likely be backscatter:
/// its envelope sender failed SPF or its From failed DMARC.
pub(super) fn forged_sender(progress: &Progress) -> Option<String> {
    progress.auth.as_ref()?.sender_forged()
}

/// The recipients that failed and were not reported to the sender yet.
pub(super) fn fresh_failures(p: &Progress) -> impl Iterator<Item = &Recipient> {
    p.state
        .envelope
        .recipients
        .iter()
        .filter(|r| matches!(r.state, RecipientState::Failed { .. }))
        .filter(|r| !p.notified.contains(&r.address))
}

/// Instead of a DSN to a forged sender: the failures are marked reported
/// (none will ever be sent), and the message is held for an administrator
/// (`Some(Hold)`) or completed without a report (`Some(Complete)`), as
/// configured. `None` when there is nothing to withhold. `queue show` gives
/// the reason.
fn withhold(progress: &mut Progress, policy: ForgedSender) -> Option<Outcome> {
    let why = forged_sender(progress)?;
    let failed: Vec<String> = fresh_failures(progress)
        .map(|r| r.address.clone())
        .collect();
    if failed.is_empty() {
        return None;
    }
    let sender = progress.state.envelope.mail_from.clone();
    progress.notified.extend(failed.iter().cloned());
    let action = match policy {
        ForgedSender::Hold => "held",
        ForgedSender::Drop => "dropped",
    };
    let reason = format!("no DSN sent to <{sender}>: {why}; message {action}");
    warn!(to = %crate::Printable(&sender), recipients = failed.len(), "{}", crate::Printable(&reason));
    let stage = progress.next_stage;
    record(
        progress,
        stage,
        "(auth)",
        "mail-auth".into(),
        reason.clone(),
    );
    crate::metrics::global().dsns_withheld.inc();
    Some(match policy {
        ForgedSender::Hold => Outcome::Hold(reason),
        ForgedSender::Drop => Outcome::Complete,
    })
}

/// Exponential backoff with ±10 % jitter between the configured bounds,
/// for the `attempts`-th attempt of `id`.
pub(super) fn backoff(config: &PipelineConfig, id: &QueueId, attempts: u32) -> u64 {
    let min = config.retry_min.as_secs().max(1);
    let base = min
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(config.retry_max.as_secs().max(min));
    let spread = base / 5;
    if spread == 0 {
        return base;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, attempts, std::time::SystemTime::now()).hash(&mut h);
    base - spread / 2 + h.finish() % (spread + 1)
}

/// Where to resume: the recorded stage if the chain is the one the message
/// last ran under; after a configuration change, the first plugin of the old
/// remainder that is still configured (finished stages never run again).
pub(super) fn resume_at(progress: &Progress, names: &[String]) -> u32 {
    let next = progress.next_stage;
    if progress.chain.is_empty() || progress.chain == names || next == u32::MAX {
        return next;
    }
    progress
        .chain
        .iter()
        .skip(next as usize)
        .find_map(|n| names.iter().position(|m| m == n))
        .map(|i| i as u32)
        .unwrap_or(names.len() as u32)
}

#[cfg(test)]
mod tests {
    use finaldot_sdk::wire::{AuthFacts, AuthResult, DmarcFact, DmarcPolicy, SpfFact};

    use super::*;

    const DAY: u64 = 86_400;

    /// The pipeline settings of a configuration with these `[pipeline]` lines.
    fn config(lines: &str) -> PipelineConfig {
        super::super::tests::config(&std::env::temp_dir(), lines).pipeline
    }

    /// A message queued at `queued_at` to these recipients, all pending,
    /// that ran a chain of two stages.
    fn progress(queued_at: u64, to: &[&str]) -> Progress {
        let mut envelope =
            super::super::tests::envelope("alice@sender.test", to, Default::default());
        envelope.received_at = queued_at;
        envelope.auth = None;
        let mut p = Progress::initial(&envelope, b"Subject: x\r\n\r\nbody\r\n");
        p.chain = vec!["first".into(), "second".into()];
        p
    }

    fn state_of(p: &Progress, address: &str) -> RecipientState {
        p.state
            .envelope
            .recipients
            .iter()
            .find(|r| r.address == address)
            .map(|r| r.state.clone())
            .expect(address)
    }

    fn set(p: &mut Progress, address: &str, state: RecipientState) {
        for r in p.state.envelope.recipients.iter_mut() {
            if r.address == address {
                r.state = state.clone();
            }
        }
    }

    /// Authentication results whose SPF for the envelope sender is `spf`.
    fn auth(spf: AuthResult) -> AuthFacts {
        AuthFacts {
            authserv_id: "mx.test".into(),
            spf: SpfFact {
                result: spf,
                domain: "sender.test".into(),
            },
            spf_helo: SpfFact {
                result: AuthResult::None,
                domain: "client.test".into(),
            },
            dkim: Vec::new(),
            dmarc: DmarcFact {
                result: AuthResult::None,
                domain: "sender.test".into(),
                policy: DmarcPolicy::Unspecified,
                pct: 100,
                spf_aligned: false,
                dkim_aligned: false,
            },
            arc: AuthResult::None,
        }
    }

    fn failed(status: &str) -> RecipientState {
        RecipientState::Failed {
            status: status.into(),
            reason: format!("{status} no"),
        }
    }

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_maximum_with_ten_percent_jitter() {
        let cfg = config("retry_min_secs = 100\nretry_max_secs = 1000");
        let id = QueueId::parse("00C0FFEE").expect("id");
        for (attempts, base) in [
            (1, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..20 {
                let d = backoff(&cfg, &id, attempts);
                assert!(
                    d >= base - base / 10 && d <= base + base / 10,
                    "attempt {attempts}: {d} not within 10 % of {base}"
                );
            }
        }
    }

    #[test]
    fn a_deferral_past_the_queue_lifetime_fails_what_is_open_with_5_4_7_and_completes() {
        let cfg = config("max_queue_lifetime_secs = 86400");
        let now = 10 * DAY;
        // Within the lifetime: the deferral stands, the hint kept.
        let mut young = progress(now - DAY + 1, &["a@x.test"]);
        let out = resolve(
            Outcome::Defer(Some(30)),
            &mut young,
            &cfg,
            ForgedSender::Hold,
            now,
        );
        assert_eq!(out, Outcome::Defer(Some(30)));
        assert_eq!(state_of(&young, "a@x.test"), RecipientState::Pending);
        // Past it: open recipients fail 5.4.7 with the last error, the
        // finished ones keep their state.
        let mut old = progress(now - DAY, &["open@x.test", "done@x.test", "later@x.test"]);
        set(
            &mut old,
            "done@x.test",
            RecipientState::Delivered { note: "250".into() },
        );
        set(
            &mut old,
            "later@x.test",
            RecipientState::Deferred {
                reason: "451".into(),
            },
        );
        old.last_error = Some("451 4.3.0 try later".into());
        let out = resolve(
            Outcome::Defer(None),
            &mut old,
            &cfg,
            ForgedSender::Hold,
            now,
        );
        assert_eq!(out, Outcome::Complete);
        for a in ["open@x.test", "later@x.test"] {
            match state_of(&old, a) {
                RecipientState::Failed { status, reason } => {
                    assert_eq!(status, "5.4.7");
                    assert!(reason.contains("451 4.3.0 try later"), "{reason}");
                    assert!(reason.contains("86400s"), "{reason}");
                }
                other => panic!("{a}: {other:?}"),
            }
        }
        assert!(matches!(
            state_of(&old, "done@x.test"),
            RecipientState::Delivered { .. }
        ));
        // Other outcomes pass through untouched.
        for o in [Outcome::Next, Outcome::Hold("why".into())] {
            assert_eq!(
                resolve(o.clone(), &mut old, &cfg, ForgedSender::Hold, now),
                o
            );
        }
    }

    #[test]
    fn faults_defer_until_max_faults_in_a_row_then_hold() {
        let mut p = progress(0, &["a@x.test"]);
        for n in 1..3 {
            let out = on_fault(&mut p, "filter", "1.0", "trap: boom", "trap", 3);
            assert_eq!(out, Outcome::Defer(None), "fault {n}");
        }
        match on_fault(&mut p, "filter", "1.0", "trap: boom", "trap", 3) {
            Outcome::Hold(reason) => {
                assert!(
                    reason.starts_with("3 consecutive plugin faults; last: trap: boom"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.stages.len(), 3);
        assert_eq!(p.stages[0].outcome, "fault: trap");
        assert_eq!(p.last_error.as_deref(), Some("trap: boom"));
    }

    #[test]
    fn an_unavailable_service_defers_without_counting_a_fault() {
        let mut p = progress(0, &["a@x.test"]);
        for _ in 0..10 {
            let out = on_unavailable(&mut p, "dedup", "1.0", "redis is unreachable");
            assert_eq!(out, Outcome::Defer(None));
        }
        assert_eq!(p.faults, 0);
        assert_eq!(
            p.last_error.as_deref(),
            Some("plugin dedup: redis is unreachable")
        );
        assert_eq!(p.stages[9].outcome, "deferred: redis is unreachable");
    }

    #[test]
    fn each_verdict_gives_its_outcome_and_recipient_states() {
        let open = || {
            let mut p = progress(0, &["a@x.test", "b@x.test"]);
            set(
                &mut p,
                "b@x.test",
                RecipientState::Delivered { note: "ok".into() },
            );
            p
        };
        let mut p = open();
        assert_eq!(on_verdict(&mut p, "f", Verdict::Continue, 2), Outcome::Next);
        assert_eq!(p.next_stage, 1);

        let mut p = open();
        let v = Verdict::Discard {
            reason: "dup".into(),
        };
        assert_eq!(on_verdict(&mut p, "f", v, 2), Outcome::Next);
        assert_eq!(p.next_stage, 2, "the rest of the chain is skipped");
        assert_eq!(
            state_of(&p, "a@x.test"),
            RecipientState::Discarded {
                reason: "f: dup".into()
            }
        );
        assert!(matches!(
            state_of(&p, "b@x.test"),
            RecipientState::Delivered { .. }
        ));

        let mut p = open();
        let v = Verdict::Bounce {
            code: 550,
            status: "5.7.1".into(),
            text: "spam".into(),
        };
        assert_eq!(on_verdict(&mut p, "f", v, 2), Outcome::Next);
        assert_eq!(p.next_stage, 2);
        assert_eq!(
            state_of(&p, "a@x.test"),
            RecipientState::Failed {
                status: "5.7.1".into(),
                reason: "550 5.7.1 spam".into()
            }
        );

        let mut p = open();
        let v = Verdict::Hold {
            reason: "look".into(),
        };
        assert_eq!(
            on_verdict(&mut p, "f", v, 2),
            Outcome::Hold("f: look".into())
        );
        assert_eq!(p.next_stage, 1, "released, it resumes after this stage");

        let mut p = open();
        let v = Verdict::Defer {
            reason: "grey".into(),
            retry_after_secs: Some(300),
        };
        assert_eq!(on_verdict(&mut p, "f", v, 2), Outcome::Defer(Some(300)));
        assert_eq!(p.next_stage, 0, "the retry runs this stage again");
        assert_eq!(p.last_error.as_deref(), Some("f: grey"));
    }

    #[test]
    fn the_end_of_the_chain_fails_the_untaken_and_defers_from_the_first_deferring_stage() {
        let mut p = progress(0, &["nobody@x.test", "ok@x.test"]);
        set(
            &mut p,
            "ok@x.test",
            RecipientState::Delivered { note: "ok".into() },
        );
        assert_eq!(after_chain(&mut p, None), Outcome::Complete);
        assert_eq!(state_of(&p, "nobody@x.test"), failed_511());

        let mut p = progress(0, &["later@x.test"]);
        set(
            &mut p,
            "later@x.test",
            RecipientState::Deferred {
                reason: "451 busy".into(),
            },
        );
        assert_eq!(after_chain(&mut p, Some(1)), Outcome::Defer(None));
        assert_eq!(p.next_stage, 1);
        assert_eq!(p.last_error.as_deref(), Some("<later@x.test>: 451 busy"));
        // Deferred by the next hop alone: the retry skips the chain.
        assert_eq!(after_chain(&mut p, None), Outcome::Defer(None));
        assert_eq!(p.next_stage, 2);
    }

    fn failed_511() -> RecipientState {
        RecipientState::Failed {
            status: "5.1.1".into(),
            reason: "undeliverable: no plugin in the chain delivered this recipient".into(),
        }
    }

    #[test]
    fn failures_to_a_forged_sender_are_withheld_and_the_message_held_or_dropped() {
        let cfg = config("");
        let now = DAY;
        let forged = || {
            let mut p = progress(now, &["bad@x.test", "ok@x.test"]);
            set(&mut p, "bad@x.test", failed("5.1.1"));
            set(
                &mut p,
                "ok@x.test",
                RecipientState::Delivered { note: "ok".into() },
            );
            p.auth = Some(auth(AuthResult::Fail));
            p
        };
        let mut p = forged();
        match resolve(Outcome::Complete, &mut p, &cfg, ForgedSender::Hold, now) {
            Outcome::Hold(reason) => {
                assert!(
                    reason.starts_with("no DSN sent to <alice@sender.test>: the envelope sender failed SPF (sender.test); message held"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.notified, vec!["bad@x.test".to_string()]);
        assert_eq!(fresh_failures(&p).count(), 0);
        // Released and run again: nothing left to withhold, it completes.
        assert_eq!(
            resolve(Outcome::Complete, &mut p, &cfg, ForgedSender::Hold, now),
            Outcome::Complete
        );

        let mut p = forged();
        assert_eq!(
            resolve(Outcome::Complete, &mut p, &cfg, ForgedSender::Drop, now),
            Outcome::Complete
        );
        assert_eq!(p.notified, vec!["bad@x.test".to_string()]);

        // A sender that passed: its failures are reported as usual.
        let mut p = forged();
        p.auth = Some(auth(AuthResult::Pass));
        assert_eq!(
            resolve(Outcome::Complete, &mut p, &cfg, ForgedSender::Hold, now),
            Outcome::Complete
        );
        assert!(p.notified.is_empty());

        // Past the lifetime the expired recipients are withheld too.
        let mut p = progress(0, &["later@x.test"]);
        p.auth = Some(auth(AuthResult::Fail));
        let late = 6 * DAY;
        assert!(matches!(
            resolve(Outcome::Defer(None), &mut p, &cfg, ForgedSender::Hold, late),
            Outcome::Hold(_)
        ));
        assert_eq!(p.notified, vec!["later@x.test".to_string()]);
    }

    #[test]
    fn a_changed_chain_resumes_at_the_first_remaining_plugin_still_configured() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut p = progress(0, &["a@x.test"]);
        p.chain = names(&["auth", "filter", "deliver"]);
        p.next_stage = 1;
        assert_eq!(resume_at(&p, &names(&["auth", "filter", "deliver"])), 1);
        // filter removed: resume at deliver, now at index 1.
        assert_eq!(resume_at(&p, &names(&["auth", "deliver"])), 1);
        // a plugin added in front: filter is now third.
        assert_eq!(
            resume_at(&p, &names(&["dnsbl", "auth", "filter", "deliver"])),
            2
        );
        // nothing of the remainder left: the chain is finished.
        assert_eq!(resume_at(&p, &names(&["auth"])), 1);
    }
}
