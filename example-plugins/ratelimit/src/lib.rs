//! `ratelimit`: message rate limits at the door (`[[door]]`), per client
//! address (IPv6 per /64), per authenticated user or per sender domain,
//! counted in fixed windows in the plugin's key-value namespace: the local
//! store for one node, a Redis namespace for a limit shared by every node
//! (each count is one atomic increment, as KumoMTA's throttles). Over the
//! limit, the command gets `450 4.7.1` (try again later; the session goes
//! on) or, with `code = 421`, `421 4.7.1` and the connection is closed.
//!
//! What is counted is the command at the limit's stage: `mail` (default:
//! messages), `rcpt` (recipients) or `connect` (connections). An attempt
//! over the limit counts too, so a client hammering through its refusals
//! stays refused until the window ends.

use finaldot_sdk::prelude::*;

/// What a limit counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// The client's address (IPv6: its /64).
    ClientIp,
    /// The authenticated user (clients that did not authenticate are not counted).
    User,
    /// The envelope sender's domain (the null sender is not counted).
    SenderDomain,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::ClientIp => "client_ip",
            By::User => "user",
            By::SenderDomain => "sender_domain",
        }
    }
}

/// One configured limit.
#[derive(Debug, Clone)]
struct Limit {
    by: By,
    on: DoorStage,
    max: i64,
    window_secs: u64,
    /// 450 (the session goes on) or 421 (the connection closes).
    code: u16,
}

/// The plugin's settings.
#[derive(Default)]
pub struct RateLimit {
    limits: Vec<Limit>,
}

fn limit(t: &Value, i: usize) -> Result<Limit> {
    let key = |k: &str| format!("limits[{i}].{k}");
    let by = match t.get("by").and_then(Value::as_str) {
        Some("client_ip") => By::ClientIp,
        Some("user") => By::User,
        Some("sender_domain") => By::SenderDomain,
        other => {
            return Err(Error::new(format!(
                "`{}` {other:?} must be \"client_ip\", \"user\" or \"sender_domain\"",
                key("by")
            )))
        }
    };
    let on = match t.get("on").and_then(Value::as_str).unwrap_or("mail") {
        "connect" => DoorStage::Connect,
        "mail" => DoorStage::Mail,
        "rcpt" => DoorStage::Rcpt,
        other => {
            return Err(Error::new(format!(
                "`{}` {other:?} must be \"connect\", \"mail\" or \"rcpt\"",
                key("on")
            )))
        }
    };
    if on == DoorStage::Connect && by != By::ClientIp {
        return Err(Error::new(format!(
            "`{}`: at connect only the client's address is known (by = \"client_ip\")",
            key("on")
        )));
    }
    let int = |k: &str| match t.get(k) {
        Some(Value::Int(n)) if *n > 0 => Ok(Some(*n)),
        None => Ok(None),
        Some(_) => Err(Error::new(format!(
            "`{}` must be a positive integer",
            key(k)
        ))),
    };
    let max = int("max")?.ok_or_else(|| Error::new(format!("`{}` is missing", key("max"))))?;
    let window_secs = int("window_secs")?.unwrap_or(3600) as u64;
    let code = match int("code")?.unwrap_or(450) {
        c @ (421 | 450 | 451) => c as u16,
        other => {
            return Err(Error::new(format!(
                "`{}` {other} must be 450 or 451 (refuse the command) or 421 (close)",
                key("code")
            )))
        }
    };
    Ok(Limit {
        by,
        on,
        max,
        window_secs,
        code,
    })
}

/// The client's address as counted: IPv4 whole, IPv6 by its /64.
fn client_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, 64)
            .map(|n| n.trunc().to_string())
            .unwrap_or_else(|_| v6.to_string()),
    }
}

impl RateLimit {
    /// Counts this command against every limit of its stage; the first
    /// limit exceeded answers.
    fn count(&self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let stage = door.stage();
        let now_secs = cx.now_ms() / 1000;
        let mut answer = DoorVerdict::Continue;
        for (index, l) in self
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.on == stage)
        {
            let who = match l.by {
                By::ClientIp => door.client_ip().map(client_key),
                By::User => door.authenticated().map(str::to_ascii_lowercase),
                By::SenderDomain => door
                    .mail_from()
                    .and_then(|s| s.rsplit_once('@'))
                    .map(|(_, d)| d.to_ascii_lowercase()),
            };
            let Some(who) = who else { continue };
            let window = now_secs / l.window_secs;
            // Each limit its own counter (two limits on the same thing must
            // not count each command twice), and every limit counts the
            // command, even after an earlier one refused it.
            let key = format!(
                "{index}\0{}\0{who}\0{}\0{}\0{window}",
                l.by.name(),
                stage.as_str(),
                l.window_secs
            );
            let n = cx.kv().incr(key.as_bytes(), 1, Some(l.window_secs))?;
            if n > l.max && answer == DoorVerdict::Continue {
                let what = match stage {
                    DoorStage::Connect => "connections",
                    DoorStage::Rcpt => "recipients",
                    _ => "messages",
                };
                let text = format!(
                    "Rate limit exceeded: more than {} {what} in {} s for {} {who}; try again later",
                    l.max,
                    l.window_secs,
                    l.by.name()
                );
                cx.info(&format!("{text} (count {n})"));
                answer = if l.code == 421 {
                    DoorVerdict::disconnect(421, "4.7.1", text)
                } else {
                    DoorVerdict::reply(l.code, "4.7.1", text)
                };
            }
        }
        Ok(answer)
    }
}

impl Plugin for RateLimit {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        let list = config
            .get("limits")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::new("`limits` must list at least one { by, max } table"))?;
        self.limits = list
            .iter()
            .enumerate()
            .map(|(i, t)| limit(t, i))
            .collect::<Result<_>>()?;
        if self.limits.is_empty() {
            return Err(Error::new(
                "`limits` must list at least one { by, max } table",
            ));
        }
        Ok(())
    }

    fn on_connect(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.count(door, cx)
    }

    fn on_mail(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.count(door, cx)
    }

    fn on_rcpt(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.count(door, cx)
    }
}

finaldot_sdk::export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestDoor, TestHost};

    fn setup(cfg: &str) -> (TestHost, RateLimit) {
        let mut host = TestHost::new();
        let p = host
            .configure("ratelimit", config_from_toml(cfg).expect("toml"))
            .expect("configured");
        (host, p)
    }

    fn mail(ip: &str, from: &str) -> TestDoor {
        TestDoor::at(DoorStage::Mail, ip)
            .helo("c.test")
            .mail_from(from)
    }

    #[test]
    fn the_message_after_the_limit_gets_450_until_the_window_ends() {
        let (mut host, mut p) =
            setup("limits = [{ by = \"client_ip\", max = 3, window_secs = 60 }]\n");
        host.set_now_ms(1_700_000_040_000);
        for _ in 0..3 {
            assert_eq!(
                host.door(&mut p, &mail("192.0.2.1", "a@x.test")).unwrap(),
                DoorVerdict::Continue
            );
        }
        let over = host.door(&mut p, &mail("192.0.2.1", "a@x.test")).unwrap();
        assert_eq!(
            over,
            DoorVerdict::reply(
                450,
                "4.7.1",
                "Rate limit exceeded: more than 3 messages in 60 s for client_ip 192.0.2.1; try again later"
            )
        );
        // Another client has its own count.
        assert_eq!(
            host.door(&mut p, &mail("192.0.2.2", "a@x.test")).unwrap(),
            DoorVerdict::Continue
        );
        // The next window starts over.
        host.set_now_ms(1_700_000_100_000);
        assert_eq!(
            host.door(&mut p, &mail("192.0.2.1", "a@x.test")).unwrap(),
            DoorVerdict::Continue
        );
    }

    #[test]
    fn users_sender_domains_and_ipv6_networks_are_counted_and_421_closes() {
        let cfg = "limits = [\n{ by = \"user\", max = 1 },\n{ by = \"sender_domain\", max = 2, code = 421 },\n{ by = \"client_ip\", max = 1, on = \"rcpt\" },\n]\n";
        let (mut host, mut p) = setup(cfg);
        let alice = || mail("192.0.2.1", "a@one.test").authenticated("alice");
        assert_eq!(host.door(&mut p, &alice()).unwrap(), DoorVerdict::Continue);
        assert!(matches!(
            host.door(&mut p, &alice()).unwrap(),
            DoorVerdict::Reply { code: 450, ref text, .. } if text.contains("user alice")
        ));
        // Not authenticated: the user limit does not count it; its sender
        // domain's does (two allowed, the third closes the connection).
        assert_eq!(
            host.door(&mut p, &mail("192.0.2.9", "b@Two.test")).unwrap(),
            DoorVerdict::Continue
        );
        assert_eq!(
            host.door(&mut p, &mail("192.0.2.9", "c@two.test")).unwrap(),
            DoorVerdict::Continue
        );
        assert!(matches!(
            host.door(&mut p, &mail("192.0.2.9", "d@two.test")).unwrap(),
            DoorVerdict::Disconnect { code: 421, ref text, .. } if text.contains("sender_domain two.test")
        ));
        // The null sender has no domain to count.
        for _ in 0..3 {
            assert_eq!(
                host.door(&mut p, &mail("192.0.2.9", "")).unwrap(),
                DoorVerdict::Continue
            );
        }
        // Per recipient, IPv6 by /64.
        let rcpt = |ip: &str| {
            TestDoor::at(DoorStage::Rcpt, ip)
                .mail_from("")
                .rcpt_to("x@localhost")
        };
        assert_eq!(
            host.door(&mut p, &rcpt("2001:db8:0:1::1")).unwrap(),
            DoorVerdict::Continue
        );
        assert!(matches!(
            host.door(&mut p, &rcpt("2001:db8:0:1::2")).unwrap(),
            DoorVerdict::Reply { code: 450, ref text, .. } if text.contains("2001:db8:0:1::/64")
        ));
    }

    #[test]
    fn two_limits_on_the_same_thing_count_apart_and_every_limit_counts() {
        let cfg = "limits = [{ by = \"client_ip\", max = 1 }, { by = \"client_ip\", max = 3, code = 421 }]\n";
        let (mut host, mut p) = setup(cfg);
        let m = || mail("192.0.2.1", "a@x.test");
        assert_eq!(host.door(&mut p, &m()).unwrap(), DoorVerdict::Continue);
        // Over the first limit (450); the second counts it too: 2 of 3.
        assert!(matches!(
            host.door(&mut p, &m()).unwrap(),
            DoorVerdict::Reply { code: 450, .. }
        ));
        assert!(matches!(
            host.door(&mut p, &m()).unwrap(),
            DoorVerdict::Reply { code: 450, .. }
        ));
        // The fourth is over both: the first limit's answer, the second counted.
        assert!(matches!(
            host.door(&mut p, &m()).unwrap(),
            DoorVerdict::Reply { code: 450, .. }
        ));
        let counts: Vec<i64> = (0..2)
            .map(|i| {
                let key = format!(
                    "{i}\0client_ip\0192.0.2.1\0mail\03600\0{}",
                    1_700_000_000 / 3600
                );
                match host.handle(&finaldot_sdk::wire::HostRequest::KvGet {
                    key: key.into_bytes(),
                }) {
                    finaldot_sdk::wire::HostResponse::Data(Some(v)) => String::from_utf8(v)
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(-1),
                    _ => -1,
                }
            })
            .collect();
        assert_eq!(counts, vec![4, 4]);
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let mut host = TestHost::new();
        for (cfg, want) in [
            ("", "limits"),
            ("limits = [{ by = \"ip\", max = 1 }]", "limits[0].by"),
            ("limits = [{ by = \"user\" }]", "limits[0].max"),
            (
                "limits = [{ by = \"user\", max = 1, on = \"connect\" }]",
                "limits[0].on",
            ),
            (
                "limits = [{ by = \"user\", max = 1, code = 550 }]",
                "limits[0].code",
            ),
            ("limits = [{ by = \"user\", max = 0 }]", "limits[0].max"),
        ] {
            let e = host
                .configure::<RateLimit>("ratelimit", config_from_toml(cfg).expect("toml"))
                .err()
                .expect("refused");
            assert!(e.to_string().contains(want), "{cfg}: {e}");
        }
    }
}
