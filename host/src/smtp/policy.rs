//! Recipient policy at RCPT time: relay control and recipient validation from an
//! in-memory table, the only recipient check made before the 250 (so no bounce
//! is ever sent later for an address that never existed: no backscatter).
//! A local part that can name no mailbox is refused here by the same rule
//! local delivery applies ([`finaldot_sdk::mailbox`]).

use std::collections::{HashMap, HashSet};

use super::command::Mailbox;

/// The answer for one RCPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptVerdict {
    /// A local recipient that exists (or a catch-all domain).
    Accept,
    /// A local domain, but no such user: `550 5.1.1`.
    UnknownUser,
    /// A local domain, but the local part can name no mailbox (the SDK's
    /// [`finaldot_sdk::mailbox`] rule, the one local delivery applies):
    /// `550 5.1.1` with the reason.
    Undeliverable(&'static str),
    /// Not a local domain: relaying is refused, `550 5.7.1`.
    Relay,
}

/// Which addresses of one local domain exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainUsers {
    /// Every local part is accepted.
    CatchAll,
    /// Only these local parts (lowercase), plus `postmaster`.
    Listed(HashSet<String>),
}

/// The local domains and their recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    domains: HashMap<String, DomainUsers>,
    delimiter: Option<char>,
}

impl Recipients {
    /// A table from `(domain, users)` pairs; domains and users compare case-insensitively.
    /// With a delimiter (e.g. `+`), `user+tag` is checked as `user`.
    pub fn new(
        domains: impl IntoIterator<Item = (String, DomainUsers)>,
        delimiter: Option<char>,
    ) -> Self {
        Recipients {
            domains: domains
                .into_iter()
                .map(|(d, u)| (d.to_ascii_lowercase(), u))
                .collect(),
            delimiter,
        }
    }

    /// The address extension separator (`user+tag`), if any.
    pub fn delimiter(&self) -> Option<char> {
        self.delimiter
    }

    /// Which local parts of `domain` exist (`None`: not a local domain).
    pub fn users(&self, domain: &str) -> Option<&DomainUsers> {
        self.domains.get(&domain.to_ascii_lowercase())
    }

    /// Whether `domain` is one this server serves.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(&domain.to_ascii_lowercase())
    }

    /// Checks one recipient.
    pub fn check(&self, to: &Mailbox) -> RcptVerdict {
        // RFC 5321 §4.1.1.3: "<Postmaster>" with no domain is always accepted.
        if to.domain.is_empty() {
            return RcptVerdict::Accept;
        }
        let Some(users) = self.domains.get(&to.domain.to_ascii_lowercase()) else {
            return RcptVerdict::Relay;
        };
        if let Err(why) = finaldot_sdk::mailbox::check_local_part(&to.local) {
            return RcptVerdict::Undeliverable(why);
        }
        let local = to.local.to_lowercase();
        match users {
            DomainUsers::CatchAll => RcptVerdict::Accept,
            DomainUsers::Listed(set) => {
                let base = match self.delimiter {
                    Some(d) => local.split(d).next().unwrap_or(&local).to_string(),
                    None => local.clone(),
                };
                if base == "postmaster" || set.contains(&local) || set.contains(&base) {
                    RcptVerdict::Accept
                } else {
                    RcptVerdict::UnknownUser
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn table() -> Recipients {
        Recipients::new(
            [
                ("localhost".to_string(), DomainUsers::CatchAll),
                (
                    "Example.TEST".to_string(),
                    DomainUsers::Listed(["alice".to_string()].into_iter().collect()),
                ),
            ],
            Some('+'),
        )
    }

    #[test]
    fn relay_is_refused_for_foreign_domains() {
        assert_eq!(
            table().check(&mb("a", "elsewhere.test")),
            RcptVerdict::Relay
        );
    }

    #[test]
    fn listed_users_case_insensitive_with_plus_tags() {
        let t = table();
        assert_eq!(t.check(&mb("Alice", "example.test")), RcptVerdict::Accept);
        assert_eq!(
            t.check(&mb("alice+lists", "EXAMPLE.test")),
            RcptVerdict::Accept
        );
        assert_eq!(
            t.check(&mb("mallory", "example.test")),
            RcptVerdict::UnknownUser
        );
    }

    #[test]
    fn postmaster_always_exists() {
        let t = table();
        assert_eq!(
            t.check(&mb("PostMaster", "example.test")),
            RcptVerdict::Accept
        );
        assert_eq!(t.check(&mb("postmaster", "")), RcptVerdict::Accept);
    }

    #[test]
    fn local_parts_without_a_mailbox_are_refused_in_local_domains_only() {
        let t = table();
        for bad in [
            "\"victim@relay-target.example\"",
            "a/b",
            ".x",
            "a..b",
            "\"a b\"",
        ] {
            assert!(
                matches!(
                    t.check(&mb(bad, "localhost")),
                    RcptVerdict::Undeliverable(_)
                ),
                "{bad}"
            );
            assert_eq!(t.check(&mb(bad, "elsewhere.test")), RcptVerdict::Relay);
        }
        for ok in ["first.last", "a+tag", "o'brien", "jörg"] {
            assert_eq!(t.check(&mb(ok, "localhost")), RcptVerdict::Accept, "{ok}");
        }
    }

    #[test]
    fn catch_all_accepts_anyone() {
        assert_eq!(
            table().check(&mb("whoever", "localhost")),
            RcptVerdict::Accept
        );
    }
}
