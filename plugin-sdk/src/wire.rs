//! The ABI v1 wire types, defined once and used by both the host and the guest.
//!
//! Everything here is encoded with postcard, which is positional: fields are
//! only ever appended at the end of a struct and variants only at the end of an
//! enum, never reordered or removed. Every top-level payload starts with the ABI
//! version (`abi`), checked by the receiver. Byte fields are `serde_bytes`
//! (postcard would otherwise encode a `Vec<u8>` element by element).
//!
//! The functions that give the types meaning ([`parse_headers`],
//! [`MessageState::apply`], [`check_relative_path`]) live here too, so the host
//! and a plugin can never disagree about what a change does.

use serde::{Deserialize, Serialize};

/// The ABI version of this SDK; the host refuses a plugin that reports another.
pub const ABI_VERSION: u32 = 1;

/// The additions to ABI v1 since its first release that this SDK speaks,
/// oldest first, by the name a refusal gives: fields appended to a payload,
/// variants appended to an enum, host requests. A plugin built with this SDK
/// declares them all in [`PluginInfo::needs`] (its input decodes only when
/// the host sends every field the SDK knows, and any change, verdict or
/// request may be among its outputs); a host refuses at load a plugin that
/// needs one it does not know, naming it, instead of failing on a message
/// with a decode error. Names are only ever appended, never renamed.
pub const FEATURES: &[&str] = &[
    // RecipientState::Discarded, Change::MarkDiscarded.
    "discarded",
    // MessageInput::session (SessionFacts).
    "session-facts",
    // HostRequest::DnsLookup, HostResponse::Dns, HostErrorKind::LimitReached.
    "dns",
    // HostRequest::Http, HostResponse::Http, HostErrorKind::Timeout.
    "http",
    // MessageInput::auth (AuthFacts).
    "auth-results",
    // Route::Lmtp.
    "lmtp-route",
    // MessageInput::dsn (DsnRequest).
    "dsn",
    // Change::SetRecipientSender.
    "recipient-sender",
    // HostRequest::KvMac.
    "kv-mac",
    // The door: finaldot_on_door, DoorInput, DoorOutput.
    "door-stages",
    // HostRequest::KvIncr, HostResponse::Count.
    "kv-incr",
];

/// One header field, as it appears in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The field name, as written (compare case-insensitively).
    pub name: String,
    /// The raw value after the colon, without the final CRLF; folding is kept.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Header {
    /// A header from a name and a value (a leading space is added when missing).
    pub fn new(name: impl Into<String>, value: impl AsRef<[u8]>) -> Header {
        let value = value.as_ref();
        let mut v = Vec::with_capacity(value.len() + 1);
        if !value.starts_with(b" ") && !value.starts_with(b"\t") {
            v.push(b' ');
        }
        v.extend_from_slice(value);
        Header {
            name: name.into(),
            value: v,
        }
    }

    /// The value as text: unfolded, trimmed, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        let unfolded: Vec<u8> = self
            .value
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        String::from_utf8_lossy(&unfolded).trim().to_string()
    }

    /// True if the name matches, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Appends `Name:value\r\n` to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&self.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RecipientState {
    /// Not yet delivered or failed.
    Pending,
    /// Delivered by a plugin, or by the host to the next hop.
    Delivered {
        /// What delivered it, for the log and `queue show`.
        note: String,
    },
    /// Failed permanently; goes into the bounce.
    Failed {
        /// Enhanced status code, e.g. `5.1.1`.
        status: String,
        /// Human-readable reason.
        reason: String,
    },
    /// Failed temporarily; retried later.
    Deferred {
        /// Why.
        reason: String,
    },
    /// Dropped on purpose, not delivered: a plugin's `Discard` verdict or
    /// `mark_discarded` (a duplicate). Plugins are shown it as `Delivered`
    /// ([`MessageState::plugin_view`]), so no plugin built with an older
    /// SDK ever receives it. (Appended last.)
    Discarded {
        /// Which plugin discarded it, and why.
        reason: String,
    },
}

/// One envelope recipient and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address (`local@domain`).
    pub address: String,
    /// Its state.
    pub state: RecipientState,
    /// The address as the SMTP client gave it, when a plugin rewrote or expanded it.
    pub original: Option<String>,
}

impl Recipient {
    /// A pending recipient.
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            state: RecipientState::Pending,
            original: None,
        }
    }

    /// True while no plugin has delivered, failed or deferred it.
    pub fn is_pending(&self) -> bool {
        self.state == RecipientState::Pending
    }

    /// The local part (before the last `@`).
    pub fn local_part(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map(|(l, _)| l)
            .unwrap_or(&self.address)
    }

    /// The domain (after the last `@`), empty if none.
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// The envelope a plugin sees: the sender and every recipient with where it
/// stands (the SMTP envelope as received is the host's `spool::Envelope`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeState {
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// The recipients with their states.
    pub recipients: Vec<Recipient>,
}

/// The name [`EnvelopeState`] had before (the same type).
#[deprecated(note = "renamed EnvelopeState: the host's SMTP envelope is spool::Envelope")]
pub type Envelope = EnvelopeState;

/// The message state a plugin sees and changes: envelope and headers (the body
/// is read through the host, never copied in unasked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// The envelope.
    pub envelope: EnvelopeState,
    /// The header fields in order, duplicates kept.
    pub headers: Vec<Header>,
}

/// A change a plugin asks for. Applied in order by [`MessageState::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Change {
    /// Adds a header at the end of the header block.
    AddHeader(Header),
    /// Adds a header at the top of the header block (where trace headers go).
    PrependHeader(Header),
    /// Removes every header with this name.
    RemoveHeader {
        /// Field name, case-insensitive.
        name: String,
    },
    /// Replaces every header with this name by one (at the first one's place, or at the end).
    ReplaceHeader(Header),
    /// Adds a pending recipient (no effect if already present).
    AddRecipient {
        /// The address.
        address: String,
        /// Where it came from (e.g. the list address it was expanded from).
        original: Option<String>,
    },
    /// Removes a recipient.
    RemoveRecipient {
        /// The address.
        address: String,
    },
    /// Replaces a recipient's address, keeping its state.
    RewriteRecipient {
        /// The old address.
        from: String,
        /// The new address.
        to: String,
    },
    /// Sets the envelope sender (e.g. a list's bounce address); empty for `<>`.
    SetSender {
        /// The new reverse-path.
        address: String,
    },
    /// Marks a recipient delivered.
    MarkDelivered {
        /// The address.
        address: String,
        /// How, for the log.
        note: String,
    },
    /// Marks a recipient permanently failed (it goes into the bounce).
    MarkFailed {
        /// The address.
        address: String,
        /// Enhanced status code, e.g. `5.1.1`.
        status: String,
        /// Why.
        reason: String,
    },
    /// Marks a recipient temporarily failed (it is retried).
    MarkDeferred {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// Chooses how a recipient leaves after the chain (instead of the
    /// configuration's `[outbound] route`, or `[lmtp]` for a local domain).
    /// Recorded by the host.
    Route {
        /// The address.
        address: String,
        /// The route.
        route: Route,
    },
    /// Drops a recipient on purpose without delivering it (a duplicate, a
    /// policy): counted as discarded, never bounced. Later plugins see it as
    /// delivered. (Appended last: plugins built before it decode unchanged.)
    MarkDiscarded {
        /// The address.
        address: String,
        /// Why, for the log and `queue show`.
        reason: String,
    },
    /// Gives one recipient an envelope sender of its own (VERP: a list's
    /// `LIST-bounces+member=domain@…`). The host delivers it in a
    /// transaction of its own (the stored message shared, never copied) and
    /// sends its reports to that sender. Recorded by the host. (Appended
    /// last: plugins built before it decode unchanged.)
    SetRecipientSender {
        /// The recipient.
        address: String,
        /// Its envelope sender.
        sender: String,
    },
}

/// How a recipient is delivered by the host after the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Route {
    /// Through the configured smarthost.
    Smarthost,
    /// Straight to the recipient domain's MX hosts.
    Mx,
    /// Over LMTP to the configured mailbox server (`[lmtp]`, e.g. Dovecot).
    /// (Appended last: plugins built before it decode unchanged.)
    Lmtp,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddHeader(h) => write!(f, "add header {}: {}", h.name, h.text()),
            Change::PrependHeader(h) => write!(f, "prepend header {}: {}", h.name, h.text()),
            Change::RemoveHeader { name } => write!(f, "remove header {name}"),
            Change::ReplaceHeader(h) => write!(f, "replace header {}: {}", h.name, h.text()),
            Change::AddRecipient { address, original } => match original {
                Some(o) => write!(f, "add recipient <{address}> (from <{o}>)"),
                None => write!(f, "add recipient <{address}>"),
            },
            Change::RemoveRecipient { address } => write!(f, "remove recipient <{address}>"),
            Change::RewriteRecipient { from, to } => {
                write!(f, "rewrite recipient <{from}> to <{to}>")
            }
            Change::SetSender { address } => write!(f, "set sender <{address}>"),
            Change::MarkDelivered { address, note } => write!(f, "<{address}> delivered: {note}"),
            Change::MarkFailed {
                address,
                status,
                reason,
            } => {
                write!(f, "<{address}> failed {status}: {reason}")
            }
            Change::MarkDeferred { address, reason } => write!(f, "<{address}> deferred: {reason}"),
            Change::Route { address, route } => write!(f, "<{address}> routed via {route:?}"),
            Change::MarkDiscarded { address, reason } => {
                write!(f, "<{address}> discarded: {reason}")
            }
            Change::SetRecipientSender { address, sender } => {
                write!(f, "<{address}> sent from <{sender}>")
            }
        }
    }
}

impl MessageState {
    /// The recipient a change names: the one with exactly this address,
    /// else the first equal to it without case. Two recipients that differ
    /// only in case (`Alice@x`, `alice@X`, two RCPTs the session keeps
    /// apart: a local part may be case-sensitive) are each reached by
    /// their own address.
    fn recipient_mut(&mut self, address: &str) -> Option<&mut Recipient> {
        let rs = &mut self.envelope.recipients;
        let i = rs.iter().position(|r| r.address == address).or_else(|| {
            rs.iter()
                .position(|r| r.address.eq_ignore_ascii_case(address))
        })?;
        rs.get_mut(i)
    }

    /// Applies one change. Changes naming an unknown recipient do nothing.
    // Long on purpose: one arm per Change; this is the one definition of what each change does.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::AddHeader(h) => self.headers.push(h.clone()),
            Change::PrependHeader(h) => self.headers.insert(0, h.clone()),
            Change::RemoveHeader { name } => self.headers.retain(|h| !h.is(name)),
            Change::ReplaceHeader(new) => match self.headers.iter().position(|h| h.is(&new.name)) {
                Some(i) => {
                    self.headers[i] = new.clone();
                    let mut n = 0;
                    self.headers.retain(|h| {
                        n += 1;
                        n - 1 <= i || !h.is(&new.name)
                    });
                }
                None => self.headers.push(new.clone()),
            },
            Change::AddRecipient { address, original } => {
                if self.recipient_mut(address).is_none() {
                    self.envelope.recipients.push(Recipient {
                        address: address.clone(),
                        state: RecipientState::Pending,
                        original: original.clone(),
                    });
                }
            }
            Change::RemoveRecipient { address } => self
                .envelope
                .recipients
                .retain(|r| !r.address.eq_ignore_ascii_case(address)),
            Change::RewriteRecipient { from, to } => {
                if let Some(r) = self.recipient_mut(from) {
                    if r.original.is_none() {
                        r.original = Some(r.address.clone());
                    }
                    r.address = to.clone();
                }
            }
            Change::SetSender { address } => self.envelope.mail_from = address.clone(),
            Change::MarkDelivered { address, note } => {
                if let Some(r) = self.recipient_mut(address) {
                    r.state = RecipientState::Delivered { note: note.clone() };
                }
            }
            Change::MarkFailed {
                address,
                status,
                reason,
            } => {
                if let Some(r) = self.recipient_mut(address) {
                    r.state = RecipientState::Failed {
                        status: status.clone(),
                        reason: reason.clone(),
                    };
                }
            }
            Change::MarkDeferred { address, reason } => {
                if let Some(r) = self.recipient_mut(address) {
                    r.state = RecipientState::Deferred {
                        reason: reason.clone(),
                    };
                }
            }
            // The host keeps routes and per-recipient senders beside the
            // state (they change no recipient).
            Change::Route { .. } | Change::SetRecipientSender { .. } => {}
            Change::MarkDiscarded { address, reason } => {
                if let Some(r) = self.recipient_mut(address) {
                    r.state = RecipientState::Discarded {
                        reason: reason.clone(),
                    };
                }
            }
        }
    }

    /// The state as a plugin is shown it: a discarded recipient appears
    /// delivered (with its reason as the note), so a plugin built with an
    /// SDK older than [`RecipientState::Discarded`] still decodes its input.
    pub fn plugin_view(&self) -> MessageState {
        let mut view = self.clone();
        for r in &mut view.envelope.recipients {
            if let RecipientState::Discarded { reason } = &r.state {
                r.state = RecipientState::Delivered {
                    note: format!("discarded: {reason}"),
                };
            }
        }
        view
    }

    /// The header block, CRLF-terminated lines, without the blank separator line.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for h in &self.headers {
            h.write_to(&mut out);
        }
        out
    }
}

/// What a plugin decided about the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verdict {
    /// Go on to the next plugin, with this plugin's changes applied.
    Continue,
    /// Drop the message silently (every pending recipient is discarded).
    Discard {
        /// Why, for the log.
        reason: String,
    },
    /// Put the message on hold for an administrator.
    Hold {
        /// Why, for the log and `queue show`.
        reason: String,
    },
    /// Fail every pending recipient permanently; a bounce goes to the sender.
    Bounce {
        /// Reply code for the DSN, e.g. 550.
        code: u16,
        /// Enhanced status code, e.g. `5.7.1`.
        status: String,
        /// Text for the DSN.
        text: String,
    },
    /// Try the message again later.
    Defer {
        /// Why.
        reason: String,
        /// Earliest retry, in seconds; the host's backoff when `None`.
        retry_after_secs: Option<u64>,
    },
}

/// A plugin's configuration value (its table from the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// A table, keys in file order.
    Table(Vec<(String, Value)>),
}

impl Value {
    /// An empty table.
    pub fn empty() -> Value {
        Value::Table(Vec::new())
    }

    /// The entry `key` of a table.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Table(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// This value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// This value as an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// This value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// This value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Converts a TOML value (a plugin's table as written in a config file).
    /// Dates become strings.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_toml(v: &toml::Value) -> Value {
        match v {
            toml::Value::String(s) => Value::String(s.clone()),
            toml::Value::Integer(i) => Value::Int(*i),
            toml::Value::Float(f) => Value::Float(*f),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Datetime(d) => Value::String(d.to_string()),
            toml::Value::Array(a) => Value::Array(a.iter().map(Value::from_toml).collect()),
            toml::Value::Table(t) => Value::Table(
                t.iter()
                    .map(|(k, v)| (k.clone(), Value::from_toml(v)))
                    .collect(),
            ),
        }
    }

    /// This value's entries, if it is a table.
    pub fn as_table(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// Host → guest: configure a fresh instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigureInput {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The plugin's name in the configuration.
    pub name: String,
    /// The plugin's table from the configuration.
    pub config: Value,
}

/// Host → guest: one message to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageInput {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The message's queue id.
    pub queue_id: String,
    /// Envelope and headers as the previous plugins left them.
    pub state: MessageState,
    /// Length of the body in bytes (read it with the host's body functions).
    pub body_len: u64,
    /// The SMTP client's IP address.
    pub client_ip: String,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// When the message was received, seconds since the Unix epoch.
    pub received_at: u64,
    /// Everything the front end knew about the session (appended last: a
    /// plugin built before it ignores it; `client_ip`, `helo` and
    /// `received_at` above stay for those plugins).
    pub session: SessionFacts,
    /// The host's mail authentication results (SPF, DKIM, DMARC, ARC), when
    /// it verified the message: mail from the MX listener, not from an
    /// authenticated client or the host itself. Appended after `session`.
    pub auth: Option<AuthFacts>,
    /// What the client asked of delivery status notifications (RFC 3461:
    /// RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT), `None` when it
    /// asked nothing. Appended after `auth`.
    pub dsn: Option<DsnRequest>,
}

/// RET= of MAIL FROM (RFC 3461 §4.3): what a failure report returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnRet {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: its header fields only.
    Headers,
}

/// NOTIFY= of RCPT TO (RFC 3461 §4.1): when the sender wants a report.
/// `NOTIFY=NEVER` is all three false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnNotify {
    /// `SUCCESS`: on delivery (or relay to a hop that does not pass DSNs on).
    pub success: bool,
    /// `FAILURE`: when delivery failed for good.
    pub failure: bool,
    /// `DELAY`: when delivery is delayed.
    pub delay: bool,
}

/// ORCPT= of RCPT TO (RFC 3461 §4.2): the recipient as first given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orcpt {
    /// The address type, e.g. `rfc822`.
    pub addr_type: String,
    /// The address, xtext-decoded.
    pub address: String,
}

/// The DSN parameters of one RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnRcpt {
    /// The recipient as the client gave it (the envelope's address).
    pub address: String,
    /// NOTIFY=, if given.
    pub notify: Option<DsnNotify>,
    /// ORCPT=, if given.
    pub orcpt: Option<Orcpt>,
}

/// Decodes xtext (RFC 3461 §4): printable ASCII but `+` and `=`, and `+XX`
/// for any octet (two upper-case hex digits). `None` when malformed or not
/// UTF-8 once decoded.
pub fn xtext_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            c @ 33..=126 if c != b'=' => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes `s` as xtext (RFC 3461 §4), the inverse of [`xtext_decode`].
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if (33..=126).contains(&c) && c != b'+' && c != b'=' {
            out.push(c as char);
        } else {
            out.push_str(&format!("+{c:02X}"));
        }
    }
    out
}

/// The DSN extension's parameters of one transaction (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DsnRequest {
    /// RET=, if given.
    pub ret: Option<DsnRet>,
    /// ENVID=, xtext-decoded, if given.
    pub envid: Option<String>,
    /// The recipients that had NOTIFY= or ORCPT=, in RCPT order.
    pub recipients: Vec<DsnRcpt>,
}

impl DsnRequest {
    /// The parameters of the RCPT TO that gave `address` (compared without
    /// case), if it had any.
    pub fn recipient(&self, address: &str) -> Option<&DsnRcpt> {
        self.recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(address))
    }

    /// Whether nothing was asked.
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.is_empty()
    }

    /// The MAIL FROM parameters as sent on: ` RET=… ENVID=…` (xtext), or
    /// nothing.
    pub fn mail_params(&self) -> String {
        let mut p = String::new();
        match self.ret {
            Some(DsnRet::Full) => p.push_str(" RET=FULL"),
            Some(DsnRet::Headers) => p.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(id) = &self.envid {
            p.push_str(&format!(" ENVID={}", xtext_encode(id)));
        }
        p
    }
}

impl DsnRcpt {
    /// The RCPT TO parameters as sent on: ` NOTIFY=… ORCPT=…` (xtext), or
    /// nothing.
    pub fn rcpt_params(&self) -> String {
        let mut p = String::new();
        if let Some(n) = self.notify {
            let words: Vec<&str> = [
                (n.success, "SUCCESS"),
                (n.failure, "FAILURE"),
                (n.delay, "DELAY"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect();
            let list = if words.is_empty() {
                "NEVER".to_string()
            } else {
                words.join(",")
            };
            p.push_str(&format!(" NOTIFY={list}"));
        }
        if let Some(o) = &self.orcpt {
            p.push_str(&format!(
                " ORCPT={};{}",
                o.addr_type,
                xtext_encode(&o.address)
            ));
        }
        p
    }
}

/// The listener a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Listener {
    /// SMTP (port 25 style, the MX).
    Smtp,
    /// Submission (port 587 style, AUTH then relay).
    Submission,
    /// SMTP with TLS from the first byte (port 465 style).
    ImplicitTls,
    /// Made by the host itself (a DSN).
    Local,
    /// Not recorded: a message queued by a build older than these facts.
    Unknown,
}

/// The TLS a session used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// The protocol version, e.g. `TLSv1.3`.
    pub protocol: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the SMTP front end knew when it accepted the message, recorded
/// durably with it (the queue file) before its 250.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    /// The client's IP address (`192.0.2.7`, `2001:db8::7`).
    pub client_ip: String,
    /// The client's TCP port (0 when there is none: a DSN, an older queue file).
    pub client_port: u16,
    /// The listener it arrived on.
    pub listener: Listener,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The TLS the session used, if any.
    pub tls: Option<TlsFacts>,
    /// The authenticated identity (submission AUTH), if any.
    pub auth: Option<String>,
    /// When the transaction's content began, seconds since the Unix epoch.
    pub received_at: u64,
    /// The client declared `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// The client declared `SMTPUTF8`.
    pub smtputf8: bool,
}

impl SessionFacts {
    /// Facts for a message that did not come from a client (a DSN).
    pub fn local(received_at: u64) -> SessionFacts {
        SessionFacts {
            client_ip: "127.0.0.1".into(),
            client_port: 0,
            listener: Listener::Local,
            helo: String::new(),
            tls: None,
            auth: None,
            received_at,
            body_8bit: false,
            smtputf8: false,
        }
    }
}

/// One authentication method's result (RFC 8601 §2.7 result values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuthResult {
    /// Nothing to evaluate (no record, no signature, no chain).
    None,
    /// Authenticated.
    Pass,
    /// Not authenticated.
    Fail,
    /// SPF `~all`: probably not authorised.
    SoftFail,
    /// SPF `?all`: no assertion.
    Neutral,
    /// A transient failure (a DNS timeout or SERVFAIL): try again later.
    TempError,
    /// A permanent error (a broken record or signature).
    PermError,
}

impl AuthResult {
    /// The RFC 8601 token (`pass`, `fail`, `softfail`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }

    /// The result named by an RFC 8601 token, ignoring case.
    pub fn parse(token: &str) -> Option<AuthResult> {
        [
            AuthResult::None,
            AuthResult::Pass,
            AuthResult::Fail,
            AuthResult::SoftFail,
            AuthResult::Neutral,
            AuthResult::TempError,
            AuthResult::PermError,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(token))
    }
}

/// An SPF check (RFC 7208) of one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpfFact {
    /// The result.
    pub result: AuthResult,
    /// The domain checked: the MAIL FROM domain (the HELO name for `<>`),
    /// or the HELO name.
    pub domain: String,
}

/// One DKIM signature's verification (RFC 6376, RFC 8463).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimFact {
    /// The result.
    pub result: AuthResult,
    /// The signing domain, `d=`.
    pub domain: String,
    /// The selector, `s=`.
    pub selector: String,
    /// The algorithm, `a=` (`rsa-sha256`, `ed25519-sha256`, …).
    pub algorithm: String,
    /// Why it did not pass, in a few words (empty when it passed).
    pub reason: String,
}

/// The policy a DMARC record asks for (RFC 7489 `p=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DmarcPolicy {
    /// No record was found (or it could not be read).
    Unspecified,
    /// `p=none`: monitor only.
    None,
    /// `p=quarantine`.
    Quarantine,
    /// `p=reject`.
    Reject,
}

impl DmarcPolicy {
    /// The record's token (`none`, `quarantine`, `reject`; `unspecified`).
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::Unspecified => "unspecified",
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }

    /// The policy named by a token, ignoring case.
    pub fn parse(token: &str) -> Option<DmarcPolicy> {
        [
            DmarcPolicy::Unspecified,
            DmarcPolicy::None,
            DmarcPolicy::Quarantine,
            DmarcPolicy::Reject,
        ]
        .into_iter()
        .find(|p| p.as_str().eq_ignore_ascii_case(token))
    }
}

/// DMARC policy discovery and identifier alignment (RFC 7489) for the
/// domain of the message's From.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmarcFact {
    /// The result: pass when an aligned SPF or DKIM passed, fail when a
    /// policy exists and none did, none without a policy.
    pub result: AuthResult,
    /// The From domain.
    pub domain: String,
    /// The policy that applies to it (`sp=` for a subdomain).
    pub policy: DmarcPolicy,
    /// The percentage the policy applies to (`pct=`, 100 by default).
    pub pct: u8,
    /// An SPF pass aligned with the From domain.
    pub spf_aligned: bool,
    /// A DKIM pass aligned with the From domain.
    pub dkim_aligned: bool,
}

/// What the host's mail authentication found, the same results as in the
/// `Authentication-Results` field it added (RFC 8601).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFacts {
    /// The authserv-id of the `Authentication-Results` field.
    pub authserv_id: String,
    /// SPF for the MAIL FROM identity.
    pub spf: SpfFact,
    /// SPF for the HELO identity.
    pub spf_helo: SpfFact,
    /// Every DKIM signature, in header order.
    pub dkim: Vec<DkimFact>,
    /// DMARC.
    pub dmarc: DmarcFact,
    /// The ARC chain's validation (RFC 8617): none without a chain.
    pub arc: AuthResult,
}

impl AuthFacts {
    /// The best DKIM result: pass if any signature passed, else the first
    /// signature's result, none without signatures.
    pub fn dkim_result(&self) -> AuthResult {
        if self.dkim.iter().any(|d| d.result == AuthResult::Pass) {
            return AuthResult::Pass;
        }
        self.dkim.first().map_or(AuthResult::None, |d| d.result)
    }

    /// Whether the envelope sender failed SPF or the From failed DMARC: a
    /// report to the sender would likely be backscatter to a forged address.
    pub fn sender_forged(&self) -> Option<String> {
        if self.spf.result == AuthResult::Fail {
            return Some(format!(
                "the envelope sender failed SPF ({})",
                self.spf.domain
            ));
        }
        if self.dmarc.result == AuthResult::Fail {
            return Some(format!(
                "the From domain failed DMARC ({}, p={})",
                self.dmarc.domain,
                self.dmarc.policy.as_str()
            ));
        }
        None
    }
}

/// Where at the door (before DATA) a plugin is asked. There is no stage at
/// or after DATA: nothing runs between the final dot and its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DoorStage {
    /// The client connected; the greeting has not been sent.
    Connect,
    /// HELO or EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO, once per recipient.
    Rcpt,
}

impl DoorStage {
    /// Every stage, in the order a session reaches them.
    pub const ALL: [DoorStage; 4] = [
        DoorStage::Connect,
        DoorStage::Helo,
        DoorStage::Mail,
        DoorStage::Rcpt,
    ];

    /// Its name in configurations, logs and metrics (`connect`, `helo`,
    /// `mail`, `rcpt`).
    pub fn as_str(self) -> &'static str {
        match self {
            DoorStage::Connect => "connect",
            DoorStage::Helo => "helo",
            DoorStage::Mail => "mail",
            DoorStage::Rcpt => "rcpt",
        }
    }

    /// The stage of a name given by [`DoorStage::as_str`].
    pub fn parse(name: &str) -> Option<DoorStage> {
        DoorStage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What one plugin answered at an earlier door stage of the same session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorRecord {
    /// The stage.
    pub stage: DoorStage,
    /// The recipient, for [`DoorStage::Rcpt`].
    pub rcpt_to: Option<String>,
    /// Its answer in words: `continue`, or the reply (`450 4.7.1 text`).
    pub answer: String,
}

/// Host → guest: one door call, with what the session knows so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorInput {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The stage being judged.
    pub stage: DoorStage,
    /// The session so far: the client's address and port (after PROXY: the
    /// real client's), the listener, TLS and the authenticated user once
    /// known, the HELO name from [`DoorStage::Helo`] on; `received_at` is
    /// when the connection opened.
    pub session: SessionFacts,
    /// MAIL FROM's address (`""` for `<>`), from [`DoorStage::Mail`] on.
    pub mail_from: Option<String>,
    /// MAIL FROM's parameters as keyword and value (`SIZE`, `BODY`,
    /// `SMTPUTF8`, `RET`, `ENVID`), keywords in upper case.
    pub mail_params: Vec<(String, String)>,
    /// The recipient being judged ([`DoorStage::Rcpt`]).
    pub rcpt_to: Option<String>,
    /// Its RCPT parameters (`NOTIFY`, `ORCPT`).
    pub rcpt_params: Vec<(String, String)>,
    /// The recipients accepted so far in this transaction.
    pub recipients: Vec<String>,
    /// What this plugin answered earlier in the session, oldest first.
    pub earlier: Vec<DoorRecord>,
}

/// Guest → host: what a door plugin decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DoorVerdict {
    /// Go on: the next door plugin, or the session's own answer.
    Continue,
    /// Answer the command with this reply instead (4xx or 5xx; the host
    /// refuses anything else as a fault); the session goes on. At
    /// [`DoorStage::Connect`] a 5xx becomes a `554` greeting (the client may
    /// only QUIT) and a 4xx a `421` that closes.
    Reply {
        /// The reply code, 400 to 599.
        code: u16,
        /// The enhanced status code (RFC 3463), its class matching `code`'s.
        status: String,
        /// The text: printable, one line, at most 400 bytes.
        text: String,
    },
    /// Send this reply, then close the connection.
    Disconnect {
        /// The reply code, 400 to 599.
        code: u16,
        /// The enhanced status code, its class matching `code`'s.
        status: String,
        /// The text.
        text: String,
    },
}

impl DoorVerdict {
    /// A reply that refuses the command (the session goes on).
    pub fn reply(code: u16, status: &str, text: impl Into<String>) -> DoorVerdict {
        DoorVerdict::Reply {
            code,
            status: status.to_string(),
            text: text.into(),
        }
    }

    /// A reply, then the connection is closed.
    pub fn disconnect(code: u16, status: &str, text: impl Into<String>) -> DoorVerdict {
        DoorVerdict::Disconnect {
            code,
            status: status.to_string(),
            text: text.into(),
        }
    }

    /// The verdict in words, as [`DoorRecord::answer`] gives it.
    pub fn describe(&self) -> String {
        match self {
            DoorVerdict::Continue => "continue".into(),
            DoorVerdict::Reply { code, status, text } => format!("{code} {status} {text}"),
            DoorVerdict::Disconnect { code, status, text } => {
                format!("{code} {status} {text} (disconnect)")
            }
        }
    }

    /// Why this verdict cannot go on the wire, if it cannot: a code outside
    /// 400–599, an enhanced status that is not `class.subject.detail` of the
    /// code's class, or a text with control characters, more than 400
    /// bytes or nothing printable.
    pub fn invalid(&self) -> Option<String> {
        let (code, status, text) = match self {
            DoorVerdict::Continue => return None,
            DoorVerdict::Reply { code, status, text }
            | DoorVerdict::Disconnect { code, status, text } => (*code, status, text),
        };
        if !(400..=599).contains(&code) {
            return Some(format!("reply code {code} is not 4xx or 5xx"));
        }
        let parts: Vec<&str> = status.split('.').collect();
        let numeric = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        let class = (code / 100).to_string();
        if parts.len() != 3 || parts[0] != class || !numeric(parts[1], 3) || !numeric(parts[2], 3) {
            return Some(format!(
                "enhanced status {status:?} is not {class}.X.Y for reply code {code}"
            ));
        }
        if text.len() > 400 {
            return Some(format!("reply text of {} bytes (at most 400)", text.len()));
        }
        if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Some(
                "reply text with a control character (CR, LF, …) or a non-ASCII one (RFC 5321 §4.2)"
                    .into(),
            );
        }
        if text.trim().is_empty() {
            return Some("empty reply text".into());
        }
        None
    }
}

/// Guest → host: what `on_door` returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorOutput {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The verdict.
    pub verdict: DoorVerdict,
}

/// Guest → host: what `on_message` returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageOutput {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// The changes, in the order they were made.
    pub changes: Vec<Change>,
}

/// Guest → host: the result of a call, or the plugin's own error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestResult<T> {
    /// Success.
    Ok(T),
    /// The plugin returned an error (a temporary failure: the message is retried).
    Err(String),
}

/// Guest → host: what `on_configure` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// ABI version ([`ABI_VERSION`]).
    pub abi: u32,
    /// The plugin's crate name.
    pub name: String,
    /// The plugin's crate version.
    pub version: String,
    /// The ABI [`FEATURES`] the plugin needs of its host, set by the SDK it
    /// was built with (empty from an SDK older than this field). Strings,
    /// not an enum, so a host can name a feature newer than itself.
    pub needs: Vec<String>,
}

/// [`PluginInfo`] as SDKs before [`PluginInfo::needs`] encoded it.
#[derive(Deserialize)]
struct PluginInfoBeforeNeeds {
    abi: u32,
    name: String,
    version: String,
}

impl PluginInfo {
    /// What a plugin built with this SDK reports: its crate `name` and
    /// `version`, and every feature of this SDK as its needs.
    pub fn of_this_sdk(name: &str, version: &str) -> PluginInfo {
        PluginInfo {
            abi: ABI_VERSION,
            name: name.to_string(),
            version: version.to_string(),
            needs: FEATURES.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Decodes a plugin's `GuestResult<PluginInfo>`, from an SDK of any age
    /// (one older than [`PluginInfo::needs`] needs nothing).
    pub fn decode(bytes: &[u8]) -> Result<GuestResult<PluginInfo>, postcard::Error> {
        match postcard::from_bytes::<GuestResult<PluginInfo>>(bytes) {
            Ok(info) => Ok(info),
            Err(e) => match postcard::from_bytes::<GuestResult<PluginInfoBeforeNeeds>>(bytes) {
                Ok(GuestResult::Ok(old)) => Ok(GuestResult::Ok(PluginInfo {
                    abi: old.abi,
                    name: old.name,
                    version: old.version,
                    needs: Vec::new(),
                })),
                Ok(GuestResult::Err(message)) => Ok(GuestResult::Err(message)),
                Err(_) => Err(e),
            },
        }
    }

    /// The features this plugin needs that a host speaking `known` lacks.
    pub fn missing<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.needs
            .iter()
            .map(String::as_str)
            .filter(|f| !known.contains(f))
            .collect()
    }
}

/// Log levels for the host's log function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u32)]
#[non_exhaustive]
pub enum Level {
    /// Errors.
    Error = 1,
    /// Warnings.
    Warn = 2,
    /// Informational.
    Info = 3,
    /// Debugging.
    Debug = 4,
}

impl Level {
    /// From the number used on the ABI.
    pub fn from_u32(n: u32) -> Level {
        match n {
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            _ => Level::Debug,
        }
    }
}

/// Guest → host: a capability request (the `call` host function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostRequest {
    /// Reads a whole file from a granted directory.
    ReadFile {
        /// The grant's name.
        grant: String,
        /// A relative path beneath it.
        path: String,
    },
    /// Writes a file durably and atomically (temp file, fsync, rename, directory fsync).
    WriteFile {
        /// The grant's name (must be read-write).
        grant: String,
        /// A relative path beneath it.
        path: String,
        /// The contents.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Lists the entry names of a directory.
    ListDir {
        /// The grant's name.
        grant: String,
        /// A relative path beneath it ("" for the root).
        path: String,
    },
    /// Creates a directory and its parents.
    CreateDir {
        /// The grant's name (must be read-write).
        grant: String,
        /// A relative path beneath it.
        path: String,
    },
    /// Whether a path exists.
    Exists {
        /// The grant's name.
        grant: String,
        /// A relative path beneath it.
        path: String,
    },
    /// Writes the message (these headers, then the body from the host) to
    /// `tmp_path`, fsyncs it, renames it to `path` and fsyncs that directory.
    /// The body never passes through the plugin.
    WriteMessage {
        /// The grant's name (must be read-write).
        grant: String,
        /// Where to write first (e.g. `alice/Maildir/tmp/NAME`).
        tmp_path: String,
        /// Where it ends (e.g. `alice/Maildir/new/NAME`).
        path: String,
        /// The complete header block to write before the body.
        headers: Vec<Header>,
        /// Write LF line endings instead of CRLF (Unix mailbox convention).
        lf_endings: bool,
    },
    /// Reads a key from the plugin's key-value namespace.
    KvGet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Stores a key, optionally expiring after `ttl_secs`.
    KvPut {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Lifetime in seconds; forever when `None`.
        ttl_secs: Option<u64>,
    },
    /// Deletes a key.
    KvDelete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Stores a key only if it is absent (or expired), atomically: of two
    /// concurrent calls for one key exactly one stores. Answers `Data(None)`
    /// when this call stored, `Data(Some(value))` with the value already there
    /// otherwise. (Appended last: plugins built before it decode unchanged.)
    KvPutIfAbsent {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Lifetime in seconds; forever when `None`.
        ttl_secs: Option<u64>,
    },
    /// Looks a name up in DNS through the host's resolver and its shared
    /// cache (needs the `dns` grant; counts against the per-message lookup
    /// budget). Answers [`HostResponse::Dns`]. (Appended last.)
    DnsLookup {
        /// The name (a trailing dot is implied: no search domains).
        name: String,
        /// The record type.
        rtype: DnsType,
    },
    /// An HTTP request to a URL the `http` grant allows (redirects are
    /// followed only within the allow-list). Answers [`HostResponse::Http`].
    /// (Appended last.)
    Http {
        /// `GET`, `POST`, `PUT`, `DELETE`, `HEAD` or `PATCH`.
        method: String,
        /// The absolute URL.
        url: String,
        /// Request header fields.
        headers: Vec<(String, String)>,
        /// What the request carries.
        body: HttpBody,
    },
    /// HMAC-SHA256 of `data` under a secret key kept in the plugin's
    /// key-value namespace (made at random by the host on first use, and
    /// shared by every node that shares the namespace; needs the `kv`
    /// grant). Answers `Data(Some(32 bytes))`. For tokens the plugin
    /// hands out and must recognise later (VERP addresses, unsubscribe
    /// links). (Appended last.)
    KvMac {
        /// What to authenticate.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Adds `delta` to the integer under `key` (absent or expired counts as
    /// 0) atomically, and answers `Count(new value)`. A key it creates
    /// expires after `ttl_secs` (`None`: never); an existing key keeps its
    /// expiry. For counters shared by several nodes on one Redis namespace
    /// (rate limits). (Appended last.)
    KvIncr {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// What to add (negative subtracts).
        delta: i64,
        /// Lifetime of a key this call creates.
        ttl_secs: Option<u64>,
    },
}

/// The body of an HTTP request from a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HttpBody {
    /// None.
    Empty,
    /// These bytes.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The message: these header fields, a blank line, then the body from
    /// the spool (it never passes through the plugin).
    Message {
        /// The header fields to send first (usually the message's own).
        headers: Vec<Header>,
    },
}

/// The answer to a [`HostRequest::Http`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The response header fields.
    pub headers: Vec<(String, String)>,
    /// The body (at most the grant's size cap).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// A DNS record type a plugin may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DnsType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Mail exchangers.
    Mx,
    /// Text records (SPF, DNSBL reasons, DKIM keys).
    Txt,
    /// Reverse names (`7.2.0.192.in-addr.arpa`).
    Ptr,
    /// DANE TLSA records.
    Tlsa,
}

/// How a DNS lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DnsOutcome {
    /// Records of the type were found.
    Found,
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// The name exists, with no records of the type (NODATA).
    NoData,
    /// The server failed (SERVFAIL, REFUSED, a broken answer): try later.
    ServFail,
    /// No answer within the grant's timeout: try later.
    Timeout,
}

/// One DNS record of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DnsRecord {
    /// An IPv4 address, dotted.
    A(String),
    /// An IPv6 address.
    Aaaa(String),
    /// A mail exchanger.
    Mx {
        /// Its preference (lower first).
        preference: u16,
        /// Its host name, without the trailing dot.
        exchange: String,
    },
    /// A text record: its strings joined, as bytes.
    Txt(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A name, without the trailing dot.
    Ptr(String),
    /// A DANE TLSA record (RFC 6698).
    Tlsa {
        /// Certificate usage.
        usage: u8,
        /// Selector.
        selector: u8,
        /// Matching type.
        matching: u8,
        /// Certificate association data.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// The answer to a [`HostRequest::DnsLookup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// How the lookup ended.
    pub outcome: DnsOutcome,
    /// How long the answer may be kept, in seconds (0 when none).
    pub ttl_secs: u32,
    /// The records (empty unless `outcome` is `Found`).
    pub records: Vec<DnsRecord>,
}

impl DnsAnswer {
    /// An answer with no records.
    pub fn empty(outcome: DnsOutcome) -> DnsAnswer {
        DnsAnswer {
            outcome,
            ttl_secs: 0,
            records: Vec::new(),
        }
    }
}

/// Why the host refused or failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostErrorKind {
    /// The plugin has no such grant (or a read-only one, for a write).
    NotGranted,
    /// The path is absolute, has `..`, or escapes through a symlink.
    Escape,
    /// No such file or directory.
    NotFound,
    /// The storage is full.
    StorageFull,
    /// Another I/O error.
    Io,
    /// The request was malformed.
    Invalid,
    /// A limit of the grant was reached (the per-message DNS lookup
    /// budget, an HTTP response over the size cap). (Appended.)
    LimitReached,
    /// The other side did not answer in time (an HTTP request). (Appended last.)
    Timeout,
}

/// Host → guest: the answer to a [`HostRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostResponse {
    /// Done, nothing to return.
    Done,
    /// Bytes (a file, a value); `None` when a key is absent.
    Data(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// Directory entry names.
    Entries(Vec<String>),
    /// A yes/no answer.
    Bool(bool),
    /// The request failed.
    Error {
        /// What kind of failure.
        kind: HostErrorKind,
        /// A message for the log.
        message: String,
    },
    /// A DNS answer. (Appended.)
    Dns(DnsAnswer),
    /// An HTTP response. (Appended last.)
    Http(HttpResponse),
    /// A counter's value ([`HostRequest::KvIncr`]). (Appended last.)
    Count(i64),
}

/// Checks that `path` is a plain relative path: not absolute, no `..`, no empty
/// or `.` components, no NUL. The host also confines it beneath the grant's root
/// (symlinks included); this check makes a plugin's mistake a clear error early.
pub fn check_relative_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') || path.starts_with('\\') {
        return Err("absolute paths are not allowed");
    }
    if path.contains('\0') {
        return Err("NUL in path");
    }
    for part in path.split('/') {
        match part {
            ".." => return Err("`..` is not allowed"),
            "." => return Err("`.` components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Splits a raw message into its header fields and the offset of the body.
/// Lines may end in CRLF or LF (an `.eml` file may have either). The body
/// starts after the first empty line; a message without one is all headers.
pub fn parse_headers(message: &[u8]) -> (Vec<Header>, usize) {
    let mut headers: Vec<Header> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i + 1)
            .unwrap_or(message.len());
        let line = &message[pos..end];
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() {
            return (headers, end);
        }
        if content[0] == b' ' || content[0] == b'\t' {
            if let Some(last) = headers.last_mut() {
                last.value.extend_from_slice(b"\r\n");
                last.value.extend_from_slice(content);
            }
        } else if let Some(colon) = content.iter().position(|&b| b == b':') {
            headers.push(Header {
                name: String::from_utf8_lossy(&content[..colon])
                    .trim_end()
                    .to_string(),
                value: content[colon + 1..].to_vec(),
            });
        } else {
            // Not a header line: the header block ends here (no blank line).
            return (headers, pos);
        }
        pos = end;
    }
    (headers, message.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MessageState {
        MessageState {
            envelope: EnvelopeState {
                mail_from: "s@x.test".into(),
                recipients: vec![Recipient::new("a@x.test"), Recipient::new("b@x.test")],
            },
            headers: vec![
                Header::new("Subject", "one"),
                Header::new("X-A", "1"),
                Header::new("x-a", "2"),
            ],
        }
    }

    #[test]
    fn header_changes() {
        let mut s = state();
        s.apply(&Change::ReplaceHeader(Header::new("X-A", "9")));
        assert_eq!(s.headers.len(), 2);
        assert_eq!(s.headers[1].text(), "9");
        s.apply(&Change::PrependHeader(Header::new("Received", "x")));
        s.apply(&Change::AddHeader(Header::new("X-B", "b")));
        assert_eq!(s.headers[0].name, "Received");
        assert_eq!(s.headers.last().map(|h| h.name.as_str()), Some("X-B"));
        s.apply(&Change::RemoveHeader { name: "x-b".into() });
        assert!(!s.headers.iter().any(|h| h.is("X-B")));
        assert_eq!(
            s.header_bytes(),
            b"Received: x\r\nSubject: one\r\nX-A: 9\r\n".to_vec()
        );
    }

    #[test]
    fn recipient_changes() {
        let mut s = state();
        s.apply(&Change::AddRecipient {
            address: "c@x.test".into(),
            original: Some("list@x.test".into()),
        });
        s.apply(&Change::AddRecipient {
            address: "C@x.test".into(),
            original: None,
        });
        s.apply(&Change::RewriteRecipient {
            from: "a@x.test".into(),
            to: "alice@x.test".into(),
        });
        s.apply(&Change::MarkFailed {
            address: "b@x.test".into(),
            status: "5.1.1".into(),
            reason: "no".into(),
        });
        s.apply(&Change::RemoveRecipient {
            address: "nobody@x.test".into(),
        });
        let r = &s.envelope.recipients;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].address, "alice@x.test");
        assert_eq!(r[0].original.as_deref(), Some("a@x.test"));
        assert!(matches!(r[1].state, RecipientState::Failed { .. }));
        assert_eq!(r[2].original.as_deref(), Some("list@x.test"));
    }

    #[test]
    fn parses_folded_headers_and_finds_the_body() {
        let m = b"Subject: a\r\n long\r\nTo: b\r\n\r\nbody\r\n";
        let (h, off) = parse_headers(m);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].value, b" a\r\n long");
        assert_eq!(h[0].text(), "a long");
        assert_eq!(&m[off..], b"body\r\n");
        let (h, off) = parse_headers(b"A: 1\nB: 2\n\nbody\n");
        assert_eq!(h.len(), 2);
        assert_eq!(off, 11);
    }

    #[test]
    fn relative_paths() {
        assert!(check_relative_path("alice/Maildir/new/x").is_ok());
        assert!(check_relative_path("/etc/passwd").is_err());
        assert!(check_relative_path("a/../../etc").is_err());
        assert!(check_relative_path("a/./b").is_err());
    }
}

#[cfg(test)]
mod round_trip {
    //! Every wire type through postcard and back, empty and maximal.
    use super::*;

    fn rt<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let bytes = postcard::to_allocvec(v).expect("encode");
        let back: T = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(&back, v);
    }

    fn big_state() -> MessageState {
        let long = "x".repeat(70_000);
        MessageState {
            envelope: EnvelopeState {
                mail_from: long.clone(),
                recipients: (0..1000)
                    .map(|i| Recipient {
                        address: format!("user{i}@example.test"),
                        state: match i % 4 {
                            0 => RecipientState::Pending,
                            1 => RecipientState::Delivered { note: long.clone() },
                            2 => RecipientState::Failed {
                                status: "5.1.1".into(),
                                reason: "ü".repeat(100),
                            },
                            _ => RecipientState::Deferred {
                                reason: String::new(),
                            },
                        },
                        original: (i % 2 == 0).then(|| "list@example.test".to_string()),
                    })
                    .collect(),
            },
            headers: vec![Header {
                name: "X-Big".into(),
                value: (0..=255u8).cycle().take(1 << 20).collect(),
            }],
        }
    }

    fn empty_state() -> MessageState {
        MessageState {
            envelope: EnvelopeState {
                mail_from: String::new(),
                recipients: Vec::new(),
            },
            headers: Vec::new(),
        }
    }

    #[test]
    fn inputs_and_outputs() {
        for state in [empty_state(), big_state()] {
            rt(&MessageInput {
                abi: ABI_VERSION,
                queue_id: "Q".into(),
                state: state.clone(),
                body_len: u64::MAX,
                client_ip: "::1".into(),
                helo: String::new(),
                received_at: u64::MAX,
                session: SessionFacts {
                    client_port: u16::MAX,
                    tls: Some(TlsFacts {
                        protocol: "TLSv1.3".into(),
                        cipher: String::new(),
                    }),
                    auth: Some("ü".repeat(100)),
                    ..SessionFacts::local(u64::MAX)
                },
                auth: None,
                dsn: None,
            });
            rt(&state);
        }
        let all_changes = vec![
            Change::AddHeader(Header::new("A", "1")),
            Change::PrependHeader(Header::new("B", "")),
            Change::RemoveHeader {
                name: String::new(),
            },
            Change::ReplaceHeader(Header::new("C", vec![0u8, 255, 13, 10])),
            Change::AddRecipient {
                address: "a@b".into(),
                original: None,
            },
            Change::AddRecipient {
                address: "a@b".into(),
                original: Some("l@b".into()),
            },
            Change::RemoveRecipient {
                address: "a@b".into(),
            },
            Change::RewriteRecipient {
                from: "a@b".into(),
                to: "c@d".into(),
            },
            Change::SetSender {
                address: String::new(),
            },
            Change::MarkDelivered {
                address: "a@b".into(),
                note: "n".into(),
            },
            Change::MarkFailed {
                address: "a@b".into(),
                status: "5.0.0".into(),
                reason: "r".into(),
            },
            Change::MarkDeferred {
                address: "a@b".into(),
                reason: "r".into(),
            },
        ];
        for verdict in [
            Verdict::Continue,
            Verdict::Discard {
                reason: String::new(),
            },
            Verdict::Hold { reason: "h".into() },
            Verdict::Bounce {
                code: u16::MAX,
                status: "5.7.1".into(),
                text: "t".into(),
            },
            Verdict::Defer {
                reason: "d".into(),
                retry_after_secs: Some(u64::MAX),
            },
            Verdict::Defer {
                reason: "d".into(),
                retry_after_secs: None,
            },
        ] {
            rt(&GuestResult::Ok(MessageOutput {
                abi: ABI_VERSION,
                verdict,
                changes: all_changes.clone(),
            }));
        }
        rt(&GuestResult::<MessageOutput>::Err("e".repeat(10_000)));
        rt(&GuestResult::Ok(PluginInfo {
            abi: 1,
            name: String::new(),
            version: String::new(),
            needs: Vec::new(),
        }));
    }

    #[test]
    fn recipients_differing_only_in_case_are_each_changed_by_their_own_address() {
        let mut m = MessageState {
            envelope: EnvelopeState {
                mail_from: "s@x".into(),
                recipients: vec![
                    Recipient::new("Alice@example.test"),
                    Recipient::new("alice@EXAMPLE.test"),
                ],
            },
            headers: Vec::new(),
        };
        for a in ["Alice@example.test", "alice@EXAMPLE.test"] {
            m.apply(&Change::MarkDelivered {
                address: a.into(),
                note: a.into(),
            });
        }
        let notes: Vec<_> = m
            .envelope
            .recipients
            .iter()
            .map(|r| r.state.clone())
            .collect();
        assert_eq!(
            notes,
            vec![
                RecipientState::Delivered {
                    note: "Alice@example.test".into()
                },
                RecipientState::Delivered {
                    note: "alice@EXAMPLE.test".into()
                }
            ]
        );
        // Without an exact match, case does not matter.
        m.apply(&Change::MarkFailed {
            address: "ALICE@example.test".into(),
            status: "5.0.0".into(),
            reason: "x".into(),
        });
        assert!(matches!(
            m.envelope.recipients[0].state,
            RecipientState::Failed { .. }
        ));
    }

    #[test]
    fn a_door_reply_must_be_a_4xx_or_5xx_with_a_matching_status_and_one_line() {
        assert_eq!(DoorVerdict::Continue.invalid(), None);
        assert_eq!(DoorVerdict::reply(450, "4.7.1", "later").invalid(), None);
        assert_eq!(
            DoorVerdict::disconnect(554, "5.7.1", "listed").invalid(),
            None
        );
        for (v, why) in [
            (DoorVerdict::reply(250, "2.0.0", "ok"), "not 4xx or 5xx"),
            (DoorVerdict::reply(600, "6.0.0", "x"), "not 4xx or 5xx"),
            (DoorVerdict::reply(550, "4.7.1", "x"), "5.X.Y"),
            (DoorVerdict::reply(450, "4.7", "x"), "4.X.Y"),
            (DoorVerdict::reply(450, "4.7.1a", "x"), "4.X.Y"),
            (DoorVerdict::reply(450, "4.7.1", "a\r\n250 ok"), "control"),
            (DoorVerdict::reply(450, "4.7.1", "a\u{2028}b"), "non-ASCII"),
            (DoorVerdict::reply(450, "4.7.1", " "), "empty"),
            (
                DoorVerdict::reply(450, "4.7.1", "x".repeat(401)),
                "401 bytes",
            ),
        ] {
            let got = v.invalid().unwrap_or_default();
            assert!(got.contains(why), "{v:?}: {got}");
        }
        assert_eq!(DoorStage::parse("rcpt"), Some(DoorStage::Rcpt));
        assert_eq!(DoorStage::parse("data"), None);
    }

    #[test]
    fn plugin_info_from_any_sdk_and_what_a_host_lacks() {
        // An SDK before `needs` encoded three fields: it needs nothing.
        #[derive(Serialize)]
        struct Before {
            abi: u32,
            name: String,
            version: String,
        }
        let old = postcard::to_allocvec(&GuestResult::Ok(Before {
            abi: 1,
            name: "stamp".into(),
            version: "0.1.0".into(),
        }))
        .expect("encode");
        match PluginInfo::decode(&old).expect("decodes") {
            GuestResult::Ok(info) => {
                assert_eq!(info.name, "stamp");
                assert!(info.needs.is_empty());
                assert!(info.missing(&[]).is_empty());
            }
            other => panic!("{other:?}"),
        }
        let err = postcard::to_allocvec(&GuestResult::<PluginInfo>::Err("no".into())).expect("e");
        assert_eq!(
            PluginInfo::decode(&err).expect("decodes"),
            GuestResult::Err("no".into())
        );
        // This SDK's plugins need every feature it knows, and nothing else.
        let now = PluginInfo::of_this_sdk("p", "1.0.0");
        assert_eq!(now.needs.len(), FEATURES.len());
        assert!(now.missing(FEATURES).is_empty());
        let older_host = &FEATURES[..FEATURES.len() - 1];
        assert_eq!(now.missing(older_host), vec![FEATURES[FEATURES.len() - 1]]);
        let bytes = postcard::to_allocvec(&GuestResult::Ok(now.clone())).expect("encode");
        assert_eq!(
            PluginInfo::decode(&bytes).expect("decodes"),
            GuestResult::Ok(now)
        );
        // Garbage stays an error.
        assert!(PluginInfo::decode(&[0, 1, 200]).is_err());
    }

    #[test]
    fn configuration_values() {
        let v = Value::Table(vec![
            ("b".into(), Value::Bool(true)),
            ("i".into(), Value::Int(i64::MIN)),
            ("f".into(), Value::Float(1.5)),
            ("s".into(), Value::String(String::new())),
            (
                "a".into(),
                Value::Array(vec![Value::Array(vec![]), Value::Table(vec![])]),
            ),
        ]);
        rt(&ConfigureInput {
            abi: ABI_VERSION,
            name: "n".into(),
            config: v,
        });
        rt(&ConfigureInput {
            abi: ABI_VERSION,
            name: String::new(),
            config: Value::empty(),
        });
    }

    #[test]
    fn host_requests_and_responses() {
        for req in [
            HostRequest::ReadFile {
                grant: "g".into(),
                path: String::new(),
            },
            HostRequest::WriteFile {
                grant: "g".into(),
                path: "p".into(),
                data: vec![0; 1 << 20],
            },
            HostRequest::ListDir {
                grant: "g".into(),
                path: "p".into(),
            },
            HostRequest::CreateDir {
                grant: "g".into(),
                path: "p".into(),
            },
            HostRequest::Exists {
                grant: "g".into(),
                path: "p".into(),
            },
            HostRequest::WriteMessage {
                grant: "g".into(),
                tmp_path: "t".into(),
                path: "p".into(),
                headers: vec![Header::new("Return-Path", "<a@b>")],
                lf_endings: true,
            },
            HostRequest::KvGet { key: vec![] },
            HostRequest::KvPut {
                key: vec![1],
                value: vec![2; 1000],
                ttl_secs: Some(u64::MAX),
            },
            HostRequest::KvDelete { key: vec![255] },
            HostRequest::KvPutIfAbsent {
                key: vec![1],
                value: vec![2],
                ttl_secs: None,
            },
        ] {
            rt(&req);
        }
        for resp in [
            HostResponse::Done,
            HostResponse::Data(None),
            HostResponse::Data(Some(vec![])),
            HostResponse::Data(Some(vec![7; 1 << 20])),
            HostResponse::Entries(vec![]),
            HostResponse::Entries(vec!["a".into(); 1000]),
            HostResponse::Bool(false),
            HostResponse::Error {
                kind: HostErrorKind::Escape,
                message: "m".into(),
            },
            HostResponse::Error {
                kind: HostErrorKind::StorageFull,
                message: String::new(),
            },
        ] {
            rt(&resp);
        }
    }
}
