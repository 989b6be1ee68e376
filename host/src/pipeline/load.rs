//! The first step of an attempt: claim the message and read what the
//! attempt needs (its queue file, its progress or a fresh one, its body);
//! verify the mail authentication of inbound mail once, before the first
//! stage; find the stage to resume at.

use std::sync::Arc;

use finaldot_sdk::wire::{Listener, RecipientState};
use tracing::{error, info, warn};

use super::chain::Stage;
use super::rules::{record, resume_at};
use super::worker::Context;
use super::Settings;
use crate::plugins::Body;
use crate::spool::{self, Progress, QueueFile, QueueId, QueueState};

/// One attempt at one message: what the steps below share.
pub(super) struct Attempt {
    /// The settings in force when the attempt began (a reload meanwhile
    /// applies to the next attempt, never to half of this one).
    pub settings: Arc<Settings>,
    /// The message's queue id.
    pub id: QueueId,
    /// Its queue file (envelope, where the message lies).
    pub queued: QueueFile,
    /// Where the pipeline stands with it; saved at every checkpoint.
    pub progress: Progress,
    /// The body plugins may read.
    pub body: Body,
    /// The body's length.
    pub body_len: u64,
    /// The first stage that deferred a recipient in this attempt (the retry
    /// resumes there).
    pub deferred_from: Option<u32>,
    /// A stage changed the message since the last checkpoint.
    pub unsaved: bool,
}

/// Claims the message and reads what the attempt needs: its queue file, its
/// progress (or a fresh one), its body. `None` when there is nothing to do
/// (another worker claimed it, or its file is unreadable and was quarantined).
pub(super) fn load_attempt(
    ctx: &Context,
    id: &QueueId,
    stages: &[Arc<Stage>],
    settings: Arc<Settings>,
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
        let verifier = settings
            .verifier
            .as_ref()
            .filter(|_| is_inbound(&queued, &settings.trusted_networks));
        if let Some(verifier) = verifier {
            authenticate(ctx, id, &queued, &mut progress, verifier)?;
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
        settings,
        id: id.clone(),
        queued,
        progress,
        body,
        body_len,
        deferred_from: None,
        unsaved: false,
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
pub(super) fn from_trusted(env: &spool::Envelope, trusted: &[ipnet::IpNet]) -> bool {
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
