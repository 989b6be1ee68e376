//! `stamp`: the ten-line finaldot plugin. Adds `X-Stamped-By: <by>` to every
//! message (`by` from its config table, default `finaldot`) and logs it.

use finaldot_sdk::prelude::*;

/// The plugin: what to stamp.
#[derive(Default)]
pub struct Stamp {
    by: Option<String>,
}

impl Plugin for Stamp {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.by = config.str("by")?.map(str::to_string);
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let by = self.by.as_deref().unwrap_or("finaldot");
        msg.add_header("X-Stamped-By", by);
        cx.info(&format!("stamped by {by}"));
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Stamp);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};

    #[test]
    fn stamps_every_message_with_the_configured_name() {
        let mut host = TestHost::new();
        let mut plugin: Stamp = host
            .configure("stamp", config_from_toml("by = \"mx1\"").unwrap())
            .unwrap();
        let msg =
            TestMessage::from_eml(b"Subject: hi\r\n\r\nbody\r\n").recipient("alice@localhost");
        let out = host.run(&mut plugin, &msg).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-Stamped-By").as_deref(), Some("mx1"));
        assert_eq!(out.logs, vec![(Level::Info, "stamped by mx1".to_string())]);
    }

    #[test]
    fn a_wrongly_typed_setting_is_refused_with_its_name() {
        let mut host = TestHost::new();
        let err = host
            .configure::<Stamp>("stamp", config_from_toml("by = 3").unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains("`by`"));
    }
}
