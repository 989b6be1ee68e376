//! The door: plugins that judge a client before DATA (at connect, HELO,
//! MAIL and each RCPT), so junk is refused before a byte is written to the
//! spool. This module is the seam the SMTP side asks through ([`Door`]),
//! below both sides: the SMTP session never names a plugin, and
//! [`chain::DoorChain`] (the `[[door]]` plugins, on the plugin pool) is what
//! the daemon plugs in.
//!
//! There is no door stage at or after DATA: nothing runs between the final
//! dot and its reply. A door call may make a client wait for the reply to
//! *that* command, within the plugin's time limit and its failure policy
//! (continue, or 451/421 4.7.1), exactly as a policy server does; the
//! session asks and waits without holding a runtime thread, and replies to
//! pipelined commands keep their order.

pub mod chain;

use std::collections::HashMap;

use finaldot_sdk::wire::{DoorInput, DoorRecord, DoorStage, DoorVerdict, Listener};

use crate::plugins::PluginSpec;

pub use chain::DoorChain;

/// Which listeners a door plugin judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorListener {
    /// The MX: the SMTP listener and the implicit-TLS one.
    Mx,
    /// The submission listener.
    Submission,
}

impl DoorListener {
    /// Whether `listener` is one of these.
    pub fn covers(self, listener: Listener) -> bool {
        match self {
            DoorListener::Mx => matches!(listener, Listener::Smtp | Listener::ImplicitTls),
            DoorListener::Submission => listener == Listener::Submission,
        }
    }
}

/// What a door plugin's failure (trap, time limit, memory, an error it
/// returned, a reply the host refuses, a service it needed that did not
/// answer, the plugin not loaded) does to the command it was judging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Fail open: as if the plugin had said continue.
    Continue,
    /// `451 4.7.1` (`421 4.7.1` and close at connect): the client tries again later.
    Tempfail,
}

/// One `[[door]]` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DoorSpec {
    /// The plugin: module, settings, limits, grants.
    pub plugin: PluginSpec,
    /// The stages it judges.
    pub stages: Vec<DoorStage>,
    /// The listeners it judges.
    pub listeners: Vec<DoorListener>,
    /// Whether it judges clients that authenticated (submission) too.
    pub authenticated: bool,
    /// What its failure does.
    pub on_failure: OnFailure,
}

impl DoorSpec {
    /// Whether this plugin judges `stage` for a client on `listener`.
    pub fn judges(&self, stage: DoorStage, listener: Listener, authenticated: bool) -> bool {
        self.stages.contains(&stage)
            && self.listeners.iter().any(|l| l.covers(listener))
            && (self.authenticated || !authenticated)
    }
}

/// The stages some door plugin judges, for a session on one listener:
/// the session asks the door only there (a session with no door plugin
/// never asks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DoorWants {
    /// Per stage ([`DoorStage::ALL`]'s order), for a client not authenticated.
    pub anonymous: [bool; 4],
    /// Per stage, for an authenticated client.
    pub authenticated: [bool; 4],
}

impl DoorWants {
    /// Whether the door judges `stage` for a client (authenticated or not).
    pub fn at(&self, stage: DoorStage, authenticated: bool) -> bool {
        let i = DoorStage::ALL.iter().position(|s| *s == stage);
        let by = if authenticated {
            &self.authenticated
        } else {
            &self.anonymous
        };
        i.is_some_and(|i| by[i])
    }
}

/// The door's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorAnswer {
    /// The session answers as it would have.
    Continue,
    /// This reply instead (valid: 4xx or 5xx, one printable line).
    Refuse {
        /// The code.
        code: u16,
        /// The enhanced status code.
        status: String,
        /// The text.
        text: String,
        /// Close the connection after it.
        disconnect: bool,
    },
}

impl DoorAnswer {
    /// The answer a valid plugin verdict gives.
    pub fn of(verdict: &DoorVerdict) -> DoorAnswer {
        match verdict {
            DoorVerdict::Reply { code, status, text } => DoorAnswer::Refuse {
                code: *code,
                status: status.clone(),
                text: text.clone(),
                disconnect: false,
            },
            DoorVerdict::Disconnect { code, status, text } => DoorAnswer::Refuse {
                code: *code,
                status: status.clone(),
                text: text.clone(),
                disconnect: true,
            },
            _ => DoorAnswer::Continue,
        }
    }

    /// The failure policy's tempfail (`451 4.7.1`; at connect `421 4.7.1`
    /// and close).
    pub fn tempfail(stage: DoorStage) -> DoorAnswer {
        DoorAnswer::Refuse {
            code: if stage == DoorStage::Connect {
                421
            } else {
                451
            },
            status: "4.7.1".into(),
            text: "Service temporarily unavailable, try again later".into(),
            disconnect: stage == DoorStage::Connect,
        }
    }
}

/// What the door remembers of one connection: a label for its log lines
/// and each plugin's earlier answers (the plugin sees its own).
#[derive(Debug, Default)]
pub struct DoorMemory {
    /// Names the connection in the plugins' log lines (`client IP:port`).
    pub label: String,
    /// Per plugin name, its answers so far, oldest first.
    pub earlier: HashMap<String, Vec<DoorRecord>>,
}

/// The door as the SMTP side sees it.
pub trait Door: Send + Sync + std::fmt::Debug {
    /// The stages some plugin judges on `listener` (computed when a
    /// listener's settings are made, and again at each reload).
    fn wants(&self, listener: Listener) -> DoorWants;

    /// Judges one command (`ask.earlier` is filled per plugin from
    /// `memory`), running the door plugins in order until one refuses.
    /// Blocking: the SMTP side calls it off the network runtime.
    fn judge(&self, ask: &DoorInput, memory: &mut DoorMemory) -> DoorAnswer;
}

/// A door with no plugin: judges nothing.
#[derive(Debug, Default)]
pub struct OpenDoor;

impl Door for OpenDoor {
    fn wants(&self, _listener: Listener) -> DoorWants {
        DoorWants::default()
    }

    fn judge(&self, _ask: &DoorInput, _memory: &mut DoorMemory) -> DoorAnswer {
        DoorAnswer::Continue
    }
}
