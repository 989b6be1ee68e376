//! {{name}}: a finaldot plugin.
//!
//! Build:  cargo build --release --target wasm32-unknown-unknown
//! Check:  finaldot plugin check target/wasm32-unknown-unknown/release/{{crate}}.wasm
//! Try:    finaldot plugin test target/wasm32-unknown-unknown/release/{{crate}}.wasm some.eml
//! Test:   cargo test

use finaldot_sdk::prelude::*;

/// The plugin and its settings.
#[derive(Default)]
pub struct {{type}} {
    tag: String,
}

impl Plugin for {{type}} {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.tag = config.str("tag")?.unwrap_or("{{name}}").to_string();
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        msg.add_header("X-Processed-By", &self.tag);
        cx.info(&format!("{} recipient(s), tagged {}", msg.recipients().len(), self.tag));
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!({{type}});

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};

    #[test]
    fn tags_every_message() {
        let mut host = TestHost::new();
        let mut plugin: {{type}} = host
            .configure("{{name}}", config_from_toml("tag = \"checked\"").unwrap())
            .unwrap();
        let msg = TestMessage::from_eml(b"Subject: hello\r\n\r\nbody\r\n").recipient("alice@localhost");
        let out = host.run(&mut plugin, &msg).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-Processed-By").as_deref(), Some("checked"));
    }
}
