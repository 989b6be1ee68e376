//! One message through the chain: claim, run stages with checkpoints, settle.
//!
//! Verdicts (after the plugin's changes are applied):
//! - `Continue`: the next stage.
//! - `Discard`: every open recipient counts as delivered ("discarded"); done.
//! - `Hold`: to `hold/`; released, it resumes after this stage.
//! - `Bounce`: every open recipient fails with the given status; DSN.
//! - `Defer`: to `deferred/`; the retry runs this stage again.
//!
//! A plugin fault (trap, panic, timeout, memory limit, malformed output, an
//! error returned) or a plugin that is not loaded is a temporary failure: the
//! message is deferred with exponential backoff and jitter and the stage runs
//! again; after `max_faults` consecutive faults it is held, so a poison
//! message never loops forever. Recipients a stage marks deferred are retried
//! from that stage. At the end of the chain a recipient still open fails with
//! `5.1.1`; past the queue lifetime, deferred recipients fail with `5.4.7`.
//! Failures are reported once, in one DSN per attempt, never to `<>`.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use finaldot_sdk::wire::{MessageInput, Recipient, RecipientState, Verdict, ABI_VERSION};
use tracing::{error, info, info_span, warn};

use super::chain::{snapshot, SharedChain};
use super::dsn::{self, DsnKind, DsnRecipient};
use super::Settings;
use crate::plugins::Body;
use crate::spool::{self, Header, Progress, QueueId, QueueState, Spool, StageRecord};
use crate::unix_now;

/// What every worker shares.
pub struct Context {
    /// The spool.
    pub spool: Arc<Spool>,
    /// The plugin chain (replaced whole by a configuration reload).
    pub chain: SharedChain,
    /// Settings (replaced by a configuration reload).
    pub settings: std::sync::RwLock<Settings>,
}

impl Context {
    /// The settings in force.
    pub fn settings(&self) -> Settings {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
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

fn is_open(r: &Recipient) -> bool {
    matches!(
        r.state,
        RecipientState::Pending | RecipientState::Deferred { .. }
    )
}

/// Gives every recipient still open this final state.
fn close_open(progress: &mut Progress, state: RecipientState) {
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

fn run(ctx: &Context, id: &QueueId) -> Result<(), spool::Error> {
    let spool = &ctx.spool;
    // One chain for the whole attempt, even if a reload replaces it meanwhile.
    let stages = snapshot(&ctx.chain);
    if stages.is_empty() {
        // No plugin configured: the message waits in the queue, untouched.
        return Ok(());
    }
    if spool.claim(id)?.is_none() {
        return Ok(());
    }
    let header = match spool.read_queue_file(QueueState::Active, id) {
        Ok(h) => h,
        Err(e) => {
            warn!(reason = %e, "unreadable queue file moved to corrupt/");
            spool.quarantine(QueueState::Active, id)?;
            return Ok(());
        }
    };
    let mut progress = match spool.load_progress(id) {
        Ok(Some(p)) => p,
        Ok(None) => spool.initial_progress(QueueState::Active, id, &header)?,
        Err(e) => {
            // Never let a bad record stop a message: keep it for inspection and
            // start over from the first stage (stages are idempotent).
            let kept = spool.quarantine_progress(id);
            error!(error = %e, kept = %kept.display(), "progress record unreadable; the message starts over from its first stage");
            spool.initial_progress(QueueState::Active, id, &header)?
        }
    };
    progress.attempts += 1;
    progress.hold_reason = None;
    for r in &mut progress.state.envelope.recipients {
        if matches!(r.state, RecipientState::Deferred { .. }) {
            r.state = RecipientState::Pending;
        }
    }
    let file = Arc::new(spool.open_message(QueueState::Active, id)?);
    let body_len = header.message_len.saturating_sub(progress.body_offset);
    let body = Body::File {
        file,
        offset: header.message_offset + progress.body_offset,
        len: body_len,
    };
    let names: Vec<String> = stages.iter().map(|s| s.spec.name.clone()).collect();
    progress.next_stage = resume_at(&progress, &names);
    progress.chain = names;
    let total = stages.len() as u32;
    let mut deferred_from: Option<u32> = None;
    while progress.next_stage < total {
        let i = progress.next_stage;
        let stage = &stages[i as usize];
        let name = &stage.spec.name;
        let plugin = match stage.current() {
            Ok(p) => p,
            Err(why) => {
                let e = format!("plugin {name} is not available: {why}");
                warn!(plugin = %name, "{e}; message deferred");
                progress.last_error = Some(e);
                return defer(ctx, id, &mut progress, &header, None);
            }
        };
        let input = MessageInput {
            abi: ABI_VERSION,
            queue_id: id.to_string(),
            state: progress.state.plugin_view(),
            body_len,
            client_ip: header.envelope.client_ip.to_string(),
            helo: header.envelope.helo.clone(),
            received_at: header.envelope.received_at,
        };
        let record = |progress: &mut Progress, version: String, outcome: String| {
            progress.stages.push(StageRecord {
                stage: i,
                plugin: name.clone(),
                version,
                outcome,
                at: unix_now(),
            });
        };
        match plugin.call(&input, body.clone(), false) {
            Err(e) => {
                let l = crate::metrics::labels(&[("plugin", name), ("version", &e.version)]);
                let m = crate::metrics::global();
                m.plugin_calls.get_or_create(&l).inc();
                m.plugin_faults.get_or_create(&l).inc();
                progress.faults += 1;
                progress.last_error = Some(e.to_string());
                record(
                    &mut progress,
                    e.version.clone(),
                    format!("fault: {}", e.fault),
                );
                if progress.faults >= ctx.settings().config.max_faults {
                    let reason =
                        format!("{} consecutive plugin faults; last: {e}", progress.faults);
                    warn!(plugin = %name, "{reason}; message held");
                    progress.hold_reason = Some(reason);
                    spool.save_progress(id, &progress)?;
                    spool.hold(id)?;
                    crate::metrics::global().holds.inc();
                    return Ok(());
                }
                warn!(plugin = %name, error = %e, faults = progress.faults, "plugin fault; message deferred");
                return defer(ctx, id, &mut progress, &header, None);
            }
            Ok(result) => {
                let m = crate::metrics::global();
                let secs = result.elapsed.as_secs_f64();
                let l = crate::metrics::labels(&[("plugin", name), ("version", &result.version)]);
                m.plugin_calls.get_or_create(&l).inc();
                m.plugin_call_seconds.get_or_create(&l).observe(secs);
                m.stage_seconds
                    .get_or_create(&crate::metrics::labels(&[("plugin", name)]))
                    .observe(secs);
                progress.faults = 0;
                let was_deferred: Vec<bool> = progress
                    .state
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| matches!(r.state, RecipientState::Deferred { .. }))
                    .collect();
                for c in &result.output.changes {
                    progress.state.apply(c);
                    if let finaldot_sdk::wire::Change::Route { address, route } = c {
                        progress
                            .routes
                            .retain(|(a, _)| !a.eq_ignore_ascii_case(address));
                        progress.routes.push((address.clone(), *route));
                    }
                }
                let newly_deferred =
                    progress
                        .state
                        .envelope
                        .recipients
                        .iter()
                        .enumerate()
                        .any(|(k, r)| {
                            matches!(r.state, RecipientState::Deferred { .. })
                                && !was_deferred.get(k).copied().unwrap_or(false)
                        });
                if newly_deferred {
                    deferred_from = Some(deferred_from.map_or(i, |d| d.min(i)));
                }
                let verdict = result.output.verdict;
                let outcome = match &verdict {
                    Verdict::Continue => "continue".to_string(),
                    Verdict::Discard { reason } => format!("discard: {reason}"),
                    Verdict::Hold { reason } => format!("hold: {reason}"),
                    Verdict::Bounce { code, status, text } => {
                        format!("bounce: {code} {status} {text}")
                    }
                    Verdict::Defer { reason, .. } => format!("defer: {reason}"),
                };
                info!(
                    plugin = %name,
                    version = %result.version,
                    changes = result.output.changes.len(),
                    micros = result.elapsed.as_micros() as u64,
                    "stage {i} done: {outcome}"
                );
                record(&mut progress, result.version, outcome);
                match verdict {
                    Verdict::Continue => progress.next_stage = i + 1,
                    Verdict::Discard { reason } => {
                        close_open(
                            &mut progress,
                            RecipientState::Discarded {
                                reason: format!("{name}: {reason}"),
                            },
                        );
                        progress.next_stage = total;
                    }
                    Verdict::Hold { reason } => {
                        progress.next_stage = i + 1;
                        info!(plugin = %name, reason = %reason, "held");
                        progress.hold_reason = Some(format!("{name}: {reason}"));
                        spool.save_progress(id, &progress)?;
                        spool.hold(id)?;
                        crate::metrics::global().holds.inc();
                        return Ok(());
                    }
                    Verdict::Bounce { code, status, text } => {
                        close_open(
                            &mut progress,
                            RecipientState::Failed {
                                reason: format!("{code} {status} {text}"),
                                status,
                            },
                        );
                        progress.next_stage = total;
                    }
                    Verdict::Defer {
                        reason,
                        retry_after_secs,
                    } => {
                        progress.last_error = Some(format!("{name}: {reason}"));
                        return defer(ctx, id, &mut progress, &header, retry_after_secs);
                    }
                }
                // The checkpoint. Skipped when there is nothing new to keep (a
                // stage that changed nothing; re-running it after a crash gives
                // the same result) and after the last stage (settling right
                // after either finishes the message or saves it on deferral).
                let last = progress.next_stage >= total;
                if !result.output.changes.is_empty() && !last {
                    spool.save_progress(id, &progress)?;
                }
            }
        }
    }
    settle(ctx, id, &mut progress, &header, deferred_from)
}

/// Where to resume: the recorded stage if the chain is the one the message
/// last ran under; after a configuration change, the first plugin of the old
/// remainder that is still configured (finished stages never run again).
fn resume_at(progress: &Progress, names: &[String]) -> u32 {
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

/// The end of the chain: fail what nobody took, report failures, and either
/// finish the message or defer what is left.
fn settle(
    ctx: &Context,
    id: &QueueId,
    progress: &mut Progress,
    header: &Header,
    deferred_from: Option<u32>,
) -> Result<(), spool::Error> {
    let settings = ctx.settings();
    deliver_remote(
        ctx,
        id,
        progress,
        header,
        &settings.outbound,
        &settings.local_domains,
    )?;
    for r in progress.state.envelope.recipients.iter_mut() {
        if r.state == RecipientState::Pending {
            r.state = RecipientState::Failed {
                status: "5.1.1".into(),
                reason: "undeliverable: no plugin in the chain delivered this recipient".into(),
            };
        }
    }
    let any_deferred = progress
        .state
        .envelope
        .recipients
        .iter()
        .any(|r| matches!(r.state, RecipientState::Deferred { .. }));
    if any_deferred {
        // Only outbound recipients deferred: the retry skips the chain.
        progress.next_stage = deferred_from.unwrap_or(progress.chain.len() as u32);
        progress.last_error = progress
            .state
            .envelope
            .recipients
            .iter()
            .find_map(|r| match &r.state {
                RecipientState::Deferred { reason } => Some(format!("<{}>: {reason}", r.address)),
                _ => None,
            })
            .or(progress.last_error.take());
        return defer(ctx, id, progress, header, None);
    }
    finish(ctx, id, progress, header)
}

/// Hands the recipients still pending outside the local domains to the next
/// hop. Each one the hop accepts is recorded durably (a checkpoint that
/// resumes after the chain) before anything else, so a crash never sends it
/// to that hop twice.
fn deliver_remote(
    ctx: &Context,
    id: &QueueId,
    progress: &mut Progress,
    header: &Header,
    out: &crate::outbound::Outbound,
    local: &[String],
) -> Result<(), spool::Error> {
    let routes = &progress.routes;
    let remote: Vec<(String, crate::config::Route)> = progress
        .state
        .envelope
        .recipients
        .iter()
        .filter(|r| r.state == RecipientState::Pending)
        .filter(|r| !local.iter().any(|d| d.eq_ignore_ascii_case(r.domain())))
        .filter_map(|r| {
            let chosen = routes
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&r.address))
                .map(|(_, route)| match route {
                    finaldot_sdk::wire::Route::Smarthost => crate::config::Route::Smarthost,
                    finaldot_sdk::wire::Route::Mx => crate::config::Route::Mx,
                });
            let route = chosen.unwrap_or_else(|| out.default_route());
            (route != crate::config::Route::None).then(|| (r.address.clone(), route))
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
        id,
        header,
        progress.body_offset,
        u64::MAX,
    )?);
    let mail_from = progress.state.envelope.mail_from.clone();
    let chain_end = progress.chain.len() as u32;
    let results = out.deliver(&mail_from, &remote, &message, &mut |accepted, note| {
        for r in progress.state.envelope.recipients.iter_mut() {
            if accepted.contains(&r.address) {
                r.state = RecipientState::Delivered {
                    note: note.to_string(),
                };
            }
        }
        progress.next_stage = chain_end;
        ctx.spool.save_progress(id, progress)
    });
    for (address, outcome) in results {
        let Some(r) = progress
            .state
            .envelope
            .recipients
            .iter_mut()
            .find(|r| r.address == address)
        else {
            continue;
        };
        r.state = match outcome {
            crate::outbound::Outcome::Delivered(note) => RecipientState::Delivered { note },
            crate::outbound::Outcome::Deferred(reason) => RecipientState::Deferred { reason },
            crate::outbound::Outcome::Failed { status, reason } => {
                RecipientState::Failed { status, reason }
            }
        };
    }
    Ok(())
}

/// Reports failures, logs every recipient's outcome, removes the message.
fn finish(
    ctx: &Context,
    id: &QueueId,
    progress: &mut Progress,
    header: &Header,
) -> Result<(), spool::Error> {
    let notified = notify_failures(ctx, id, progress, header)?;
    let m = crate::metrics::global();
    for r in &progress.state.envelope.recipients {
        match &r.state {
            RecipientState::Delivered { note } => {
                m.deliveries.inc();
                info!(to = %r.address, note = %note, "delivered")
            }
            RecipientState::Failed { status, reason } => {
                m.bounces.inc();
                info!(to = %r.address, status = %status, reason = %reason, "failed")
            }
            RecipientState::Discarded { reason } => {
                m.discards.inc();
                info!(to = %r.address, reason = %reason, "discarded")
            }
            RecipientState::Pending | RecipientState::Deferred { .. } => {}
        }
    }
    // A removal lost in a crash re-runs the message from its last checkpoint,
    // which the stages tolerate (local delivery finds its earlier files); but a
    // DSN must not go out twice, so after one the removal is made durable.
    ctx.spool.complete(id, notified)?;
    info!(attempts = progress.attempts, "done, removed from the queue");
    Ok(())
}

/// Sends one DSN for every failed recipient not yet reported; true if it sent one.
fn notify_failures(
    ctx: &Context,
    id: &QueueId,
    progress: &mut Progress,
    header: &Header,
) -> Result<bool, spool::Error> {
    let fresh: Vec<DsnRecipient> = progress
        .state
        .envelope
        .recipients
        .iter()
        .filter(|r| !progress.notified.contains(&r.address))
        .filter_map(|r| match &r.state {
            RecipientState::Failed { status, reason } => Some(DsnRecipient {
                recipient: r.clone(),
                status: status.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        })
        .collect();
    if fresh.is_empty() {
        return Ok(false);
    }
    send_dsn(ctx, id, progress, header, DsnKind::Failed, &fresh)?;
    progress
        .notified
        .extend(fresh.into_iter().map(|r| r.recipient.address));
    Ok(true)
}

fn send_dsn(
    ctx: &Context,
    id: &QueueId,
    progress: &Progress,
    header: &Header,
    kind: DsnKind,
    recipients: &[DsnRecipient],
) -> Result<(), spool::Error> {
    let sender = &progress.state.envelope.mail_from;
    if sender.is_empty() {
        info!(
            recipients = recipients.len(),
            "not sending a DSN: the message has the null sender <>"
        );
        return Ok(());
    }
    let spool = &ctx.spool;
    // The original header block, for the report (without it if unreadable).
    let mut original = spool
        .read_message_range(QueueState::Active, id, header, 0, progress.body_offset)
        .unwrap_or_default();
    // The blank line that ends the header block is not part of the headers.
    while original.ends_with(b"\r\n\r\n") || original.ends_with(b"\n\n") {
        original.pop();
        if original.ends_with(b"\r") {
            original.pop();
        }
    }
    let now = unix_now();
    let settings = ctx.settings();
    let hostname = &settings.hostname;
    let msg = dsn::build(
        kind,
        hostname,
        id.as_str(),
        sender,
        progress.queued_at,
        now,
        recipients,
        &original,
    );
    let env = spool::Envelope {
        mail_from: String::new(),
        rcpt_to: vec![sender.clone()],
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: hostname.clone(),
        protocol: "local".into(),
        received_at: now,
        body_8bit: true,
        smtputf8: !sender.is_ascii(),
        tls: None,
    };
    let mut w = spool.begin(&env)?;
    w.write(&msg)?;
    let dsn_id = spool.commit_blocking(w.finish()?)?;
    crate::metrics::global().dsns.inc();
    info!(dsn_queue_id = %dsn_id, to = %sender, kind = ?kind, recipients = recipients.len(), "DSN queued for the sender");
    Ok(())
}

/// Exponential backoff with ±10 % jitter, between the configured bounds.
fn backoff(ctx: &Context, id: &QueueId, attempts: u32) -> u64 {
    let settings = ctx.settings();
    let cfg = &settings.config;
    let min = cfg.retry_min.as_secs().max(1);
    let base = min
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(cfg.retry_max.as_secs().max(min));
    let spread = base / 5;
    if spread == 0 {
        return base;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, attempts, std::time::SystemTime::now()).hash(&mut h);
    base - spread / 2 + h.finish() % (spread + 1)
}

/// Defers the message (or bounces what is left, past the queue lifetime).
fn defer(
    ctx: &Context,
    id: &QueueId,
    progress: &mut Progress,
    header: &Header,
    hint_secs: Option<u64>,
) -> Result<(), spool::Error> {
    let settings = ctx.settings();
    let cfg = &settings.config;
    let now = unix_now();
    let age = now.saturating_sub(progress.queued_at);
    if age >= cfg.max_queue_lifetime.as_secs() {
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
        return finish(ctx, id, progress, header);
    }
    // Recipients already failed are reported now, not at the very end.
    notify_failures(ctx, id, progress, header)?;
    if let Some(after) = cfg.delay_warning {
        if !progress.delay_warned && age >= after.as_secs() {
            let delayed: Vec<DsnRecipient> = progress
                .state
                .envelope
                .recipients
                .iter()
                .filter(|r| is_open(r))
                .map(|r| DsnRecipient {
                    recipient: r.clone(),
                    status: "4.4.7".into(),
                    reason: progress
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "delivery temporarily failed".into()),
                })
                .collect();
            if !delayed.is_empty() {
                send_dsn(ctx, id, progress, header, DsnKind::Delayed, &delayed)?;
            }
            progress.delay_warned = true;
        }
    }
    let delay = hint_secs.unwrap_or_else(|| backoff(ctx, id, progress.attempts));
    progress.next_attempt = now + delay;
    ctx.spool.save_progress(id, progress)?;
    ctx.spool.defer(id, progress.next_attempt)?;
    crate::metrics::global().deferrals.inc();
    info!(
        delay_secs = delay,
        attempts = progress.attempts,
        reason = progress.last_error.as_deref().unwrap_or(""),
        "deferred"
    );
    Ok(())
}
