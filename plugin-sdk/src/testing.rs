//! The native test harness: run a plugin with `cargo test`, no wasm and no daemon.
//!
//! A [`TestHost`] stands in for finaldot: it serves the body, the clock, logs,
//! granted directories (plain paths on disk, checked like the real host's) and
//! an in-memory key-value namespace. Build a [`TestMessage`] in code or from an
//! `.eml` file, run the plugin, and assert on the [`Outcome`].
//!
//! ```
//! use finaldot_sdk::prelude::*;
//! use finaldot_sdk::testing::{TestHost, TestMessage};
//!
//! #[derive(Default)]
//! struct Tag;
//! impl Plugin for Tag {
//!     fn on_message(&mut self, msg: &mut Message, _cx: &Context) -> Result<Verdict> {
//!         msg.add_header("X-Tagged", "yes");
//!         Ok(Verdict::Continue)
//!     }
//! }
//!
//! let mut host = TestHost::new();
//! let msg = TestMessage::from_eml(b"Subject: hi\r\n\r\nbody\r\n").recipient("alice@localhost");
//! let out = host.run(&mut Tag, &msg).unwrap();
//! assert_eq!(out.verdict, Verdict::Continue);
//! assert_eq!(out.header("X-Tagged").as_deref(), Some("yes"));
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::plugin::{Config, Context, Door, Message, Plugin, Result};
use crate::wire::{
    check_relative_path, parse_headers, AuthFacts, Change, DnsAnswer, DnsOutcome, DnsType,
    EnvelopeState, HostErrorKind, HostRequest, HostResponse, HttpBody, HttpResponse, Level,
    Listener, MessageInput, MessageState, Recipient, SessionFacts, Value, Verdict, ABI_VERSION,
};

/// DNS lookups a message may make in a test run (the host's default budget).
const DNS_LOOKUPS: u32 = 10;

#[derive(Default)]
struct State {
    dirs: HashMap<String, (PathBuf, bool)>,
    /// Scripted DNS answers; anything else is NXDOMAIN.
    dns: HashMap<(String, DnsType), DnsAnswer>,
    /// DNS lookups left in this run (the host's per-message budget).
    dns_left: u32,
    /// Scripted HTTP responses by URL prefix, longest first wins.
    http: Vec<(String, HttpResponse)>,
    /// Every HTTP request made, with its body as sent (the message's
    /// header fields and body for `HttpBody::Message`).
    http_sent: Vec<(String, String, Vec<u8>)>,
    kv: HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>,
    logs: Vec<(Level, String)>,
    now_ms: u64,
    body: Vec<u8>,
    headers: Vec<u8>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
}

/// The native host the SDK's host functions reach during [`TestHost::run`].
impl State {
    /// The value under `key` and its expiry (ms), unless expired now.
    fn live(&self, key: &[u8]) -> Option<&(Vec<u8>, Option<u64>)> {
        let now = self.now_ms;
        self.kv
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
    }
}

pub(crate) struct Current(Rc<RefCell<State>>);

pub(crate) fn with_host<T>(f: impl FnOnce(&mut Current) -> T) -> T {
    let state = CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        panic!("no finaldot host here: run the plugin through finaldot_sdk::testing::TestHost")
    });
    f(&mut Current(state))
}

/// A counter's stored value (decimal text, as Redis keeps one), or the
/// error for a value that is not one.
fn counter(value: &[u8]) -> std::result::Result<i64, HostResponse> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| err(HostErrorKind::Invalid, "the value is not a counter"))
}

fn err(kind: HostErrorKind, message: impl Into<String>) -> HostResponse {
    HostResponse::Error {
        kind,
        message: message.into(),
    }
}

impl Current {
    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.0.borrow_mut().logs.push((level, message.to_string()));
    }

    pub(crate) fn body_read(&mut self, offset: u64, buf: &mut [u8]) -> usize {
        let s = self.0.borrow();
        let start = (offset as usize).min(s.body.len());
        let n = buf.len().min(s.body.len() - start);
        buf[..n].copy_from_slice(&s.body[start..start + n]);
        n
    }

    pub(crate) fn now_ms(&mut self) -> u64 {
        self.0.borrow().now_ms
    }

    fn resolve(
        &self,
        grant: &str,
        path: &str,
        write: bool,
    ) -> std::result::Result<PathBuf, HostResponse> {
        let s = self.0.borrow();
        let Some((root, writable)) = s.dirs.get(grant) else {
            return Err(err(
                HostErrorKind::NotGranted,
                format!("no directory grant named {grant:?}"),
            ));
        };
        if write && !writable {
            return Err(err(
                HostErrorKind::NotGranted,
                format!("grant {grant:?} is read-only"),
            ));
        }
        check_relative_path(path)
            .map_err(|why| err(HostErrorKind::Escape, format!("{path:?}: {why}")))?;
        Ok(if path.is_empty() {
            root.clone()
        } else {
            root.join(path)
        })
    }

    // Long on purpose: one short arm per HostRequest, mirroring the host (finaldot_sdk::contract checks that both agree).
    pub(crate) fn call(&mut self, req: &HostRequest) -> HostResponse {
        let io = |e: std::io::Error| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                HostErrorKind::NotFound
            } else {
                HostErrorKind::Io
            };
            err(kind, e.to_string())
        };
        let result = (|| -> std::result::Result<HostResponse, HostResponse> {
            Ok(match req {
                HostRequest::ReadFile { grant, path } => HostResponse::Data(Some(
                    std::fs::read(self.resolve(grant, path, false)?).map_err(io)?,
                )),
                HostRequest::WriteFile { grant, path, data } => {
                    let p = self.resolve(grant, path, true)?;
                    let tmp = p.with_extension("finaldot-tmp");
                    std::fs::write(&tmp, data).map_err(io)?;
                    std::fs::rename(&tmp, &p).map_err(io)?;
                    HostResponse::Done
                }
                HostRequest::ListDir { grant, path } => {
                    let mut names: Vec<String> =
                        std::fs::read_dir(self.resolve(grant, path, false)?)
                            .map_err(io)?
                            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                            .collect();
                    names.sort();
                    HostResponse::Entries(names)
                }
                HostRequest::CreateDir { grant, path } => {
                    std::fs::create_dir_all(self.resolve(grant, path, true)?).map_err(io)?;
                    HostResponse::Done
                }
                HostRequest::Exists { grant, path } => {
                    HostResponse::Bool(self.resolve(grant, path, false)?.exists())
                }
                HostRequest::WriteMessage {
                    grant,
                    tmp_path,
                    path,
                    headers,
                    lf_endings,
                } => {
                    let tmp = self.resolve(grant, tmp_path, true)?;
                    let dst = self.resolve(grant, path, true)?;
                    let mut data = Vec::new();
                    for h in headers {
                        h.write_to(&mut data);
                    }
                    data.extend_from_slice(b"\r\n");
                    data.extend_from_slice(&self.0.borrow().body);
                    if *lf_endings {
                        data = crlf_to_lf(&data);
                    }
                    std::fs::write(&tmp, &data).map_err(io)?;
                    std::fs::rename(&tmp, &dst).map_err(io)?;
                    HostResponse::Done
                }
                HostRequest::KvGet { key } => {
                    HostResponse::Data(self.0.borrow().live(key).map(|(v, _)| v.clone()))
                }
                HostRequest::KvPut {
                    key,
                    value,
                    ttl_secs,
                } => {
                    let mut s = self.0.borrow_mut();
                    let exp = ttl_secs.map(|t| s.now_ms + t * 1000);
                    s.kv.insert(key.clone(), (value.clone(), exp));
                    HostResponse::Done
                }
                HostRequest::KvDelete { key } => {
                    self.0.borrow_mut().kv.remove(key);
                    HostResponse::Done
                }
                HostRequest::KvIncr {
                    key,
                    delta,
                    ttl_secs,
                } => {
                    let mut s = self.0.borrow_mut();
                    let now = s.now_ms;
                    let (current, exp) = match s.live(key).cloned() {
                        None => (0, ttl_secs.map(|t| now + t * 1000)),
                        Some((v, exp)) => (counter(&v)?, exp),
                    };
                    let next = current.saturating_add(*delta);
                    s.kv.insert(key.clone(), (next.to_string().into_bytes(), exp));
                    HostResponse::Count(next)
                }
                HostRequest::KvMac { data } => {
                    use hmac::Mac;
                    let mut s = self.0.borrow_mut();
                    // A fixed key where the daemon makes a random one, kept
                    // in the namespace the same way.
                    let key =
                        s.kv.entry(crate::plugin::MAC_KEY.to_vec())
                            .or_insert_with(|| (b"finaldot TestHost MAC key".to_vec(), None))
                            .0
                            .clone();
                    match hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) {
                        Ok(mut mac) => {
                            mac.update(data);
                            HostResponse::Data(Some(mac.finalize().into_bytes().to_vec()))
                        }
                        Err(e) => HostResponse::Error {
                            kind: crate::wire::HostErrorKind::Invalid,
                            message: format!("MAC key: {e}"),
                        },
                    }
                }
                HostRequest::Http {
                    method, url, body, ..
                } => {
                    let mut s = self.0.borrow_mut();
                    let bytes = match body {
                        HttpBody::Empty => Vec::new(),
                        HttpBody::Bytes(b) => b.clone(),
                        HttpBody::Message { headers } => {
                            let mut out = Vec::new();
                            for h in headers {
                                h.write_to(&mut out);
                            }
                            out.extend_from_slice(b"\r\n");
                            out.extend_from_slice(&s.body);
                            out
                        }
                    };
                    s.http_sent.push((method.clone(), url.clone(), bytes));
                    let found = s
                        .http
                        .iter()
                        .filter(|(prefix, _)| url.starts_with(prefix.as_str()))
                        .max_by_key(|(prefix, _)| prefix.len())
                        .map(|(_, r)| r.clone());
                    match found {
                        Some(r) => HostResponse::Http(r),
                        None => {
                            return Err(err(
                                HostErrorKind::NotGranted,
                                format!("{url} is not allowed (no scripted response: TestHost::http_response)"),
                            ))
                        }
                    }
                }
                HostRequest::DnsLookup { name, rtype } => {
                    let mut s = self.0.borrow_mut();
                    if s.dns_left == 0 {
                        return Err(err(
                            HostErrorKind::LimitReached,
                            format!("DNS lookup budget of this message spent (asking {name})"),
                        ));
                    }
                    s.dns_left -= 1;
                    let key = (name.trim_end_matches('.').to_ascii_lowercase(), *rtype);
                    HostResponse::Dns(
                        s.dns
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| DnsAnswer::empty(DnsOutcome::NxDomain)),
                    )
                }
                HostRequest::KvPutIfAbsent {
                    key,
                    value,
                    ttl_secs,
                } => {
                    let mut s = self.0.borrow_mut();
                    let now = s.now_ms;
                    let live = s.live(key).map(|(v, _)| v.clone());
                    if live.is_none() {
                        let exp = ttl_secs.map(|t| now + t * 1000);
                        s.kv.insert(key.clone(), (value.clone(), exp));
                    }
                    HostResponse::Data(live)
                }
            })
        })();
        result.unwrap_or_else(|e| e)
    }
}

/// Golden-file check for encoded bytes: compares `bytes` with the fixture at
/// `path` (hex, 32 bytes a line) and returns the fixture's bytes, so the
/// caller can also decode what an older build wrote. On a mismatch the new
/// encoding is written beside the fixture (`NAME.actual.hex`) and the test
/// fails; a missing fixture is written when `FINALDOT_BLESS` is set and fails
/// the test otherwise.
pub fn assert_golden(path: &Path, bytes: &[u8]) -> Vec<u8> {
    let hex: String = bytes
        .chunks(32)
        .map(|line| {
            let mut l: String = line.iter().map(|b| format!("{b:02x}")).collect();
            l.push('\n');
            l
        })
        .collect();
    let want = match std::fs::read_to_string(path) {
        Ok(w) => w,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("FINALDOT_BLESS").is_some() => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create the fixture directory");
            }
            std::fs::write(path, &hex).expect("write the fixture");
            hex.clone()
        }
        Err(e) => panic!(
            "golden fixture {}: {e} (FINALDOT_BLESS=1 writes a missing one; review it before committing)",
            path.display()
        ),
    };
    if want != hex {
        let actual = path.with_extension("actual.hex");
        let _ = std::fs::write(&actual, &hex);
        panic!(
            "{}: the encoding changed (new bytes in {}). Fields are only appended and enum variants only added at the end; an old fixture is never edited",
            path.display(),
            actual.display()
        );
    }
    let digits: Vec<u8> = want.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("hex digits are ASCII");
            u8::from_str_radix(s, 16).expect("hex digits")
        })
        .collect()
}

/// Converts CRLF line endings to LF (how Unix mailboxes store mail).
pub fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// A door call for a test: the stage and the session's facts so far
/// (client 192.0.2.1:40000 on the MX listener, no TLS, no AUTH, unless set).
#[derive(Debug, Clone)]
pub struct TestDoor {
    input: crate::wire::DoorInput,
}

impl TestDoor {
    /// A call at `stage` from `client_ip`.
    pub fn at(stage: crate::wire::DoorStage, client_ip: &str) -> TestDoor {
        let mut session = SessionFacts::local(1_700_000_000);
        session.client_ip = client_ip.to_string();
        session.client_port = 40000;
        session.listener = crate::wire::Listener::Smtp;
        TestDoor {
            input: crate::wire::DoorInput {
                abi: crate::wire::ABI_VERSION,
                stage,
                session,
                mail_from: None,
                mail_params: Vec::new(),
                rcpt_to: None,
                rcpt_params: Vec::new(),
                recipients: Vec::new(),
                earlier: Vec::new(),
            },
        }
    }

    /// The HELO/EHLO name.
    pub fn helo(mut self, name: &str) -> Self {
        self.input.session.helo = name.to_string();
        self
    }

    /// The user the client authenticated as.
    pub fn authenticated(mut self, user: &str) -> Self {
        self.input.session.auth = Some(user.to_string());
        self
    }

    /// The listener.
    pub fn listener(mut self, listener: crate::wire::Listener) -> Self {
        self.input.session.listener = listener;
        self
    }

    /// MAIL FROM's address (`""` for `<>`).
    pub fn mail_from(mut self, address: &str) -> Self {
        self.input.mail_from = Some(address.to_string());
        self
    }

    /// A MAIL FROM parameter.
    pub fn mail_param(mut self, keyword: &str, value: &str) -> Self {
        self.input
            .mail_params
            .push((keyword.to_ascii_uppercase(), value.to_string()));
        self
    }

    /// The recipient being judged.
    pub fn rcpt_to(mut self, address: &str) -> Self {
        self.input.rcpt_to = Some(address.to_string());
        self
    }

    /// A recipient accepted earlier in the transaction.
    pub fn accepted(mut self, address: &str) -> Self {
        self.input.recipients.push(address.to_string());
        self
    }

    /// What the plugin answered at an earlier stage.
    pub fn earlier(mut self, record: crate::wire::DoorRecord) -> Self {
        self.input.earlier.push(record);
        self
    }

    /// The input the plugin gets.
    pub fn input(&self) -> &crate::wire::DoorInput {
        &self.input
    }
}

/// A message for a test: envelope, headers and body.
#[derive(Debug, Clone)]
pub struct TestMessage {
    input: MessageInput,
    body: Vec<u8>,
}

impl TestMessage {
    /// A message from raw bytes (an `.eml` file, CRLF or LF), with sender
    /// `sender@example.test` and no recipients yet.
    pub fn from_eml(raw: &[u8]) -> TestMessage {
        let (headers, body_at) = parse_headers(raw);
        TestMessage {
            input: MessageInput {
                abi: ABI_VERSION,
                queue_id: "TESTQUEUEID".to_string(),
                state: MessageState {
                    envelope: EnvelopeState {
                        mail_from: "sender@example.test".to_string(),
                        recipients: Vec::new(),
                    },
                    headers,
                },
                body_len: (raw.len() - body_at) as u64,
                client_ip: "192.0.2.1".to_string(),
                helo: "client.example.test".to_string(),
                received_at: 1_700_000_000,
                session: SessionFacts {
                    client_ip: "192.0.2.1".to_string(),
                    client_port: 40000,
                    listener: Listener::Smtp,
                    helo: "client.example.test".to_string(),
                    tls: None,
                    auth: None,
                    received_at: 1_700_000_000,
                    body_8bit: false,
                    smtputf8: false,
                },
                auth: None,
                dsn: None,
            },
            body: raw[body_at..].to_vec(),
        }
    }

    /// Reads an `.eml` file.
    pub fn from_file(path: impl AsRef<Path>) -> std::io::Result<TestMessage> {
        Ok(TestMessage::from_eml(&std::fs::read(path)?))
    }

    /// Sets the envelope sender ("" for `<>`).
    pub fn sender(mut self, address: &str) -> Self {
        self.input.state.envelope.mail_from = address.to_string();
        self
    }

    /// Adds a pending recipient.
    pub fn recipient(mut self, address: &str) -> Self {
        self.input
            .state
            .envelope
            .recipients
            .push(Recipient::new(address));
        self
    }

    /// Sets the client's address (default `192.0.2.1`).
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.input.client_ip = ip.to_string();
        self.input.session.client_ip = ip.to_string();
        self
    }

    /// Sets the HELO/EHLO name (default `client.example.test`).
    pub fn helo(mut self, name: &str) -> Self {
        self.input.helo = name.to_string();
        self.input.session.helo = name.to_string();
        self
    }

    /// Sets the session facts as a whole (the two above included).
    pub fn session(mut self, facts: SessionFacts) -> Self {
        self.input.client_ip = facts.client_ip.clone();
        self.input.helo = facts.helo.clone();
        self.input.received_at = facts.received_at;
        self.input.session = facts;
        self
    }

    /// Sets the host's authentication results (SPF, DKIM, DMARC, ARC).
    pub fn auth(mut self, facts: AuthFacts) -> Self {
        self.input.auth = Some(facts);
        self
    }

    /// Sets what the client asked of DSNs (RFC 3461).
    pub fn dsn(mut self, request: crate::wire::DsnRequest) -> Self {
        self.input.dsn = Some(request);
        self
    }

    /// Sets the queue id.
    pub fn queue_id(mut self, id: &str) -> Self {
        self.input.queue_id = id.to_string();
        self
    }

    /// The input the plugin will see.
    pub fn input(&self) -> &MessageInput {
        &self.input
    }

    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The message after an outcome's changes, as the next plugin would see it.
    pub fn after(&self, outcome: &Outcome) -> TestMessage {
        let mut next = self.clone();
        next.input.state = outcome.state.clone();
        next
    }
}

/// What one run of a plugin produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Verdict,
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Envelope and headers with the changes applied.
    pub state: MessageState,
    /// The lines the plugin logged during the run.
    pub logs: Vec<(Level, String)>,
}

impl Outcome {
    /// The first header with this name after the changes, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.state
            .headers
            .iter()
            .find(|h| h.is(name))
            .map(|h| h.text())
    }

    /// The state of a recipient after the changes.
    pub fn recipient(&self, address: &str) -> Option<&Recipient> {
        self.state
            .envelope
            .recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(address))
    }
}

/// A stand-in for the finaldot host.
#[derive(Clone, Default)]
pub struct TestHost {
    state: Rc<RefCell<State>>,
}

impl TestHost {
    /// A host with no grants, time at 2023-11-14 (1_700_000_000_000 ms).
    pub fn new() -> TestHost {
        let host = TestHost::default();
        host.state.borrow_mut().now_ms = 1_700_000_000_000;
        host.state.borrow_mut().dns_left = DNS_LOOKUPS;
        host
    }

    /// Grants a directory under `name` (read-only unless `writable`).
    pub fn grant_dir(&mut self, name: &str, path: impl Into<PathBuf>, writable: bool) -> &mut Self {
        self.state
            .borrow_mut()
            .dirs
            .insert(name.to_string(), (path.into(), writable));
        self
    }

    /// Scripts the answer to a DNS lookup of `name` for `rtype` (names
    /// compare without case or trailing dot); unscripted lookups answer
    /// NXDOMAIN. Each run may make ten lookups, as the host's default.
    pub fn dns_answer(&mut self, name: &str, rtype: DnsType, answer: DnsAnswer) -> &mut Self {
        self.state.borrow_mut().dns.insert(
            (name.trim_end_matches('.').to_ascii_lowercase(), rtype),
            answer,
        );
        self
    }

    /// Scripts the response to HTTP requests whose URL starts with
    /// `url_prefix` (the longest matching prefix wins); a URL no prefix
    /// matches is refused as the host refuses one outside the allow-list.
    pub fn http_response(&mut self, url_prefix: &str, response: HttpResponse) -> &mut Self {
        self.state
            .borrow_mut()
            .http
            .push((url_prefix.to_string(), response));
        self
    }

    /// The HTTP requests made so far: method, URL and the body as sent.
    pub fn http_requests(&self) -> Vec<(String, String, Vec<u8>)> {
        self.state.borrow().http_sent.clone()
    }

    /// Sets the clock.
    pub fn set_now_ms(&mut self, ms: u64) -> &mut Self {
        self.state.borrow_mut().now_ms = ms;
        self
    }

    /// Answers one host-function request as the host would (what a
    /// plugin's `Context::dir` and `Context::kv` calls reach), outside any
    /// plugin run; the body is the last message run, or empty.
    pub fn handle(&self, req: &HostRequest) -> HostResponse {
        Current(self.state.clone()).call(req)
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.state.clone()));
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = None);
            }
        }
        let _leave = Leave;
        f()
    }

    /// Creates a plugin and configures it with this table (as the host does).
    pub fn configure<P: Plugin>(&mut self, name: &str, table: Value) -> Result<P> {
        self.enter(|| {
            let mut p = P::default();
            p.on_configure(&Config::new(name, table))?;
            Ok(p)
        })
    }

    /// Runs `on_message` on a message.
    pub fn run<P: Plugin>(&mut self, plugin: &mut P, msg: &TestMessage) -> Result<Outcome> {
        {
            let mut s = self.state.borrow_mut();
            s.body = msg.body.clone();
            s.headers.clear();
            s.dns_left = DNS_LOOKUPS;
        }
        let before = self.state.borrow().logs.len();
        let cx = Context::new(msg.input.queue_id.clone());
        let mut m = Message::from_input(msg.input.clone());
        let verdict = self.enter(|| plugin.on_message(&mut m, &cx))?;
        let logs = self.state.borrow().logs[before..].to_vec();
        Ok(Outcome {
            verdict,
            state: m.state().clone(),
            changes: m.into_changes(),
            logs,
        })
    }
}

impl TestHost {
    /// Runs the door stage of `door` on the plugin, as the host would: the
    /// verdict, or an error for what the host would count as the plugin's
    /// failure (its own error, or a reply the host refuses to send, such
    /// as a 2xx or a text with CR/LF).
    pub fn door<P: Plugin>(
        &mut self,
        plugin: &mut P,
        door: &TestDoor,
    ) -> Result<crate::wire::DoorVerdict> {
        use crate::wire::DoorStage;
        self.state.borrow_mut().dns_left = DNS_LOOKUPS;
        let cx = Context::new(String::new());
        let view = Door::from_input(door.input.clone());
        let verdict = self.enter(|| match view.stage() {
            DoorStage::Connect => plugin.on_connect(&view, &cx),
            DoorStage::Helo => plugin.on_helo(&view, &cx),
            DoorStage::Mail => plugin.on_mail(&view, &cx),
            DoorStage::Rcpt => plugin.on_rcpt(&view, &cx),
        })?;
        match verdict.invalid() {
            Some(why) => Err(crate::plugin::Error::new(format!(
                "the host would refuse this reply: {why}"
            ))),
            None => Ok(verdict),
        }
    }
}

/// Parses TOML text into a configuration table (for tests).
pub fn config_from_toml(text: &str) -> std::result::Result<Value, String> {
    let t: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    Ok(Value::from_toml(&toml::Value::Table(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DnsRecord;

    #[derive(Default)]
    struct Asker;
    impl Plugin for Asker {
        fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
            for _ in 0..11 {
                let line = match cx.dns().lookup("Listed.Test.", DnsType::A) {
                    Ok(a) => format!("{:?} {:?}", a.outcome, a.records),
                    Err(e) => format!("error {:?}", e.host_kind()),
                };
                msg.add_header("X-Dns", &line);
            }
            Ok(Verdict::Continue)
        }
    }

    #[derive(Default)]
    struct Poster;
    impl Plugin for Poster {
        fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
            for url in ["http://scanner.test/checkv2", "http://elsewhere.test/"] {
                let line = match cx.http().post_message(url, &[("X-A", "1")], msg) {
                    Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                    Err(e) => format!("error {:?}", e.host_kind()),
                };
                msg.add_header("X-Http", &line);
            }
            Ok(Verdict::Continue)
        }
    }

    /// At connect, refuses a client without reverse DNS.
    #[derive(Default)]
    struct NeedsPtr;
    impl Plugin for NeedsPtr {
        fn on_connect(&mut self, door: &Door, cx: &Context) -> Result<crate::wire::DoorVerdict> {
            let Some(ip) = door.client_ip() else {
                return Ok(crate::wire::DoorVerdict::Continue);
            };
            Ok(match cx.dns().ptr(ip)?.first() {
                Some(name) => {
                    cx.info(&format!("{ip} is {name}"));
                    crate::wire::DoorVerdict::Continue
                }
                None => crate::wire::DoorVerdict::reply(550, "5.7.25", "no reverse DNS"),
            })
        }
    }

    #[test]
    fn a_door_plugin_asks_the_clients_ptr() {
        use crate::plugin::reverse_name;
        assert_eq!(
            reverse_name("192.0.2.7".parse().expect("ip")),
            "7.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("::ffff:192.0.2.7".parse().expect("ip")),
            "7.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().expect("ip")),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        let mut host = TestHost::new();
        host.dns_answer(
            "7.2.0.192.in-addr.arpa",
            DnsType::Ptr,
            DnsAnswer {
                outcome: DnsOutcome::Found,
                ttl_secs: 60,
                records: vec![DnsRecord::Ptr("mail.example.org".into())],
            },
        );
        let at = |ip: &str| TestDoor::at(crate::wire::DoorStage::Connect, ip);
        assert_eq!(
            host.door(&mut NeedsPtr, &at("192.0.2.7")).expect("door"),
            crate::wire::DoorVerdict::Continue
        );
        assert!(host
            .logs()
            .iter()
            .any(|(_, l)| l == "192.0.2.7 is mail.example.org"));
        assert_eq!(
            host.door(&mut NeedsPtr, &at("192.0.2.8")).expect("door"),
            crate::wire::DoorVerdict::reply(550, "5.7.25", "no reverse DNS")
        );
    }

    #[test]
    fn scripted_http_responses_and_what_was_sent() {
        let mut host = TestHost::new();
        host.http_response(
            "http://scanner.test/",
            HttpResponse {
                status: 200,
                headers: Vec::new(),
                body: b"clean".to_vec(),
            },
        );
        let msg = TestMessage::from_eml(b"Subject: s\r\n\r\nbody\r\n");
        let out = host.run(&mut Poster, &msg).expect("run");
        let lines: Vec<String> = out
            .state
            .headers
            .iter()
            .filter(|h| h.is("X-Http"))
            .map(|h| h.text())
            .collect();
        assert_eq!(lines, ["200 clean", "error Some(NotGranted)"]);
        let sent = host.http_requests();
        assert_eq!(sent[0].0, "POST");
        assert_eq!(sent[0].2, b"Subject: s\r\n\r\nbody\r\n");
    }

    #[test]
    fn scripted_dns_answers_and_the_budget() {
        let mut host = TestHost::new();
        host.dns_answer(
            "listed.test",
            DnsType::A,
            DnsAnswer {
                outcome: DnsOutcome::Found,
                ttl_secs: 60,
                records: vec![DnsRecord::A("127.0.0.2".into())],
            },
        );
        let msg = TestMessage::from_eml(b"Subject: x\r\n\r\n");
        let out = host.run(&mut Asker, &msg).expect("run");
        let lines = out
            .state
            .headers
            .iter()
            .filter(|h| h.is("X-Dns"))
            .map(|h| h.text());
        let lines: Vec<String> = lines.collect();
        assert_eq!(lines.len(), 11);
        assert_eq!(lines[0], "Found [A(\"127.0.0.2\")]");
        assert_eq!(lines[10], "error Some(LimitReached)");
        // A new run has a new budget; an unscripted name is NXDOMAIN.
        let out = host.run(&mut Asker, &msg).expect("run");
        assert!(out.header("X-Dns").is_some_and(|h| h.starts_with("Found")));
        host.state.borrow_mut().dns.clear();
        let out = host.run(&mut Asker, &msg).expect("run");
        assert_eq!(out.header("X-Dns").as_deref(), Some("NxDomain []"));
    }

    #[test]
    fn the_test_host_keeps_the_host_function_contract() {
        let root =
            std::env::temp_dir().join(format!("finaldot-sdk-contract-{}", std::process::id()));
        let (rw, ro) = (root.join("rw"), root.join("ro"));
        // Process ids repeat (containers): start from nothing.
        let _ = std::fs::remove_dir_all(&root);
        for d in [&rw, &ro] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let mut host = TestHost::new();
        host.grant_dir("rw", &rw, true).grant_dir("ro", &ro, false);
        host.state.borrow_mut().body = crate::contract::BODY.to_vec();
        crate::contract::check(&rw, &ro, &mut |req| host.handle(req));
        let _ = std::fs::remove_dir_all(&root);
    }
}
