//! `finaldot-testbed`: the plugin finaldot's own tests load. Its config key
//! `mode` picks a behaviour, well-behaved or hostile:
//!
//! | mode | does |
//! |---|---|
//! | `ok` (default) | reads the whole body, adds `X-Testbed: ok` and `X-Body-Len`, continues |
//! | `loop` | loops forever (time limit) |
//! | `membomb` | allocates until it fails (memory limit) |
//! | `recurse` | recurses without end (stack limit) |
//! | `panic` | panics with `testbed panic: boom` |
//! | `unreachable` | executes `unreachable` |
//! | `error` | returns an error |
//! | `fs` | tries `op` on grant `grant` at `path`, reports `X-Result: ok` or the error kind |
//! | `deliver` | writes the message to grant `grant` as `<queue id>` through the host and marks the recipients (or only those in `only`) delivered |
//! | `defer-once` | defers a message the first time it sees it (kv), continues the next time |
//! | `kv` | counts messages in its key-value namespace into `X-Count` |
//! | `verdict` | returns the verdict named by `verdict` (defer, hold, bounce, discard) |
//! | `spin` | burns `ms` milliseconds of CPU, then continues |
//! | `version` | stamps `X-Version: NNNNNN` from [`VERSION_MARKER`] (tests patch the digits in the .wasm to make new versions) |
//!
//! At the door, its config key `door` picks what every door stage does:
//!
//! | door | does |
//! |---|---|
//! | `continue` (default) | continues |
//! | `refuse-no` | answers `550 5.7.1 no thanks` to a recipient whose local part starts with `no`, and to a HELO name starting with `no` |
//! | `bad-reply` | answers `250 2.0.0 ok` (the host must refuse it as a fault) |
//! | `loop` | loops forever (time limit) |
//! | `unreachable` | executes `unreachable` |
//! | `membomb` | allocates until it fails (memory limit) |
//! | `kv` | counts RCPTs in its key-value namespace (so an unreachable Redis fails the call) |

use finaldot_sdk::prelude::*;
use finaldot_sdk::wire::HostErrorKind;
use finaldot_sdk::wire::{DnsRecord, DnsType, HttpBody};

/// The plugin's settings.
#[derive(Default)]
pub struct Testbed {
    mode: String,
    grant: String,
    path: String,
    op: String,
    verdict: String,
    ms: u64,
    only: Vec<String>,
    door: String,
}

/// A version the hot-reload tests rewrite in the compiled `.wasm` (same length,
/// so the module stays valid and only its data changes).
pub static VERSION_MARKER: [u8; 23] = *b"FINALDOT-VERSION-000000";

impl Testbed {
    /// Every door stage, by the `door` key.
    fn at_door(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        match self.door.as_str() {
            "refuse-no" => {
                let no = |s: Option<&str>| s.is_some_and(|s| s.starts_with("no"));
                if no(door.rcpt_to()) || (door.stage() == DoorStage::Helo && no(door.helo())) {
                    return Ok(DoorVerdict::reply(550, "5.7.1", "no thanks"));
                }
            }
            "bad-reply" => return Ok(DoorVerdict::reply(250, "2.0.0", "ok")),
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "unreachable" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                std::process::abort();
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "kv" => {
                cx.kv().incr(b"rcpts", 1, None)?;
            }
            _ => {}
        }
        Ok(DoorVerdict::Continue)
    }
}

#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    // Not a tail call: every frame stays on the stack.
    std::hint::black_box(n) + recurse(n + 1) + 1
}

impl Plugin for Testbed {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.mode = config.str("mode")?.unwrap_or("ok").to_string();
        self.grant = config.str("grant")?.unwrap_or("data").to_string();
        self.path = config.str("path")?.unwrap_or("").to_string();
        self.op = config.str("op")?.unwrap_or("read").to_string();
        self.verdict = config.str("verdict")?.unwrap_or("continue").to_string();
        self.ms = config.int("ms")?.unwrap_or(50) as u64;
        self.only = config.strings("only")?;
        self.door = config.str("door")?.unwrap_or("continue").to_string();
        if self.mode == "configure-error" {
            return Err(Error::new("testbed refuses this configuration"));
        }
        Ok(())
    }

    fn on_connect(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.at_door(door, cx)
    }

    fn on_helo(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.at_door(door, cx)
    }

    fn on_mail(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.at_door(door, cx)
    }

    fn on_rcpt(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.at_door(door, cx)
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        match self.mode.as_str() {
            "ok" => {
                let body = msg.body()?;
                msg.add_header("X-Testbed", "ok");
                msg.add_header("X-Body-Len", &body.len().to_string());
                cx.info("testbed ok");
            }
            "loop" => {
                let mut i: u64 = 0;
                loop {
                    i = std::hint::black_box(i.wrapping_add(1));
                }
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                let n = recurse(0);
                msg.add_header("X-Never", &n.to_string());
            }
            "panic" => panic!("testbed panic: boom"),
            "unreachable" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                std::process::abort();
            }
            "error" => return Err(Error::new("testbed error")),
            "fs" => {
                let dir = cx.dir(&self.grant);
                let r = match self.op.as_str() {
                    "read" => dir.read(&self.path).map(|_| ()),
                    "write" => dir.write(&self.path, b"written by testbed"),
                    "list" => dir.list(&self.path).map(|_| ()),
                    "mkdir" => dir.create_dir_all(&self.path),
                    _ => Err(Error::new("unknown op")),
                };
                let result = match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => match e.host_kind() {
                        Some(HostErrorKind::NotGranted) => "NotGranted".to_string(),
                        Some(HostErrorKind::Escape) => "Escape".to_string(),
                        Some(HostErrorKind::NotFound) => "NotFound".to_string(),
                        Some(k) => format!("{k:?}"),
                        None => format!("error: {e}"),
                    },
                };
                msg.add_header("X-Result", &result);
            }
            "deliver" => {
                let dir = cx.dir(&self.grant);
                let name = msg.queue_id().to_string();
                let headers = msg.headers().to_vec();
                dir.write_message(&format!("tmp-{name}"), &name, &headers, false)?;
                for r in msg.pending_recipients() {
                    if self.only.is_empty() || self.only.contains(&r.address) {
                        msg.mark_delivered(&r.address, "testbed");
                    }
                }
            }
            "route-mx" => {
                let addrs: Vec<String> = msg
                    .pending_recipients()
                    .into_iter()
                    .map(|r| r.address)
                    .filter(|a| self.only.is_empty() || self.only.contains(a))
                    .collect();
                for a in addrs {
                    msg.route(&a, finaldot_sdk::wire::Route::Mx);
                }
            }
            "version" => {
                let marker = std::hint::black_box(&VERSION_MARKER);
                let v = std::str::from_utf8(&marker[17..]).unwrap_or("invalid");
                msg.add_header("X-Version", v);
            }
            "defer-once" => {
                let key = format!("seen-{}", msg.queue_id());
                if cx.kv().get(key.as_bytes())?.is_none() {
                    cx.kv().put(key.as_bytes(), b"1", None)?;
                    return Ok(Verdict::Defer {
                        reason: "testbed defers the first attempt".into(),
                        retry_after_secs: None,
                    });
                }
                msg.add_header("X-Deferred-Once", "yes");
            }
            "kv" => {
                let kv = cx.kv();
                let n = kv
                    .get(b"count")?
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                kv.put(b"count", n.to_string().as_bytes(), None)?;
                msg.add_header("X-Count", &n.to_string());
            }
            "verdict" => {
                return Ok(match self.verdict.as_str() {
                    "defer" => Verdict::Defer {
                        reason: "testbed defers".into(),
                        retry_after_secs: None,
                    },
                    "hold" => Verdict::Hold {
                        reason: "testbed holds".into(),
                    },
                    "bounce" => Verdict::Bounce {
                        code: 550,
                        status: "5.7.1".into(),
                        text: "testbed bounces".into(),
                    },
                    "discard" => Verdict::Discard {
                        reason: "testbed discards".into(),
                    },
                    _ => Verdict::Continue,
                })
            }
            "dns" => {
                // One header per lookup in `only` ("name/TYPE"), in order:
                // the outcome and records, or the error's kind.
                for q in &self.only {
                    let (name, t) = q.rsplit_once('/').unwrap_or((q.as_str(), "A"));
                    let rtype = match t {
                        "AAAA" => DnsType::Aaaa,
                        "MX" => DnsType::Mx,
                        "TXT" => DnsType::Txt,
                        "PTR" => DnsType::Ptr,
                        "TLSA" => DnsType::Tlsa,
                        _ => DnsType::A,
                    };
                    let line = match cx.dns().lookup(name, rtype) {
                        Ok(a) => {
                            let records: Vec<String> = a
                                .records
                                .iter()
                                .map(|r| match r {
                                    DnsRecord::A(x) | DnsRecord::Aaaa(x) | DnsRecord::Ptr(x) => {
                                        x.clone()
                                    }
                                    DnsRecord::Mx {
                                        preference,
                                        exchange,
                                    } => format!("{preference} {exchange}"),
                                    DnsRecord::Txt(t) => String::from_utf8_lossy(t).into_owned(),
                                    other => format!("{other:?}"),
                                })
                                .collect();
                            format!("{q} {:?} {}", a.outcome, records.join(","))
                        }
                        Err(e) => format!("{q} error {:?}", e.host_kind()),
                    };
                    msg.add_header("X-Dns", line.trim_end());
                }
            }
            "http" => {
                // One request per URL in `only` ("METHOD URL"), the message
                // as the body of a POST: a header with the status and the
                // start of the body, or the error's kind.
                for q in &self.only {
                    let (method, url) = q.split_once(' ').unwrap_or(("GET", q.as_str()));
                    let body = if method == "POST" {
                        HttpBody::Message {
                            headers: msg.headers().to_vec(),
                        }
                    } else {
                        HttpBody::Empty
                    };
                    let line = match cx.http().send(method, url, &[("X-From", "testbed")], body) {
                        Ok(r) => {
                            let text = String::from_utf8_lossy(&r.body);
                            let start: String = text.chars().take(40).collect();
                            format!(
                                "{} {} {}",
                                r.status,
                                r.body.len(),
                                start.replace(['\r', '\n'], " ")
                            )
                        }
                        Err(e) => format!("error {:?}", e.host_kind()),
                    };
                    msg.add_header("X-Http", line.trim_end());
                }
            }
            "spin" => {
                let start = cx.now_ms();
                let mut x: u64 = 1;
                while cx.now_ms() < start + self.ms {
                    for _ in 0..10_000 {
                        x = std::hint::black_box(
                            x.wrapping_mul(6364136223846793005).wrapping_add(1),
                        );
                    }
                }
                msg.add_header("X-Spun", &self.ms.to_string());
            }
            other => return Err(Error::new(format!("unknown testbed mode {other:?}"))),
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Testbed);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};

    #[test]
    fn ok_mode_reads_the_body_natively() {
        let mut host = TestHost::new();
        let mut p: Testbed = host.configure("t", Value::empty()).unwrap();
        let msg = TestMessage::from_eml(b"Subject: x\r\n\r\n12345\r\n").recipient("a@localhost");
        let out = host.run(&mut p, &msg).unwrap();
        assert_eq!(out.header("X-Body-Len").as_deref(), Some("7"));
    }

    #[test]
    fn fs_mode_reports_escape_natively() {
        let dir = std::env::temp_dir();
        let mut host = TestHost::new();
        host.grant_dir("data", &dir, false);
        let mut p: Testbed = host
            .configure(
                "t",
                config_from_toml("mode = \"fs\"\npath = \"../etc/passwd\"").unwrap(),
            )
            .unwrap();
        let msg = TestMessage::from_eml(b"Subject: x\r\n\r\n").recipient("a@localhost");
        let out = host.run(&mut p, &msg).unwrap();
        assert_eq!(out.header("X-Result").as_deref(), Some("Escape"));
    }
}
