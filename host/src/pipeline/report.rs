//! Reports to the sender (RFC 3464 DSNs): which recipients each report
//! covers (their RCPT's NOTIFY and ORCPT, the message's RET and ENVID), how
//! much of the message it returns, and queuing it through the same spool,
//! never to `<>`. The decision not to report to a forged sender is
//! [`rules`](super::rules)'.

use std::net::{IpAddr, Ipv4Addr};

use finaldot_sdk::wire::{
    DsnNotify, DsnRcpt, DsnRequest, DsnRet, Listener, Recipient, RecipientState,
};
use tracing::info;

use super::dsn::{self, DsnKind, DsnRecipient};
use super::load::{from_trusted, Attempt};
use super::rules::{forged_sender, is_open, BOUNCED};
use super::worker::Context;
use crate::delivery::group_by;
use crate::metrics;
use crate::spool::{self, Progress, QueueFile, QueueState};
use crate::unix_now;

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

/// The client's DSN request as it applies to the recipients as they stand
/// now: each recipient (a rewritten one through its original address) with
/// its RCPT's NOTIFY and ORCPT. Empty once a plugin changed the envelope
/// sender (a list): the request was the original sender's, and reports now
/// go to someone else (RFC 3461 §6.2.7).
pub(super) fn dsn_request(queued: &spool::Envelope, progress: &Progress) -> DsnRequest {
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
pub(super) fn notify_failures(ctx: &Context, attempt: &mut Attempt) -> Result<bool, spool::Error> {
    let progress = &attempt.progress;
    let request = dsn_request(&attempt.queued.envelope, progress);
    let line = |r: &Recipient, status: &str, reason: &str| {
        report_line(&request, progress, r, status, reason)
    };
    // A success report to a sender authentication shows forged would be
    // backscatter too.
    let forged = forged_sender(progress).is_some();
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
    let settings = &attempt.settings;
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

/// The one delay warning (RFC 3464 `delayed`) for the recipients still open.
pub(super) fn warn_of_delay(ctx: &Context, attempt: &mut Attempt) -> Result<(), spool::Error> {
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
