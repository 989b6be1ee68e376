//! What a plugin author writes against: the [`Plugin`] trait, the [`Message`]
//! it inspects and changes, and the [`Context`] through which it reaches the
//! capabilities the configuration granted it.

use crate::host;
use crate::wire::{
    AuthFacts, Change, DnsAnswer, DnsType, DoorInput, DoorRecord, DoorStage, DoorVerdict,
    DsnRequest, Header, HostErrorKind, HostRequest, HostResponse, HttpBody, HttpResponse, Level,
    MessageInput, MessageState, Recipient, SessionFacts, Value, Verdict,
};

/// A plugin's error. Returned from a hook, it is a temporary failure: the
/// message is deferred and retried, never dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    kind: Option<HostErrorKind>,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            kind: None,
        }
    }

    /// What the host said, when the error came from a host request.
    pub fn host_kind(&self) -> Option<HostErrorKind> {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error::new(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error::new(s)
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A finaldot plugin.
///
/// The host creates the plugin with `Default`, calls [`Plugin::on_configure`]
/// with its table from the configuration, then [`Plugin::on_message`] for a
/// message. By default every message gets a fresh instance.
pub trait Plugin: Default + Send + 'static {
    /// Receives the plugin's configuration table. The default accepts anything.
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        let _ = config;
        Ok(())
    }

    /// Looks at (and possibly changes) one message and returns a verdict,
    /// after its 250 (the chain, `[[plugins]]`). The default continues: a
    /// plugin that only judges at the door need not write it.
    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let _ = (msg, cx);
        Ok(Verdict::Continue)
    }

    /// At the door (`[[door]]`): a client connected, before the greeting.
    /// An error is a failure: the door plugin's `on_failure` applies.
    fn on_connect(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let _ = (door, cx);
        Ok(DoorVerdict::Continue)
    }

    /// At the door: HELO or EHLO ([`Door::helo`]).
    fn on_helo(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let _ = (door, cx);
        Ok(DoorVerdict::Continue)
    }

    /// At the door: MAIL FROM ([`Door::mail_from`], [`Door::mail_param`]).
    fn on_mail(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let _ = (door, cx);
        Ok(DoorVerdict::Continue)
    }

    /// At the door: one RCPT TO ([`Door::rcpt_to`], [`Door::rcpt_param`]).
    fn on_rcpt(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let _ = (door, cx);
        Ok(DoorVerdict::Continue)
    }
}

/// What a door plugin is asked about: the stage, and what the session
/// knows so far (nothing of a message: the door closes before DATA).
#[derive(Debug, Clone)]
pub struct Door {
    input: DoorInput,
}

impl Door {
    /// The view of a door call's input (the SDK builds these; tests may too).
    pub fn from_input(input: DoorInput) -> Door {
        Door { input }
    }

    /// The stage being judged.
    pub fn stage(&self) -> DoorStage {
        self.input.stage
    }

    /// The session so far (client address and port, listener, TLS, the
    /// authenticated user, the HELO name once given).
    pub fn session(&self) -> &SessionFacts {
        &self.input.session
    }

    /// The client's address (IPv4-mapped IPv6 given as IPv4), if it parses.
    pub fn client_ip(&self) -> Option<std::net::IpAddr> {
        self.input
            .session
            .client_ip
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical())
    }

    /// The user the client authenticated as (submission), if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.input.session.auth.as_deref()
    }

    /// The HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<&str> {
        Some(self.input.session.helo.as_str()).filter(|h| !h.is_empty())
    }

    /// MAIL FROM's address (`""` for the null sender), from the MAIL stage on.
    pub fn mail_from(&self) -> Option<&str> {
        self.input.mail_from.as_deref()
    }

    /// A MAIL FROM parameter's value by keyword (any case): `SIZE`,
    /// `BODY`, `SMTPUTF8` (value `""`), `RET`, `ENVID`.
    pub fn mail_param(&self, keyword: &str) -> Option<&str> {
        param(&self.input.mail_params, keyword)
    }

    /// The recipient being judged (RCPT stage).
    pub fn rcpt_to(&self) -> Option<&str> {
        self.input.rcpt_to.as_deref()
    }

    /// An RCPT parameter's value by keyword (any case): `NOTIFY`, `ORCPT`.
    pub fn rcpt_param(&self, keyword: &str) -> Option<&str> {
        param(&self.input.rcpt_params, keyword)
    }

    /// The recipients accepted so far in this transaction.
    pub fn recipients(&self) -> &[String] {
        &self.input.recipients
    }

    /// What this plugin answered earlier in the session, oldest first.
    pub fn earlier(&self) -> &[DoorRecord] {
        &self.input.earlier
    }

    /// The whole input.
    pub fn input(&self) -> &DoorInput {
        &self.input
    }
}

fn param<'a>(params: &'a [(String, String)], keyword: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
        .map(|(_, v)| v.as_str())
}

/// The plugin's configuration: its name and its table from the config file.
#[derive(Debug, Clone)]
pub struct Config {
    name: String,
    table: Value,
}

impl Config {
    /// A configuration (the SDK builds these; tests may too).
    pub fn new(name: impl Into<String>, table: Value) -> Config {
        Config {
            name: name.into(),
            table,
        }
    }

    /// The plugin's name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole table.
    pub fn table(&self) -> &Value {
        &self.table
    }

    /// A value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.table.get(key)
    }

    /// A string by key; an error naming the key if it has another type.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Error::new(format!("`{key}` must be a string"))),
        }
    }

    /// An integer by key.
    pub fn int(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(_) => Err(Error::new(format!("`{key}` must be an integer"))),
        }
    }

    /// A boolean by key.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Error::new(format!("`{key}` must be true or false"))),
        }
    }

    /// An array of strings by key.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::new(format!("`{key}` must be an array of strings")))
                })
                .collect(),
            Some(_) => Err(Error::new(format!("`{key}` must be an array of strings"))),
        }
    }
}

/// The message a plugin sees: envelope and headers in memory, the body read
/// from the host on demand. Every change made through it is recorded and
/// returned to the host, which applies the same changes.
#[derive(Debug, Clone)]
pub struct Message {
    queue_id: String,
    state: MessageState,
    body_len: u64,
    client_ip: String,
    helo: String,
    received_at: u64,
    session: SessionFacts,
    auth: Option<AuthFacts>,
    dsn: Option<DsnRequest>,
    changes: Vec<Change>,
}

impl Message {
    /// Builds the message from the host's input.
    pub fn from_input(input: MessageInput) -> Message {
        Message {
            queue_id: input.queue_id,
            state: input.state,
            body_len: input.body_len,
            client_ip: input.client_ip,
            helo: input.helo,
            received_at: input.received_at,
            session: input.session,
            auth: input.auth,
            dsn: input.dsn,
            changes: Vec::new(),
        }
    }

    /// The changes made so far, in order.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// Consumes the message, returning its changes.
    pub fn into_changes(self) -> Vec<Change> {
        self.changes
    }

    /// The state (envelope and headers) as changed so far.
    pub fn state(&self) -> &MessageState {
        &self.state
    }

    fn change(&mut self, c: Change) {
        self.state.apply(&c);
        self.changes.push(c);
    }

    /// The queue id.
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// The envelope sender; empty for the null sender `<>`.
    pub fn sender(&self) -> &str {
        &self.state.envelope.mail_from
    }

    /// All recipients, with their states.
    pub fn recipients(&self) -> &[Recipient] {
        &self.state.envelope.recipients
    }

    /// The recipients no plugin has delivered, failed or deferred yet.
    pub fn pending_recipients(&self) -> Vec<Recipient> {
        self.recipients()
            .iter()
            .filter(|r| r.is_pending())
            .cloned()
            .collect()
    }

    /// The SMTP client's IP address.
    pub fn client_ip(&self) -> &str {
        &self.client_ip
    }

    /// The client's HELO/EHLO name.
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// When the message was received (seconds since the Unix epoch).
    pub fn received_at(&self) -> u64 {
        self.received_at
    }

    /// What the SMTP front end knew when it accepted the message: client
    /// address and port, listener, HELO, TLS, authenticated identity,
    /// BODY= and SMTPUTF8. They are the message's own facts, recorded with
    /// it before its 250, so they live here rather than on the `Context`
    /// (which offers the host's services).
    pub fn session(&self) -> &SessionFacts {
        &self.session
    }

    /// The host's SPF, DKIM, DMARC and ARC results for this message (the
    /// same as in the `Authentication-Results` field it added), or `None`
    /// when it was not verified: mail from an authenticated client, from
    /// the host itself, or with verification turned off.
    pub fn auth(&self) -> Option<&AuthFacts> {
        self.auth.as_ref()
    }

    /// What the client asked of delivery status notifications (RFC 3461:
    /// RET, ENVID, and NOTIFY and ORCPT per recipient), or `None` when it
    /// asked nothing. The host honours them; a plugin may read them (a list
    /// server, for one, does not pass NOTIFY on to the members).
    pub fn dsn(&self) -> Option<&DsnRequest> {
        self.dsn.as_ref()
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[Header] {
        &self.state.headers
    }

    /// The first header with this name, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.state
            .headers
            .iter()
            .find(|h| h.is(name))
            .map(Header::text)
    }

    /// Every header with this name, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.state
            .headers
            .iter()
            .filter(|h| h.is(name))
            .map(Header::text)
            .collect()
    }

    /// Adds a header at the end of the header block.
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.change(Change::AddHeader(Header::new(name, value)));
    }

    /// Adds a header at the top (where trace headers go).
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        self.change(Change::PrependHeader(Header::new(name, value)));
    }

    /// Removes every header with this name.
    pub fn remove_header(&mut self, name: &str) {
        self.change(Change::RemoveHeader {
            name: name.to_string(),
        });
    }

    /// Replaces every header with this name by one.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.change(Change::ReplaceHeader(Header::new(name, value)));
    }

    /// Adds a recipient (e.g. a list member), remembering where it came from.
    pub fn add_recipient(&mut self, address: &str, original: Option<&str>) {
        self.change(Change::AddRecipient {
            address: address.to_string(),
            original: original.map(str::to_string),
        });
    }

    /// Removes a recipient.
    pub fn remove_recipient(&mut self, address: &str) {
        self.change(Change::RemoveRecipient {
            address: address.to_string(),
        });
    }

    /// Rewrites a recipient's address.
    pub fn rewrite_recipient(&mut self, from: &str, to: &str) {
        self.change(Change::RewriteRecipient {
            from: from.to_string(),
            to: to.to_string(),
        });
    }

    /// Sets the envelope sender ("" for `<>`).
    pub fn set_sender(&mut self, address: &str) {
        self.change(Change::SetSender {
            address: address.to_string(),
        });
    }

    /// Marks a recipient delivered.
    pub fn mark_delivered(&mut self, address: &str, note: &str) {
        self.change(Change::MarkDelivered {
            address: address.to_string(),
            note: note.to_string(),
        });
    }

    /// Drops a recipient on purpose without delivering it (a duplicate, a
    /// policy): the host counts it as discarded and never bounces it.
    pub fn mark_discarded(&mut self, address: &str, reason: &str) {
        self.change(Change::MarkDiscarded {
            address: address.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Marks a recipient permanently failed (`status` like `5.1.1`).
    pub fn mark_failed(&mut self, address: &str, status: &str, reason: &str) {
        self.change(Change::MarkFailed {
            address: address.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
        });
    }

    /// Chooses how a recipient leaves after the chain: through the
    /// smarthost, straight to its MX hosts, or over LMTP to the mailbox
    /// server of `[lmtp]` (instead of `[outbound] route` or `[lmtp] domains`).
    pub fn route(&mut self, address: &str, route: crate::wire::Route) {
        self.change(Change::Route {
            address: address.to_string(),
            route,
        });
    }

    /// Gives `address` an envelope sender of its own (VERP): the host sends
    /// it in a transaction of its own and its reports go to `sender`.
    pub fn set_recipient_sender(&mut self, address: &str, sender: &str) {
        self.change(Change::SetRecipientSender {
            address: address.to_string(),
            sender: sender.to_string(),
        });
    }

    /// Marks a recipient temporarily failed; it is retried later.
    pub fn mark_deferred(&mut self, address: &str, reason: &str) {
        self.change(Change::MarkDeferred {
            address: address.to_string(),
            reason: reason.to_string(),
        });
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Reads body bytes at `offset` into `buf`; returns how many (0 at the end).
    pub fn read_body(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        host::body_read(offset, buf).map_err(Error::new)
    }

    /// Reads the whole body. Prefer [`Message::read_body`] for large messages.
    pub fn body(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.body_len as usize];
        let mut off = 0usize;
        while off < out.len() {
            let n = self.read_body(off as u64, &mut out[off..])?;
            if n == 0 {
                break;
            }
            off += n;
        }
        out.truncate(off);
        Ok(out)
    }
}

/// The plugin's view of the host: logging, time and granted capabilities.
#[derive(Debug, Clone)]
pub struct Context {
    queue_id: String,
}

impl Context {
    /// A context for the message with this queue id.
    pub fn new(queue_id: String) -> Context {
        Context { queue_id }
    }

    /// The queue id of the message being processed.
    pub fn queue_id(&self) -> &str {
        &self.queue_id
    }

    /// Logs at a level; the host adds the queue id and the plugin's name.
    pub fn log(&self, level: Level, message: &str) {
        host::log(level, message);
    }

    /// Logs an informational line.
    pub fn info(&self, message: &str) {
        self.log(Level::Info, message);
    }

    /// Logs a warning.
    pub fn warn(&self, message: &str) {
        self.log(Level::Warn, message);
    }

    /// Logs an error.
    pub fn error(&self, message: &str) {
        self.log(Level::Error, message);
    }

    /// Logs a debugging line.
    pub fn debug(&self, message: &str) {
        self.log(Level::Debug, message);
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        host::now_ms()
    }

    /// A directory granted in the configuration under this name.
    pub fn dir(&self, grant: &str) -> Dir {
        Dir {
            grant: grant.to_string(),
        }
    }

    /// The plugin's key-value namespace (if granted).
    pub fn kv(&self) -> Kv {
        Kv
    }

    /// DNS through the host's resolver (needs `dns = true` in the plugin's
    /// configuration; each message has a lookup budget, ten by default).
    pub fn dns(&self) -> Dns {
        Dns
    }

    /// HTTP to the URLs the plugin's `http` grant allows.
    pub fn http(&self) -> Http {
        Http
    }
}

/// HTTP requests through the host, to the URLs the `http` grant allows.
#[derive(Debug, Clone, Copy)]
pub struct Http;

impl Http {
    /// Sends a request. A response with any status is `Ok`; an error means
    /// it could not be had: `NotGranted` (a URL outside the allow-list, or a
    /// redirect out of it), `Timeout`, `LimitReached` (a response over the
    /// size cap), `Io` (no connection, TLS, a broken response).
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: HttpBody,
    ) -> Result<HttpResponse> {
        match request(HostRequest::Http {
            method: method.to_string(),
            url: url.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body,
        })? {
            HostResponse::Http(r) => Ok(r),
            r => Err(unexpected(r)),
        }
    }

    /// `GET url`.
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse> {
        self.send("GET", url, headers, HttpBody::Empty)
    }

    /// `POST url` with the message (its current header fields, then its
    /// body from the spool) as the request body.
    pub fn post_message(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        msg: &Message,
    ) -> Result<HttpResponse> {
        let fields = msg.headers().to_vec();
        self.send("POST", url, headers, HttpBody::Message { headers: fields })
    }
}

/// DNS lookups through the host (its resolver and shared cache).
#[derive(Debug, Clone, Copy)]
pub struct Dns;

impl Dns {
    /// Looks `name` up for records of `rtype`. NXDOMAIN, no data, SERVFAIL
    /// and a timeout are answers ([`crate::wire::DnsOutcome`]), not errors; an error
    /// means the plugin may not ask (no grant, budget spent).
    pub fn lookup(&self, name: &str, rtype: DnsType) -> Result<DnsAnswer> {
        match request(HostRequest::DnsLookup {
            name: name.to_string(),
            rtype,
        })? {
            HostResponse::Dns(answer) => Ok(answer),
            r => Err(unexpected(r)),
        }
    }

    /// The names `ip`'s PTR records give (its reverse DNS: what a door
    /// plugin asks at connect), none when there are none; other outcomes
    /// (SERVFAIL, timeout) as the answer's outcome in the error's text.
    pub fn ptr(&self, ip: std::net::IpAddr) -> Result<Vec<String>> {
        let answer = self.lookup(&reverse_name(ip), DnsType::Ptr)?;
        match answer.outcome {
            crate::wire::DnsOutcome::Found => Ok(answer
                .records
                .into_iter()
                .filter_map(|r| match r {
                    crate::wire::DnsRecord::Ptr(name) => Some(name),
                    _ => None,
                })
                .collect()),
            crate::wire::DnsOutcome::NxDomain | crate::wire::DnsOutcome::NoData => Ok(Vec::new()),
            other => Err(Error::new(format!("PTR lookup for {ip}: {other:?}"))),
        }
    }
}

/// The reverse-DNS name of `ip`: `4.3.2.1.in-addr.arpa` for IPv4, the 32
/// nibbles under `ip6.arpa` for IPv6 (RFC 3596); an IPv4-mapped IPv6
/// address is reversed as IPv4.
pub fn reverse_name(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(33);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            labels.push("ip6.arpa".into());
            labels.join(".")
        }
    }
}

fn request(req: HostRequest) -> Result<HostResponse> {
    match host::call(&req) {
        HostResponse::Error { kind, message } => Err(Error {
            message,
            kind: Some(kind),
        }),
        other => Ok(other),
    }
}

fn unexpected(r: HostResponse) -> Error {
    Error::new(format!("unexpected host response {r:?}"))
}

/// A granted directory. Paths are relative, without `..`; the host confines
/// them beneath the grant's root and refuses writes to a read-only grant.
#[derive(Debug, Clone)]
pub struct Dir {
    grant: String,
}

impl Dir {
    /// Reads a whole file.
    pub fn read(&self, path: &str) -> Result<Vec<u8>> {
        match request(HostRequest::ReadFile {
            grant: self.grant.clone(),
            path: path.to_string(),
        })? {
            HostResponse::Data(Some(d)) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    /// Writes a file durably and atomically.
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        match request(HostRequest::WriteFile {
            grant: self.grant.clone(),
            path: path.to_string(),
            data: data.to_vec(),
        })? {
            HostResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Lists the entry names in a directory ("" for the grant's root).
    pub fn list(&self, path: &str) -> Result<Vec<String>> {
        match request(HostRequest::ListDir {
            grant: self.grant.clone(),
            path: path.to_string(),
        })? {
            HostResponse::Entries(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    /// Creates a directory and its parents.
    pub fn create_dir_all(&self, path: &str) -> Result<()> {
        match request(HostRequest::CreateDir {
            grant: self.grant.clone(),
            path: path.to_string(),
        })? {
            HostResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Whether a path exists.
    pub fn exists(&self, path: &str) -> Result<bool> {
        match request(HostRequest::Exists {
            grant: self.grant.clone(),
            path: path.to_string(),
        })? {
            HostResponse::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// Writes the message (these headers, then the body, which never passes
    /// through the plugin) to `tmp_path`, fsyncs it, renames it to `path` and
    /// fsyncs the directory: when this returns `Ok`, the file is durable.
    pub fn write_message(
        &self,
        tmp_path: &str,
        path: &str,
        headers: &[Header],
        lf_endings: bool,
    ) -> Result<()> {
        match request(HostRequest::WriteMessage {
            grant: self.grant.clone(),
            tmp_path: tmp_path.to_string(),
            path: path.to_string(),
            headers: headers.to_vec(),
            lf_endings,
        })? {
            HostResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}

/// The plugin's key-value namespace, kept by the host on disk.
#[derive(Debug, Clone, Copy)]
pub struct Kv;

/// The key under which the host keeps a namespace's MAC key
/// ([`Kv::mac`]); a plugin should not write it.
pub const MAC_KEY: &[u8] = b"\0finaldot:mac-key";

impl Kv {
    /// HMAC-SHA256 of `data` under this namespace's secret key, which the
    /// host makes at random on first use and keeps in the namespace (under
    /// [`MAC_KEY`]), so every node sharing the namespace computes the same
    /// tags. For tokens handed out and checked later: a VERP address, a
    /// confirmation link. Compare tags with [`crate::digest::same_tag`].
    pub fn mac(&self, data: &[u8]) -> Result<[u8; 32]> {
        match request(HostRequest::KvMac {
            data: data.to_vec(),
        })? {
            HostResponse::Data(Some(tag)) => tag
                .try_into()
                .map_err(|_| Error::new("the host returned a MAC of the wrong length")),
            r => Err(unexpected(r)),
        }
    }

    /// The value of a key, if present and not expired.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match request(HostRequest::KvGet { key: key.to_vec() })? {
            HostResponse::Data(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    /// Stores a value, optionally expiring after `ttl_secs`.
    pub fn put(&self, key: &[u8], value: &[u8], ttl_secs: Option<u64>) -> Result<()> {
        match request(HostRequest::KvPut {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_secs,
        })? {
            HostResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Stores a value only if the key is absent (or expired), atomically
    /// (of two concurrent calls for one key, exactly one stores): `None` when
    /// this call stored it, else the value already there.
    pub fn put_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_secs: Option<u64>,
    ) -> Result<Option<Vec<u8>>> {
        match request(HostRequest::KvPutIfAbsent {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_secs,
        })? {
            HostResponse::Data(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    /// Adds `delta` to the counter under `key` (absent or expired: 0),
    /// atomically across every node sharing the namespace, and returns the
    /// new value. A key this call creates expires after `ttl_secs`; an
    /// existing one keeps its expiry (so a fixed window: `incr(window_key,
    /// 1, Some(window))`). The value is stored as decimal text.
    pub fn incr(&self, key: &[u8], delta: i64, ttl_secs: Option<u64>) -> Result<i64> {
        match request(HostRequest::KvIncr {
            key: key.to_vec(),
            delta,
            ttl_secs,
        })? {
            HostResponse::Count(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }

    /// Deletes a key.
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        match request(HostRequest::KvDelete { key: key.to_vec() })? {
            HostResponse::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}
