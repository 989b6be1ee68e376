//! `list-expand`: mailing lists from a directory of list files.
//!
//! A list is a file in the granted directory named after the list's address
//! (`team@example.test`), re-read for every message, so edits apply at once:
//!
//! ```text
//! # Team list
//! name: The Team
//! members-only: yes
//! moderated: no
//! bounces: team-bounces@example.test
//! unsubscribe-url: https://lists.example.test/unsubscribe/team
//! alice@example.test
//! bob@example.test
//! ```
//!
//! A pending recipient that is a list is replaced by its members (each its own
//! recipient, remembering the list as its original), with the RFC 2369/2919
//! headers (`List-Id`, `List-Post`, `List-Help`, `List-Unsubscribe`, and
//! `List-Unsubscribe-Post` per RFC 8058 when an unsubscribe URL is set),
//! `Precedence: list` and `X-Loop`; the envelope sender becomes the list's
//! bounce address. Nested lists are expanded with cycle detection and a depth
//! limit. A message that already went through the list (its `List-Id` or
//! `X-Loop`) is held, not expanded again. Members-only lists fail other
//! senders (`5.7.1`, so they get a bounce); moderated lists are expanded and
//! then held for an administrator (`finaldot queue release ID` approves).

use finaldot_sdk::prelude::*;
use finaldot_sdk::wire::HostErrorKind;

/// One list as read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// Its address, lower-case.
    pub address: String,
    /// Display name.
    pub name: String,
    /// Only members may post.
    pub members_only: bool,
    /// Posts wait for approval.
    pub moderated: bool,
    /// Envelope sender of expanded mail.
    pub bounces: String,
    /// One-click unsubscribe URL (RFC 8058).
    pub unsubscribe_url: Option<String>,
    /// Member addresses, lower-case, in file order.
    pub members: Vec<String>,
}

fn yes(v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" => Ok(true),
        "no" | "false" | "off" => Ok(false),
        other => Err(Error::new(format!("{other:?} is not yes or no"))),
    }
}

impl List {
    /// Parses a list file.
    pub fn parse(address: &str, text: &str) -> Result<List> {
        let address = address.to_ascii_lowercase();
        let (local, domain) = address
            .rsplit_once('@')
            .ok_or_else(|| Error::new(format!("list file name {address:?} is not an address")))?;
        let mut list = List {
            name: local.to_string(),
            members_only: false,
            moderated: false,
            bounces: format!("{local}-bounces@{domain}"),
            unsubscribe_url: None,
            members: Vec::new(),
            address: address.clone(),
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| Error::new(format!("list {address}, line {}: {why}", n + 1));
            match line.split_once(':') {
                Some((key, value)) if !key.contains('@') => {
                    let value = value.trim();
                    match key.trim().to_ascii_lowercase().as_str() {
                        "name" => list.name = value.to_string(),
                        "members-only" => {
                            list.members_only = yes(value).map_err(|e| bad(e.to_string()))?
                        }
                        "moderated" => {
                            list.moderated = yes(value).map_err(|e| bad(e.to_string()))?
                        }
                        "bounces" => list.bounces = value.to_ascii_lowercase(),
                        "unsubscribe-url" => list.unsubscribe_url = Some(value.to_string()),
                        other => return Err(bad(format!("unknown option {other:?}"))),
                    }
                }
                _ if line.contains('@') && !line.contains(char::is_whitespace) => {
                    let m = line.to_ascii_lowercase();
                    if !list.members.contains(&m) {
                        list.members.push(m);
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "{line:?} is neither `option: value` nor an address"
                    )))
                }
            }
        }
        Ok(list)
    }

    /// The List-Id value (RFC 2919): `Name <local.domain>`.
    pub fn id(&self) -> String {
        format!("<{}>", self.address.replace('@', "."))
    }

    fn request_address(&self) -> String {
        match self.address.rsplit_once('@') {
            Some((l, d)) => format!("{l}-request@{d}"),
            None => self.address.clone(),
        }
    }
}

/// The plugin's settings.
#[derive(Default)]
pub struct ListExpand {
    grant: String,
    max_depth: usize,
}

impl ListExpand {
    fn load(&self, cx: &Context, address: &str) -> Result<Option<List>> {
        let address = address.to_ascii_lowercase();
        if address.contains('/') || address.starts_with('.') {
            return Ok(None);
        }
        match cx.dir(&self.grant).read(&address) {
            Ok(bytes) => List::parse(&address, &String::from_utf8_lossy(&bytes)).map(Some),
            Err(e) if e.host_kind() == Some(HostErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Members of `list`, with nested lists expanded (cycles and depth cut, logged).
    fn expand(
        &self,
        cx: &Context,
        list: &List,
        depth: usize,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        path.push(list.address.clone());
        for m in &list.members {
            if path.contains(m) {
                cx.warn(&format!(
                    "list {}: member {m} would loop back ({}); skipped",
                    list.address,
                    path.join(" -> ")
                ));
                continue;
            }
            match self.load(cx, m)? {
                Some(nested) if depth + 1 < self.max_depth => {
                    self.expand(cx, &nested, depth + 1, path, out)?
                }
                Some(_) => cx.warn(&format!(
                    "list {}: nested list {m} is deeper than {}; skipped",
                    list.address, self.max_depth
                )),
                None => {
                    if !out.contains(m) {
                        out.push(m.clone());
                    }
                }
            }
        }
        path.pop();
        Ok(())
    }
}

impl Plugin for ListExpand {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.grant = config.str("grant")?.unwrap_or("lists").to_string();
        self.max_depth = config.int("max_depth")?.unwrap_or(5).clamp(1, 20) as usize;
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let mut headers_done = false;
        let mut moderated: Option<String> = None;
        for r in msg.pending_recipients() {
            let Some(list) = self.load(cx, &r.address)? else {
                continue;
            };
            let id = list.id();
            let looped = msg.header_all("List-Id").iter().any(|v| v.contains(&id))
                || msg
                    .header_all("X-Loop")
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(&list.address));
            if looped {
                cx.warn(&format!(
                    "list {}: message already went through this list; held",
                    list.address
                ));
                return Ok(Verdict::Hold {
                    reason: format!(
                        "mail loop: the message already went through list {}",
                        list.address
                    ),
                });
            }
            let sender = msg.sender().to_ascii_lowercase();
            if list.members_only && !list.members.contains(&sender) {
                cx.info(&format!(
                    "list {}: {sender} is not a member; refused",
                    list.address
                ));
                msg.mark_failed(
                    &r.address,
                    "5.7.1",
                    &format!("only members may post to {}", list.address),
                );
                continue;
            }
            let mut members = Vec::new();
            self.expand(cx, &list, 0, &mut Vec::new(), &mut members)?;
            msg.mark_delivered(
                &r.address,
                &format!(
                    "expanded to {} members of list {}",
                    members.len(),
                    list.address
                ),
            );
            for m in &members {
                msg.add_recipient(m, Some(&r.address));
            }
            cx.info(&format!(
                "list {}: expanded to {} members",
                list.address,
                members.len()
            ));
            if !headers_done {
                headers_done = true;
                let req = list.request_address();
                msg.set_header("List-Id", &format!("{} {id}", list.name));
                msg.set_header("List-Post", &format!("<mailto:{}>", list.address));
                msg.set_header("List-Help", &format!("<mailto:{req}?subject=help>"));
                match &list.unsubscribe_url {
                    Some(url) => {
                        msg.set_header(
                            "List-Unsubscribe",
                            &format!("<{url}>, <mailto:{req}?subject=unsubscribe>"),
                        );
                        msg.set_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
                    }
                    None => msg.set_header(
                        "List-Unsubscribe",
                        &format!("<mailto:{req}?subject=unsubscribe>"),
                    ),
                }
                msg.set_header("Precedence", "list");
                msg.add_header("X-Loop", &list.address);
                msg.set_sender(&list.bounces);
            }
            if list.moderated {
                moderated = Some(list.address.clone());
            }
        }
        if let Some(list) = moderated {
            return Ok(Verdict::Hold {
                reason: format!(
                    "moderated list {list}: waiting for approval (finaldot queue release)"
                ),
            });
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(ListExpand);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};
    use finaldot_sdk::RecipientState;

    struct Lists(std::path::PathBuf);
    impl Lists {
        fn new(files: &[(&str, &str)]) -> Lists {
            let p = std::env::temp_dir().join(format!(
                "list-expand-test-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir_all(&p).unwrap();
            for (name, text) in files {
                std::fs::write(p.join(name), text).unwrap();
            }
            Lists(p)
        }
    }
    impl Drop for Lists {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn addresses(out: &finaldot_sdk::testing::Outcome) -> Vec<&str> {
        out.state
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect()
    }

    fn run(files: &[(&str, &str)], msg: TestMessage) -> finaldot_sdk::testing::Outcome {
        let dir = Lists::new(files);
        let mut host = TestHost::new();
        host.grant_dir("lists", &dir.0, false);
        let mut p: ListExpand = host
            .configure("lists", config_from_toml("").unwrap())
            .unwrap();
        host.run(&mut p, &msg).unwrap()
    }

    #[test]
    fn expands_members_with_list_headers_and_bounce_sender() {
        let out = run(
            &[("team@localhost", "name: Team\nunsubscribe-url: https://l.test/u\nalice@localhost\nBob@localhost\nalice@localhost\n")],
            TestMessage::from_eml(b"Subject: hi\r\n\r\nx\r\n").sender("carol@x.test").recipient("team@localhost"),
        );
        assert_eq!(out.verdict, Verdict::Continue);
        let addrs = addresses(&out);
        assert_eq!(
            addrs,
            ["team@localhost", "alice@localhost", "bob@localhost"]
        );
        assert!(matches!(
            out.recipient("team@localhost").unwrap().state,
            RecipientState::Delivered { .. }
        ));
        assert_eq!(
            out.recipient("bob@localhost").unwrap().original.as_deref(),
            Some("team@localhost")
        );
        assert_eq!(
            out.header("List-Id").as_deref(),
            Some("Team <team.localhost>")
        );
        assert_eq!(
            out.header("List-Post").as_deref(),
            Some("<mailto:team@localhost>")
        );
        assert_eq!(
            out.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert_eq!(out.header("Precedence").as_deref(), Some("list"));
        assert_eq!(out.state.envelope.mail_from, "team-bounces@localhost");
    }

    #[test]
    fn a_message_that_already_went_through_the_list_is_held() {
        let out = run(
            &[("team@localhost", "alice@localhost\n")],
            TestMessage::from_eml(b"List-Id: Team <team.localhost>\r\nSubject: again\r\n\r\n")
                .recipient("team@localhost"),
        );
        assert!(matches!(out.verdict, Verdict::Hold { .. }));
    }

    #[test]
    fn nested_lists_expand_and_cycles_stop() {
        let out = run(
            &[
                ("all@localhost", "team@localhost\ncarol@localhost\n"),
                ("team@localhost", "alice@localhost\nall@localhost\n"),
            ],
            TestMessage::from_eml(b"Subject: x\r\n\r\n").recipient("all@localhost"),
        );
        let addrs = addresses(&out);
        assert_eq!(
            addrs,
            ["all@localhost", "alice@localhost", "carol@localhost"]
        );
        assert!(out.logs.iter().any(|(_, l)| l.contains("loop back")));
    }

    #[test]
    fn members_only_refuses_outsiders_and_moderated_holds() {
        let out = run(
            &[("team@localhost", "members-only: yes\nalice@localhost\n")],
            TestMessage::from_eml(b"Subject: x\r\n\r\n")
                .sender("mallory@x.test")
                .recipient("team@localhost"),
        );
        assert!(
            matches!(out.recipient("team@localhost").unwrap().state, RecipientState::Failed { ref status, .. } if status == "5.7.1")
        );
        let out = run(
            &[("team@localhost", "moderated: yes\nalice@localhost\n")],
            TestMessage::from_eml(b"Subject: x\r\n\r\n").recipient("team@localhost"),
        );
        assert!(
            matches!(out.verdict, Verdict::Hold { ref reason } if reason.contains("moderated"))
        );
        assert!(
            out.recipient("alice@localhost").is_some(),
            "expanded before the hold"
        );
    }

    #[test]
    fn a_bad_list_file_is_an_error_naming_the_line() {
        let e = List::parse("t@x", "name: T\nthis is junk\n").err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = List::parse("t@x", "moderated: maybe\n").err().unwrap();
        assert!(e.to_string().contains("maybe"), "{e}");
    }
}
