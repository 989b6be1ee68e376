//! Mail authentication, a built-in stage of the host: SPF, DKIM, DMARC and
//! ARC on what arrives ([`verify`]), DKIM signatures on what leaves
//! ([`sign`]), and the keys behind them ([`keys`]: `finaldot dkim keygen`
//! and `check`). The work is Stalwart's `mail-auth`; this module feeds it
//! the spooled message and the session facts, asks DNS through the host's
//! shared resolver, and turns its results into the SDK's [`AuthFacts`]
//! and one `Authentication-Results` field.
//!
//! SECURITY: private keys are read here and never leave this module; no
//! plugin sees them. The verdict a plugin reads is the host's own: an
//! `Authentication-Results` field that arrived claiming our authserv-id is
//! removed before ours is added.
//!
//! [`AuthFacts`]: finaldot_sdk::wire::AuthFacts

pub mod keys;
pub mod sign;
pub mod verify;

pub use sign::Signer;
pub use verify::Verifier;
