//! The `Received:` trace field (RFC 5321 §4.4) each accepted message starts
//! with. SECURITY: the HELO name, the TLS description and the authenticated
//! user may be the client's words: every character outside printable ASCII
//! becomes `?`, so they can never break the field.

use std::net::IpAddr;

use crate::spool::Envelope;

/// `s` with every character that is not printable ASCII (or, with
/// `spaces`, a space) replaced by `?`.
fn printable(s: &str, spaces: bool) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || (spaces && c == ' ') {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Formats the `Received:` trace header (RFC 5321 §4.4) for a new message.
pub fn received_header(env: &Envelope, hostname: &str, id: &str, auth: Option<&str>) -> String {
    let clean = |s: &str| printable(s, false);
    let ip = match env.client_ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let date = chrono::DateTime::from_timestamp(env.received_at as i64, 0)
        .unwrap_or_default()
        .to_rfc2822();
    let mut tls = env
        .tls
        .as_ref()
        .map(|t| {
            format!(
                " (using {} with cipher {})",
                printable(&t.protocol, false),
                printable(&t.cipher, false)
            )
        })
        .unwrap_or_default();
    if let Some(user) = auth {
        tls.push_str(&format!("\r\n\t(Authenticated sender: {})", clean(user)));
    }
    let mut h = format!(
        "Received: from {} ({})\r\n\tby {} (finaldot) with {}{} id {}",
        clean(&env.helo),
        ip,
        clean(hostname),
        env.protocol,
        tls,
        id
    );
    if env.rcpt_to.len() == 1 {
        h.push_str(&format!("\r\n\tfor <{}>", env.rcpt_to[0]));
    }
    h.push_str(&format!("; {date}\r\n"));
    h
}
