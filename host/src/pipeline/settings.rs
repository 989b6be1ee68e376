//! What the pipeline runs with besides its chain: `[pipeline]` validated,
//! what happens instead of a report to a forged sender, and the
//! [`Settings`] an attempt takes one snapshot of. The configuration builds
//! them (`Config::pipeline_settings`); the pipeline never reads the
//! configuration itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Validated `[pipeline]`.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Concurrent workers.
    pub workers: usize,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// First retry delay.
    pub retry_min: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Queue lifetime before a bounce.
    pub max_queue_lifetime: Duration,
    /// Consecutive faults before hold.
    pub max_faults: u32,
    /// Delay warning after (None = never).
    pub delay_warning: Option<Duration>,
    /// Rescan interval.
    pub rescan: Duration,
    /// Niceness of pipeline threads.
    pub nice: i32,
    /// Plugin calls running WebAssembly at once.
    pub max_running_plugins: usize,
}

/// What happens to a message whose sender failed SPF or DMARC when it
/// would otherwise be reported to that sender in a DSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgedSender {
    /// Kept in `hold/` for an administrator; releasing it completes it without a DSN.
    Hold,
    /// Removed without a DSN (logged).
    Drop,
}

/// What the pipeline needs besides the chain.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The pipeline section of the configuration.
    pub config: PipelineConfig,
    /// The server's name (for DSNs).
    pub hostname: String,
    /// The local domains (lowercase): recipients elsewhere go outbound.
    pub local_domains: Arc<Vec<String>>,
    /// Delivery to the next hop (the configured route, or one a plugin
    /// chose): whatever the daemon plugged in.
    pub delivery: Arc<dyn crate::delivery::Delivery>,
    /// Mail authentication of what arrives on the MX listener (`None`: off).
    pub verifier: Option<Arc<crate::auth::Verifier>>,
    /// What happens instead of a DSN to a sender that failed SPF or DMARC.
    pub forged_sender: ForgedSender,
    /// Clients whose mail is not verified.
    pub trusted_networks: Arc<Vec<ipnet::IpNet>>,
}
