//! `local-delivery`: delivers local recipients into Maildirs.
//!
//! For each pending recipient in one of its `domains`, the mailbox name is the
//! local part (lower-cased, `user+tag` → `user`, then `aliases`); with a
//! `users` list, anyone else fails permanently (`5.1.1`). The message, with
//! `Return-Path:` and `Delivered-To:` on top, is written by the host into
//! `{layout}/tmp/NAME`, fsynced and renamed into `{layout}/new/NAME` (the
//! Maildir rules), and only then is the recipient marked delivered.
//!
//! Exactly once: NAME is derived from the queue id and the mailbox, so a re-run
//! after a crash finds the earlier delivery (in `new/`, or in `cur/` if it has
//! been read unflagged) and does not write a second copy; two recipients that
//! resolve to one mailbox get one copy. A write error defers the recipient.

use finaldot_sdk::digest::Fnv64;
use finaldot_sdk::mailbox;
use finaldot_sdk::prelude::*;
use finaldot_sdk::wire::HostErrorKind;

/// The plugin's settings.
#[derive(Default)]
pub struct LocalDelivery {
    grant: String,
    domains: Vec<String>,
    users: Option<Vec<String>>,
    layout: String,
    aliases: Vec<(String, String)>,
    delimiter: Option<char>,
    lf: bool,
}

/// Why a local part has no mailbox.
enum Resolve {
    Mailbox(String),
    Unknown(&'static str),
}

impl LocalDelivery {
    fn resolve(&self, local: &str) -> Resolve {
        // The same rule as the SMTP front end's RCPT check, so a recipient
        // it accepted is never bounced here for its name.
        let mut user = match mailbox::mailbox_name(local, self.delimiter) {
            Ok(u) => u,
            Err(why) => return Resolve::Unknown(why),
        };
        // Aliases may chain (abuse → postmaster → root), at most 8 steps;
        // both sides of every alias passed the same check in on_configure.
        for _ in 0..8 {
            match self.aliases.iter().find(|(from, _)| *from == user) {
                Some((_, to)) => user = to.clone(),
                None => break,
            }
        }
        if let Some(users) = &self.users {
            if !users.contains(&user) {
                return Resolve::Unknown("no such user here");
            }
        }
        Resolve::Mailbox(user)
    }

    fn deliver(&self, msg: &Message, cx: &Context, rcpt: &str, user: &str) -> Result<bool> {
        let dir = cx.dir(&self.grant);
        let maildir = self.layout.replace("{user}", user);
        let name = format!(
            "{}.{}_{}.finaldot",
            msg.received_at(),
            msg.queue_id(),
            Fnv64::new().update(user.as_bytes()).hex()
        );
        let new = format!("{maildir}/new/{name}");
        if dir.exists(&new)? || dir.exists(&format!("{maildir}/cur/{name}:2,"))? {
            return Ok(false);
        }
        let sender = msg.sender();
        let mut headers = vec![
            Header::new("Return-Path", format!("<{sender}>")),
            Header::new("Delivered-To", rcpt),
        ];
        headers.extend(msg.headers().iter().cloned());
        let tmp = format!("{maildir}/tmp/{name}");
        match dir.write_message(&tmp, &new, &headers, self.lf) {
            // A mailbox's first message: make the Maildir, then deliver.
            // (Trying first saves three host calls on every later message.)
            Err(e) if e.host_kind() == Some(HostErrorKind::NotFound) => {
                for sub in ["tmp", "new", "cur"] {
                    dir.create_dir_all(&format!("{maildir}/{sub}"))?;
                }
                dir.write_message(&tmp, &new, &headers, self.lf)?;
            }
            written => written?,
        }
        Ok(true)
    }
}

impl Plugin for LocalDelivery {
    fn on_configure(&mut self, config: &Config) -> Result<()> {
        self.grant = config.str("grant")?.unwrap_or("mail").to_string();
        self.domains = config
            .strings("domains")?
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        if self.domains.is_empty() {
            return Err(Error::new("`domains` must list at least one domain"));
        }
        self.users = match config.get("users") {
            None => None,
            Some(_) => Some(
                config
                    .strings("users")?
                    .into_iter()
                    .map(|u| u.to_lowercase())
                    .collect(),
            ),
        };
        self.layout = config
            .str("layout")?
            .unwrap_or("{user}/Maildir")
            .to_string();
        if !self.layout.contains("{user}") {
            return Err(Error::new("`layout` must contain {user}"));
        }
        self.aliases = match config.get("aliases") {
            None => Vec::new(),
            Some(Value::Table(t)) => t
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(to) => {
                        for name in [k.as_str(), to] {
                            mailbox::check_local_part(name).map_err(|why| {
                                Error::new(format!("alias `{k}`: {name:?}: {why}"))
                            })?;
                        }
                        Ok((k.to_lowercase(), to.to_lowercase()))
                    }
                    None => Err(Error::new(format!("alias `{k}` must map to a string"))),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(Error::new("`aliases` must be a table")),
        };
        self.delimiter = match config.str("recipient_delimiter")? {
            None => Some('+'),
            Some("") => None,
            Some(d) if d.chars().count() == 1 => d.chars().next(),
            Some(_) => return Err(Error::new("`recipient_delimiter` must be one character")),
        };
        self.lf = config.bool("lf_line_endings")?.unwrap_or(true);
        Ok(())
    }

    fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
        let mut done: Vec<String> = Vec::new();
        for r in msg.pending_recipients() {
            if !self
                .domains
                .iter()
                .any(|d| r.domain().eq_ignore_ascii_case(d))
            {
                continue;
            }
            let user = match self.resolve(r.local_part()) {
                Resolve::Mailbox(u) => u,
                Resolve::Unknown(why) => {
                    cx.info(&format!("<{}>: {why}", r.address));
                    msg.mark_failed(&r.address, "5.1.1", &format!("<{}>: {why}", r.address));
                    continue;
                }
            };
            if done.contains(&user) {
                msg.mark_delivered(
                    &r.address,
                    &format!("maildir {user} (same mailbox as an earlier recipient)"),
                );
                continue;
            }
            match self.deliver(msg, cx, &r.address, &user) {
                Ok(wrote) => {
                    let note = if wrote {
                        format!("maildir {user}")
                    } else {
                        format!("maildir {user} (already delivered before a restart)")
                    };
                    msg.mark_delivered(&r.address, &note);
                    done.push(user);
                }
                Err(e) => {
                    let reason = match e.host_kind() {
                        Some(HostErrorKind::StorageFull) => format!("mailbox {user}: disk full"),
                        Some(HostErrorKind::NotGranted) | Some(HostErrorKind::Escape) => {
                            cx.error(&format!("configuration problem: {e}"));
                            format!("mailbox {user}: not writable ({e})")
                        }
                        _ => format!("mailbox {user}: {e}"),
                    };
                    cx.warn(&reason);
                    msg.mark_deferred(&r.address, &reason);
                }
            }
        }
        Ok(Verdict::Continue)
    }
}

finaldot_sdk::export_plugin!(LocalDelivery);

#[cfg(test)]
mod tests {
    use super::*;
    use finaldot_sdk::testing::{config_from_toml, TestHost, TestMessage};

    fn setup(extra: &str) -> (TestHost, LocalDelivery, tempfile_dir::Dir) {
        let root = tempfile_dir::Dir::new();
        let mut host = TestHost::new();
        host.grant_dir("mail", root.path(), true);
        let cfg = format!("domains = [\"localhost\"]\n{extra}");
        let plugin = host
            .configure::<LocalDelivery>("local-delivery", config_from_toml(&cfg).unwrap())
            .unwrap();
        (host, plugin, root)
    }

    /// A self-cleaning temp dir without a dependency.
    mod tempfile_dir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "local-delivery-test-{}-{:?}",
                    std::process::id(),
                    std::time::SystemTime::now()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn delivers_into_maildir_new_with_trace_headers() {
        let (mut host, mut p, root) = setup("");
        let msg = TestMessage::from_eml(b"Subject: hi\r\n\r\nbody\r\n")
            .sender("s@x.test")
            .recipient("Alice+lists@localhost");
        let out = host.run(&mut p, &msg).unwrap();
        assert!(matches!(
            out.recipient("alice+lists@localhost").unwrap().state,
            RecipientState::Delivered { .. }
        ));
        let new = files(&root.path().join("alice/Maildir/new"));
        assert_eq!(new.len(), 1);
        let text = std::fs::read_to_string(&new[0]).unwrap();
        assert_eq!(
            text,
            "Return-Path: <s@x.test>\nDelivered-To: Alice+lists@localhost\nSubject: hi\n\nbody\n"
        );
        assert!(root.path().join("alice/Maildir/cur").is_dir());
        assert!(files(&root.path().join("alice/Maildir/tmp")).is_empty());
    }

    #[test]
    fn a_rerun_does_not_deliver_twice() {
        let (mut host, mut p, root) = setup("");
        let msg = TestMessage::from_eml(b"Subject: once\r\n\r\nx\r\n").recipient("bob@localhost");
        host.run(&mut p, &msg).unwrap();
        let out = host.run(&mut p, &msg).unwrap();
        assert_eq!(files(&root.path().join("bob/Maildir/new")).len(), 1);
        match &out.recipient("bob@localhost").unwrap().state {
            RecipientState::Delivered { note } => assert!(note.contains("already delivered")),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn unknown_users_fail_and_other_domains_are_left_alone() {
        let (mut host, mut p, _root) = setup("users = [\"alice\", \"root\"]\naliases = { postmaster = \"root\", abuse = \"postmaster\" }");
        let msg = TestMessage::from_eml(b"Subject: x\r\n\r\n")
            .recipient("mallory@localhost")
            .recipient("abuse@localhost")
            .recipient("carol@elsewhere.test")
            .recipient("../../etc@localhost");
        let out = host.run(&mut p, &msg).unwrap();
        assert!(
            matches!(out.recipient("mallory@localhost").unwrap().state, RecipientState::Failed { ref status, .. } if status == "5.1.1")
        );
        assert!(
            matches!(out.recipient("abuse@localhost").unwrap().state, RecipientState::Delivered { ref note } if note == "maildir root")
        );
        assert!(out.recipient("carol@elsewhere.test").unwrap().is_pending());
        assert!(matches!(
            out.recipient("../../etc@localhost").unwrap().state,
            RecipientState::Failed { .. }
        ));
    }

    #[test]
    fn an_unwritable_mail_root_defers() {
        let mut host = TestHost::new();
        host.grant_dir("mail", "/nonexistent/finaldot/mail", false);
        let mut p: LocalDelivery = host
            .configure("ld", config_from_toml("domains = [\"localhost\"]").unwrap())
            .unwrap();
        let msg = TestMessage::from_eml(b"Subject: x\r\n\r\n").recipient("alice@localhost");
        let out = host.run(&mut p, &msg).unwrap();
        assert!(matches!(
            out.recipient("alice@localhost").unwrap().state,
            RecipientState::Deferred { .. }
        ));
    }

    #[test]
    fn configuration_mistakes_are_named() {
        let mut host = TestHost::new();
        let e = host
            .configure::<LocalDelivery>(
                "ld",
                config_from_toml("layout = \"Maildir\"\ndomains = [\"a\"]").unwrap(),
            )
            .err()
            .unwrap();
        assert!(e.to_string().contains("layout"));
        let e = host
            .configure::<LocalDelivery>("ld", Value::empty())
            .err()
            .unwrap();
        assert!(e.to_string().contains("domains"));
    }
}
