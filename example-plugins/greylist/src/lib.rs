//! `greylist`: RFC 6647 greylisting, a door plugin (`[[door]]`, stage
//! `rcpt`). The first attempt of a triplet (the client's network, /24 for
//! IPv4 and /64 for IPv6 by default, the envelope sender, the recipient)
//! gets `451 4.7.1`; a retry after `delay_secs` and within
//! `retry_window_secs` of the first attempt passes, and the triplet is then
//! remembered for `pass_secs`, so the sender's later mail is not delayed.
//! Real MTAs retry; most spamware does not.
//!
//! State is kept in the plugin's key-value namespace: the local store for
//! one node, or a Redis namespace shared by every node behind one MX (a
//! client that retries through another node passes there too). The first
//! sighting is recorded with put-if-absent, so two nodes seeing the same
//! first attempt at once agree on its time.

use finaldot_sdk::prelude::*;

/// The plugin's settings.
#[derive(Default)]
pub struct Greylist {
    delay_secs: u64,
    retry_window_secs: u64,
    pass_secs: u64,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    skip_networks: Vec<ipnet::IpNet>,
    /// Sender domains (lowercase) never greylisted.
    skip_sender_domains: Vec<String>,
    /// Recipients (lowercase addresses, or `@domain`) never greylisted.
    skip_recipients: Vec<String>,
}

fn secs(config: &Config, key: &str, default: u64) -> Result<u64> {
    match config.int(key)? {
        None => Ok(default),
        Some(n) if n > 0 => Ok(n as u64),
        Some(n) => Err(Error::new(format!("`{key}` must be positive, not {n}"))),
    }
}

fn networks(config: &Config, key: &str, default: &[&str]) -> Result<Vec<ipnet::IpNet>> {
    let list = match config.get(key) {
        None => default.iter().map(|s| s.to_string()).collect(),
        Some(_) => config.strings(key)?,
    };
    list.iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| Error::new(format!("`{key}`: {n:?} is not a network")))
        })
        .collect()
}

/// The domain of an address (after the last `@`), lowercase.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .to_ascii_lowercase()
}

impl Greylist {
    /// The client's network: its address cut to the configured prefix.
    fn network(&self, ip: std::net::IpAddr) -> Option<ipnet::IpNet> {
        let prefix = match ip {
            std::net::IpAddr::V4(_) => self.ipv4_prefix,
            std::net::IpAddr::V6(_) => self.ipv6_prefix,
        };
        ipnet::IpNet::new(ip, prefix).ok().map(|n| n.trunc())
    }

    /// Why this RCPT is not greylisted, if it is not.
    fn skipped(&self, door: &Door, ip: std::net::IpAddr, rcpt: &str) -> Option<&'static str> {
        if door.authenticated().is_some() {
            return Some("authenticated");
        }
        if self.skip_networks.iter().any(|n| n.contains(&ip)) {
            return Some("skip_networks");
        }
        let sender = door.mail_from().unwrap_or("");
        if !sender.is_empty() && self.skip_sender_domains.contains(&domain_of(sender)) {
            return Some("skip_sender_domains");
        }
        let rcpt = rcpt.to_ascii_lowercase();
        let by_domain = format!("@{}", domain_of(&rcpt));
        if self
            .skip_recipients
            .iter()
            .any(|r| *r == rcpt || *r == by_domain)
        {
            return Some("skip_recipients");
        }
        None
    }
}

impl Plugin for Greylist {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.delay_secs = secs(config, "delay_secs", 300)?;
        self.retry_window_secs = secs(config, "retry_window_secs", 86_400)?;
        self.pass_secs = secs(config, "pass_secs", 35 * 86_400)?;
        let prefix = |key: &str, default: i64, max: i64| -> Result<u8> {
            match config.int(key)?.unwrap_or(default) {
                n if (0..=max).contains(&n) => Ok(n as u8),
                n => Err(Error::new(format!("`{key}` must be 0 to {max}, not {n}"))),
            }
        };
        self.ipv4_prefix = prefix("ipv4_prefix", 24, 32)?;
        self.ipv6_prefix = prefix("ipv6_prefix", 64, 128)?;
        self.skip_networks = networks(config, "skip_networks", &["127.0.0.0/8", "::1/128"])?;
        let lower = |key: &str| -> Result<Vec<String>> {
            Ok(match config.get(key) {
                None => Vec::new(),
                Some(_) => config
                    .strings(key)?
                    .into_iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
            })
        };
        self.skip_sender_domains = lower("skip_sender_domains")?;
        self.skip_recipients = lower("skip_recipients")?;
        Ok(())
    }

    fn on_rcpt(&mut self, door: &Door, cx: &Context) -> Result<DoorVerdict> {
        let (Some(ip), Some(rcpt)) = (door.client_ip(), door.rcpt_to()) else {
            return Ok(DoorVerdict::Continue);
        };
        if let Some(why) = self.skipped(door, ip, rcpt) {
            cx.debug(&format!("{ip} -> <{rcpt}>: not greylisted ({why})"));
            return Ok(DoorVerdict::Continue);
        }
        let Some(net) = self.network(ip) else {
            return Ok(DoorVerdict::Continue);
        };
        let sender = door.mail_from().unwrap_or("").to_ascii_lowercase();
        let triplet = format!("{net}\0{sender}\0{}", rcpt.to_ascii_lowercase());
        let passed_key = format!("passed\0{triplet}");
        let kv = cx.kv();
        let now = cx.now_ms();
        let ms = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
        };
        if let Some(passed) = kv.get(passed_key.as_bytes())? {
            // Remembered for pass_secs from its last use (RFC 6647 §4.3),
            // refreshed at most once per half period: a regular
            // correspondent is never greylisted again.
            let since = ms(&passed).map_or(u64::MAX, |t| now.saturating_sub(t));
            if since > self.pass_secs * 500 {
                kv.put(
                    passed_key.as_bytes(),
                    now.to_string().as_bytes(),
                    Some(self.pass_secs),
                )?;
            }
            return Ok(DoorVerdict::Continue);
        }
        let seen_key = format!("seen\0{triplet}");
        let first = kv.put_if_absent(
            seen_key.as_bytes(),
            now.to_string().as_bytes(),
            Some(self.delay_secs + self.retry_window_secs),
        )?;
        let waited = match first {
            None => {
                cx.info(&format!(
                    "greylisted {net} <{sender}> -> <{rcpt}>: first attempt"
                ));
                0
            }
            Some(seen) => match ms(&seen) {
                Some(seen) => now.saturating_sub(seen) / 1000,
                None => {
                    // Not ours (or damaged): this attempt is the first.
                    kv.put(
                        seen_key.as_bytes(),
                        now.to_string().as_bytes(),
                        Some(self.delay_secs + self.retry_window_secs),
                    )?;
                    0
                }
            },
        };
        if waited < self.delay_secs {
            let left = self.delay_secs - waited;
            return Ok(DoorVerdict::reply(
                451,
                "4.7.1",
                format!("Greylisted, please try again in {left} seconds"),
            ));
        }
        kv.put(
            passed_key.as_bytes(),
            now.to_string().as_bytes(),
            Some(self.pass_secs),
        )?;
        kv.delete(seen_key.as_bytes())?;
        cx.info(&format!(
            "{net} <{sender}> -> <{rcpt}> passed greylisting after {waited} s"
        ));
        Ok(DoorVerdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Greylist);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestDoor, TestHost};

    const T0: u64 = 1_700_000_000_000;

    fn setup(cfg: &str) -> (TestHost, Greylist) {
        let mut host = TestHost::new();
        let p = host
            .configure("greylist", config_from_toml(cfg).expect("toml"))
            .expect("configured");
        (host, p)
    }

    fn rcpt(ip: &str, from: &str, to: &str) -> TestDoor {
        TestDoor::at(DoorStage::Rcpt, ip)
            .helo("client.test")
            .mail_from(from)
            .rcpt_to(to)
    }

    fn greylisted(v: &DoorVerdict) -> bool {
        matches!(v, DoorVerdict::Reply { code: 451, status, .. } if status == "4.7.1")
    }

    #[test]
    fn a_first_attempt_waits_a_retry_after_the_delay_passes_and_is_remembered() {
        let (mut host, mut p) = setup("delay_secs = 300\n");
        host.set_now_ms(T0);
        let first = host
            .door(
                &mut p,
                &rcpt("192.0.2.10", "a@sender.test", "bob@localhost"),
            )
            .unwrap();
        assert_eq!(
            first,
            DoorVerdict::reply(451, "4.7.1", "Greylisted, please try again in 300 seconds")
        );
        // Too early: still greylisted, with the time left.
        host.set_now_ms(T0 + 100_000);
        let early = host
            .door(
                &mut p,
                &rcpt("192.0.2.10", "a@sender.test", "bob@localhost"),
            )
            .unwrap();
        assert_eq!(
            early,
            DoorVerdict::reply(451, "4.7.1", "Greylisted, please try again in 200 seconds")
        );
        // After the delay, from another address of the same /24: passes.
        host.set_now_ms(T0 + 301_000);
        let retry = host
            .door(
                &mut p,
                &rcpt("192.0.2.99", "A@Sender.test", "bob@localhost"),
            )
            .unwrap();
        assert_eq!(retry, DoorVerdict::Continue);
        // Remembered: the next message passes at once.
        host.set_now_ms(T0 + 400_000);
        assert_eq!(
            host.door(
                &mut p,
                &rcpt("192.0.2.10", "a@sender.test", "bob@localhost")
            )
            .unwrap(),
            DoorVerdict::Continue
        );
        // Another triplet (another recipient, another network) starts over.
        assert!(greylisted(
            &host
                .door(
                    &mut p,
                    &rcpt("192.0.2.10", "a@sender.test", "carol@localhost")
                )
                .unwrap()
        ));
        assert!(greylisted(
            &host
                .door(
                    &mut p,
                    &rcpt("198.51.100.1", "a@sender.test", "bob@localhost")
                )
                .unwrap()
        ));
    }

    #[test]
    fn a_passed_triplet_in_use_is_remembered_past_pass_secs() {
        let (mut host, mut p) = setup("delay_secs = 10\npass_secs = 1000\n");
        let d = rcpt("192.0.2.10", "a@sender.test", "bob@localhost");
        host.set_now_ms(T0);
        assert!(greylisted(&host.door(&mut p, &d).unwrap()));
        host.set_now_ms(T0 + 11_000);
        assert_eq!(host.door(&mut p, &d).unwrap(), DoorVerdict::Continue);
        // Used again past half its life: refreshed, so it outlives the
        // first pass_secs.
        host.set_now_ms(T0 + 11_000 + 700_000);
        assert_eq!(host.door(&mut p, &d).unwrap(), DoorVerdict::Continue);
        host.set_now_ms(T0 + 11_000 + 1_500_000);
        assert_eq!(host.door(&mut p, &d).unwrap(), DoorVerdict::Continue);
        // Unused for longer than pass_secs: greylisted again.
        host.set_now_ms(T0 + 11_000 + 1_500_000 + 1_001_000);
        assert!(greylisted(&host.door(&mut p, &d).unwrap()));
    }

    #[test]
    fn a_retry_after_the_window_starts_over() {
        let (mut host, mut p) = setup("delay_secs = 60\nretry_window_secs = 3600\n");
        host.set_now_ms(T0);
        let d = rcpt("192.0.2.10", "a@sender.test", "bob@localhost");
        assert!(greylisted(&host.door(&mut p, &d).unwrap()));
        // The first sighting expired with its window: a new first attempt.
        host.set_now_ms(T0 + (60 + 3600 + 1) * 1000);
        assert_eq!(
            host.door(&mut p, &d).unwrap(),
            DoorVerdict::reply(451, "4.7.1", "Greylisted, please try again in 60 seconds")
        );
    }

    #[test]
    fn skipped_clients_senders_and_recipients_are_not_greylisted() {
        let cfg = "skip_networks = [\"203.0.113.0/24\"]\nskip_sender_domains = [\"Trusted.test\"]\nskip_recipients = [\"postmaster@localhost\", \"@open.test\"]\n";
        let (mut host, mut p) = setup(cfg);
        for d in [
            rcpt("203.0.113.5", "a@sender.test", "bob@localhost"),
            rcpt("192.0.2.10", "x@trusted.test", "bob@localhost"),
            rcpt("192.0.2.10", "a@sender.test", "PostMaster@localhost"),
            rcpt("192.0.2.10", "a@sender.test", "anyone@open.test"),
            rcpt("192.0.2.10", "a@sender.test", "bob@localhost").authenticated("alice"),
        ] {
            assert_eq!(
                host.door(&mut p, &d).unwrap(),
                DoorVerdict::Continue,
                "{:?}",
                d.input()
            );
        }
        // By default loopback is skipped; IPv6 clients are grouped by /64.
        let (mut host, mut p) = setup("delay_secs = 10\n");
        assert_eq!(
            host.door(&mut p, &rcpt("127.0.0.1", "a@sender.test", "bob@localhost"))
                .unwrap(),
            DoorVerdict::Continue
        );
        host.set_now_ms(T0);
        assert!(greylisted(
            &host
                .door(&mut p, &rcpt("2001:db8:1:2::1", "", "bob@localhost"))
                .unwrap()
        ));
        host.set_now_ms(T0 + 11_000);
        assert_eq!(
            host.door(&mut p, &rcpt("2001:db8:1:2::ffff", "", "bob@localhost"))
                .unwrap(),
            DoorVerdict::Continue
        );
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let mut host = TestHost::new();
        for (cfg, want) in [
            ("delay_secs = 0", "delay_secs"),
            ("ipv4_prefix = 33", "ipv4_prefix"),
            ("skip_networks = [\"nope\"]", "skip_networks"),
            ("skip_recipients = 3", "skip_recipients"),
        ] {
            let e = host
                .configure::<Greylist>("greylist", config_from_toml(cfg).expect("toml"))
                .err()
                .expect("refused");
            assert!(e.to_string().contains(want), "{cfg}: {e}");
        }
    }
}
