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

use finaldot_sdk::digest::Fnv64;
use finaldot_sdk::prelude::*;

/// The plugin's settings.
#[derive(Default)]
pub struct Dedup {
    window_secs: u64,
}

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
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let pending = msg.pending_recipients();
        if pending.is_empty() {
            return Ok(Verdict::Continue);
        }
        let id = identity(msg)?;
        let kv = cx.kv();
        let me = msg.queue_id().to_string();
        for r in pending {
            let key = format!("{id}\0{}", r.address.to_ascii_lowercase());
            // Check and record in one step: two copies processed at the same
            // moment by two workers must not both find the key absent.
            let first = kv.put_if_absent(key.as_bytes(), me.as_bytes(), Some(self.window_secs))?;
            // None: recorded now; this message's own id: an earlier attempt of it.
            if let Some(first) = first.filter(|f| f != me.as_bytes()) {
                let first = String::from_utf8_lossy(&first).into_owned();
                cx.info(&format!(
                    "duplicate of {first} for <{}> ({id}): not delivered again",
                    r.address
                ));
                msg.mark_discarded(&r.address, &format!("duplicate of {first}"));
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
}
