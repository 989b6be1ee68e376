//! finaldot: a mail server whose 250 comes as soon as the message is durable.
//!
//! Data flows one way: [`smtp`] (sessions) → [`spool`] (durable queue) → the
//! pipeline and plugins (to come). [`config`] turns the TOML file into what
//! each part needs; [`daemon`] wires them together for `finaldot run`.
#![deny(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod plugins;
pub mod smtp;
pub mod spool;
