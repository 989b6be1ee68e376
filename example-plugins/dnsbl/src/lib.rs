//! `dnsbl`: checks the client's address (IPv4 and IPv6) against DNS
//! blocklists and allowlists (RFC 5782) and acts on the score. In the
//! chain (`[[plugins]]`, after the 250): a header with the listings, hold
//! for an administrator, or discard; it never bounces there (the sender of
//! blocklisted mail is usually forged, and a DSN would be backscatter). At
//! the door (`[[door]]`, stage `connect`), postscreen style: a client at
//! the threshold is refused before its greeting, `554 5.7.1` (or the
//! configured 4xx) naming the zones, and nothing of its mail is ever
//! written. Every decision is logged with the zone and the answer.
//!
//! A zone lists an address when `REVERSED.ZONE` has an A record in
//! 127.0.0.0/8 (or one of the zone's `codes`). A zone that fails (SERVFAIL,
//! timeout) counts as not listed unless `on_error = "defer"`. Authenticated
//! clients and `skip_networks` (loopback by default) are not checked.

use finaldot_sdk::prelude::*;
use finaldot_sdk::wire::{DnsOutcome, DnsRecord, DnsType};

/// One zone and what a listing in it weighs.
#[derive(Debug, Clone)]
struct Zone {
    zone: String,
    /// The answers that count (empty: any 127.0.0.0/8 address).
    codes: Vec<String>,
    weight: f64,
}

/// What a score at the threshold does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Header,
    Hold,
    Discard,
}

/// The plugin's settings.
#[derive(Default)]
pub struct Dnsbl {
    zones: Vec<Zone>,
    threshold: f64,
    action: Option<Action>,
    header: String,
    defer_on_error: bool,
    skip: Vec<ipnet::IpNet>,
    /// The door's refusal code: 554 (a 5xx greeting, the client may only
    /// QUIT) or a 4xx (421, the connection closes).
    door_code: u16,
}

/// What the zones said about one address.
struct Score {
    score: f64,
    /// `zone (codes)` per listing.
    listings: Vec<String>,
    /// The zones listing it, for the reply text.
    zones: Vec<String>,
}

/// The name to look up for `ip` in `zone`: reversed octets for IPv4,
/// reversed nibbles for IPv6 (RFC 5782 §2.1 and §2.4).
pub fn query_name(ip: std::net::IpAddr, zone: &str) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut labels = Vec::with_capacity(32);
            for byte in v6.octets().iter().rev() {
                labels.push(format!("{:x}", byte & 0x0f));
                labels.push(format!("{:x}", byte >> 4));
            }
            format!("{}.{zone}", labels.join("."))
        }
    }
}

fn zones(config: &Config, key: &str, sign: f64) -> Result<Vec<Zone>> {
    let Some(v) = config.get(key) else {
        return Ok(Vec::new());
    };
    let items = v.as_array().ok_or_else(|| {
        Error::new(format!(
            "`{key}` must be a list of {{ zone = \"…\" }} tables"
        ))
    })?;
    items
        .iter()
        .map(|t| {
            let zone = t
                .get("zone")
                .and_then(Value::as_str)
                .filter(|z| !z.is_empty())
                .ok_or_else(|| Error::new(format!("every `{key}` entry needs `zone`")))?
                .trim_matches('.')
                .to_ascii_lowercase();
            let codes = match t.get("codes") {
                None => Vec::new(),
                Some(c) => c
                    .as_array()
                    .ok_or_else(|| Error::new(format!("{zone}: `codes` must be a list")))?
                    .iter()
                    .map(|c| {
                        c.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| Error::new(format!("{zone}: `codes` are addresses")))
                    })
                    .collect::<Result<_>>()?,
            };
            let weight = match t.get("weight") {
                None => 1.0,
                Some(Value::Int(i)) => *i as f64,
                Some(Value::Float(f)) => *f,
                Some(_) => return Err(Error::new(format!("{zone}: `weight` must be a number"))),
            };
            Ok(Zone {
                zone,
                codes,
                weight: sign * weight.abs(),
            })
        })
        .collect()
}

/// What one zone said about the address.
enum Finding {
    Listed(Vec<String>),
    NotListed,
    Failed(DnsOutcome),
}

impl Dnsbl {
    fn check(&self, cx: &Context, ip: std::net::IpAddr, zone: &Zone) -> Result<Finding> {
        let name = query_name(ip, &zone.zone);
        let answer = cx.dns().lookup(&name, DnsType::A)?;
        Ok(match answer.outcome {
            DnsOutcome::Found => {
                let codes: Vec<String> = answer
                    .records
                    .iter()
                    .filter_map(|r| match r {
                        DnsRecord::A(a) => Some(a.clone()),
                        _ => None,
                    })
                    .filter(|a| {
                        if zone.codes.is_empty() {
                            a.starts_with("127.")
                        } else {
                            zone.codes.contains(a)
                        }
                    })
                    .collect();
                if codes.is_empty() {
                    Finding::NotListed
                } else {
                    Finding::Listed(codes)
                }
            }
            DnsOutcome::NxDomain | DnsOutcome::NoData => Finding::NotListed,
            failed => Finding::Failed(failed),
        })
    }
}

impl Plugin for Dnsbl {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.zones = zones(config, "zones", 1.0)?;
        self.zones.extend(zones(config, "allow", -1.0)?);
        if self.zones.is_empty() {
            return Err(Error::new(
                "`zones` (or `allow`) must list at least one zone",
            ));
        }
        self.threshold = match config.get("threshold") {
            None => 1.0,
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            Some(_) => return Err(Error::new("`threshold` must be a number")),
        };
        self.action = Some(match config.str("action")?.unwrap_or("header") {
            "header" => Action::Header,
            "hold" => Action::Hold,
            "discard" => Action::Discard,
            other => {
                return Err(Error::new(format!(
                    "`action` {other:?} must be \"header\", \"hold\" or \"discard\" (never a bounce: the sender is usually forged)"
                )))
            }
        });
        self.header = config.str("header")?.unwrap_or("X-DNSBL").to_string();
        self.defer_on_error = match config.str("on_error")?.unwrap_or("ignore") {
            "ignore" => false,
            "defer" => true,
            other => {
                return Err(Error::new(format!(
                    "`on_error` {other:?} must be \"ignore\" or \"defer\""
                )))
            }
        };
        let skip = match config.get("skip_networks") {
            None => vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
            Some(_) => config.strings("skip_networks")?,
        };
        self.door_code = match config.int("door_code")?.unwrap_or(554) {
            c @ (554 | 421 | 450 | 451) => c as u16,
            other => {
                return Err(Error::new(format!(
                    "`door_code` {other} must be 554 (refuse; the client may only QUIT) or 421, 450, 451 (try later; the connection closes)"
                )))
            }
        };
        self.skip = skip
            .iter()
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| Error::new(format!("`skip_networks`: {n:?} is not a network")))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    fn on_connect(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        self.at_connect(door, cx)
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let facts = msg.session();
        if facts.auth.is_some() {
            return Ok(Verdict::Continue);
        }
        let Some(ip) = self.checked(&facts.client_ip) else {
            return Ok(Verdict::Continue);
        };
        let Score {
            score, listings, ..
        } = match self.score(cx, ip, false)? {
            Ok(s) => s,
            Err(failed) => {
                return Ok(Verdict::Defer {
                    reason: failed,
                    retry_after_secs: None,
                })
            }
        };
        if listings.is_empty() {
            return Ok(Verdict::Continue);
        }
        msg.add_header(
            &self.header,
            &format!("{ip} listed in {}; score {score}", listings.join("; ")),
        );
        if score < self.threshold {
            cx.info(&format!(
                "{ip}: score {score} below {}: delivered",
                self.threshold
            ));
            return Ok(Verdict::Continue);
        }
        let why = format!("{ip} blocklisted: {} (score {score})", listings.join("; "));
        Ok(match self.action {
            Some(Action::Hold) => {
                cx.info(&format!("{why}: held"));
                Verdict::Hold { reason: why }
            }
            Some(Action::Discard) => {
                cx.info(&format!("{why}: discarded"));
                Verdict::Discard { reason: why }
            }
            _ => {
                cx.info(&format!("{why}: header added"));
                Verdict::Continue
            }
        })
    }
}

impl Dnsbl {
    /// The client's address, canonical, unless it is not checked
    /// (unparsable, or in `skip_networks`).
    fn checked(&self, client_ip: &str) -> Option<std::net::IpAddr> {
        let ip = client_ip.parse::<std::net::IpAddr>().ok()?.to_canonical();
        (!self.skip.iter().any(|n| n.contains(&ip))).then_some(ip)
    }

    /// Asks every zone about `ip`: the score and the listings, or (inner
    /// `Err`), with `on_error = "defer"`, why a zone failed. A host error
    /// (no DNS grant, the lookup budget spent) is the outer `Err`.
    /// `at_door`: listings are logged at debug (the host logs each refusal,
    /// with the zones, once; a flood must not write three lines per
    /// connection).
    fn score(
        &self,
        cx: &Context,
        ip: std::net::IpAddr,
        at_door: bool,
    ) -> Result<Result<Score, String>> {
        let mut score = Score {
            score: 0.0,
            listings: Vec::new(),
            zones: Vec::new(),
        };
        for zone in &self.zones {
            match self.check(cx, ip, zone)? {
                Finding::Listed(codes) => {
                    let line = format!(
                        "{ip} listed in {} ({}), weight {}",
                        zone.zone,
                        codes.join(", "),
                        zone.weight
                    );
                    if at_door {
                        cx.debug(&line);
                    } else {
                        cx.info(&line);
                    }
                    score.score += zone.weight;
                    if zone.weight > 0.0 {
                        score.zones.push(zone.zone.clone());
                    }
                    score
                        .listings
                        .push(format!("{} ({})", zone.zone, codes.join(", ")));
                }
                Finding::NotListed => cx.debug(&format!("{ip} not listed in {}", zone.zone)),
                Finding::Failed(outcome) => {
                    cx.warn(&format!("{}: {outcome:?} for {ip}", zone.zone));
                    if self.defer_on_error {
                        return Ok(Err(format!(
                            "blocklist {} did not answer ({outcome:?})",
                            zone.zone
                        )));
                    }
                }
            }
        }
        Ok(Ok(score))
    }
}

impl Dnsbl {
    /// The door at connect: a client at the threshold is refused before
    /// its greeting. A failing zone with `on_error = "defer"` is the
    /// plugin's failure (the `[[door]]` entry's `on_failure` decides).
    fn at_connect(&self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        if door.authenticated().is_some() {
            return Ok(DoorVerdict::Continue);
        }
        let Some(ip) = self.checked(&door.session().client_ip) else {
            return Ok(DoorVerdict::Continue);
        };
        let s = self.score(cx, ip, true)?.map_err(Error::new)?;
        if s.listings.is_empty() || s.score < self.threshold {
            if !s.listings.is_empty() {
                cx.info(&format!(
                    "{ip}: score {} below {}: let in",
                    s.score, self.threshold
                ));
            }
            return Ok(DoorVerdict::Continue);
        }
        cx.debug(&format!(
            "{ip} refused at connect: {} (score {})",
            s.listings.join("; "),
            s.score
        ));
        // A door reply is at most 400 bytes: name as many zones as fit.
        let mut text = format!("Service unavailable; client [{ip}] blocked using");
        for (i, zone) in s.zones.iter().enumerate() {
            let more = if i == 0 {
                format!(" {zone}")
            } else {
                format!(", {zone}")
            };
            if text.len() + more.len() > 390 {
                text.push_str(", ...");
                break;
            }
            text.push_str(&more);
        }
        Ok(if self.door_code >= 500 {
            DoorVerdict::reply(self.door_code, "5.7.1", text)
        } else {
            DoorVerdict::reply(self.door_code, "4.7.1", text)
        })
    }
}

finaldot_sdk::export_plugin!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestDoor, TestHost, TestMessage};
    use finaldot_sdk::wire::DnsAnswer;

    fn listed(addr: &str) -> DnsAnswer {
        DnsAnswer {
            outcome: DnsOutcome::Found,
            ttl_secs: 60,
            records: vec![DnsRecord::A(addr.into())],
        }
    }

    fn setup(cfg: &str) -> (TestHost, Dnsbl) {
        let mut host = TestHost::new();
        let p = host
            .configure("dnsbl", config_from_toml(cfg).unwrap())
            .unwrap();
        (host, p)
    }

    fn from(ip: &str) -> TestMessage {
        TestMessage::from_eml(b"Subject: x\r\n\r\nx\r\n")
            .recipient("a@localhost")
            .client_ip(ip)
    }

    #[test]
    fn query_names_reverse_ipv4_octets_and_ipv6_nibbles() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "zen.test"),
            "99.2.0.192.zen.test"
        );
        assert_eq!(
            query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "v6.test"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.v6.test"
        );
    }

    #[test]
    fn a_listing_adds_the_header_and_holds_at_the_threshold() {
        let cfg = "zones = [{ zone = \"zen.test\" }, { zone = \"other.test\", codes = [\"127.0.0.10\"], weight = 2 }]\naction = \"hold\"\nthreshold = 3\n";
        let (mut host, mut p) = setup(cfg);
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, listed("127.0.0.2"));
        let out = host.run(&mut p, &from("192.0.2.2")).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(
            out.header("X-DNSBL").as_deref(),
            Some("192.0.2.2 listed in zen.test (127.0.0.2); score 1")
        );
        // A code the zone does not count is no listing.
        host.dns_answer("2.2.0.192.other.test", DnsType::A, listed("127.0.0.4"));
        let out = host.run(&mut p, &from("192.0.2.2")).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        host.dns_answer("2.2.0.192.other.test", DnsType::A, listed("127.0.0.10"));
        let out = host.run(&mut p, &from("192.0.2.2")).unwrap();
        assert!(
            matches!(out.verdict, Verdict::Hold { ref reason } if reason.contains("other.test"))
        );
        // An unlisted address passes untouched.
        let out = host.run(&mut p, &from("198.51.100.1")).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        assert!(out.header("X-DNSBL").is_none());
    }

    #[test]
    fn allowlists_subtract_and_authenticated_or_loopback_clients_are_skipped() {
        let cfg = "zones = [{ zone = \"zen.test\" }]\nallow = [{ zone = \"wl.test\", weight = 5 }]\naction = \"discard\"\n";
        let (mut host, mut p) = setup(cfg);
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, listed("127.0.0.2"));
        let out = host.run(&mut p, &from("192.0.2.2")).unwrap();
        assert!(matches!(out.verdict, Verdict::Discard { .. }));
        host.dns_answer("2.2.0.192.wl.test", DnsType::A, listed("127.0.10.1"));
        let out = host.run(&mut p, &from("192.0.2.2")).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        let loopback = host.run(&mut p, &from("127.0.0.1")).unwrap();
        assert!(loopback.header("X-DNSBL").is_none());
        let mut facts = from("192.0.2.2").input().session.clone();
        facts.auth = Some("alice".into());
        let out = host.run(&mut p, &from("192.0.2.2").session(facts)).unwrap();
        assert!(out.header("X-DNSBL").is_none());
    }

    #[test]
    fn a_failing_zone_is_ignored_or_defers_by_configuration() {
        let failing = DnsAnswer::empty(DnsOutcome::ServFail);
        let (mut host, mut p) = setup("zones = [{ zone = \"zen.test\" }]\n");
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, failing.clone());
        assert_eq!(
            host.run(&mut p, &from("192.0.2.2")).unwrap().verdict,
            Verdict::Continue
        );
        let (mut host, mut p) = setup("zones = [{ zone = \"zen.test\" }]\non_error = \"defer\"\n");
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, failing);
        assert!(matches!(
            host.run(&mut p, &from("192.0.2.2")).unwrap().verdict,
            Verdict::Defer { .. }
        ));
    }

    fn connecting(ip: &str) -> TestDoor {
        TestDoor::at(DoorStage::Connect, ip)
    }

    #[test]
    fn at_the_door_a_listed_client_is_refused_at_connect_naming_the_zone() {
        let (mut host, mut p) =
            setup("zones = [{ zone = \"zen.test\" }, { zone = \"bl.test\" }]\n");
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, listed("127.0.0.2"));
        assert_eq!(
            host.door(&mut p, &connecting("192.0.2.2")).unwrap(),
            DoorVerdict::reply(
                554,
                "5.7.1",
                "Service unavailable; client [192.0.2.2] blocked using zen.test"
            )
        );
        assert!(host
            .logs()
            .iter()
            .any(|(_, l)| l.contains("refused at connect: zen.test (127.0.0.2)")));
        // Unlisted, loopback (skipped) and authenticated clients come in.
        assert_eq!(
            host.door(&mut p, &connecting("198.51.100.1")).unwrap(),
            DoorVerdict::Continue
        );
        assert_eq!(
            host.door(&mut p, &connecting("127.0.0.2")).unwrap(),
            DoorVerdict::Continue
        );
        assert_eq!(
            host.door(&mut p, &connecting("192.0.2.2").authenticated("alice"))
                .unwrap(),
            DoorVerdict::Continue
        );
    }

    #[test]
    fn at_the_door_weights_thresholds_allowlists_and_a_4xx_apply() {
        let cfg = "zones = [{ zone = \"zen.test\" }]\nallow = [{ zone = \"wl.test\" }]\nthreshold = 1\ndoor_code = 450\n";
        let (mut host, mut p) = setup(cfg);
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, listed("127.0.0.2"));
        let v = host.door(&mut p, &connecting("192.0.2.2")).unwrap();
        assert!(
            matches!(v, DoorVerdict::Reply { code: 450, ref status, .. } if status == "4.7.1"),
            "{v:?}"
        );
        host.dns_answer("2.2.0.192.wl.test", DnsType::A, listed("127.0.10.1"));
        assert_eq!(
            host.door(&mut p, &connecting("192.0.2.2")).unwrap(),
            DoorVerdict::Continue
        );
        // A failing zone with on_error = "defer" is the plugin's failure
        // (the [[door]] entry's on_failure decides); ignored otherwise.
        let failing = DnsAnswer::empty(DnsOutcome::ServFail);
        let (mut host, mut p) = setup("zones = [{ zone = \"zen.test\" }]\non_error = \"defer\"\n");
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, failing.clone());
        assert!(host.door(&mut p, &connecting("192.0.2.2")).is_err());
        let (mut host, mut p) = setup("zones = [{ zone = \"zen.test\" }]\n");
        host.dns_answer("2.2.0.192.zen.test", DnsType::A, failing);
        assert_eq!(
            host.door(&mut p, &connecting("192.0.2.2")).unwrap(),
            DoorVerdict::Continue
        );
    }

    #[test]
    fn many_listing_zones_still_make_a_valid_reply() {
        let zones: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    "{{ zone = \"blocklist-number-{i}-with-a-rather-long-name.example.test\" }}"
                )
            })
            .collect();
        let (mut host, mut p) = setup(&format!("zones = [{}]\n", zones.join(", ")));
        for i in 0..10 {
            host.dns_answer(
                &format!("2.2.0.192.blocklist-number-{i}-with-a-rather-long-name.example.test"),
                DnsType::A,
                listed("127.0.0.2"),
            );
        }
        // TestHost::door refuses what the daemon would refuse (over 400 bytes).
        match host.door(&mut p, &connecting("192.0.2.2")).unwrap() {
            DoorVerdict::Reply {
                code: 554, text, ..
            } => {
                assert!(text.len() <= 400 && text.ends_with(", ..."), "{text}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let mut host = TestHost::new();
        for (cfg, want) in [
            ("", "zones"),
            ("zones = [{ codes = [] }]", "zone"),
            (
                "zones = [{ zone = \"z\" }]\naction = \"bounce\"",
                "never a bounce",
            ),
            (
                "zones = [{ zone = \"z\" }]\nskip_networks = [\"nope\"]",
                "skip_networks",
            ),
            ("zones = [{ zone = \"z\" }]\ndoor_code = 250", "door_code"),
        ] {
            let e = host
                .configure::<Dnsbl>("dnsbl", config_from_toml(cfg).unwrap())
                .err()
                .unwrap();
            assert!(e.to_string().contains(want), "{cfg}: {e}");
        }
    }
}
