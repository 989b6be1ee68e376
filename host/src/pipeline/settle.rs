//! The end of the chain: hand what is left with a route to the next hop
//! (an MTA or the LMTP server) through the [`Delivery`](crate::delivery::Delivery)
//! the daemon plugged in, recording each acceptance durably before the next
//! transaction, then decide by [`rules::after_chain`] what is left to do.

use finaldot_sdk::wire::{RecipientState, Route};

use super::load::Attempt;
use super::report::dsn_request;
use super::rules::{self, Outcome};
use super::worker::Context;
use crate::delivery::{group_by, Handoff};
use crate::spool::{self, QueueState};

/// Settles the attempt after its last stage: the next hop first, then the
/// rule for what is still open.
pub(super) fn settle(ctx: &Context, attempt: &mut Attempt) -> Result<Outcome, spool::Error> {
    deliver_next_hop(ctx, attempt)?;
    Ok(rules::after_chain(
        &mut attempt.progress,
        attempt.deferred_from,
    ))
}

/// Hands the recipients still pending that have a route (outside the local
/// domains by `[outbound] route`, inside them by `[lmtp]`, anywhere by a
/// plugin's choice) to the next hop. Each one the hop accepts is recorded
/// durably (a checkpoint that resumes after the chain) before anything
/// else, so a crash never sends it to that hop twice.
// Long on purpose: routing, the message's bytes, one transaction per
// sender and the durable record of each acceptance go together (a record
// must be written before the next transaction starts).
fn deliver_next_hop(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
    let settings = attempt.settings.clone();
    let delivery = settings.delivery.as_ref();
    let local = &settings.local_domains;
    let progress = &mut attempt.progress;
    let routes = &progress.routes;
    let remote: Vec<(String, Route)> = progress
        .state
        .envelope
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Pending)
        .filter_map(|r| {
            let chosen = routes
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&r.address))
                .map(|(_, route)| *route);
            let domain = r.domain().to_ascii_lowercase();
            let is_local = local.contains(&domain);
            chosen
                .or_else(|| delivery.route(&domain, is_local))
                .map(|route| (r.address.clone(), route))
        })
        .collect();
    if remote.is_empty() {
        return Ok(());
    }
    // The message as the chain left it: its headers, a blank line, the body.
    let mut message = progress.state.header_bytes();
    message.extend_from_slice(b"\r\n");
    message.extend(ctx.spool.read_message_range(
        QueueState::Active,
        &attempt.id,
        &attempt.queued,
        progress.body_offset,
        u64::MAX,
    )?);
    let chain_end = progress.chain.len() as u32;
    let id = &attempt.id;
    let dsn = dsn_request(&attempt.queued.envelope, progress);
    // One transaction per envelope sender (a recipient with a sender of its
    // own, VERP, gets the same message bytes in a transaction of its own).
    let groups = group_by(remote, |(address, _)| {
        progress.sender_of(address).to_string()
    });
    let mut results = Vec::new();
    let mut unrecorded = false;
    for (mail_from, group) in groups {
        if unrecorded {
            // A delivery could not be recorded: nothing more goes out now.
            let reason = "4.3.0 could not record an earlier delivery".to_string();
            results.extend(group.into_iter().map(|(a, _)| {
                (
                    a,
                    RecipientState::Deferred {
                        reason: reason.clone(),
                    },
                )
            }));
            continue;
        }
        let outcome = delivery.deliver(
            &mail_from,
            &group,
            &message,
            &dsn,
            &mut |accepted, note, handoff| {
                for r in progress.state.envelope.recipients.iter_mut() {
                    if accepted.contains(&r.address) {
                        r.state = RecipientState::Delivered {
                            note: note.to_string(),
                        };
                    }
                }
                match handoff {
                    // The next hop reports from now on.
                    Handoff::PassedOn => progress.notified.extend(accepted.iter().cloned()),
                    Handoff::Relayed => progress.relayed.extend(accepted.iter().cloned()),
                    Handoff::Delivered => {}
                }
                progress.next_stage = chain_end;
                ctx.spool.save_progress(id, progress).map_err(|e| {
                    unrecorded = true;
                    e.to_string()
                })
            },
        );
        results.extend(outcome);
    }
    for (address, state) in results {
        if let Some(r) = progress
            .state
            .envelope
            .recipients
            .iter_mut()
            .find(|r| r.address == address)
        {
            r.state = state;
        }
    }
    Ok(())
}
