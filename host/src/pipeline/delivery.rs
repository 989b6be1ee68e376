//! The one interface the pipeline delivers through after the chain (as
//! chasquid's courier): the recipients no plugin delivered that have a
//! route (a plugin's choice, `[outbound] route` outside the local domains,
//! `[lmtp]` inside them), each with its route. [`crate::outbound::Outbound`]
//! implements it for every route: SMTP to a smarthost or MX hosts, LMTP to
//! the mailbox server.
//!
//! Outcomes are values, not errors: every recipient handed over comes back
//! delivered, deferred or failed.

use finaldot_sdk::wire::{RecipientState, Route};

/// Called with the recipients a next hop has just accepted and its reply, so
/// the caller records that durably before anything else happens; an error
/// stops the delivery (what is left is deferred).
pub type OnAccepted<'a> = &'a mut dyn FnMut(&[String], &str) -> Result<(), String>;

/// Delivery to the next hop.
pub trait Delivery: Send + Sync + std::fmt::Debug {
    /// The route of a recipient at `domain` (lowercase) that no plugin
    /// routed; `local`: one of the local domains. `None`: the host does not
    /// deliver it (unless a plugin did, it fails, 5.1.1).
    fn route(&self, domain: &str, local: bool) -> Option<Route>;

    /// Whether any recipient has a route without a plugin choosing one
    /// (`[outbound] route` or `[lmtp]` is configured): with no plugins,
    /// mail is then delivered straight away instead of waiting.
    fn has_routes(&self) -> bool;

    /// Delivers `message` from `mail_from` to `recipients`; calls `accepted`
    /// the moment a next hop takes some of them. Returns every recipient's
    /// new state (delivered, deferred or failed).
    fn deliver(
        &self,
        mail_from: &str,
        recipients: &[(String, Route)],
        message: &[u8],
        accepted: OnAccepted<'_>,
    ) -> Vec<(String, RecipientState)>;
}
