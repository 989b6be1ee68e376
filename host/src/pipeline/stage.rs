//! One stage of an attempt: call the stage's plugin with the message as it
//! stands, count the call, apply the changes it returned, and turn its
//! verdict (or its fault) into an [`Outcome`] by the rules of
//! [`rules`](super::rules). Nothing here moves the message: the worker
//! carries the outcome out.

use finaldot_sdk::wire::{Change, MessageInput, RecipientState, ABI_VERSION};
use tracing::{info, warn};

use super::chain::Stage;
use super::load::Attempt;
use super::rules::{self, record, verdict_text, Outcome};
use crate::metrics;
use crate::plugins::Fault;
use crate::spool::Progress;

/// Runs the stage at `attempt.progress.next_stage`: calls its plugin and
/// applies what it returned; says what the attempt does next. The
/// changes are checkpointed by the worker when the outcome is `Next`.
pub(super) fn run_stage(attempt: &mut Attempt, stage: &Stage, total: u32) -> Outcome {
    let i = attempt.progress.next_stage;
    let name = &stage.spec.name;
    let plugin = match stage.current() {
        Ok(p) => p,
        Err(why) => {
            let e = format!("plugin {name} is not available: {why}");
            warn!(plugin = %name, "{e}; message deferred");
            attempt.progress.last_error = Some(e);
            return Outcome::Defer(None);
        }
    };
    let queued = &attempt.queued.envelope;
    let input = MessageInput {
        abi: ABI_VERSION,
        queue_id: attempt.id.to_string(),
        state: attempt.progress.state.plugin_view(),
        body_len: attempt.body_len,
        client_ip: queued.client_ip.to_string(),
        helo: queued.helo.clone(),
        received_at: queued.received_at,
        session: queued.session_facts(),
        auth: attempt.progress.auth.clone(),
        dsn: (!queued.dsn.is_empty()).then(|| queued.dsn.clone()),
    };
    let m = metrics::global();
    let result = match plugin.call(&input, attempt.body.clone(), false) {
        Ok(result) => result,
        Err(e) => {
            let l = metrics::labels(&[("plugin", name), ("version", &e.version)]);
            m.plugin_calls.get_or_create(&l).inc();
            if let Fault::Unavailable(why) = &e.fault {
                m.plugin_unavailable
                    .get_or_create(&metrics::labels(&[("plugin", name)]))
                    .inc();
                return rules::on_unavailable(&mut attempt.progress, name, &e.version, why);
            }
            m.plugin_faults.get_or_create(&l).inc();
            return rules::on_fault(
                &mut attempt.progress,
                name,
                &e.version,
                &e.to_string(),
                &e.fault.to_string(),
                attempt.settings.config.max_faults,
            );
        }
    };
    let secs = result.elapsed.as_secs_f64();
    let l = metrics::labels(&[("plugin", name), ("version", &result.version)]);
    m.plugin_calls.get_or_create(&l).inc();
    m.plugin_call_seconds.get_or_create(&l).observe(secs);
    m.stage_seconds
        .get_or_create(&metrics::labels(&[("plugin", name)]))
        .observe(secs);
    let progress = &mut attempt.progress;
    progress.faults = 0;
    if apply_changes(progress, &result.output.changes) {
        attempt.deferred_from = Some(attempt.deferred_from.map_or(i, |d| d.min(i)));
    }
    let verdict = result.output.verdict;
    let outcome = verdict_text(&verdict);
    info!(
        plugin = %name,
        version = %result.version,
        changes = result.output.changes.len(),
        micros = result.elapsed.as_micros() as u64,
        "stage {i} done: {outcome}"
    );
    record(progress, i, name, result.version, outcome);
    attempt.unsaved |= !result.output.changes.is_empty();
    rules::on_verdict(progress, name, verdict, total)
}

/// Applies a stage's changes (routes and per-recipient senders are kept
/// beside the state); true when they deferred a recipient that was not
/// deferred before.
pub(super) fn apply_changes(progress: &mut Progress, changes: &[Change]) -> bool {
    let deferred = |p: &Progress| -> Vec<bool> {
        p.state
            .envelope
            .recipients
            .iter()
            .map(|r| matches!(r.state, RecipientState::Deferred { .. }))
            .collect()
    };
    let before = deferred(progress);
    for c in changes {
        progress.state.apply(c);
        match c {
            Change::Route { address, route } => {
                progress
                    .routes
                    .retain(|(a, _)| !a.eq_ignore_ascii_case(address));
                progress.routes.push((address.clone(), *route));
            }
            Change::SetRecipientSender { address, sender } => {
                progress
                    .senders
                    .retain(|(a, _)| !a.eq_ignore_ascii_case(address));
                progress.senders.push((address.clone(), sender.clone()));
            }
            _ => {}
        }
    }
    deferred(progress)
        .iter()
        .enumerate()
        .any(|(k, now)| *now && !before.get(k).copied().unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use finaldot_sdk::wire::{Header, Route};

    use super::*;

    fn progress(to: &[&str]) -> Progress {
        let envelope = super::super::tests::envelope("list@x.test", to, Default::default());
        Progress::initial(&envelope, b"Subject: x\r\n\r\nbody\r\n")
    }

    #[test]
    fn changes_apply_in_order_with_routes_and_senders_kept_beside_the_state() {
        let mut p = progress(&["a@remote.test", "b@remote.test"]);
        let changes = vec![
            Change::AddHeader(Header::new("X-List", "yes")),
            Change::Route {
                address: "a@remote.test".into(),
                route: Route::Smarthost,
            },
            // A later choice for the same address (in any case) replaces it.
            Change::Route {
                address: "A@remote.test".into(),
                route: Route::Mx,
            },
            Change::SetRecipientSender {
                address: "b@remote.test".into(),
                sender: "list-bounces+b=remote.test@x.test".into(),
            },
            Change::MarkDelivered {
                address: "a@remote.test".into(),
                note: "done".into(),
            },
        ];
        assert!(!apply_changes(&mut p, &changes), "nothing deferred");
        assert!(p.state.headers.iter().any(|h| h.name == "X-List"));
        assert_eq!(p.routes, vec![("A@remote.test".to_string(), Route::Mx)]);
        assert_eq!(
            p.sender_of("b@remote.test"),
            "list-bounces+b=remote.test@x.test"
        );
        assert_eq!(p.sender_of("a@remote.test"), "list@x.test");
        assert!(matches!(
            p.state.envelope.recipients[0].state,
            RecipientState::Delivered { .. }
        ));
    }

    #[test]
    fn only_a_newly_deferred_recipient_counts_as_deferred_by_this_stage() {
        let mut p = progress(&["a@x.test", "b@x.test"]);
        let defer = |who: &str| Change::MarkDeferred {
            address: who.into(),
            reason: "451 later".into(),
        };
        assert!(apply_changes(&mut p, &[defer("a@x.test")]));
        // a@ is deferred already: deferring it again is nothing new.
        assert!(!apply_changes(&mut p, &[defer("a@x.test")]));
        assert!(apply_changes(&mut p, &[defer("b@x.test")]));
    }
}
