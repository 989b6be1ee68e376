//! `bulky`: a plugin of about 1 MiB of WebAssembly, for measuring how long a
//! large plugin takes to go live after a hot reload (`bench --reload`). It
//! links the full `regex` crate (Unicode tables included) and does real work
//! with it: when the Subject matches `pattern`, it adds `X-Bulky: match`.

use finaldot_sdk::prelude::*;

/// The plugin: one compiled pattern.
#[derive(Default)]
pub struct Bulky {
    pattern: Option<regex::Regex>,
}

impl Plugin for Bulky {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        let p = config
            .str("pattern")?
            .unwrap_or(r"(?i)\b(viagra|\p{Greek}{4,})\b");
        self.pattern = Some(
            regex::Regex::new(p)
                .map_err(|e| Error::new(format!("`pattern` is not a valid regex: {e}")))?,
        );
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, _cx: &Context) -> Result<Verdict> {
        let subject = msg.header("Subject").unwrap_or_default();
        if self.pattern.as_ref().is_some_and(|p| p.is_match(&subject)) {
            msg.add_header("X-Bulky", "match");
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Bulky);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};

    #[test]
    fn a_matching_subject_is_marked_and_others_are_not() {
        let mut host = TestHost::new();
        let mut p: Bulky = host
            .configure(
                "bulky",
                config_from_toml("pattern = \"(?i)offer\"").expect("toml"),
            )
            .expect("configure");
        for (subject, marked) in [("Special OFFER", true), ("hello", false)] {
            let eml = format!("Subject: {subject}\r\n\r\nbody\r\n");
            let m = TestMessage::from_eml(eml.as_bytes()).recipient("alice@localhost");
            let out = host.run(&mut p, &m).expect("call");
            assert_eq!(out.header("X-Bulky").is_some(), marked, "{subject}");
        }
        let bad: Result<Bulky> =
            host.configure("bulky", config_from_toml("pattern = \"(\"").expect("toml"));
        assert!(bad.is_err());
    }
}
