//! The administrator's view of the queue: what `finaldot queue` lists, shows
//! and changes. It works on the spool's files, so it works the same on a live
//! or a stopped daemon: every change is an atomic rename that races safely
//! with the pipeline's own claims (a message being processed, in `active/`,
//! is left alone and the command says so).

use serde::Serialize;

use finaldot_sdk::wire::RecipientState;

use crate::spool::{self, Progress, QueueId, QueueState, Spool};
use crate::unix_now;

/// One line of `queue list`.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Queue id.
    pub id: String,
    /// `incoming`, `active`, `deferred`, `hold` or `corrupt`.
    pub state: String,
    /// Seconds since it was queued.
    pub age_secs: u64,
    /// Message size in bytes.
    pub size: u64,
    /// Envelope sender (`<>` for the null sender).
    pub sender: String,
    /// Recipients not yet delivered or failed.
    pub open_recipients: Vec<String>,
    /// All recipients.
    pub recipients: usize,
    /// Next attempt (seconds since the epoch), for deferred messages.
    pub next_attempt: Option<u64>,
    /// Last error, if any.
    pub last_error: Option<String>,
    /// Why it is held, if it is.
    pub hold_reason: Option<String>,
}

/// `queue show`: an entry with its recipients' states, headers and stages.
#[derive(Debug, Clone, Serialize)]
pub struct Details {
    /// The summary.
    #[serde(flatten)]
    pub entry: Entry,
    /// `address: state` per recipient.
    pub recipient_states: Vec<(String, String)>,
    /// Headers as the pipeline stages left them.
    pub headers: Vec<(String, String)>,
    /// The stages that ran: plugin, version, outcome, time.
    pub stages: Vec<spool::StageRecord>,
    /// Delivery attempts.
    pub attempts: u32,
    /// What the client asked of DSNs (RFC 3461), as parameter lines: the
    /// MAIL FROM's, then `address: …` per recipient that had any.
    pub dsn: Vec<String>,
}

/// Why a queue command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No message with this id.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// Not a queue id.
    #[error("{0:?} is not a queue id")]
    BadId(String),
    /// A pipeline worker holds it right now.
    #[error("message {0} is being processed right now; try again in a moment")]
    Active(String),
    /// The command does not apply in this state.
    #[error("message {id} is in {state}/: {what}")]
    WrongState {
        /// Queue id.
        id: String,
        /// Where it is.
        state: String,
        /// What was asked.
        what: &'static str,
    },
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] spool::Error),
}

/// Parses an id given on the command line.
pub fn parse_id(s: &str) -> Result<QueueId, QueueError> {
    QueueId::parse(s).ok_or_else(|| QueueError::BadId(s.to_string()))
}

fn state_text(r: &RecipientState) -> String {
    match r {
        RecipientState::Pending => "pending".into(),
        RecipientState::Delivered { note } => format!("delivered ({note})"),
        RecipientState::Failed { status, reason } => format!("failed {status}: {reason}"),
        RecipientState::Deferred { reason } => format!("deferred: {reason}"),
        RecipientState::Discarded { reason } => format!("discarded: {reason}"),
        other => format!("{other:?}"),
    }
}

fn progress_of(
    spool: &Spool,
    id: &QueueId,
    state: QueueState,
) -> Result<(Progress, u64), spool::Error> {
    let header = spool.read_queue_file(state, id)?;
    let progress = match spool.load_progress(id)? {
        Some(p) => p,
        None => spool.initial_progress(state, id, &header)?,
    };
    Ok((progress, header.message_len))
}

fn entry(
    spool: &Spool,
    id: &QueueId,
    state: QueueState,
) -> Result<(Entry, Progress), spool::Error> {
    let (p, size) = progress_of(spool, id, state)?;
    let next_attempt = (state == QueueState::Deferred).then_some(p.next_attempt);
    let e = Entry {
        id: id.to_string(),
        state: state.dir_name().to_string(),
        age_secs: unix_now().saturating_sub(p.queued_at),
        size,
        sender: if p.state.envelope.mail_from.is_empty() {
            "<>".into()
        } else {
            p.state.envelope.mail_from.clone()
        },
        open_recipients: p
            .state
            .envelope
            .recipients
            .iter()
            .filter(|r| {
                matches!(
                    r.state,
                    RecipientState::Pending | RecipientState::Deferred { .. }
                )
            })
            .map(|r| r.address.clone())
            .collect(),
        recipients: p.state.envelope.recipients.len(),
        next_attempt,
        last_error: p.last_error.clone(),
        hold_reason: p.hold_reason.clone(),
    };
    Ok((e, p))
}

/// Every message in the queue, by state then age.
pub fn list(spool: &Spool) -> Result<Vec<Entry>, QueueError> {
    let mut out = Vec::new();
    for state in [
        QueueState::Active,
        QueueState::Incoming,
        QueueState::Deferred,
        QueueState::Hold,
    ] {
        for id in spool.list(state)? {
            match entry(spool, &id, state) {
                Ok((e, _)) => out.push(e),
                // It moved or finished while we looked: not an error.
                Err(_) if spool.locate(&id) != Some(state) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for id in spool.list(QueueState::Corrupt)? {
        out.push(Entry {
            id: id.to_string(),
            state: "corrupt".into(),
            age_secs: 0,
            size: std::fs::metadata(spool.path(QueueState::Corrupt, &id))
                .map(|m| m.len())
                .unwrap_or(0),
            sender: String::new(),
            open_recipients: Vec::new(),
            recipients: 0,
            next_attempt: None,
            last_error: Some("unreadable queue file, kept for inspection".into()),
            hold_reason: None,
        });
    }
    Ok(out)
}

fn locate(spool: &Spool, id: &QueueId) -> Result<QueueState, QueueError> {
    spool
        .locate(id)
        .ok_or_else(|| QueueError::NotFound(id.to_string()))
}

/// One message in detail.
pub fn show(spool: &Spool, id: &QueueId) -> Result<Details, QueueError> {
    let state = locate(spool, id)?;
    if state == QueueState::Corrupt {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state: "corrupt".into(),
            what: "the file cannot be read",
        });
    }
    let (entry, p) = entry(spool, id, state)?;
    Ok(Details {
        entry,
        recipient_states: p
            .state
            .envelope
            .recipients
            .iter()
            .map(|r| (r.address.clone(), state_text(&r.state)))
            .collect(),
        headers: p
            .state
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.text()))
            .collect(),
        stages: p.stages.clone(),
        attempts: p.attempts,
        dsn: dsn_lines(&spool.read_queue_file(state, id)?.envelope.dsn),
    })
}

/// The DSN request as `queue show` prints it.
fn dsn_lines(d: &finaldot_sdk::wire::DsnRequest) -> Vec<String> {
    let mut out = Vec::new();
    let mail = d.mail_params();
    if !mail.is_empty() {
        out.push(format!("MAIL FROM:{mail}"));
    }
    for r in &d.recipients {
        out.push(format!("<{}>:{}", r.address, r.rcpt_params()));
    }
    out
}

/// Schedules a deferred (or held) message for an immediate attempt.
pub fn retry(spool: &Spool, id: &QueueId) -> Result<(), QueueError> {
    match locate(spool, id)? {
        QueueState::Deferred | QueueState::Hold => {
            spool.requeue(id)?;
            Ok(())
        }
        QueueState::Incoming => Ok(()),
        QueueState::Active => Err(QueueError::Active(id.to_string())),
        s => Err(QueueError::WrongState {
            id: id.to_string(),
            state: s.dir_name().into(),
            what: "cannot be retried",
        }),
    }
}

/// Retries every deferred message; returns how many.
pub fn retry_all(spool: &Spool) -> Result<usize, QueueError> {
    let mut n = 0;
    for id in spool.list(QueueState::Deferred)? {
        if spool.requeue(&id)? {
            n += 1;
        }
    }
    Ok(n)
}

/// Puts a message on hold.
pub fn hold(spool: &Spool, id: &QueueId) -> Result<(), QueueError> {
    match locate(spool, id)? {
        QueueState::Hold => Ok(()),
        QueueState::Active => Err(QueueError::Active(id.to_string())),
        QueueState::Incoming | QueueState::Deferred => {
            let state = locate(spool, id)?;
            let (mut p, _) = progress_of(spool, id, state)?;
            p.hold_reason = Some("held by the administrator".into());
            spool.save_progress(id, &p)?;
            if spool.hold(id)? {
                Ok(())
            } else {
                Err(QueueError::Active(id.to_string()))
            }
        }
        s => Err(QueueError::WrongState {
            id: id.to_string(),
            state: s.dir_name().into(),
            what: "cannot be held",
        }),
    }
}

/// Releases a held message for an immediate attempt (its fault count starts over).
pub fn release(spool: &Spool, id: &QueueId) -> Result<(), QueueError> {
    let state = locate(spool, id)?;
    if state != QueueState::Hold {
        return Err(QueueError::WrongState {
            id: id.to_string(),
            state: state.dir_name().into(),
            what: "only held messages can be released",
        });
    }
    let (mut p, _) = progress_of(spool, id, state)?;
    p.faults = 0;
    p.hold_reason = None;
    spool.save_progress(id, &p)?;
    spool.requeue(id)?;
    Ok(())
}

/// Deletes a message on purpose. No DSN is sent.
pub fn delete(spool: &Spool, id: &QueueId) -> Result<(), QueueError> {
    match locate(spool, id)? {
        QueueState::Active => Err(QueueError::Active(id.to_string())),
        _ => {
            if spool.delete(id)? {
                Ok(())
            } else {
                Err(QueueError::Active(id.to_string()))
            }
        }
    }
}

/// Fails every open recipient ("bounced by the administrator") and lets the
/// pipeline send the DSN and remove the message at once.
pub fn bounce(spool: &Spool, id: &QueueId) -> Result<(), QueueError> {
    let state = locate(spool, id)?;
    match state {
        QueueState::Active => return Err(QueueError::Active(id.to_string())),
        QueueState::Corrupt | QueueState::Tmp => {
            return Err(QueueError::WrongState {
                id: id.to_string(),
                state: state.dir_name().into(),
                what: "cannot be bounced",
            })
        }
        _ => {}
    }
    let (mut p, _) = progress_of(spool, id, state)?;
    for r in p.state.envelope.recipients.iter_mut() {
        if matches!(
            r.state,
            RecipientState::Pending | RecipientState::Deferred { .. }
        ) {
            r.state = RecipientState::Failed {
                status: "5.0.0".into(),
                reason: "bounced by the administrator".into(),
            };
        }
    }
    p.next_stage = u32::MAX;
    p.hold_reason = None;
    spool.save_progress(id, &p)?;
    if state != QueueState::Incoming {
        spool.requeue(id)?;
    }
    Ok(())
}
