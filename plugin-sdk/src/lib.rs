//! `finaldot-sdk`: write finaldot plugins in Rust.
//!
//! finaldot runs plugins after a message has been accepted and made durable,
//! so a plugin can never slow down an SMTP reply. A plugin is a WebAssembly
//! module built for `wasm32-unknown-unknown`; this crate gives it its whole
//! interface. A useful plugin in ten lines:
//!
//! ```
//! use finaldot_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Stamp;
//!
//! impl Plugin for Stamp {
//!     fn on_message(&mut self, msg: &mut Message, cx: &Context) -> Result<Verdict> {
//!         msg.add_header("X-Stamped-By", "finaldot");
//!         cx.info(&format!("stamped a message for {} recipients", msg.recipients().len()));
//!         Ok(Verdict::Continue)
//!     }
//! }
//!
//! finaldot_sdk::export_plugin!(Stamp);
//! ```
//!
//! In its `Cargo.toml`: `crate-type = ["cdylib", "rlib"]` and a dependency on
//! `finaldot-sdk`. Build with
//! `cargo build --release --target wasm32-unknown-unknown`, check with
//! `finaldot plugin check target/wasm32-unknown-unknown/release/NAME.wasm`.
//!
//! A plugin sees the envelope and headers ([`Message`]), reads the body through
//! the host on demand, records changes (headers, recipients, sender, per-recipient
//! outcomes) and returns a [`Verdict`]. It has no ambient authority: no files,
//! network, clock or environment beyond what [`Context`] offers and the
//! configuration grants (directories, a key-value namespace).
//!
//! Test it natively with [`testing::TestHost`]: `cargo test`, no wasm.
//!
//! The wire types in [`wire`] are shared with the host, so the two can never
//! disagree about the encoding.
#![deny(unsafe_code)]

#[cfg(not(target_arch = "wasm32"))]
pub mod contract;
pub mod digest;
#[allow(unsafe_code)]
pub mod export;
#[allow(unsafe_code)]
mod host;
pub mod mailbox;
pub mod plugin;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod wire;

pub use plugin::{Config, Context, Dir, Dns, Door, Error, Http, Kv, Message, Plugin, Result};
pub use wire::{
    AuthFacts, AuthResult, DkimFact, DmarcFact, DmarcPolicy, DoorStage, DoorVerdict, Header, Level,
    Listener, Recipient, RecipientState, SessionFacts, SpfFact, TlsFacts, Value, Verdict,
    ABI_VERSION,
};

/// Everything a plugin usually needs: `use finaldot_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::plugin::{Config, Context, Door, Error, Message, Plugin, Result};
    pub use crate::wire::{
        AuthFacts, AuthResult, DmarcPolicy, DoorStage, DoorVerdict, Header, Level, Listener,
        Recipient, RecipientState, SessionFacts, Value, Verdict,
    };
}
