//! `dedup`: the RFC 1047 plugin. When a sender times out after the final dot
//! and sends the same message again, the recipient would get it twice; this
//! plugin delivers it once.
//!
//! A message's identity is its `Message-ID`, or, when it has none, a hash of
//! its body and key headers (From, To, Cc, Date, Subject). For each pending
//! recipient it remembers identity → queue id in its key-value namespace for
//! `window_hours` (default 48). A later message with the same identity for
//! the same recipient is marked delivered without being delivered again, with
//! a log line. A re-run of the same message (same queue id, after a restart)
//! is not a duplicate. Place it before local delivery in the chain.
//!
//! On several nodes sharing one namespace (Redis), a node may claim a
//! message and die before delivering it, while the copy the sender retried
//! on another node was suppressed. With `lease_secs` set, a claim is first a
//! lease of that many seconds: a copy that finds another message's lease is
//! deferred, not dropped, and takes the claim over when the lease runs out.
//! A second entry of this plugin after delivery, with `confirm = true`,
//! turns the message's leases into the full window. A message that keeps
//! running into its own lease (a retry) renews it.

use finaldot_sdk::digest::Fnv64;
use finaldot_sdk::prelude::*;

/// The plugin's settings.
#[derive(Default)]
pub struct Dedup {
    window_secs: u64,
    /// Claims are leases this long until confirmed (`None`: final at once).
    lease_secs: Option<u64>,
    /// This entry confirms leases (placed after delivery) instead of claiming.
    confirm: bool,
}

/// What a lease holds: this prefix and the queue id.
const LEASE: &str = "lease:";

fn identity(msg: &Message) -> Result<String> {
    if let Some(id) = msg.header("Message-ID") {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(format!("mid:{id}"));
        }
    }
    let mut h = Fnv64::new();
    for name in ["From", "To", "Cc", "Date", "Subject"] {
        for v in msg.header_all(name) {
            h.update(name.as_bytes())
                .update(b":")
                .update(v.as_bytes())
                .update(b"\n");
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = msg.read_body(off, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(format!("hash:{}:{}", h.hex(), off))
}

impl Plugin for Dedup {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        let hours = config.int("window_hours")?.unwrap_or(48);
        if hours <= 0 {
            return Err(Error::new("`window_hours` must be at least 1"));
        }
        self.window_secs = hours as u64 * 3600;
        self.lease_secs = match config.int("lease_secs")? {
            None => None,
            Some(s) if s >= 1 => Some(s as u64),
            Some(_) => return Err(Error::new("`lease_secs` must be at least 1")),
        };
        self.confirm = config.bool("confirm")?.unwrap_or(false);
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        if self.confirm {
            return self.confirm_leases(msg, cx);
        }
        let pending = msg.pending_recipients();
        if pending.is_empty() {
            return Ok(Verdict::Continue);
        }
        let id = identity(msg)?;
        let kv = cx.kv();
        let me = msg.queue_id().to_string();
        let lease = format!("{LEASE}{me}");
        let (claim, ttl) = match self.lease_secs {
            Some(l) => (lease.as_str(), l),
            None => (me.as_str(), self.window_secs),
        };
        for r in pending {
            let key = key(&id, &r.address);
            // Check and record in one step: two copies processed at the same
            // moment by two workers (or nodes) must not both find it absent.
            let Some(found) = kv.put_if_absent(key.as_bytes(), claim.as_bytes(), Some(ttl))? else {
                continue;
            };
            let found = String::from_utf8_lossy(&found).into_owned();
            let (leased, owner) = match found.strip_prefix(LEASE) {
                Some(owner) => (true, owner),
                None => (false, found.as_str()),
            };
            if owner == me {
                // An earlier attempt of this message: go on (renewing its lease).
                if leased {
                    kv.put(key.as_bytes(), lease.as_bytes(), Some(ttl))?;
                }
            } else if leased {
                cx.info(&format!(
                    "{owner} holds the claim on <{}> ({id}) and has not delivered yet: deferred",
                    r.address
                ));
                msg.mark_deferred(
                    &r.address,
                    &format!("a copy ({owner}) is being delivered; waiting for it"),
                );
            } else {
                cx.info(&format!(
                    "duplicate of {owner} for <{}> ({id}): not delivered again",
                    r.address
                ));
                msg.mark_discarded(&r.address, &format!("duplicate of {owner}"));
            }
        }
        Ok(Verdict::Continue)
    }
}

/// The key of one message identity for one recipient.
fn key(id: &str, address: &str) -> String {
    format!("{id}\0{}", address.to_ascii_lowercase())
}

impl Dedup {
    /// After delivery: this message's leases become claims for the window
    /// (recipients still pending or deferred keep theirs; their retry renews it).
    fn confirm_leases(&self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let id = identity(msg)?;
        let kv = cx.kv();
        let me = msg.queue_id().to_string();
        let lease = format!("{LEASE}{me}");
        let settled: Vec<String> = msg
            .recipients()
            .iter()
            .filter(|r| {
                !matches!(
                    r.state,
                    RecipientState::Pending | RecipientState::Deferred { .. }
                )
            })
            .map(|r| r.address.clone())
            .collect();
        for address in settled {
            let key = key(&id, &address);
            if kv.get(key.as_bytes())?.as_deref() == Some(lease.as_bytes()) {
                kv.put(key.as_bytes(), me.as_bytes(), Some(self.window_secs))?;
            }
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Dedup);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};
    use finaldot_sdk::RecipientState;

    #[test]
    fn second_copy_is_suppressed_per_recipient_within_the_window() {
        let mut host = TestHost::new();
        let mut p: Dedup = host
            .configure("dedup", config_from_toml("window_hours = 1").unwrap())
            .unwrap();
        let eml = b"Message-ID: <1@x>\r\nSubject: once\r\n\r\nbody\r\n";
        let first = TestMessage::from_eml(eml)
            .queue_id("Q1")
            .recipient("alice@localhost");
        let out = host.run(&mut p, &first).unwrap();
        assert!(out.changes.is_empty());
        // The same queue id again (a re-run after a restart) is not a duplicate.
        let out = host.run(&mut p, &first).unwrap();
        assert!(out.changes.is_empty());
        let second = TestMessage::from_eml(eml)
            .queue_id("Q2")
            .recipient("alice@localhost")
            .recipient("bob@localhost");
        let out = host.run(&mut p, &second).unwrap();
        assert!(
            matches!(out.recipient("alice@localhost").unwrap().state, RecipientState::Discarded { ref reason } if reason.contains("duplicate of Q1"))
        );
        assert!(out.recipient("bob@localhost").unwrap().is_pending());
        // After the window the same message is new again.
        host.set_now_ms(1_700_000_000_000 + 3_601_000);
        let third = TestMessage::from_eml(eml)
            .queue_id("Q3")
            .recipient("alice@localhost");
        assert!(host.run(&mut p, &third).unwrap().changes.is_empty());
    }

    #[test]
    fn without_message_id_the_body_and_headers_decide() {
        let mut host = TestHost::new();
        let mut p: Dedup = host.configure("dedup", Value::empty()).unwrap();
        let a = TestMessage::from_eml(b"Subject: s\r\n\r\nbody one\r\n")
            .queue_id("Q1")
            .recipient("a@l");
        let b = TestMessage::from_eml(b"Subject: s\r\n\r\nbody two\r\n")
            .queue_id("Q2")
            .recipient("a@l");
        let a2 = TestMessage::from_eml(b"Subject: s\r\n\r\nbody one\r\n")
            .queue_id("Q3")
            .recipient("a@l");
        assert!(host.run(&mut p, &a).unwrap().changes.is_empty());
        assert!(host.run(&mut p, &b).unwrap().changes.is_empty());
        assert_eq!(host.run(&mut p, &a2).unwrap().changes.len(), 1);
    }

    /// Stands in for local delivery in the lease tests.
    #[derive(Default)]
    struct DeliverAll;
    impl Plugin for DeliverAll {
        fn on_message(&mut self, msg: &mut Message, _cx: &Context) -> Result<Verdict> {
            for r in msg.pending_recipients() {
                msg.mark_delivered(&r.address, "test");
            }
            Ok(Verdict::Continue)
        }
    }

    #[test]
    fn a_lease_defers_other_copies_until_confirmed_or_expired() {
        let mut host = TestHost::new();
        let cfg = "window_hours = 1\nlease_secs = 60";
        let mut claim: Dedup = host
            .configure("dedup", config_from_toml(cfg).unwrap())
            .unwrap();
        let mut confirm: Dedup = host
            .configure(
                "dedup-confirm",
                config_from_toml(&format!("{cfg}\nconfirm = true")).unwrap(),
            )
            .unwrap();
        let eml = b"Message-ID: <lease@x>\r\nSubject: once\r\n\r\nbody\r\n";
        let copy = |q: &str| {
            TestMessage::from_eml(eml)
                .queue_id(q)
                .recipient("alice@localhost")
        };
        // Q1 takes the lease; Q2, a copy, is deferred (not dropped) while it lasts.
        assert!(host
            .run(&mut claim, &copy("Q1"))
            .unwrap()
            .changes
            .is_empty());
        let out = host.run(&mut claim, &copy("Q2")).unwrap();
        assert!(
            matches!(out.recipient("alice@localhost").unwrap().state, RecipientState::Deferred { ref reason } if reason.contains("Q1")),
            "{:?}",
            out.changes
        );
        // Q1 is delivered and confirms: now Q2 is a duplicate.
        let q1 = copy("Q1");
        let delivered = host.run(&mut DeliverAll, &q1).unwrap();
        host.run(&mut confirm, &q1.after(&delivered)).unwrap();
        let out = host.run(&mut claim, &copy("Q2")).unwrap();
        assert!(matches!(
            out.recipient("alice@localhost").unwrap().state,
            RecipientState::Discarded { .. }
        ));

        // Another message whose owner died after its lease: once the lease
        // has run out, a copy takes the claim and is delivered.
        let eml = b"Message-ID: <orphan@x>\r\n\r\nbody\r\n";
        let copy = |q: &str| {
            TestMessage::from_eml(eml)
                .queue_id(q)
                .recipient("alice@localhost")
        };
        assert!(host
            .run(&mut claim, &copy("Q3"))
            .unwrap()
            .changes
            .is_empty());
        assert_eq!(host.run(&mut claim, &copy("Q4")).unwrap().changes.len(), 1);
        host.set_now_ms(1_700_000_000_000 + 61_000);
        assert!(host
            .run(&mut claim, &copy("Q4"))
            .unwrap()
            .changes
            .is_empty());
        // And Q3, back from the dead, finds Q4's lease: it waits, it is
        // not delivered alongside.
        assert_eq!(host.run(&mut claim, &copy("Q3")).unwrap().changes.len(), 1);
    }
}
