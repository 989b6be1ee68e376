//! The SMTP front end (RFC 5321 with PIPELINING, 8BITMIME, SIZE,
//! ENHANCEDSTATUSCODES, SMTPUTF8 and CHUNKING).
//!
//! It owns everything between the socket and the spool: framing, the command
//! parser, the session state machine and the listener. The parser
//! ([`command`]), content framing ([`data`]) and state machine ([`session`])
//! are plain structs fed with bytes, with no I/O inside, so they are tested by
//! feeding input split at every byte boundary; [`server`] is the tokio driver.
//!
//! SECURITY: everything a client sends is hostile. Lines end only at CRLF; bare
//! CR or LF in message content is refused (SMTP smuggling); lengths, sizes,
//! recipients, errors, connections and time are all bounded. Relay is refused
//! for every domain the server does not serve, loopback included.

pub mod command;
pub mod data;
pub mod policy;
pub mod reply;
pub mod server;
pub mod session;
pub mod settings;
pub mod transcript;
pub mod users;

pub use reply::Reply;
