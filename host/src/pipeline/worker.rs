//! One message through the chain, in steps, each in its own file: load the
//! attempt ([`load`](super::load): claim, queue file, progress, body,
//! authentication), run each stage ([`stage`](super::stage): call the
//! plugin, apply its changes), settle ([`settle`](super::settle): hand what
//! is left to the next hop) and report ([`report`](super::report): DSNs).
//!
//! Every step ends in an [`Outcome`] decided by the pure rules of
//! [`rules`](super::rules) (verdicts, faults, lifetime, forged senders);
//! this file carries an outcome out, in one place ([`carry_out`]): the next
//! stage (after a checkpoint when a stage changed the message), hold,
//! defer, or complete. An attempt takes one snapshot of the chain and one
//! of the settings when it starts, so a reload in the middle of it applies
//! to the next attempt and never mixes two configurations.

use std::sync::Arc;

use finaldot_sdk::wire::RecipientState;
use tracing::{error, info, info_span};

use super::chain::snapshot;
use super::load::{load_attempt, Attempt};
use super::report::{notify_failures, warn_of_delay};
use super::rules::{self, forged_sender, Outcome};
use super::settle::settle;
use super::stage::run_stage;
use super::{Settings, SharedChain};
use crate::metrics;
use crate::spool::{self, QueueId, QueueState, Spool};
use crate::{read_clone, unix_now};

/// What every worker shares.
pub struct Context {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The plugin chain (replaced whole by a configuration reload).
    pub chain: SharedChain,
    /// Settings (replaced whole by a configuration reload).
    pub settings: std::sync::RwLock<Arc<Settings>>,
}

impl Context {
    /// The settings in force (a snapshot: a reload replaces them, it never
    /// changes the one handed out).
    pub fn settings(&self) -> Arc<Settings> {
        read_clone(&self.settings)
    }
}

/// Processes one queue id; errors are logged and the message is left to retry.
pub fn process(ctx: &Context, id: &QueueId) {
    let span = info_span!("queue", queue_id = %id);
    let _enter = span.enter();
    if let Err(e) = run(ctx, id) {
        error!(error = %e, "pipeline could not process the message; it will be retried");
        // Out of active/ so it is retried without waiting for a restart.
        let next = unix_now() + ctx.settings().config.retry_min.as_secs();
        if ctx.spool.locate(id) == Some(QueueState::Active) {
            if let Err(e) = ctx.spool.defer(id, next) {
                error!(error = %e, "could not defer the message; it stays in active/ until restart");
            }
        }
    }
}

/// Whether the attempt goes on after an outcome was carried out.
enum Flow {
    /// The next stage (or settling, after the last).
    Next,
    /// Stop: the message was held, deferred or completed.
    Stop,
}

fn run(ctx: &Context, id: &QueueId) -> Result<(), spool::Error> {
    // One chain and one set of settings for the whole attempt, even if a
    // reload replaces them meanwhile.
    let stages = snapshot(&ctx.chain);
    let settings = ctx.settings();
    if stages.is_empty() && !settings.delivery.delivers_local() {
        // No plugin, and nothing delivers local mail: the message waits in
        // the queue, untouched.
        return Ok(());
    }
    let Some(mut attempt) = load_attempt(ctx, id, &stages, settings)? else {
        return Ok(());
    };
    let total = stages.len() as u32;
    while attempt.progress.next_stage < total {
        let stage = &stages[attempt.progress.next_stage as usize];
        let outcome = run_stage(&mut attempt, stage, total);
        if let Flow::Stop = carry_out(ctx, &mut attempt, outcome)? {
            return Ok(());
        }
    }
    let outcome = settle(ctx, &mut attempt)?;
    carry_out(ctx, &mut attempt, outcome).map(|_| ())
}

/// Carries out what a step decided, after the last word of
/// [`rules::resolve`] (queue lifetime, forged sender): the one place where
/// a message is checkpointed between stages, held, deferred or completed.
fn carry_out(ctx: &Context, attempt: &mut Attempt, outcome: Outcome) -> Result<Flow, spool::Error> {
    let settings = attempt.settings.clone();
    let outcome = rules::resolve(
        outcome,
        &mut attempt.progress,
        &settings.config,
        settings.forged_sender,
        unix_now(),
    );
    match outcome {
        Outcome::Next => {
            // The checkpoint. Skipped when there is nothing new to keep (a
            // stage that changed nothing; re-running it after a crash gives
            // the same result) and after the last stage (settling right
            // after either completes the message or saves it on deferral).
            let last = attempt.progress.next_stage as usize >= attempt.progress.chain.len();
            if attempt.unsaved && !last {
                ctx.spool.save_progress(&attempt.id, &attempt.progress)?;
                attempt.unsaved = false;
            }
            Ok(Flow::Next)
        }
        Outcome::Hold(reason) => {
            attempt.progress.hold_reason = Some(reason);
            hold(ctx, attempt)?;
            Ok(Flow::Stop)
        }
        Outcome::Defer(hint) => {
            defer(ctx, attempt, hint)?;
            Ok(Flow::Stop)
        }
        Outcome::Complete => {
            complete(ctx, attempt)?;
            Ok(Flow::Stop)
        }
    }
}

/// Puts the message on hold for an administrator, its progress saved first.
fn hold(ctx: &Context, attempt: &Attempt) -> Result<(), spool::Error> {
    ctx.spool.save_progress(&attempt.id, &attempt.progress)?;
    ctx.spool.hold(&attempt.id)?;
    metrics::global().holds.inc();
    Ok(())
}

/// Defers the message: reports the failures so far and the delay warning
/// when due, then saves its progress and moves it to `deferred/` until the
/// plugin's hint or the backoff.
fn defer(ctx: &Context, attempt: &mut Attempt, hint_secs: Option<u64>) -> Result<(), spool::Error> {
    let settings = attempt.settings.clone();
    let cfg = &settings.config;
    let now = unix_now();
    let age = now.saturating_sub(attempt.progress.queued_at);
    // Recipients already failed are reported now, not at the very end
    // (to a forged sender never: they wait for the message's end).
    let forged = forged_sender(&attempt.progress);
    if forged.is_none() {
        notify_failures(ctx, attempt)?;
    }
    if let Some(after) = cfg.delay_warning {
        if !attempt.progress.delay_warned && age >= after.as_secs() {
            if let Some(why) = &forged {
                info!("no delay warning to the sender: {why}");
                attempt.progress.delay_warned = true;
            } else {
                warn_of_delay(ctx, attempt)?;
            }
        }
    }
    let progress = &mut attempt.progress;
    let delay = hint_secs.unwrap_or_else(|| rules::backoff(cfg, &attempt.id, progress.attempts));
    progress.next_attempt = now + delay;
    ctx.spool.save_progress(&attempt.id, progress)?;
    ctx.spool.defer(&attempt.id, progress.next_attempt)?;
    metrics::global().deferrals.inc();
    info!(
        delay_secs = delay,
        attempts = progress.attempts,
        reason = progress.last_error.as_deref().unwrap_or(""),
        "deferred"
    );
    Ok(())
}

/// The message is settled for good: reports failures, logs and counts
/// every recipient's outcome, removes the message from the queue.
fn complete(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
    let notified = notify_failures(ctx, attempt)?;
    let m = metrics::global();
    for r in &attempt.progress.state.envelope.recipients {
        match &r.state {
            RecipientState::Delivered { note } => {
                m.deliveries.inc();
                info!(to = %crate::Printable(&r.address), note = %crate::Printable(note), "delivered")
            }
            RecipientState::Failed { status, reason } => {
                m.bounces.inc();
                info!(to = %crate::Printable(&r.address), status = %crate::Printable(status), reason = %crate::Printable(reason), "failed")
            }
            RecipientState::Discarded { reason } => {
                m.discards.inc();
                info!(to = %crate::Printable(&r.address), reason = %crate::Printable(reason), "discarded")
            }
            _ => {}
        }
    }
    // A removal lost in a crash re-runs the message from its last checkpoint,
    // which the stages tolerate (local delivery finds its earlier files); but a
    // DSN must not go out twice, so after one the removal is made durable.
    ctx.spool.complete(&attempt.id, notified)?;
    info!(
        attempts = attempt.progress.attempts,
        "completed, removed from the queue"
    );
    Ok(())
}
