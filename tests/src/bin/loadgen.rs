//! `loadgen`: SMTP load against any server; prints throughput and ack-latency
//! percentiles as text and as one JSON line.
//!
//! ```text
//! cargo run --release -p finaldot-e2e --bin loadgen -- --addr 127.0.0.1:2525 \
//!     --concurrency 8 --duration 10 --size 4096 --to alice@localhost
//! ```

use std::time::Duration;

use clap::Parser;
use finaldot_e2e::load::{run, LoadSpec};

/// SMTP load generator.
#[derive(Parser)]
struct Args {
    /// Server address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:2525")]
    addr: std::net::SocketAddr,
    /// Concurrent connections.
    #[arg(long, short, default_value_t = 8)]
    concurrency: usize,
    /// Seconds to run (default 10 unless --count is given).
    #[arg(long)]
    duration: Option<u64>,
    /// Messages to send in all.
    #[arg(long)]
    count: Option<u64>,
    /// Body size in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Recipients per message (user, user1, user2, …).
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// First recipient address.
    #[arg(long, default_value = "alice@localhost")]
    to: String,
    /// Niceness of the client threads (so a server on the same machine gets the CPU first).
    #[arg(long, default_value_t = 0)]
    nice: i32,
}

fn main() {
    let a = Args::parse();
    let (user, domain) = a.to.rsplit_once('@').unwrap_or(("alice", "localhost"));
    let spec = LoadSpec {
        addr: a.addr,
        concurrency: a.concurrency.max(1),
        duration: match (a.duration, a.count) {
            (Some(d), _) => Some(Duration::from_secs(d)),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        },
        count: a.count,
        size: a.size,
        recipients: a.recipients.max(1),
        domain: domain.to_string(),
        user: user.to_string(),
        nice: a.nice,
    };
    let report = run(&spec);
    println!("{report}");
    if let Some(e) = &report.first_error {
        println!("first error: {e}");
    }
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
}
