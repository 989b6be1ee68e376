//! `filter`: rules on headers, body, size, sender, recipients, attachment
//! names and the session the message came in (client network,
//! authenticated or not, TLS or not, HELO) and the host's mail
//! authentication results (SPF, DKIM, DMARC and its policy, ARC), with actions reject (bounce), discard, hold (quarantine), add a
//! header, or add to a score. Two modes: `first` (the first matching rule
//! decides) and `score` (matching rules add up; at the threshold, the
//! threshold action). Every decision is logged with the rule that made it, so
//! "why was this message held?" has an answer in the log and in
//! `finaldot queue show`.

use finaldot_sdk::prelude::*;
use regex_lite::Regex;

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Reject {
        code: u16,
        status: String,
        text: String,
    },
    Discard,
    Hold,
    AddHeader(String, String),
    Score,
}

/// One rule: every condition given must match.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    header: Option<String>,
    contains: Option<String>,
    regex: Option<Regex>,
    body_contains: Option<String>,
    body_regex: Option<Regex>,
    size_over: Option<u64>,
    sender: Option<String>,
    recipient: Option<String>,
    attachment: Option<Regex>,
    /// The client's address is in one of these networks.
    client_networks: Vec<ipnet::IpNet>,
    /// The client authenticated (true) or did not (false).
    authenticated: Option<bool>,
    /// The session used TLS (true) or did not (false).
    tls: Option<bool>,
    /// The HELO/EHLO name matches.
    helo_regex: Option<Regex>,
    /// The authentication results (each: one of these results).
    spf: Vec<AuthResult>,
    spf_helo: Vec<AuthResult>,
    dkim: Vec<AuthResult>,
    dmarc: Vec<AuthResult>,
    arc: Vec<AuthResult>,
    /// The From domain's DMARC policy is one of these.
    dmarc_policy: Vec<DmarcPolicy>,
    /// A DKIM signature of this domain passed.
    dkim_domain: Option<String>,
    action: Action,
    score: f64,
}

impl Rule {
    fn needs_body(&self) -> bool {
        self.body_contains.is_some() || self.body_regex.is_some() || self.attachment.is_some()
    }
}

/// The plugin's settings.
#[derive(Default)]
pub struct Filter {
    rules: Vec<Rule>,
    score_mode: bool,
    threshold: f64,
    threshold_action: Option<Action>,
    max_body_scan: u64,
}

fn regex(rule: &str, key: &str, v: Option<&str>) -> Result<Option<Regex>> {
    v.map(|p| {
        Regex::new(p)
            .map_err(|e| Error::new(format!("rule {rule}: `{key}` is not a valid regex: {e}")))
    })
    .transpose()
}

fn parse_action(rule: &str, t: &Value) -> Result<Action> {
    let s = |k: &str| t.get(k).and_then(Value::as_str);
    Ok(match s("action").unwrap_or("score") {
        "reject" => Action::Reject {
            code: t.get("code").and_then(Value::as_int).unwrap_or(550) as u16,
            status: s("status").unwrap_or("5.7.1").to_string(),
            text: s("text").unwrap_or("message refused by policy").to_string(),
        },
        "discard" => Action::Discard,
        "hold" => Action::Hold,
        "add-header" => {
            let h = s("add_header").ok_or_else(|| {
                Error::new(format!(
                    "rule {rule}: add-header needs `add_header = \"Name: value\"`"
                ))
            })?;
            let (n, v) = h.split_once(':').ok_or_else(|| {
                Error::new(format!("rule {rule}: `add_header` must be \"Name: value\""))
            })?;
            Action::AddHeader(n.trim().to_string(), v.trim().to_string())
        }
        "score" => Action::Score,
        other => {
            return Err(Error::new(format!(
                "rule {rule}: unknown action {other:?} (reject, discard, hold, add-header, score)"
            )))
        }
    })
}

fn parse_rule(i: usize, t: &Value) -> Result<Rule> {
    let s = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_string);
    let name = s("name").unwrap_or_else(|| format!("#{}", i + 1));
    let lower = |k: &str| s(k).map(|v| v.to_lowercase());
    let rule = Rule {
        header: s("header"),
        contains: lower("contains"),
        regex: regex(&name, "regex", t.get("regex").and_then(Value::as_str))?,
        body_contains: lower("body_contains"),
        body_regex: regex(
            &name,
            "body_regex",
            t.get("body_regex").and_then(Value::as_str),
        )?,
        size_over: t
            .get("size_over")
            .and_then(Value::as_int)
            .map(|n| n.max(0) as u64),
        sender: lower("sender"),
        recipient: lower("recipient"),
        attachment: regex(
            &name,
            "attachment",
            t.get("attachment").and_then(Value::as_str),
        )?,
        client_networks: networks(&name, t)?,
        authenticated: flag(&name, t, "authenticated")?,
        tls: flag(&name, t, "tls")?,
        helo_regex: regex(
            &name,
            "helo_regex",
            t.get("helo_regex").and_then(Value::as_str),
        )?,
        spf: results(&name, t, "spf")?,
        spf_helo: results(&name, t, "spf_helo")?,
        dkim: results(&name, t, "dkim")?,
        dmarc: results(&name, t, "dmarc")?,
        arc: results(&name, t, "arc")?,
        dmarc_policy: policies(&name, t)?,
        dkim_domain: lower("dkim_domain"),
        action: parse_action(&name, t)?,
        score: match t.get("score") {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            _ => 0.0,
        },
        name,
    };
    if rule.header.is_none() && (rule.contains.is_some() || rule.regex.is_some()) {
        return Err(Error::new(format!(
            "rule {}: `contains`/`regex` need `header`",
            rule.name
        )));
    }
    Ok(rule)
}

/// `client_network`: one network or a list (`"192.0.2.0/24"`,
/// `"2001:db8::/32"`, or one address).
fn networks(rule: &str, t: &Value) -> Result<Vec<ipnet::IpNet>> {
    strings(rule, t, "client_network")?
        .into_iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Error::new(format!(
                        "rule {rule}: `client_network` {text:?} is not a network (\"192.0.2.0/24\", \"2001:db8::/32\" or one address)"
                    ))
                })
        })
        .collect()
}

/// One string or a list of strings.
fn strings<'a>(rule: &str, t: &'a Value, key: &str) -> Result<Vec<&'a str>> {
    let items: Vec<&Value> = match t.get(key) {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
    };
    items
        .into_iter()
        .map(|v| {
            v.as_str().ok_or_else(|| {
                Error::new(format!(
                    "rule {rule}: `{key}` must be a string or a list of strings"
                ))
            })
        })
        .collect()
}

/// `spf`, `dkim`, `dmarc`, `arc`: one result or a list (`"fail"`, `["fail", "softfail"]`).
fn results(rule: &str, t: &Value, key: &str) -> Result<Vec<AuthResult>> {
    strings(rule, t, key)?
        .into_iter()
        .map(|s| {
            AuthResult::parse(s).ok_or_else(|| {
                Error::new(format!(
                    "rule {rule}: `{key}` {s:?} is not a result (none, pass, fail, softfail, neutral, temperror, permerror)"
                ))
            })
        })
        .collect()
}

/// `dmarc_policy`: one policy or a list (`"reject"`, `["quarantine", "reject"]`).
fn policies(rule: &str, t: &Value) -> Result<Vec<DmarcPolicy>> {
    strings(rule, t, "dmarc_policy")?
        .into_iter()
        .map(|s| {
            DmarcPolicy::parse(s).ok_or_else(|| {
                Error::new(format!(
                    "rule {rule}: `dmarc_policy` {s:?} is not a policy (none, quarantine, reject, unspecified)"
                ))
            })
        })
        .collect()
}

/// A true/false condition.
fn flag(rule: &str, t: &Value, key: &str) -> Result<Option<bool>> {
    match t.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::new(format!(
            "rule {rule}: `{key}` must be true or false"
        ))),
    }
}

/// Attachment file names from MIME parameters (`filename=`, `name=`).
fn attachment_names(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    let lower = body.to_ascii_lowercase();
    for key in ["filename=", "name="] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(key) {
            let start = from + i + key.len();
            let rest = &body[start..];
            let name = match rest.strip_prefix('"') {
                Some(q) => q.split('"').next().unwrap_or(""),
                None => rest.split([';', '\r', '\n', ' ']).next().unwrap_or(""),
            };
            if !name.is_empty() && !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            from = start;
        }
    }
    names
}

impl Filter {
    /// The session conditions of `rule` (all those given must hold).
    fn session_matches(rule: &Rule, msg: &Message) -> bool {
        let facts = msg.session();
        if !rule.client_networks.is_empty() {
            let Ok(ip) = facts.client_ip.parse::<std::net::IpAddr>() else {
                return false;
            };
            let ip = ip.to_canonical();
            if !rule.client_networks.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        rule.authenticated.is_none_or(|a| a == facts.auth.is_some())
            && rule.tls.is_none_or(|t| t == facts.tls.is_some())
            && rule
                .helo_regex
                .as_ref()
                .is_none_or(|r| r.is_match(&facts.helo))
    }

    /// The authentication conditions of `rule`. A message the host did not
    /// verify (submitted, or verification off) matches none of them.
    fn auth_matches(rule: &Rule, msg: &Message) -> bool {
        let any = !rule.spf.is_empty()
            || !rule.spf_helo.is_empty()
            || !rule.dkim.is_empty()
            || !rule.dmarc.is_empty()
            || !rule.arc.is_empty()
            || !rule.dmarc_policy.is_empty()
            || rule.dkim_domain.is_some();
        if !any {
            return true;
        }
        let Some(a) = msg.auth() else {
            return false;
        };
        let is = |want: &[AuthResult], got: AuthResult| want.is_empty() || want.contains(&got);
        is(&rule.spf, a.spf.result)
            && is(&rule.spf_helo, a.spf_helo.result)
            && is(&rule.dkim, a.dkim_result())
            && is(&rule.dmarc, a.dmarc.result)
            && is(&rule.arc, a.arc)
            && (rule.dmarc_policy.is_empty() || rule.dmarc_policy.contains(&a.dmarc.policy))
            && rule.dkim_domain.as_ref().is_none_or(|d| {
                a.dkim
                    .iter()
                    .any(|s| s.result == AuthResult::Pass && s.domain.eq_ignore_ascii_case(d))
            })
    }

    fn matches(&self, rule: &Rule, msg: &Message, body: Option<&str>) -> bool {
        if !Self::session_matches(rule, msg) || !Self::auth_matches(rule, msg) {
            return false;
        }
        if let Some(h) = &rule.header {
            let values = msg.header_all(h);
            let ok = values.iter().any(|v| {
                rule.contains
                    .as_ref()
                    .is_none_or(|c| v.to_lowercase().contains(c))
                    && rule.regex.as_ref().is_none_or(|r| r.is_match(v))
            });
            if !ok {
                return false;
            }
        }
        if let Some(n) = rule.size_over {
            if msg.body_len() <= n {
                return false;
            }
        }
        if let Some(s) = &rule.sender {
            if !msg.sender().to_lowercase().contains(s) {
                return false;
            }
        }
        if let Some(s) = &rule.recipient {
            if !msg
                .recipients()
                .iter()
                .any(|r| r.address.to_lowercase().contains(s))
            {
                return false;
            }
        }
        let body = body.unwrap_or("");
        if let Some(c) = &rule.body_contains {
            if !body.to_lowercase().contains(c) {
                return false;
            }
        }
        if let Some(r) = &rule.body_regex {
            if !r.is_match(body) {
                return false;
            }
        }
        if let Some(r) = &rule.attachment {
            if !attachment_names(body).iter().any(|n| r.is_match(n)) {
                return false;
            }
        }
        true
    }

    fn apply(
        &self,
        rule_name: &str,
        action: &Action,
        msg: &mut Message,
        cx: &Context,
    ) -> Option<Verdict> {
        let why = format!("filter rule {rule_name}");
        match action {
            Action::Reject { code, status, text } => {
                cx.info(&format!("{why}: reject {code} {status} {text}"));
                Some(Verdict::Bounce {
                    code: *code,
                    status: status.clone(),
                    text: text.clone(),
                })
            }
            Action::Discard => {
                cx.info(&format!("{why}: discard"));
                Some(Verdict::Discard { reason: why })
            }
            Action::Hold => {
                cx.info(&format!("{why}: hold"));
                Some(Verdict::Hold { reason: why })
            }
            Action::AddHeader(n, v) => {
                cx.info(&format!("{why}: add header {n}"));
                msg.add_header(n, v);
                None
            }
            Action::Score => None,
        }
    }
}

impl Plugin for Filter {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.score_mode = match config.str("mode")?.unwrap_or("first") {
            "first" => false,
            "score" => true,
            other => {
                return Err(Error::new(format!(
                    "`mode` {other:?} must be \"first\" or \"score\""
                )))
            }
        };
        self.threshold = match config.get("threshold") {
            Some(Value::Int(i)) => *i as f64,
            Some(Value::Float(f)) => *f,
            None => 5.0,
            Some(_) => return Err(Error::new("`threshold` must be a number")),
        };
        self.threshold_action = Some(match config.str("threshold_action")?.unwrap_or("hold") {
            "hold" => Action::Hold,
            "discard" => Action::Discard,
            "reject" => Action::Reject {
                code: 550,
                status: "5.7.1".into(),
                text: "message refused by policy (score)".into(),
            },
            other => {
                return Err(Error::new(format!(
                    "`threshold_action` {other:?} must be hold, discard or reject"
                )))
            }
        });
        self.max_body_scan = config.int("max_body_scan")?.unwrap_or(1 << 20).max(0) as u64;
        self.rules = match config.get("rules") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, t)| parse_rule(i, t))
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::new("`rules` must be an array of tables ([[rules]])")),
        };
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let body = if self.rules.iter().any(Rule::needs_body) {
            let n = msg.body_len().min(self.max_body_scan) as usize;
            let mut buf = vec![0u8; n];
            let mut off = 0;
            while off < n {
                let got = msg.read_body(off as u64, &mut buf[off..])?;
                if got == 0 {
                    break;
                }
                off += got;
            }
            buf.truncate(off);
            Some(String::from_utf8_lossy(&buf).into_owned())
        } else {
            None
        };
        let mut score = 0.0;
        let mut fired = Vec::new();
        for rule in &self.rules {
            if !self.matches(rule, msg, body.as_deref()) {
                continue;
            }
            if self.score_mode {
                score += rule.score;
                fired.push(rule.name.clone());
                if let Action::AddHeader(..) = rule.action {
                    self.apply(&rule.name, &rule.action, msg, cx);
                }
                continue;
            }
            if let Some(v) = self.apply(&rule.name, &rule.action, msg, cx) {
                return Ok(v);
            }
            return Ok(Verdict::Continue);
        }
        if self.score_mode && !fired.is_empty() {
            msg.add_header("X-Filter-Score", &format!("{score} ({})", fired.join(", ")));
            cx.info(&format!(
                "filter score {score} from rules {}",
                fired.join(", ")
            ));
            if score >= self.threshold {
                if let Some(action) = &self.threshold_action {
                    let name =
                        format!("score {score} >= {} ({})", self.threshold, fired.join(", "));
                    if let Some(v) = self.apply(&name, action, msg, cx) {
                        return Ok(v);
                    }
                }
            }
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(Filter);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, Outcome, TestHost, TestMessage};

    fn run(cfg: &str, eml: &[u8]) -> Outcome {
        let mut host = TestHost::new();
        let mut p: Filter = host
            .configure("filter", config_from_toml(cfg).unwrap())
            .unwrap();
        let msg = TestMessage::from_eml(eml)
            .sender("someone@spam.test")
            .recipient("alice@localhost");
        host.run(&mut p, &msg).unwrap()
    }

    const RULES: &str = r#"
[[rules]]
name = "exe"
attachment = "(?i)\\.(exe|scr)$"
action = "reject"
code = 554
status = "5.7.1"
text = "executables are not accepted"

[[rules]]
name = "pills"
header = "Subject"
regex = "(?i)v[i1]agra"
action = "hold"

[[rules]]
name = "tag-big"
size_over = 100
action = "add-header"
add_header = "X-Big: yes"
"#;

    #[test]
    fn session_conditions_match_network_auth_tls_and_helo() {
        use finaldot_sdk::wire::{Listener, SessionFacts, TlsFacts};
        let cfg = r#"
[[rules]]
name = "trusted"
client_network = ["192.0.2.0/24", "2001:db8::1"]
authenticated = true
tls = true
action = "add-header"
add_header = "X-Trusted: yes"

[[rules]]
name = "bare-ip-helo"
helo_regex = "^\\[?[0-9.]+\\]?$"
action = "hold"
"#;
        let mut host = TestHost::new();
        let mut p: Filter = host
            .configure("filter", config_from_toml(cfg).unwrap())
            .unwrap();
        let facts = |ip: &str, auth: bool, tls: bool, helo: &str| SessionFacts {
            client_ip: ip.into(),
            client_port: 1234,
            listener: Listener::Submission,
            helo: helo.into(),
            tls: tls.then(|| TlsFacts {
                protocol: "TLSv1.3".into(),
                cipher: "X".into(),
            }),
            auth: auth.then(|| "alice".to_string()),
            received_at: 0,
            body_8bit: false,
            smtputf8: false,
        };
        let mut run = |f: SessionFacts| {
            let msg = TestMessage::from_eml(b"Subject: x\r\n\r\nx\r\n")
                .recipient("a@localhost")
                .session(f);
            host.run(&mut p, &msg).unwrap()
        };
        let out = run(facts("192.0.2.9", true, true, "mail.example.org"));
        assert_eq!(out.header("X-Trusted").as_deref(), Some("yes"));
        assert_eq!(out.verdict, Verdict::Continue);
        let out = run(facts("2001:db8::1", true, true, "mail.example.org"));
        assert_eq!(out.header("X-Trusted").as_deref(), Some("yes"));
        for f in [
            facts("198.51.100.1", true, true, "mail.example.org"),
            facts("192.0.2.9", false, true, "mail.example.org"),
            facts("192.0.2.9", true, false, "mail.example.org"),
        ] {
            let out = run(f);
            assert_eq!(out.header("X-Trusted"), None);
            assert_eq!(out.verdict, Verdict::Continue);
        }
        let out = run(facts("198.51.100.1", false, false, "[198.51.100.1]"));
        assert!(matches!(out.verdict, Verdict::Hold { .. }));
    }

    #[test]
    fn bad_session_conditions_are_named() {
        let mut host = TestHost::new();
        for (cfg, want) in [
            (
                "[[rules]]\nclient_network = \"10.0.0.0/33\"\n",
                "client_network",
            ),
            ("[[rules]]\ntls = \"yes\"\n", "tls"),
            ("[[rules]]\nhelo_regex = \"(\"\n", "helo_regex"),
        ] {
            let e = host
                .configure::<Filter>("filter", config_from_toml(cfg).unwrap())
                .err()
                .unwrap();
            assert!(e.to_string().contains(want), "{cfg}: {e}");
        }
    }

    fn facts(
        spf: AuthResult,
        dkim: AuthResult,
        dmarc: AuthResult,
        policy: DmarcPolicy,
    ) -> AuthFacts {
        use finaldot_sdk::wire::{DkimFact, DmarcFact, SpfFact};
        AuthFacts {
            authserv_id: "mx.example.test".into(),
            spf: SpfFact {
                result: spf,
                domain: "example.org".into(),
            },
            spf_helo: SpfFact {
                result: AuthResult::None,
                domain: "h.example.org".into(),
            },
            dkim: vec![DkimFact {
                result: dkim,
                domain: "example.org".into(),
                selector: "s".into(),
                algorithm: "rsa-sha256".into(),
                reason: String::new(),
            }],
            dmarc: DmarcFact {
                result: dmarc,
                domain: "example.org".into(),
                policy,
                pct: 100,
                spf_aligned: spf == AuthResult::Pass,
                dkim_aligned: dkim == AuthResult::Pass,
            },
            arc: AuthResult::None,
        }
    }

    #[test]
    fn authentication_results_are_conditions() {
        let cfg = r#"
[[rules]]
name = "spoofed"
dmarc = "fail"
dmarc_policy = ["quarantine", "reject"]
action = "hold"
[[rules]]
name = "signed"
dkim_domain = "example.org"
action = "add-header"
add_header = "X-Signed: example.org"
[[rules]]
name = "spf-bad"
spf = ["fail", "softfail"]
action = "add-header"
add_header = "X-SPF: bad"
"#;
        let mut host = TestHost::new();
        let mut p: Filter = host
            .configure("filter", config_from_toml(cfg).unwrap())
            .unwrap();
        let eml = b"Subject: hi\r\n\r\nx\r\n";
        let with = |f: AuthFacts| TestMessage::from_eml(eml).recipient("a@localhost").auth(f);
        let f = facts(
            AuthResult::Fail,
            AuthResult::Fail,
            AuthResult::Fail,
            DmarcPolicy::Reject,
        );
        let out = host.run(&mut p, &with(f)).unwrap();
        assert_eq!(
            out.verdict,
            Verdict::Hold {
                reason: "filter rule spoofed".into()
            }
        );
        // p=none: the spoofing rule does not apply; the SPF one does.
        let f = facts(
            AuthResult::SoftFail,
            AuthResult::Fail,
            AuthResult::Fail,
            DmarcPolicy::None,
        );
        let out = host.run(&mut p, &with(f)).unwrap();
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-SPF").as_deref(), Some("bad"));
        assert_eq!(out.header("X-Signed"), None);
        let f = facts(
            AuthResult::Pass,
            AuthResult::Pass,
            AuthResult::Pass,
            DmarcPolicy::Reject,
        );
        let out = host.run(&mut p, &with(f)).unwrap();
        assert_eq!(out.header("X-Signed").as_deref(), Some("example.org"));
        assert_eq!(out.header("X-SPF"), None);
        // Not verified by the host (submitted mail): no authentication rule matches.
        let out = host
            .run(&mut p, &TestMessage::from_eml(eml).recipient("a@localhost"))
            .unwrap();
        assert!(out.changes.is_empty());
        for (bad, key) in [
            ("[[rules]]\ndmarc = \"maybe\"\n", "dmarc"),
            ("[[rules]]\ndmarc_policy = \"drop\"\n", "dmarc_policy"),
            ("[[rules]]\nspf = 3\n", "spf"),
        ] {
            let e = host
                .configure::<Filter>("filter", config_from_toml(bad).unwrap())
                .err()
                .unwrap();
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn first_match_decides_and_is_logged() {
        let out = run(RULES, b"Subject: cheap V1AGRA\r\n\r\nbuy\r\n");
        assert_eq!(
            out.verdict,
            Verdict::Hold {
                reason: "filter rule pills".into()
            }
        );
        assert!(out.logs.iter().any(|(_, l)| l == "filter rule pills: hold"));
        let out = run(
            RULES,
            b"Subject: invoice\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Disposition: attachment; filename=\"invoice.EXE\"\r\n\r\nMZ\r\n--b--\r\n",
        );
        assert!(matches!(out.verdict, Verdict::Bounce { code: 554, .. }));
        let out = run(
            RULES,
            format!("Subject: hello\r\n\r\n{}\r\n", "x".repeat(200)).as_bytes(),
        );
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(out.header("X-Big").as_deref(), Some("yes"));
        let out = run(RULES, b"Subject: hello\r\n\r\nshort\r\n");
        assert_eq!(out.verdict, Verdict::Continue);
        assert!(out.changes.is_empty());
    }

    #[test]
    fn score_mode_adds_up_to_the_threshold() {
        let cfg = r#"
mode = "score"
threshold = 5
threshold_action = "discard"
[[rules]]
name = "spam-sender"
sender = "@spam.test"
score = 3
[[rules]]
name = "shouting"
header = "Subject"
regex = "^[A-Z !]+$"
score = 2.5
"#;
        let out = run(cfg, b"Subject: BUY NOW!\r\n\r\nx\r\n");
        assert!(matches!(out.verdict, Verdict::Discard { .. }));
        assert_eq!(
            out.header("X-Filter-Score").as_deref(),
            Some("5.5 (spam-sender, shouting)")
        );
        let out = run(cfg, b"Subject: hello\r\n\r\nx\r\n");
        assert_eq!(out.verdict, Verdict::Continue);
        assert_eq!(
            out.header("X-Filter-Score").as_deref(),
            Some("3 (spam-sender)")
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_names() {
        let mut host = TestHost::new();
        for (cfg, want) in [
            (
                "[[rules]]\nname = \"r1\"\nheader = \"Subject\"\nregex = \"(\"\n",
                "r1",
            ),
            (
                "[[rules]]\nname = \"r2\"\naction = \"explode\"\n",
                "explode",
            ),
            (
                "[[rules]]\nname = \"r3\"\ncontains = \"x\"\n",
                "need `header`",
            ),
            ("mode = \"vote\"\n", "mode"),
        ] {
            let e = host
                .configure::<Filter>("f", config_from_toml(cfg).unwrap())
                .err()
                .unwrap();
            assert!(e.to_string().contains(want), "{cfg}: {e}");
        }
    }
}
