//! `soak`: the crash soak (see `finaldot_e2e::soak`): mail through the default
//! chain while the daemon is `kill -9`ed at random moments, then counted.
//!
//! ```text
//! ./dev test                     # builds the plugins (the short soak runs in the test suite)
//! cargo run --release -p finaldot-e2e --bin soak -- --kills 200
//! ```

use clap::Parser;

/// Crash soak.
#[derive(Parser)]
struct Args {
    /// How many times to kill -9 the daemon.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Concurrent SMTP clients.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Shortest run between kills, milliseconds.
    #[arg(long, default_value_t = 200)]
    min_ms: u64,
    /// Longest run between kills, milliseconds.
    #[arg(long, default_value_t = 1500)]
    max_ms: u64,
}

fn main() {
    let a = Args::parse();
    let report =
        finaldot_e2e::soak::run(a.kills, a.senders, (a.min_ms, a.max_ms.max(a.min_ms + 1)));
    println!("{report}");
    if report.lost > 0 || report.duplicated > 0 {
        std::process::exit(1);
    }
}
