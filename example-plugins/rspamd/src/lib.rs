//! `rspamd`: sends each message to rspamd's scanning endpoint (`/checkv2`)
//! with the session's facts as rspamd expects them (`IP`, `Helo`, `From`,
//! `Rcpt`, `Queue-Id`, `User`), and applies its answer: the headers it asks
//! to add and remove, `X-Spam-*` headers with the score, and its action
//! mapped by configuration. By default nothing is ever bounced (a spam
//! sender is usually forged): `reject` holds the message for quarantine,
//! `soft reject` and `greylist` defer it, `rewrite subject` prefixes the
//! subject, `add header` adds `X-Spam: Yes`. rspamd down or slow defers the
//! message (it waits in the spool) unless `fail_open = true`.

use finaldot_sdk::prelude::*;
use finaldot_sdk::wire::HttpResponse;
use serde_json::Value as Json;

/// What an rspamd action becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Act {
    /// Only the headers.
    Header,
    /// Prefix the subject too.
    Subject,
    /// Hold for an administrator (quarantine).
    Hold,
    /// Drop it (never a bounce).
    Discard,
    /// Try again later.
    Defer,
}

fn act(name: &str, v: &str) -> Result<Act> {
    Ok(match v {
        "header" => Act::Header,
        "subject" => Act::Subject,
        "hold" => Act::Hold,
        "discard" => Act::Discard,
        "defer" => Act::Defer,
        other => {
            return Err(Error::new(format!(
                "`{name}` {other:?} must be header, subject, hold, discard or defer (never a bounce: the sender may be forged)"
            )))
        }
    })
}

/// The plugin's settings.
#[derive(Default)]
pub struct Rspamd {
    url: String,
    reject: Option<Act>,
    soft_reject: Option<Act>,
    greylist: Option<Act>,
    add_header: Option<Act>,
    rewrite_subject: Option<Act>,
    subject_prefix: String,
    fail_open: bool,
}

impl Rspamd {
    fn action(&self, rspamd_action: &str) -> Act {
        let chosen = match rspamd_action {
            "reject" => self.reject,
            "soft reject" => self.soft_reject,
            "greylist" => self.greylist,
            "add header" => self.add_header,
            "rewrite subject" => self.rewrite_subject,
            _ => Some(Act::Header),
        };
        chosen.unwrap_or(Act::Header)
    }

    /// The message's verdict from rspamd's JSON answer; headers applied.
    fn apply(&self, msg: &mut Message, cx: &Context, answer: &Json) -> Verdict {
        let action = answer["action"].as_str().unwrap_or("no action").to_string();
        let score = answer["score"].as_f64().unwrap_or(0.0);
        let required = answer["required_score"].as_f64().unwrap_or(0.0);
        let spam = matches!(
            action.as_str(),
            "reject" | "add header" | "rewrite subject" | "soft reject"
        );
        // What rspamd's milter block asks for: remove first, then add.
        if let Some(remove) = answer["milter"]["remove_headers"].as_object() {
            for name in remove.keys() {
                msg.remove_header(name);
            }
        }
        if let Some(add) = answer["milter"]["add_headers"].as_object() {
            for (name, v) in add {
                let value = match v {
                    Json::String(s) => Some(s.clone()),
                    Json::Object(o) => o.get("value").and_then(Json::as_str).map(str::to_string),
                    _ => None,
                };
                if let Some(value) = value {
                    msg.set_header(name, &value);
                }
            }
        }
        msg.set_header("X-Spam-Score", &format!("{score:.2} / {required:.2}"));
        msg.set_header("X-Spam-Action", &action);
        msg.set_header("X-Spam", if spam { "Yes" } else { "No" });
        let what = self.action(&action);
        let why = format!("rspamd: {action} (score {score:.2} / {required:.2})");
        cx.info(&format!("{why}: {what:?}"));
        match what {
            Act::Header => Verdict::Continue,
            Act::Subject => {
                let subject = answer["subject"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        format!(
                            "{}{}",
                            self.subject_prefix,
                            msg.header("Subject").unwrap_or_default()
                        )
                    });
                msg.set_header("Subject", &subject);
                Verdict::Continue
            }
            Act::Hold => Verdict::Hold { reason: why },
            Act::Discard => Verdict::Discard { reason: why },
            Act::Defer => Verdict::Defer {
                reason: why,
                retry_after_secs: None,
            },
        }
    }

    /// rspamd could not be asked: defer, or deliver unscanned (fail open).
    fn unavailable(&self, msg: &mut Message, cx: &Context, why: String) -> Verdict {
        if self.fail_open {
            cx.warn(&format!("{why}: delivered unscanned (fail_open)"));
            msg.set_header("X-Spam-Scan", "skipped: rspamd unavailable");
            return Verdict::Continue;
        }
        cx.warn(&format!("{why}: deferred"));
        Verdict::Defer {
            reason: why,
            retry_after_secs: None,
        }
    }
}

impl Plugin for Rspamd {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.url = config
            .str("url")?
            .unwrap_or("http://127.0.0.1:11333/checkv2")
            .to_string();
        let opt = |key: &str, default: &str| -> Result<Option<Act>> {
            Ok(Some(act(key, config.str(key)?.unwrap_or(default))?))
        };
        self.reject = opt("reject", "hold")?;
        self.soft_reject = opt("soft_reject", "defer")?;
        self.greylist = opt("greylist", "defer")?;
        self.add_header = opt("add_header", "header")?;
        self.rewrite_subject = opt("rewrite_subject", "subject")?;
        self.subject_prefix = config
            .str("subject_prefix")?
            .unwrap_or("***SPAM*** ")
            .to_string();
        self.fail_open = config.bool("fail_open")?.unwrap_or(false);
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let facts = msg.session().clone();
        let mut headers: Vec<(String, String)> = vec![
            ("IP".into(), facts.client_ip.clone()),
            ("Helo".into(), facts.helo.clone()),
            ("From".into(), msg.sender().to_string()),
            ("Queue-Id".into(), msg.queue_id().to_string()),
        ];
        if let Some(user) = &facts.auth {
            headers.push(("User".into(), user.clone()));
        }
        for r in msg.pending_recipients() {
            headers.push(("Rcpt".into(), r.address.clone()));
        }
        let refs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let response = match cx.http().post_message(&self.url, &refs, msg) {
            Ok(r) => r,
            Err(e) => return Ok(self.unavailable(msg, cx, format!("rspamd at {}: {e}", self.url))),
        };
        match parse(&response) {
            Ok(answer) => Ok(self.apply(msg, cx, &answer)),
            Err(why) => Ok(self.unavailable(msg, cx, format!("rspamd at {}: {why}", self.url))),
        }
    }
}

/// rspamd's answer: a 200 with a JSON object that has an action.
fn parse(r: &HttpResponse) -> std::result::Result<Json, String> {
    if r.status != 200 {
        return Err(format!("HTTP status {}", r.status));
    }
    let answer: Json =
        serde_json::from_slice(&r.body).map_err(|e| format!("answer is not JSON: {e}"))?;
    if !answer["action"].is_string() {
        return Err("answer has no action".into());
    }
    Ok(answer)
}

finaldot_sdk::export_plugin!(Rspamd);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, Outcome, TestHost, TestMessage};

    const URL: &str = "http://127.0.0.1:11333/checkv2";

    fn answer(json: &str) -> HttpResponse {
        HttpResponse {
            status: 200,
            headers: Vec::new(),
            body: json.as_bytes().to_vec(),
        }
    }

    fn run(cfg: &str, response: Option<HttpResponse>) -> (Outcome, TestHost) {
        let mut host = TestHost::new();
        if let Some(r) = response {
            host.http_response(URL, r);
        }
        let mut p: Rspamd = host
            .configure("rspamd", config_from_toml(cfg).unwrap())
            .unwrap();
        let msg = TestMessage::from_eml(b"Subject: hello\r\nX-Old: 1\r\n\r\nbody\r\n")
            .sender("s@remote.test")
            .recipient("alice@localhost")
            .client_ip("192.0.2.7")
            .helo("mail.remote.test");
        let out = host.run(&mut p, &msg).unwrap();
        (out, host)
    }

    #[test]
    fn a_clean_message_gets_the_score_headers_and_the_facts_were_sent() {
        let (out, host) = run(
            "",
            Some(answer(
                r#"{"action":"no action","score":1.5,"required_score":15,"milter":{"add_headers":{"X-Spamd-Result":{"value":"default: False [1.50 / 15.00]","order":0}},"remove_headers":{"X-Old":1}}}"#,
            )),
        );
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-Spam").as_deref(), Some("No"));
        assert_eq!(out.header("X-Spam-Score").as_deref(), Some("1.50 / 15.00"));
        assert_eq!(
            out.header("X-Spamd-Result").as_deref(),
            Some("default: False [1.50 / 15.00]")
        );
        assert!(out.header("X-Old").is_none());
        let sent = host.http_requests();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].1, URL);
        assert!(sent[0].2.starts_with(b"Subject: hello\r\n"));
    }

    #[test]
    fn actions_map_by_configuration_and_never_bounce() {
        let spam = |a: &str| {
            answer(&format!(
                r#"{{"action":"{a}","score":20,"required_score":15}}"#
            ))
        };
        let (out, _) = run("", Some(spam("reject")));
        assert!(matches!(out.verdict, Verdict::Hold { .. }));
        let (out, _) = run("reject = \"discard\"", Some(spam("reject")));
        assert!(matches!(out.verdict, Verdict::Discard { .. }));
        let (out, _) = run("", Some(spam("soft reject")));
        assert!(matches!(out.verdict, Verdict::Defer { .. }));
        let (out, _) = run("", Some(spam("add header")));
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-Spam").as_deref(), Some("Yes"));
        let (out, _) = run("", Some(spam("rewrite subject")));
        assert_eq!(out.header("Subject").as_deref(), Some("***SPAM*** hello"));
        let mut host = TestHost::new();
        let e = host
            .configure::<Rspamd>("rspamd", config_from_toml("reject = \"bounce\"").unwrap())
            .err()
            .unwrap();
        assert!(e.to_string().contains("never a bounce"), "{e}");
    }

    #[test]
    fn rspamd_unavailable_defers_or_fails_open() {
        let (out, _) = run("", None);
        assert!(matches!(out.verdict, Verdict::Defer { .. }));
        let (out, _) = run(
            "",
            Some(HttpResponse {
                status: 500,
                headers: Vec::new(),
                body: Vec::new(),
            }),
        );
        assert!(matches!(out.verdict, Verdict::Defer { .. }));
        let (out, _) = run("fail_open = true", Some(answer("not json")));
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(
            out.header("X-Spam-Scan").as_deref(),
            Some("skipped: rspamd unavailable")
        );
    }
}
