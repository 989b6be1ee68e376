//! Delivery status notifications (RFC 3464): `multipart/report` with a
//! human-readable part, a `message/delivery-status` part with one block per
//! recipient, and the original message's headers (`text/rfc822-headers`).

use finaldot_sdk::wire::Recipient;

/// Whether the DSN reports final failures or a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// `Action: failed`: the message will not be delivered to these recipients.
    Failed,
    /// `Action: delayed`: still trying.
    Delayed,
}

/// One recipient line of a DSN.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    /// The recipient as it stood (its address, and the original if rewritten).
    pub recipient: Recipient,
    /// Enhanced status code (`5.1.1`, `4.4.7`, …).
    pub status: String,
    /// Why, for Diagnostic-Code.
    pub reason: String,
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

/// Builds the DSN message (CRLF lines) for `sender` about `queue_id`.
#[allow(clippy::too_many_arguments)]
// Long on purpose: the RFC 3464 report is one text, its parts in order.
pub fn build(
    kind: DsnKind,
    hostname: &str,
    queue_id: &str,
    sender: &str,
    arrival: u64,
    now: u64,
    recipients: &[DsnRecipient],
    original_headers: &[u8],
) -> Vec<u8> {
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
    m.push_str(&format!("X-Finaldot-Queue-ID: {queue_id}\r\n"));
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc2822(arrival)));
    for r in recipients {
        m.push_str("\r\n");
        if let Some(orig) = &r.recipient.original {
            m.push_str(&format!(
                "Original-Recipient: rfc822; {}\r\n",
                one_line(orig, 320)
            ));
        }
        m.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            one_line(&r.recipient.address, 320)
        ));
        m.push_str(&format!("Action: {action}\r\n"));
        m.push_str(&format!("Status: {}\r\n", one_line(&r.status, 16)));
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
    m.push_str("Content-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(original_headers);
    if !original_headers.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}
