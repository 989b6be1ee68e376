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
//!
//! With `verp: yes` every member gets an envelope sender of its own,
//! `LIST-bounces+TAG-member=domain@listdomain` (VERP), so a bounce names the
//! member. TAG is a keyed digest of the list and the member
//! ([`finaldot_sdk::plugin::Kv::mac`], the key kept in the plugin's
//! namespace, as SRS does), so nobody can make up a VERP address for a
//! member: a report to one without a valid tag is dropped uncounted. A
//! failure report (RFC 3464) to a valid one is counted for that member (in the key-value namespace, by queue id, so a retry does not
//! count twice) and dropped; the `bounce_limit`-th within
//! `bounce_window_secs` disables the member (later posts skip it) and goes to
//! the list's owner with a header saying so. Nothing sent to a VERP address
//! ever reaches the list.

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
    /// Each member gets its own envelope sender (VERP).
    pub verp: bool,
    /// Who is told when a member is disabled (default `LIST-owner@DOMAIN`).
    pub owner: String,
    /// Disabled members to take back (`enable:` lines).
    pub enable: Vec<String>,
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
            verp: false,
            owner: format!("{local}-owner@{domain}"),
            enable: Vec::new(),
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
                        "verp" => list.verp = yes(value).map_err(|e| bad(e.to_string()))?,
                        "owner" if value.contains('@') => list.owner = value.to_ascii_lowercase(),
                        "owner" => return Err(bad(format!("owner {value:?} is not an address"))),
                        "enable" => list.enable.push(value.to_ascii_lowercase()),
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

    /// The VERP envelope sender for `member` with its `tag`
    /// ([`ListExpand`]'s keyed digest): `LIST-bounces+TAG-local=domain@listdomain`.
    pub fn verp_sender(&self, member: &str, tag: &str) -> String {
        let (bl, bd) = self.bounces.rsplit_once('@').unwrap_or((&self.bounces, ""));
        format!("{bl}+{tag}-{}@{bd}", member.replace('@', "="))
    }

    fn request_address(&self) -> String {
        match self.address.rsplit_once('@') {
            Some((l, d)) => format!("{l}-request@{d}"),
            None => self.address.clone(),
        }
    }
}

/// Hex digits of a VERP tag (40 bits: a forger needs about 2^39 reports
/// to hit one member's).
const TAG_LEN: usize = 10;

/// A VERP address taken apart: the bounce address it extends, the member
/// it names and the tag that vouches for it
/// (`team-bounces+0123456789-bob=remote.test@example.test` →
/// `team-bounces@example.test`, `bob@remote.test`, `0123456789`).
pub fn verp_parts(address: &str) -> Option<(String, String, String)> {
    let (local, domain) = address.rsplit_once('@')?;
    let (base, extension) = local.split_once('+')?;
    let tag = extension.get(..TAG_LEN)?;
    let member = extension.get(TAG_LEN..)?.strip_prefix('-')?;
    let (member_local, member_domain) = member.rsplit_once('=')?;
    if base.is_empty() || member_local.is_empty() || member_domain.is_empty() {
        return None;
    }
    Some((
        format!("{base}@{domain}").to_ascii_lowercase(),
        format!("{member_local}@{member_domain}").to_ascii_lowercase(),
        tag.to_ascii_lowercase(),
    ))
}

/// Whether `body` (with its `content_type`) is a report of a permanent
/// failure (RFC 3464: `Action: failed`, a 5.x.x `Status`) about `member`
/// (its `Final-Recipient`).
fn is_failure_report(content_type: &str, body: &[u8], member: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    if !ct.contains("multipart/report") || !ct.contains("delivery-status") {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    let about = text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("final-recipient:")
            .and_then(|v| v.split_once(';'))
            .is_some_and(|(_, a)| a.trim().trim_matches(['<', '>']) == member)
    });
    if !about {
        return false;
    }
    let failed = text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("action:")
            .is_some_and(|v| v.trim() == "failed")
    });
    let permanent = text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("status:")
            .is_some_and(|v| v.trim().starts_with('5'))
    });
    failed && permanent
}

/// The plugin's settings.
#[derive(Default)]
pub struct ListExpand {
    grant: String,
    max_depth: usize,
    bounce_limit: usize,
    bounce_window_secs: u64,
}

impl ListExpand {
    /// The VERP tag of `member` on `list`: the first [`TAG_LEN`] hex digits
    /// of the namespace's MAC over both.
    fn tag(cx: &Context, list: &List, member: &str) -> Result<String> {
        let mac = cx
            .kv()
            .mac(format!("verp\0{}\0{member}", list.address).as_bytes())?;
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        Ok(hex[..TAG_LEN].to_string())
    }

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

    /// The list whose bounce address `base` is: `X-bounces@D` is list
    /// `X@D`'s by default; otherwise every list file is looked at.
    fn list_of_bounces(&self, cx: &Context, base: &str) -> Result<Option<List>> {
        if let Some((l, d)) = base.rsplit_once('@') {
            if let Some(name) = l.strip_suffix("-bounces") {
                if let Some(list) = self.load(cx, &format!("{name}@{d}"))? {
                    if list.bounces == base {
                        return Ok(Some(list));
                    }
                }
            }
        }
        for name in cx.dir(&self.grant).list("")? {
            if let Some(list) = self.load(cx, &name)? {
                if list.bounces == base {
                    return Ok(Some(list));
                }
            }
        }
        Ok(None)
    }

    /// A message to a VERP address of `list` for `member`: a failure report
    /// is counted; the limit-th disables the member and goes to the owner;
    /// anything else is dropped. Never delivered to the list.
    fn bounce(
        &self,
        msg: &mut Message,
        cx: &Context,
        to: &str,
        list: &List,
        member: &str,
    ) -> Result<()> {
        let ct = msg.header("Content-Type").unwrap_or_default();
        // Reports come from the null sender (RFC 3464 §2); anything else, or
        // a report about someone else, counts for nothing.
        if !msg.sender().is_empty() || !is_failure_report(&ct, &msg.body()?, member) {
            msg.mark_discarded(
                to,
                &format!(
                    "not a failure report about member {member} of list {}",
                    list.address
                ),
            );
            return Ok(());
        }
        let kv = cx.kv();
        let key = format!("bounces:{}:{member}", list.address);
        let now = msg.received_at();
        let window = self.bounce_window_secs;
        // "time queue-id" lines, the ones inside the window.
        let mut seen: Vec<(u64, String)> = kv
            .get(key.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, q) = l.split_once(' ')?;
                Some((t.parse().ok()?, q.to_string()))
            })
            .filter(|(t, _)| t + window >= now)
            .collect();
        let id = msg.queue_id().to_string();
        if !seen.iter().any(|(_, q)| *q == id) {
            seen.push((now, id));
        }
        let n = seen.len();
        if n >= self.bounce_limit {
            kv.put(
                format!("disabled:{}:{member}", list.address).as_bytes(),
                now.to_string().as_bytes(),
                None,
            )?;
            kv.delete(key.as_bytes())?;
            cx.warn(&format!(
                "list {}: member {member} disabled after {n} bounces; telling {}",
                list.address, list.owner
            ));
            let days = window / 86_400;
            msg.add_header(
                "X-List-Member-Disabled",
                &format!(
                    "{member} on {} after {n} bounces in {}",
                    list.address,
                    if days >= 1 {
                        format!("{days} days")
                    } else {
                        format!("{window} s")
                    }
                ),
            );
            msg.rewrite_recipient(to, &list.owner);
            return Ok(());
        }
        let text: String = seen.iter().map(|(t, q)| format!("{t} {q}\n")).collect();
        kv.put(key.as_bytes(), text.as_bytes(), Some(window))?;
        cx.info(&format!(
            "list {}: bounce {n} of {} for member {member}",
            list.address, self.bounce_limit
        ));
        msg.mark_discarded(
            to,
            &format!(
                "bounce {n} of {} counted for member {member} of list {}",
                self.bounce_limit, list.address
            ),
        );
        Ok(())
    }

    /// Whether `member` of `list` was disabled by its bounces.
    fn disabled(&self, cx: &Context, list: &List, member: &str) -> Result<bool> {
        Ok(cx
            .kv()
            .get(format!("disabled:{}:{member}", list.address).as_bytes())?
            .is_some())
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
        self.bounce_limit = config.int("bounce_limit")?.unwrap_or(3).max(1) as usize;
        self.bounce_window_secs = config
            .int("bounce_window_secs")?
            .unwrap_or(30 * 86_400)
            .max(1) as u64;
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let mut headers_done = false;
        let mut moderated: Option<String> = None;
        for r in msg.pending_recipients() {
            if let Some((base, member, tag)) = verp_parts(&r.address) {
                if let Some(list) = self.list_of_bounces(cx, &base)? {
                    let expected = Self::tag(cx, &list, &member)?;
                    if finaldot_sdk::digest::same_tag(tag.as_bytes(), expected.as_bytes()) {
                        self.bounce(msg, cx, &r.address, &list, &member)?;
                    } else {
                        cx.info(&format!(
                            "list {}: a VERP address with a wrong tag; dropped",
                            list.address
                        ));
                        msg.mark_discarded(
                            &r.address,
                            &format!("not a VERP address of list {} (wrong tag)", list.address),
                        );
                    }
                    continue;
                }
            }
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
            if list.verp {
                for m in &list.enable {
                    let kv = cx.kv();
                    kv.delete(format!("disabled:{}:{m}", list.address).as_bytes())?;
                    kv.delete(format!("bounces:{}:{m}", list.address).as_bytes())?;
                }
                let mut kept = Vec::new();
                for m in members {
                    if self.disabled(cx, &list, &m)? {
                        cx.info(&format!(
                            "list {}: member {m} is disabled (bounces); skipped",
                            list.address
                        ));
                    } else {
                        kept.push(m);
                    }
                }
                members = kept;
            }
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
                if list.verp {
                    let tag = Self::tag(cx, &list, m)?;
                    msg.set_recipient_sender(m, &list.verp_sender(m, &tag));
                }
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
    use finaldot_sdk::wire::Change;
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

    /// A failure report from <> to `to`, as finaldot's own DSNs are.
    fn report(to: &str, queue_id: &str, action: &str, status: &str) -> TestMessage {
        TestMessage::from_eml(
            format!(
                "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"b\"\r\nSubject: Undelivered\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nno\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; yan@remote.test\r\nAction: {action}\r\nStatus: {status}\r\n\r\n--b--\r\n"
            )
            .as_bytes(),
        )
        .sender("")
        .recipient(to)
        .queue_id(queue_id)
    }

    #[test]
    fn verp_gives_each_member_its_own_sender_and_bounces_disable_after_the_limit() {
        let dir = Lists::new(&[(
            "team@localhost",
            "verp: yes\nowner: boss@localhost\nzed@remote.test\nyan@remote.test\n",
        )]);
        let mut host = TestHost::new();
        host.grant_dir("lists", &dir.0, false);
        let mut p: ListExpand = host
            .configure("lists", config_from_toml("bounce_limit = 2").unwrap())
            .unwrap();
        let post = TestMessage::from_eml(b"Subject: hi\r\n\r\nx\r\n")
            .sender("carol@x.test")
            .recipient("team@localhost");
        let out = host.run(&mut p, &post).unwrap();
        let sender_of = |out: &finaldot_sdk::testing::Outcome, member: &str| {
            out.changes
                .iter()
                .find_map(|c| match c {
                    Change::SetRecipientSender { address, sender } if address == member => {
                        Some(sender.clone())
                    }
                    _ => None,
                })
                .unwrap()
        };
        let yan = sender_of(&out, "yan@remote.test");
        let verp = yan.as_str();
        let (base, member, tag) = verp_parts(verp).unwrap();
        assert_eq!(
            (base.as_str(), member.as_str()),
            ("team-bounces@localhost", "yan@remote.test")
        );
        assert!(
            tag.len() == 10 && tag.chars().all(|c| c.is_ascii_hexdigit()),
            "{verp}"
        );
        assert!(
            verp.starts_with("team-bounces+") && verp.ends_with("-yan=remote.test@localhost"),
            "{verp}"
        );
        // The same member gets the same address on every post; another
        // member another tag.
        assert_eq!(
            sender_of(&host.run(&mut p, &post).unwrap(), "yan@remote.test"),
            yan
        );
        let zed_sender = sender_of(&out, "zed@remote.test");
        assert_ne!(verp_parts(&zed_sender).unwrap().2, tag);
        // A made-up tag (or the old untagged form) is dropped, not counted.
        for forged in [
            "team-bounces+0000000000-yan=remote.test@localhost".to_string(),
            format!(
                "team-bounces+{}-yan=remote.test@localhost",
                &zed_sender[13..23]
            ),
        ] {
            let out = host
                .run(&mut p, &report(&forged, "Q9", "failed", "5.1.1"))
                .unwrap();
            assert!(
                matches!(&out.recipient(&forged).unwrap().state, RecipientState::Discarded { reason } if reason.contains("wrong tag")),
                "{forged}: {:?}",
                out.state
            );
        }
        // Not from <>, or about someone else: dropped, not counted.
        let not_counted = |out: &finaldot_sdk::testing::Outcome, to: &str| matches!(&out.recipient(to).unwrap().state, RecipientState::Discarded { reason } if reason.starts_with("not a failure report"));
        let forged = report(verp, "Q0", "failed", "5.1.1").sender("mallory@x.test");
        assert!(not_counted(&host.run(&mut p, &forged).unwrap(), verp));
        let zed = zed_sender.as_str();
        let other = report(zed, "Q0", "failed", "5.1.1");
        assert!(not_counted(&host.run(&mut p, &other).unwrap(), zed));
        // Not a failure report: dropped, not counted.
        let out = host
            .run(&mut p, &report(verp, "Q0", "delayed", "4.4.7"))
            .unwrap();
        assert!(matches!(
            out.recipient(verp).unwrap().state,
            RecipientState::Discarded { .. }
        ));
        // The first failure is counted and dropped; the same one again
        // (a retry of its message) is not counted twice.
        for _ in 0..2 {
            let out = host
                .run(&mut p, &report(verp, "Q1", "failed", "5.1.1"))
                .unwrap();
            assert!(
                matches!(&out.recipient(verp).unwrap().state, RecipientState::Discarded { reason } if reason.contains("bounce 1 of 2")),
                "{:?}",
                out.state
            );
        }
        // The second disables yan and goes to the owner.
        let out = host
            .run(&mut p, &report(verp, "Q2", "failed", "5.1.1"))
            .unwrap();
        assert!(out.recipient("boss@localhost").is_some(), "{:?}", out.state);
        assert!(out
            .header("X-List-Member-Disabled")
            .is_some_and(|h| h.contains("yan@remote.test")));
        // The next post skips yan.
        let out = host.run(&mut p, &post).unwrap();
        assert!(out.recipient("zed@remote.test").is_some());
        assert!(
            out.recipient("yan@remote.test").is_none(),
            "{:?}",
            out.state
        );
        // Until the list file takes yan back.
        std::fs::write(
            dir.0.join("team@localhost"),
            "verp: yes\nenable: yan@remote.test\nzed@remote.test\nyan@remote.test\n",
        )
        .unwrap();
        let out = host.run(&mut p, &post).unwrap();
        assert!(
            out.recipient("yan@remote.test").is_some(),
            "{:?}",
            out.state
        );
        assert_eq!(
            verp_parts("team-bounces+0123456789-yan=remote.test@localhost"),
            Some((
                "team-bounces@localhost".into(),
                "yan@remote.test".into(),
                "0123456789".into()
            ))
        );
        assert_eq!(verp_parts("team-bounces+yan=remote.test@localhost"), None);
        assert_eq!(verp_parts("team@localhost"), None);
    }

    #[test]
    fn a_bad_list_file_is_an_error_naming_the_line() {
        let e = List::parse("t@x", "name: T\nthis is junk\n").err().unwrap();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = List::parse("t@x", "moderated: maybe\n").err().unwrap();
        assert!(e.to_string().contains("maybe"), "{e}");
    }
}
