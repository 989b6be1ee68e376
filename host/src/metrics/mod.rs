//! Metrics: counters and histograms every part of the daemon updates, in
//! one registry, served in the Prometheus text format at `/metrics` and read
//! back (as a [`Reading`]) by the status page at `/`, both on a local
//! address of their own (`[metrics] listen`, [`serve`]), never on the SMTP
//! ports.
//!
//! Names follow Prometheus conventions (`finaldot_…_total`, `_seconds`, base
//! units). Queue sizes are counted from the spool directories at each scrape.

mod readable;
mod serve;
mod status;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use readable::{Labeled, Latency};
pub use serve::serve;
pub use status::{HISTORY_SPAN, SAMPLE_EVERY};

use crate::spool::{QueueState, Spool};

/// Label pairs.
pub type Labels = Vec<(String, String)>;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// SMTP connections accepted.
    pub connections: Counter,
    /// SMTP connections open now.
    pub connections_open: Gauge,
    /// Connections to a PROXY-protocol listener refused (not from a
    /// configured load balancer, or no valid header).
    pub proxy_refused: Counter,
    /// Messages at the end of DATA/BDAT, by result and reply code.
    pub messages: Labeled<Counter>,
    /// Bytes of accepted messages.
    pub message_bytes: Counter,
    /// Time from the end of the message to its reply being sent.
    pub ack_latency: Latency,
    /// Pauses before a 354 while the pipeline was behind (in-flow delay).
    pub in_flow_delay_seconds: Latency,
    /// Messages in each queue state (set at scrape time).
    pub queue: Labeled<Gauge>,
    /// Pipeline stage duration, by plugin.
    pub stage_seconds: Labeled<Latency>,
    /// Plugin calls, by plugin and version.
    pub plugin_calls: Labeled<Counter>,
    /// Plugin faults, by plugin and version.
    pub plugin_faults: Labeled<Counter>,
    /// Plugin calls that deferred their message because a service they
    /// needed (a remote key-value store) could not answer, by plugin.
    pub plugin_unavailable: Labeled<Counter>,
    /// Plugin call time, by plugin and version.
    pub plugin_call_seconds: Labeled<Latency>,
    /// Recipients delivered.
    pub deliveries: Counter,
    /// Recipients failed permanently (reported in a DSN).
    pub bounces: Counter,
    /// Recipients dropped on purpose (a Discard verdict, a duplicate).
    pub discards: Counter,
    /// Messages deferred.
    pub deferrals: Counter,
    /// Messages held.
    pub holds: Counter,
    /// DSNs queued.
    pub dsns: Counter,
    /// DSNs not sent because the sender failed SPF or DMARC (backscatter).
    pub dsns_withheld: Counter,
    /// Door plugin calls, by plugin and stage.
    pub door_calls: Labeled<Counter>,
    /// Door refusals, by plugin, stage and reply code.
    pub door_refusals: Labeled<Counter>,
    /// Door plugin failures (their on_failure applied), by plugin and stage.
    pub door_failures: Labeled<Counter>,
    /// Door plugin call time, by plugin and stage.
    pub door_call_seconds: Labeled<Latency>,
}

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Metrics {
    // Long on purpose: one registration per metric, in the order /metrics lists them.
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("finaldot");
        let m = Metrics {
            connections: Counter::default(),
            connections_open: Gauge::default(),
            proxy_refused: Counter::default(),
            messages: Labeled::new(Counter::default),
            message_bytes: Counter::default(),
            ack_latency: Latency::default(),
            in_flow_delay_seconds: Latency::default(),
            queue: Labeled::new(Gauge::default),
            stage_seconds: Labeled::new(Latency::default),
            plugin_calls: Labeled::new(Counter::default),
            plugin_faults: Labeled::new(Counter::default),
            plugin_unavailable: Labeled::new(Counter::default),
            plugin_call_seconds: Labeled::new(Latency::default),
            deliveries: Counter::default(),
            bounces: Counter::default(),
            discards: Counter::default(),
            deferrals: Counter::default(),
            holds: Counter::default(),
            dsns: Counter::default(),
            dsns_withheld: Counter::default(),
            door_calls: Labeled::new(Counter::default),
            door_refusals: Labeled::new(Counter::default),
            door_failures: Labeled::new(Counter::default),
            door_call_seconds: Labeled::new(Latency::default),
            registry: Registry::default(),
        };
        registry.register(
            "smtp_connections",
            "SMTP connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "smtp_connections_open",
            "SMTP connections open now",
            m.connections_open.clone(),
        );
        registry.register(
            "smtp_proxy_refused",
            "Connections to a PROXY-protocol listener refused: not from a configured load balancer, or no valid header",
            m.proxy_refused.clone(),
        );
        registry.register(
            "smtp_messages",
            "Messages at the end of DATA/BDAT, by result and reply code",
            m.messages.clone(),
        );
        registry.register(
            "smtp_message_bytes",
            "Bytes of accepted messages",
            m.message_bytes.clone(),
        );
        registry.register(
            "smtp_ack_latency_seconds",
            "From the end of a message to its reply",
            m.ack_latency.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in each queue state",
            m.queue.clone(),
        );
        registry.register(
            "pipeline_stage_duration_seconds",
            "Pipeline stage duration, by plugin",
            m.stage_seconds.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin calls, by plugin and version",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_faults",
            "Plugin faults, by plugin and version",
            m.plugin_faults.clone(),
        );
        registry.register(
            "plugin_unavailable",
            "Plugin calls that deferred their message because a service they needed (a remote key-value store) could not answer, by plugin",
            m.plugin_unavailable.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin call time, by plugin and version",
            m.plugin_call_seconds.clone(),
        );
        registry.register("deliveries", "Recipients delivered", m.deliveries.clone());
        registry.register(
            "bounces",
            "Recipients failed permanently",
            m.bounces.clone(),
        );
        registry.register(
            "discards",
            "Recipients dropped on purpose (a Discard verdict, a duplicate)",
            m.discards.clone(),
        );
        registry.register("deferrals", "Messages deferred", m.deferrals.clone());
        registry.register("holds", "Messages held", m.holds.clone());
        registry.register(
            "dsns",
            "Delivery status notifications queued",
            m.dsns.clone(),
        );
        registry.register(
            "smtp_in_flow_delay_seconds",
            "Pauses before a 354 while the pipeline was behind",
            m.in_flow_delay_seconds.clone(),
        );
        registry.register(
            "dsns_withheld",
            "DSNs not sent because the sender failed SPF or DMARC",
            m.dsns_withheld.clone(),
        );
        registry.register(
            "door_calls",
            "Door plugin calls (before DATA), by plugin and stage",
            m.door_calls.clone(),
        );
        registry.register(
            "door_refusals",
            "Commands a door plugin refused, by plugin, stage and reply code",
            m.door_refusals.clone(),
        );
        registry.register(
            "door_failures",
            "Door plugin calls that failed (their on_failure applied), by plugin and stage",
            m.door_failures.clone(),
        );
        registry.register(
            "door_call_duration_seconds",
            "Door plugin call time, by plugin and stage",
            m.door_call_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts the messages in each queue state now.
    fn count_queue(&self, spool: &Spool) {
        for state in QUEUE_STATES {
            let n = spool.count(state);
            self.queue
                .get_or_create(&labels(&[("state", state.dir_name())]))
                .set(n as i64);
        }
    }

    /// The Prometheus text exposition, with queue sizes counted now.
    pub fn render(&self, spool: &Spool) -> String {
        self.count_queue(spool);
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The registry's values now (queue sizes counted now): what the
    /// status page shows, the same numbers `/metrics` gives.
    pub fn reading(&self, spool: &Spool) -> Reading {
        self.count_queue(spool);
        let label = |l: &Labels, key: &str| -> String {
            l.iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let queue = QUEUE_STATES
            .iter()
            .map(|s| {
                let n = self
                    .queue
                    .get_or_create(&labels(&[("state", s.dir_name())]))
                    .get();
                (s.dir_name(), n.max(0) as u64)
            })
            .collect();
        let accepted = self
            .messages
            .each()
            .iter()
            .filter(|(l, _)| label(l, "result") == "accepted")
            .map(|(_, c)| c.get())
            .sum();
        let mut plugins: BTreeMap<String, PluginReading> = BTreeMap::new();
        for (l, c) in self.plugin_calls.each() {
            plugins.entry(label(&l, "plugin")).or_default().calls += c.get();
        }
        for (l, c) in self.plugin_faults.each() {
            plugins.entry(label(&l, "plugin")).or_default().faults += c.get();
        }
        for (l, h) in self.plugin_call_seconds.each() {
            let p = plugins.entry(label(&l, "plugin")).or_default();
            p.seconds += h.sum();
            p.timed += h.count();
            readable::add_buckets(&mut p.buckets, &h.buckets());
        }
        let mut door: BTreeMap<(String, String), DoorReading> = BTreeMap::new();
        let at = |l: &Labels| (label(l, "plugin"), label(l, "stage"));
        for (l, c) in self.door_calls.each() {
            door.entry(at(&l)).or_default().calls += c.get();
        }
        for (l, c) in self.door_refusals.each() {
            door.entry(at(&l)).or_default().refusals += c.get();
        }
        for (l, c) in self.door_failures.each() {
            door.entry(at(&l)).or_default().failures += c.get();
        }
        for (l, h) in self.door_call_seconds.each() {
            readable::add_buckets(&mut door.entry(at(&l)).or_default().buckets, &h.buckets());
        }
        Reading {
            queue,
            accepted,
            bytes: self.message_bytes.get(),
            open: self.connections_open.get(),
            deliveries: self.deliveries.get(),
            bounces: self.bounces.get(),
            discards: self.discards.get(),
            deferrals: self.deferrals.get(),
            holds: self.holds.get(),
            ack: self.ack_latency.buckets(),
            plugins,
            door,
        }
    }
}

/// The queue states counted, in the order they are shown.
const QUEUE_STATES: [QueueState; 5] = [
    QueueState::Incoming,
    QueueState::Active,
    QueueState::Deferred,
    QueueState::Hold,
    QueueState::Corrupt,
];

/// The registry's values at one moment, as the status page shows them.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Messages per queue state, by directory name.
    pub queue: Vec<(&'static str, u64)>,
    /// Messages accepted.
    pub accepted: u64,
    /// Bytes of accepted messages.
    pub bytes: u64,
    /// SMTP connections open.
    pub open: i64,
    /// Recipients delivered.
    pub deliveries: u64,
    /// Recipients failed permanently.
    pub bounces: u64,
    /// Recipients dropped on purpose.
    pub discards: u64,
    /// Messages deferred.
    pub deferrals: u64,
    /// Messages held.
    pub holds: u64,
    /// The ack-latency histogram: (upper bound, cumulative count).
    pub ack: Vec<(f64, u64)>,
    /// Per plugin (every version together).
    pub plugins: BTreeMap<String, PluginReading>,
    /// Per door plugin and stage.
    pub door: BTreeMap<(String, String), DoorReading>,
}

/// One door plugin's calls at one stage.
#[derive(Debug, Clone, Default)]
pub struct DoorReading {
    /// Calls.
    pub calls: u64,
    /// Commands refused.
    pub refusals: u64,
    /// Failures (the plugin's on_failure applied).
    pub failures: u64,
    /// Call time histogram: (upper bound, cumulative count).
    pub buckets: Vec<(f64, u64)>,
}

impl Reading {
    /// The messages in queue state `state` (a directory name).
    pub fn in_queue(&self, state: &str) -> u64 {
        self.queue
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }
}

/// One plugin's calls, every version together.
#[derive(Debug, Clone, Default)]
pub struct PluginReading {
    /// Calls.
    pub calls: u64,
    /// Faults.
    pub faults: u64,
    /// Seconds spent in timed calls.
    pub seconds: f64,
    /// Timed calls.
    pub timed: u64,
    /// Call time histogram: (upper bound, cumulative count).
    pub buckets: Vec<(f64, u64)>,
}
