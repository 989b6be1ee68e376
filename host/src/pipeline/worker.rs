//! One message through the chain, in steps: load the attempt (claim, queue
//! file, progress, body), run each stage (call the plugin, apply its
//! changes, apply its verdict, checkpoint), then settle (hand what is left
//! to the next hop through [`Delivery`](crate::delivery::Delivery), fail what nobody took) and complete
//! the message or defer it.
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
//! message never loops forever. Recipients a stage marks deferred are retried
//! from that stage. At the end of the chain a recipient still open fails with
//! `5.1.1`; past the queue lifetime, deferred recipients fail with `5.4.7`.
//! Failures are reported once, in one DSN per attempt, never to `<>`.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use finaldot_sdk::wire::{
    Change, DsnNotify, DsnRcpt, DsnRequest, DsnRet, Listener, MessageInput, Recipient,
    RecipientState, Route, Verdict, ABI_VERSION,
};
use tracing::{error, info, info_span, warn};

use super::chain::{snapshot, SharedChain, Stage};
use super::dsn::{self, DsnKind, DsnRecipient};
use super::Settings;
use crate::delivery::{group_by, Handoff};
use crate::metrics;
use crate::plugins::{Body, Fault, PluginError};
use crate::spool::{self, Progress, QueueFile, QueueId, QueueState, Spool, StageRecord};
use crate::{read_clone, unix_now};

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

/// One attempt at one message: what the steps below share.
struct Attempt {
    /// The message's queue id.
    id: QueueId,
    /// Its queue file (envelope, where the message lies).
    queued: QueueFile,
    /// Where the pipeline stands with it; saved at every checkpoint.
    progress: Progress,
    /// The body plugins may read.
    body: Body,
    /// The body's length.
    body_len: u64,
    /// The first stage that deferred a recipient in this attempt (the retry
    /// resumes there).
    deferred_from: Option<u32>,
}

/// What the attempt does after a stage.
enum Flow {
    /// The next stage (or settling, after the last).
    Next,
    /// Stop: the message was held or deferred.
    Stop,
}

fn run(ctx: &Context, id: &QueueId) -> Result<(), spool::Error> {
    // One chain for the whole attempt, even if a reload replaces it meanwhile.
    let stages = snapshot(&ctx.chain);
    if stages.is_empty() && !ctx.settings().delivery.delivers_local() {
        // No plugin, and nothing delivers local mail: the message waits in
        // the queue, untouched.
        return Ok(());
    }
    let Some(mut attempt) = load_attempt(ctx, id, &stages)? else {
        return Ok(());
    };
    while (attempt.progress.next_stage as usize) < stages.len() {
        let stage = &stages[attempt.progress.next_stage as usize];
        if let Flow::Stop = run_stage(ctx, &mut attempt, stage, stages.len() as u32)? {
            return Ok(());
        }
    }
    settle(ctx, &mut attempt)
}

/// Claims the message and reads what the attempt needs: its queue file, its
/// progress (or a fresh one), its body. `None` when there is nothing to do
/// (another worker claimed it, or its file is unreadable and was quarantined).
fn load_attempt(
    ctx: &Context,
    id: &QueueId,
    stages: &[Arc<Stage>],
) -> Result<Option<Attempt>, spool::Error> {
    let spool = &ctx.spool;
    if spool.claim(id)?.is_none() {
        return Ok(None);
    }
    let (file, queued) = match spool.open_queued(QueueState::Active, id) {
        Ok(q) => q,
        Err(e) => {
            warn!(reason = %e, "unreadable queue file moved to corrupt/");
            spool.quarantine(QueueState::Active, id)?;
            return Ok(None);
        }
    };
    let mut progress = match spool.load_progress(id) {
        Ok(Some(p)) => p,
        Ok(None) => spool.initial_progress_of(&file, &queued)?,
        Err(e) => {
            // Never let a bad record stop a message: keep it for inspection and
            // start over from the first stage (stages are idempotent).
            let kept = spool.quarantine_progress(id);
            error!(error = %e, kept = %kept.display(), "progress record unreadable; the message starts over from its first stage");
            spool.initial_progress_of(&file, &queued)?
        }
    };
    progress.attempts += 1;
    progress.hold_reason = None;
    for r in &mut progress.state.envelope.recipients {
        if matches!(r.state, RecipientState::Deferred { .. }) {
            r.state = RecipientState::Pending;
        }
    }
    if progress.auth.is_none() {
        // The verifier alone, not a copy of every setting, for each message.
        let verifier = {
            let s = ctx.settings.read().unwrap_or_else(|p| p.into_inner());
            s.verifier
                .clone()
                .filter(|_| is_inbound(&queued, &s.trusted_networks))
        };
        if let Some(verifier) = verifier {
            authenticate(ctx, id, &queued, &mut progress, &verifier)?;
        }
    }
    let file = Arc::new(file);
    let body_len = queued.message_len.saturating_sub(progress.body_offset);
    let body = Body::File {
        file,
        offset: queued.message_offset + progress.body_offset,
        len: body_len,
    };
    let names: Vec<String> = stages.iter().map(|s| s.spec.name.clone()).collect();
    progress.next_stage = resume_at(&progress, &names);
    progress.chain = names;
    Ok(Some(Attempt {
        id: id.clone(),
        queued,
        progress,
        body,
        body_len,
        deferred_from: None,
    }))
}

/// Whether a message is verified as inbound mail: it came to the MX
/// listener from a client that did not authenticate (submitted mail is
/// ours to sign; a DSN is our own) and is not in `[auth] trusted_networks`
/// (local programs relaying through the MX, loopback by default).
fn is_inbound(queued: &QueueFile, trusted: &[ipnet::IpNet]) -> bool {
    let env = &queued.envelope;
    // The implicit-TLS listener runs the MX's session (no AUTH): its mail
    // is inbound too.
    matches!(env.listener, Listener::Smtp | Listener::ImplicitTls)
        && env.auth.is_none()
        && !from_trusted(env, trusted)
}

/// Whether the client was in `[auth] trusted_networks`.
fn from_trusted(env: &spool::Envelope, trusted: &[ipnet::IpNet]) -> bool {
    let ip = env.client_ip.to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// Verifies SPF, DKIM, DMARC and ARC once per message, before the first
/// stage: removes any `Authentication-Results` field claiming our
/// authserv-id, puts ours at the top, keeps the results for the plugins
/// and checkpoints them (a retry never verifies again, so a plugin's
/// change cannot turn a pass into a fail).
fn authenticate(
    ctx: &Context,
    id: &QueueId,
    queued: &QueueFile,
    progress: &mut Progress,
    verifier: &crate::auth::Verifier,
) -> Result<(), spool::Error> {
    use crate::auth::verify;
    let raw = ctx
        .spool
        .read_message_range(QueueState::Active, id, queued, 0, u64::MAX)?;
    let env = &queued.envelope;
    let started = std::time::Instant::now();
    let facts = verifier.verify(
        &verify::Envelope {
            client_ip: env.client_ip,
            helo: &env.helo,
            mail_from: &env.mail_from,
        },
        &raw,
    );
    let summary = format!(
        "spf={} dkim={} dmarc={} arc={}",
        facts.spf.result.as_str(),
        facts.dkim_result().as_str(),
        facts.dmarc.result.as_str(),
        facts.arc.as_str()
    );
    let removed = progress.state.headers.len();
    progress
        .state
        .headers
        .retain(|h| !verify::claims(h, verifier.authserv_id()));
    let removed = removed - progress.state.headers.len();
    if removed > 0 {
        warn!(
            removed,
            "removed Authentication-Results fields that claimed our authserv-id"
        );
    }
    progress.state.headers.insert(
        0,
        finaldot_sdk::wire::Header::new(
            "Authentication-Results",
            verify::header_value(&facts, &env.mail_from),
        ),
    );
    info!(
        micros = started.elapsed().as_micros() as u64,
        spf_domain = %facts.spf.domain,
        dmarc_domain = %facts.dmarc.domain,
        dmarc_policy = facts.dmarc.policy.as_str(),
        "authenticated: {summary}"
    );
    record(
        progress,
        0,
        "(auth)",
        "mail-auth".to_string(),
        format!(
            "{summary}{}",
            if removed > 0 {
                format!("; {removed} forged Authentication-Results removed")
            } else {
                String::new()
            }
        ),
    );
    progress.auth = Some(facts);
    ctx.spool.save_progress(id, progress)
}

/// Runs the stage at `attempt.progress.next_stage`: calls its plugin, applies
/// what it returned, checkpoints.
// Long on purpose: one stage read top to bottom (plugin, input, call, metrics, changes, verdict, checkpoint).
fn run_stage(
    ctx: &Context,
    attempt: &mut Attempt,
    stage: &Stage,
    total: u32,
) -> Result<Flow, spool::Error> {
    let i = attempt.progress.next_stage;
    let name = &stage.spec.name;
    let plugin = match stage.current() {
        Ok(p) => p,
        Err(why) => {
            let e = format!("plugin {name} is not available: {why}");
            warn!(plugin = %name, "{e}; message deferred");
            attempt.progress.last_error = Some(e);
            defer(ctx, attempt, None)?;
            return Ok(Flow::Stop);
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
                return unavailable(ctx, attempt, name, &e.version, why);
            }
            m.plugin_faults.get_or_create(&l).inc();
            return fault(ctx, attempt, name, &e);
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
    if let Flow::Stop = apply_verdict(ctx, attempt, name, verdict, total)? {
        return Ok(Flow::Stop);
    }
    // The checkpoint. Skipped when there is nothing new to keep (a stage
    // that changed nothing; re-running it after a crash gives the same
    // result) and after the last stage (settling right after either
    // completes the message or saves it on deferral).
    let last = attempt.progress.next_stage >= total;
    if !result.output.changes.is_empty() && !last {
        ctx.spool.save_progress(&attempt.id, &attempt.progress)?;
    }
    Ok(Flow::Next)
}

/// Adds a stage's line to the message's history (`queue show`).
fn record(progress: &mut Progress, stage: u32, plugin: &str, version: String, outcome: String) {
    progress.stages.push(StageRecord {
        stage,
        plugin: plugin.to_string(),
        version,
        outcome,
        at: unix_now(),
    });
}

/// A stage that could not finish because a service it needed did not
/// answer: deferred, with the reason, and not counted as a fault (a Redis
/// that is down for an hour must not get the queue held).
fn unavailable(
    ctx: &Context,
    attempt: &mut Attempt,
    name: &str,
    version: &str,
    why: &str,
) -> Result<Flow, spool::Error> {
    let i = attempt.progress.next_stage;
    let progress = &mut attempt.progress;
    progress.last_error = Some(format!("plugin {name}: {why}"));
    record(
        progress,
        i,
        name,
        version.to_string(),
        format!("deferred: {why}"),
    );
    warn!(plugin = %name, "{why}; message deferred");
    defer(ctx, attempt, None)?;
    Ok(Flow::Stop)
}

/// A plugin fault: deferred, or held after `max_faults` in a row.
fn fault(
    ctx: &Context,
    attempt: &mut Attempt,
    name: &str,
    e: &PluginError,
) -> Result<Flow, spool::Error> {
    let i = attempt.progress.next_stage;
    let progress = &mut attempt.progress;
    progress.faults += 1;
    progress.last_error = Some(e.to_string());
    record(
        progress,
        i,
        name,
        e.version.clone(),
        format!("fault: {}", e.fault),
    );
    if progress.faults >= ctx.settings().config.max_faults {
        let reason = format!("{} consecutive plugin faults; last: {e}", progress.faults);
        warn!(plugin = %name, "{reason}; message held");
        progress.hold_reason = Some(reason);
        hold(ctx, attempt)?;
        return Ok(Flow::Stop);
    }
    warn!(plugin = %name, error = %e, faults = progress.faults, "plugin fault; message deferred");
    defer(ctx, attempt, None)?;
    Ok(Flow::Stop)
}

/// Applies a stage's changes (routes and per-recipient senders are kept
/// beside the state); true when they deferred a recipient that was not
/// deferred before.
fn apply_changes(progress: &mut Progress, changes: &[Change]) -> bool {
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

/// How the stage history records a bounce verdict (its outcome's prefix).
const BOUNCED: &str = "bounce:";

/// A verdict in a few words, for the log and the stage history.
fn verdict_text(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Continue => "continue".to_string(),
        Verdict::Discard { reason } => format!("discard: {reason}"),
        Verdict::Hold { reason } => format!("hold: {reason}"),
        Verdict::Bounce { code, status, text } => format!("{BOUNCED} {code} {status} {text}"),
        Verdict::Defer { reason, .. } => format!("defer: {reason}"),
    }
}

/// What a verdict does to the message (Postfix's after-queue verbs).
fn apply_verdict(
    ctx: &Context,
    attempt: &mut Attempt,
    name: &str,
    verdict: Verdict,
    total: u32,
) -> Result<Flow, spool::Error> {
    let progress = &mut attempt.progress;
    let i = progress.next_stage;
    match verdict {
        Verdict::Continue => progress.next_stage = i + 1,
        Verdict::Discard { reason } => {
            close_open(
                progress,
                RecipientState::Discarded {
                    reason: format!("{name}: {reason}"),
                },
            );
            progress.next_stage = total;
        }
        Verdict::Hold { reason } => {
            progress.next_stage = i + 1;
            info!(plugin = %name, reason = %crate::Printable(&reason), "held");
            progress.hold_reason = Some(format!("{name}: {reason}"));
            hold(ctx, attempt)?;
            return Ok(Flow::Stop);
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
        }
        Verdict::Defer {
            reason,
            retry_after_secs,
        } => {
            progress.last_error = Some(format!("{name}: {reason}"));
            defer(ctx, attempt, retry_after_secs)?;
            return Ok(Flow::Stop);
        }
    }
    Ok(Flow::Next)
}

/// Puts the message on hold for an administrator, its progress saved first.
fn hold(ctx: &Context, attempt: &Attempt) -> Result<(), spool::Error> {
    ctx.spool.save_progress(&attempt.id, &attempt.progress)?;
    ctx.spool.hold(&attempt.id)?;
    metrics::global().holds.inc();
    Ok(())
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

/// The end of the chain: hand what is left with a route to the next hop
/// (an MTA or the LMTP server), fail what nobody took, and either complete
/// the message or defer what is left.
fn settle(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
    let settings = ctx.settings();
    deliver_next_hop(ctx, attempt, &settings)?;
    let progress = &mut attempt.progress;
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
    if let Some(why) = first_deferred {
        // Only outbound recipients deferred: the retry skips the chain.
        progress.next_stage = attempt.deferred_from.unwrap_or(progress.chain.len() as u32);
        progress.last_error = Some(why);
        return defer(ctx, attempt, None);
    }
    complete(ctx, attempt)
}

/// Hands the recipients still pending that have a route (outside the local
/// domains by `[outbound] route`, inside them by `[lmtp]`, anywhere by a
/// plugin's choice) to the next hop. Each one the hop accepts is recorded
/// durably (a checkpoint that resumes after the chain) before anything
/// else, so a crash never sends it to that hop twice.
// Long on purpose: routing, the message's bytes, one transaction per
// sender and the durable record of each acceptance go together (a record
// must be written before the next transaction starts).
fn deliver_next_hop(
    ctx: &Context,
    attempt: &mut Attempt,
    settings: &Settings,
) -> Result<(), spool::Error> {
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

/// The message is settled for good: reports failures, logs and counts
/// every recipient's outcome, removes the message from the queue.
fn complete(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
    if let Some(why) = forged_sender(attempt) {
        if fresh_failures(&attempt.progress).next().is_some() {
            return withhold_dsn(ctx, attempt, &why);
        }
    }
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
            RecipientState::Pending | RecipientState::Deferred { .. } => {}
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

/// Why a report to this message's sender would likely be backscatter:
/// its envelope sender failed SPF or its From failed DMARC.
fn forged_sender(attempt: &Attempt) -> Option<String> {
    attempt.progress.auth.as_ref()?.sender_forged()
}

/// Whether a failure report may carry the whole message back (RET=FULL):
/// only to a sender shown to be who it claims (it authenticated on the
/// submission listener or sent from `trusted_networks`, or its envelope
/// sender passed SPF, or its From passed DMARC), and only when no plugin
/// refused the message by its verdict (a spam or virus verdict must not
/// mail the content to an address the spammer chose). Otherwise the
/// report carries the header block only.
fn may_return_content(queued: &QueueFile, progress: &Progress, trusted: &[ipnet::IpNet]) -> bool {
    let refused = progress
        .stages
        .iter()
        .any(|s| s.outcome.starts_with(BOUNCED));
    let env = &queued.envelope;
    let vouched = env.auth.is_some() || from_trusted(env, trusted);
    let shown = vouched
        || progress.auth.as_ref().is_some_and(|a| {
            a.sender_forged().is_none()
                && (a.spf.result == finaldot_sdk::wire::AuthResult::Pass
                    || a.dmarc.result == finaldot_sdk::wire::AuthResult::Pass)
        });
    shown && !refused
}

/// The recipients that failed and were not reported to the sender yet.
fn fresh_failures(p: &Progress) -> impl Iterator<Item = &Recipient> {
    p.state
        .envelope
        .recipients
        .iter()
        .filter(|r| matches!(r.state, RecipientState::Failed { .. }))
        .filter(|r| !p.notified.contains(&r.address))
}

/// Instead of a DSN to a forged sender: the failures are marked reported
/// (none will ever be sent), and the message is held for an administrator
/// or removed, as configured. `queue show` gives the reason.
fn withhold_dsn(ctx: &Context, attempt: &mut Attempt, why: &str) -> Result<(), spool::Error> {
    let progress = &mut attempt.progress;
    let failed: Vec<String> = fresh_failures(progress)
        .map(|r| r.address.clone())
        .collect();
    let sender = progress.state.envelope.mail_from.clone();
    progress.notified.extend(failed.iter().cloned());
    let forged_sender = ctx.settings().forged_sender;
    let action = match forged_sender {
        crate::config::ForgedSender::Hold => "held",
        crate::config::ForgedSender::Drop => "dropped",
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
    metrics::global().dsns_withheld.inc();
    match forged_sender {
        crate::config::ForgedSender::Hold => {
            progress.hold_reason = Some(reason);
            hold(ctx, attempt)
        }
        crate::config::ForgedSender::Drop => complete(ctx, attempt),
    }
}

/// The client's DSN request as it applies to the recipients as they stand
/// now: each recipient (a rewritten one through its original address) with
/// its RCPT's NOTIFY and ORCPT. Empty once a plugin changed the envelope
/// sender (a list): the request was the original sender's, and reports now
/// go to someone else (RFC 3461 §6.2.7).
fn dsn_request(queued: &spool::Envelope, progress: &Progress) -> DsnRequest {
    let asked = &queued.dsn;
    if asked.is_empty() || progress.state.envelope.mail_from != queued.mail_from {
        return DsnRequest::default();
    }
    DsnRequest {
        ret: asked.ret,
        envid: asked.envid.clone(),
        recipients: progress
            .state
            .envelope
            .recipients
            .iter()
            .filter_map(|r| {
                let given = asked.recipient(r.original.as_deref().unwrap_or(&r.address))?;
                Some(DsnRcpt {
                    address: r.address.clone(),
                    ..given.clone()
                })
            })
            .collect(),
    }
}

/// What `r`'s RCPT asked with NOTIFY (`None`: nothing, the defaults apply:
/// failures and delays reported, successes not).
fn notify_of(request: &DsnRequest, r: &Recipient) -> Option<DsnNotify> {
    request.recipient(&r.address).and_then(|d| d.notify)
}

/// `r`'s block in a report: its status and reason, the ORCPT its RCPT gave,
/// whether it was relayed rather than delivered.
fn report_line(
    request: &DsnRequest,
    progress: &Progress,
    r: &Recipient,
    status: &str,
    reason: &str,
) -> DsnRecipient {
    DsnRecipient {
        recipient: r.clone(),
        status: status.to_string(),
        reason: reason.to_string(),
        orcpt: request.recipient(&r.address).and_then(|d| d.orcpt.clone()),
        relayed: progress.relayed.contains(&r.address),
    }
}

/// Sends the reports due now: one DSN for the failed recipients not yet
/// reported whose NOTIFY asks for failures (the default), one for the
/// delivered recipients whose NOTIFY=SUCCESS asks for it. Every finished
/// recipient is marked reported either way. True if it sent one.
fn notify_failures(ctx: &Context, attempt: &mut Attempt) -> Result<bool, spool::Error> {
    let progress = &attempt.progress;
    let request = dsn_request(&attempt.queued.envelope, progress);
    let line = |r: &Recipient, status: &str, reason: &str| {
        report_line(&request, progress, r, status, reason)
    };
    // A success report to a sender authentication shows forged would be
    // backscatter too.
    let forged = forged_sender(attempt).is_some();
    let mut failed = Vec::new();
    let mut succeeded = Vec::new();
    let mut silent = Vec::new();
    for r in progress.state.envelope.recipients.iter() {
        if progress.notified.contains(&r.address) {
            continue;
        }
        let notify = notify_of(&request, r);
        match &r.state {
            RecipientState::Failed { status, reason } => {
                if notify.is_none_or(|n| n.failure) {
                    failed.push(line(r, status, reason));
                } else {
                    silent.push(r.address.clone());
                }
            }
            RecipientState::Delivered { note } if notify.is_some_and(|n| n.success) => {
                if forged {
                    silent.push(r.address.clone());
                } else {
                    succeeded.push(line(r, "2.0.0", note));
                }
            }
            _ => {}
        }
    }
    if !silent.is_empty() {
        info!(recipients = ?silent, "no DSN for these: NOTIFY did not ask for it, or the sender is forged");
        attempt.progress.notified.extend(silent);
    }
    let mut sent = false;
    for (kind, lines) in [(DsnKind::Failed, failed), (DsnKind::Success, succeeded)] {
        if lines.is_empty() {
            continue;
        }
        send_dsn(ctx, attempt, &request, kind, &lines)?;
        sent = true;
        attempt
            .progress
            .notified
            .extend(lines.into_iter().map(|r| r.recipient.address));
    }
    Ok(sent)
}

/// Queues RFC 3464 reports about `recipients`: one to each envelope sender
/// among them (the message's, or a recipient's own: VERP). `request` is
/// [`dsn_request`]'s.
fn send_dsn(
    ctx: &Context,
    attempt: &Attempt,
    request: &DsnRequest,
    kind: DsnKind,
    recipients: &[DsnRecipient],
) -> Result<(), spool::Error> {
    let progress = &attempt.progress;
    let groups = group_by(recipients, |r| progress.sender_of(&r.recipient.address));
    for (sender, lines) in groups {
        let lines: Vec<DsnRecipient> = lines.into_iter().cloned().collect();
        send_dsn_to(ctx, attempt, request, kind, sender, &lines)?;
    }
    Ok(())
}

/// Queues one RFC 3464 report to `sender` (never to `<>`).
fn send_dsn_to(
    ctx: &Context,
    attempt: &Attempt,
    request: &DsnRequest,
    kind: DsnKind,
    sender: &str,
    recipients: &[DsnRecipient],
) -> Result<(), spool::Error> {
    let progress = &attempt.progress;
    if sender.is_empty() {
        info!(
            recipients = recipients.len(),
            "not sending a DSN: the message has the null sender <>"
        );
        return Ok(());
    }
    let spool = &ctx.spool;
    let settings = ctx.settings();
    // A failure report returns the whole message when the sender asked
    // RET=FULL and is known to be who it says, else the original header
    // block (without it if unreadable).
    let full = kind == DsnKind::Failed
        && request.ret == Some(DsnRet::Full)
        && may_return_content(&attempt.queued, progress, &settings.trusted_networks);
    let end = if full { u64::MAX } else { progress.body_offset };
    let mut original = spool
        .read_message_range(QueueState::Active, &attempt.id, &attempt.queued, 0, end)
        .unwrap_or_default();
    if !full {
        // The blank line that ends the header block is not part of the headers.
        while original.ends_with(b"\r\n\r\n") || original.ends_with(b"\n\n") {
            original.pop();
            if original.ends_with(b"\r") {
                original.pop();
            }
        }
    }
    let now = unix_now();
    let hostname = &settings.hostname;
    let about = dsn::About {
        hostname,
        queue_id: attempt.id.as_str(),
        sender,
        envid: request.envid.as_deref(),
        arrival: progress.queued_at,
        now,
    };
    let returned = if full {
        dsn::Returned::Full(&original)
    } else {
        dsn::Returned::Headers(&original)
    };
    let msg = dsn::build(kind, &about, recipients, returned);
    let env = spool::Envelope {
        mail_from: String::new(),
        rcpt_to: vec![sender.to_string()],
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        client_port: 0,
        listener: Listener::Local,
        helo: hostname.clone(),
        protocol: "local".into(),
        received_at: now,
        body_8bit: true,
        smtputf8: !sender.is_ascii(),
        tls: None,
        auth: None,
        dsn: DsnRequest::default(),
    };
    let mut w = spool.begin(&env)?;
    w.write(&msg)?;
    let dsn_id = spool.commit_blocking(w.finish()?)?;
    metrics::global().dsns.inc();
    info!(dsn_queue_id = %dsn_id, to = %crate::Printable(sender), kind = ?kind, recipients = recipients.len(), "DSN queued for the sender");
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
fn defer(ctx: &Context, attempt: &mut Attempt, hint_secs: Option<u64>) -> Result<(), spool::Error> {
    let settings = ctx.settings();
    let cfg = &settings.config;
    let now = unix_now();
    let age = now.saturating_sub(attempt.progress.queued_at);
    if age >= cfg.max_queue_lifetime.as_secs() {
        let why = attempt
            .progress
            .last_error
            .clone()
            .unwrap_or_else(|| "temporary failures".into());
        close_open(
            &mut attempt.progress,
            RecipientState::Failed {
                status: "5.4.7".into(),
                reason: format!("delivery time expired after {age}s in the queue: {why}"),
            },
        );
        warn!(
            age_secs = age,
            "queue lifetime exceeded; bouncing what is left"
        );
        return complete(ctx, attempt);
    }
    // Recipients already failed are reported now, not at the very end
    // (to a forged sender never: they wait for the message's end).
    let forged = forged_sender(attempt);
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
    let delay = hint_secs.unwrap_or_else(|| backoff(ctx, &attempt.id, progress.attempts));
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

/// The one delay warning (RFC 3464 `delayed`) for the recipients still open.
fn warn_of_delay(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
    let progress = &attempt.progress;
    let request = dsn_request(&attempt.queued.envelope, progress);
    // Only where NOTIFY asked for DELAY, or said nothing (the default).
    let delayed: Vec<DsnRecipient> = progress
        .state
        .envelope
        .recipients
        .iter()
        .filter(|r| is_open(r))
        .filter(|r| notify_of(&request, r).is_none_or(|n| n.delay))
        .map(|r| {
            let why = progress.last_error.as_deref();
            report_line(
                &request,
                progress,
                r,
                "4.4.7",
                why.unwrap_or("delivery temporarily failed"),
            )
        })
        .collect();
    if !delayed.is_empty() {
        send_dsn(ctx, attempt, &request, DsnKind::Delayed, &delayed)?;
    }
    attempt.progress.delay_warned = true;
    Ok(())
}
