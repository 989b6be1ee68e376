//! finaldot: a mail server whose 250 comes as soon as the message is durable.
//!
//! Data flows one way: [`smtp`] (sessions) → [`spool`] (durable queue) →
//! [`pipeline`] (scheduler, retries, bounces) → [`plugins`] (wasmtime runtime,
//! limits, capabilities) → delivery. [`config`] turns the TOML file into what
//! each part needs; [`daemon`] wires them together for `finaldot run`.
#![deny(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod group_commit;
pub mod metrics;
pub mod outbound;
pub mod pipeline;
pub mod plugins;
pub mod queue;
pub mod smtp;
pub mod spool;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
