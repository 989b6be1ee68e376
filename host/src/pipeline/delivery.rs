//! The one interface the pipeline delivers through after the chain (as
//! chasquid's courier): the recipients no plugin delivered, outside the local
//! domains, each with the route chosen for it. Outbound SMTP
//! ([`crate::outbound::Outbound`]) implements it; other routes (LMTP) plug
//! in beside it without the worker changing.
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
    /// The route of a recipient outside the local domains that no plugin
    /// routed; `None`: nothing leaves (the recipient fails, 5.1.1).
    fn default_route(&self) -> Option<Route>;

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
