//! The command groups of the `finaldot` binary besides `run` and
//! `check-config`: one file per group, each with its clap subcommands and
//! the functions that carry them out.

pub(crate) mod dkim;
pub(crate) mod plugin;
pub(crate) mod queue;
pub(crate) mod user;
