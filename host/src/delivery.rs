//! The one interface the pipeline delivers through after the chain (as
//! chasquid's courier): the recipients no plugin delivered that have a
//! route (a plugin's choice, `[outbound] route` outside the local domains,
//! `[lmtp]` inside them), each with its route. It sits below both sides:
//! the pipeline calls it and never names an implementation;
//! [`crate::outbound::Outbound`] implements it for every route (SMTP to a
//! smarthost or MX hosts, LMTP to the mailbox server), and the daemon plugs
//! one into the pipeline.
//!
//! Outcomes are values, not errors: every recipient handed over comes back
//! delivered, deferred or failed.

use finaldot_sdk::wire::{DsnRequest, RecipientState, Route};

/// What became of the DSN duty (RFC 3461 §6.2) for recipients a next hop
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// In the mailbox (LMTP): a success report, if asked for, says
    /// `delivered`.
    Delivered,
    /// Relayed to a hop that does not offer DSN: a success report, if asked
    /// for, says `relayed`.
    Relayed,
    /// Relayed to a hop that offers DSN, with the parameters: reports are
    /// now that hop's to send.
    PassedOn,
}

/// Called with the recipients a next hop has just accepted, its reply and
/// what became of their DSN duty, so the caller records that durably before
/// anything else happens; an error stops the delivery (what is left is
/// deferred).
pub type OnAccepted<'a> = &'a mut dyn FnMut(&[String], &str, Handoff) -> Result<(), String>;

/// `items` in groups of equal key, groups and items in first-seen order:
/// how recipients are gathered into transactions (and reports into one per
/// sender).
pub fn group_by<K: PartialEq, T>(
    items: impl IntoIterator<Item = T>,
    key: impl Fn(&T) -> K,
) -> Vec<(K, Vec<T>)> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for item in items {
        let k = key(&item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

/// Delivery to the next hop.
pub trait Delivery: Send + Sync + std::fmt::Debug {
    /// The route of a recipient at `domain` (lowercase) that no plugin
    /// routed; `local`: one of the local domains. `None`: the host does not
    /// deliver it (unless a plugin did, it fails, 5.1.1).
    fn route(&self, domain: &str, local: bool) -> Option<Route>;

    /// Whether local recipients have a route without a plugin (`[lmtp]`):
    /// with no plugins, mail is then delivered straight away instead of
    /// waiting for a chain.
    fn delivers_local(&self) -> bool;

    /// Delivers `message` from `mail_from` to `recipients`; calls `accepted`
    /// the moment a next hop takes some of them. `dsn` holds the DSN
    /// parameters to pass on (its recipients by the addresses given here).
    /// Returns every recipient's new state (delivered, deferred or failed).
    fn deliver(
        &self,
        mail_from: &str,
        recipients: &[(String, Route)],
        message: &[u8],
        dsn: &DsnRequest,
        accepted: OnAccepted<'_>,
    ) -> Vec<(String, RecipientState)>;
}
