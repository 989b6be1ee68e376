//! Delivery status notifications (RFC 3464): `multipart/report` with a
//! human-readable part, a `message/delivery-status` part with one block per
//! recipient, and the original message: its headers (`text/rfc822-headers`)
//! or, for a failure report the sender asked `RET=FULL` of, the whole
//! message (`message/rfc822`). ENVID and ORCPT (RFC 3461) come back in
//! `Original-Envelope-Id` and `Original-Recipient`.

use finaldot_sdk::wire::{Orcpt, Recipient};

/// Whether the DSN reports final failures, a delay or success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// `Action: failed`: the message will not be delivered to these recipients.
    Failed,
    /// `Action: delayed`: still trying.
    Delayed,
    /// `Action: delivered` or `relayed`: a success the sender asked for
    /// (`NOTIFY=SUCCESS`).
    Success,
}

/// One recipient line of a DSN.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    /// The recipient as it stood (its address, and the original if rewritten).
    pub recipient: Recipient,
    /// Enhanced status code (`5.1.1`, `4.4.7`, `2.0.0`, …).
    pub status: String,
    /// Why, for Diagnostic-Code (what the next hop or the plugin said).
    pub reason: String,
    /// The ORCPT the client gave for it, if any.
    pub orcpt: Option<Orcpt>,
    /// For a success: handed to a hop that does not send DSNs (`relayed`),
    /// rather than put in the mailbox (`delivered`).
    pub relayed: bool,
}

/// What of the original message the report carries.
#[derive(Debug, Clone, Copy)]
pub enum Returned<'a> {
    /// Its header block (`text/rfc822-headers`).
    Headers(&'a [u8]),
    /// The whole message (`message/rfc822`), for `RET=FULL`.
    Full(&'a [u8]),
}

fn rfc2822(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .unwrap_or_default()
        .to_rfc2822()
}

/// One line, no CR/LF, at most `max` chars: safe inside a header or DSN field.
fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

/// What a report is about: the message and when.
#[derive(Debug, Clone, Copy)]
pub struct About<'a> {
    /// The reporting host.
    pub hostname: &'a str,
    /// The message's queue id.
    pub queue_id: &'a str,
    /// The envelope sender the report goes to.
    pub sender: &'a str,
    /// The ENVID the client gave, if any.
    pub envid: Option<&'a str>,
    /// When the message arrived (seconds since the epoch).
    pub arrival: u64,
    /// Now (seconds since the epoch).
    pub now: u64,
}

/// Builds the DSN message (CRLF lines) for `about.sender`.
// Long on purpose: the RFC 3464 report is one text, its parts in order.
pub fn build(
    kind: DsnKind,
    about: &About<'_>,
    recipients: &[DsnRecipient],
    original: Returned<'_>,
) -> Vec<u8> {
    let About {
        hostname,
        queue_id,
        sender,
        envid,
        arrival,
        now,
    } = *about;
    let boundary = format!("=_finaldot_{queue_id}_{now}");
    let (subject, intro, action) = match kind {
        DsnKind::Failed => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.\r\nIt has been returned; no further attempts will be made for them.",
            "failed",
        ),
        DsnKind::Delayed => (
            "Delayed Mail (still being retried)",
            "Your message has not yet been delivered to one or more recipients.\r\nThis is only a warning: delivery is still being attempted and you\r\ndo not need to resend it.",
            "delayed",
        ),
        DsnKind::Success => (
            "Successful Mail Delivery Report",
            "Your message was successfully delivered to the destination(s) below,\r\nas you asked (NOTIFY=SUCCESS). If it was relayed, the next system\r\ndoes not report further.",
            "delivered",
        ),
    };
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", one_line(sender, 320)));
    m.push_str(&format!("Subject: {subject}\r\n"));
    m.push_str(&format!("Date: {}\r\n", rfc2822(now)));
    m.push_str(&format!(
        "Message-ID: <{queue_id}.{now}.dsn@{hostname}>\r\n"
    ));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str(
        "Content-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    m.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n{intro}\r\n\r\n"
    ));
    for r in recipients {
        m.push_str(&format!(
            "<{}>: {}\r\n",
            one_line(&r.recipient.address, 320),
            one_line(&r.reason, 500)
        ));
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str(
        "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n",
    );
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(id) = envid {
        // The ENVID decoded (RFC 3461 §4.4: printable ASCII once decoded,
        // "due to limitations in the DSN format").
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(id, 100)));
    }
    m.push_str(&format!("X-Finaldot-Queue-ID: {queue_id}\r\n"));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(arrival)));
    for r in recipients {
        m.push_str("\r\n");
        // RFC 3464 §2.3.1: only from an ORCPT, its type and its address
        // decoded (RFC 3461 §4.2: printable ASCII once decoded).
        if let Some(o) = &r.orcpt {
            m.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                one_line(&o.addr_type, 40),
                one_line(&o.address, 500)
            ));
        }
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            one_line(&r.recipient.address, 320)
        ));
        let action = if kind == DsnKind::Success && r.relayed {
            "relayed"
        } else {
            action
        };
        m.push_str(&format!("Action: {action}\r\n"));
        m.push_str(&format!("Status: {}\r\n", one_line(&r.status, 16)));
        if let Some(orig) = &r.recipient.original {
            m.push_str(&format!(
                "X-Finaldot-Rewritten-From: {}\r\n",
                one_line(orig, 320)
            ));
        }
        m.push_str(&format!(
            "Diagnostic-Code: X-finaldot; {}\r\n",
            one_line(&r.reason, 500)
        ));
        if kind == DsnKind::Delayed {
            m.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc2822(now)));
        }
    }
    m.push_str("\r\n");

    m.push_str(&format!("--{boundary}\r\n"));
    let (description, ctype, original) = match original {
        Returned::Headers(h) => ("Message Headers", "text/rfc822-headers", h),
        Returned::Full(msg) => ("Undelivered Message", "message/rfc822", msg),
    };
    let description = match (kind, description) {
        (DsnKind::Success, "Message Headers") => "Delivered Message Headers",
        (_, "Message Headers") => "Undelivered Message Headers",
        (_, d) => d,
    };
    m.push_str(&format!(
        "Content-Description: {description}\r\nContent-Type: {ctype}\r\n\r\n"
    ));
    let mut out = m.into_bytes();
    out.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}
