//! Metrics and the status page: counters and histograms every part of the
//! daemon updates, served in the Prometheus text format at `/metrics` and as a
//! self-refreshing HTML page at `/` on a local address of their own
//! (`[metrics] listen`), never on the SMTP ports.
//!
//! Names follow Prometheus conventions (`finaldot_…_total`, `_seconds`, base
//! units). Queue sizes are counted from the spool directories at each scrape.
//!
//! The page draws the last hour (or the daemon's life, if shorter) as graphs (SVG written here, no scripts, no
//! external assets: it works offline): the queue by state, accepted and
//! delivered per second, ack-latency p50/p99. They come from a sample of
//! the counters every [`SAMPLE_EVERY`] kept for [`HISTORY_SPAN`], plus one
//! taken as the page is made, so its last point is the numbers of
//! `/metrics` at that moment.
//!
//! SECURITY: the page is read-only and shows queue counts and plugin names,
//! nothing from messages; bind it to loopback or a management network.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::spool::{QueueState, Spool};

/// Label pairs.
pub type Labels = Vec<(String, String)>;

type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

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
    pub messages: Family<Labels, Counter>,
    /// Bytes of accepted messages.
    pub message_bytes: Counter,
    /// Time from the end of the message to its reply being sent.
    pub ack_latency: Histogram,
    /// Pauses before a 354 while the pipeline was behind (in-flow delay).
    pub in_flow_delay_seconds: Histogram,
    /// Messages in each queue state (set at scrape time).
    pub queue: Family<Labels, Gauge>,
    /// Pipeline stage duration, by plugin.
    pub stage_seconds: HistogramFamily,
    /// Plugin calls, by plugin and version.
    pub plugin_calls: Family<Labels, Counter>,
    /// Plugin faults, by plugin and version.
    pub plugin_faults: Family<Labels, Counter>,
    /// Plugin calls that deferred their message because a service they
    /// needed (a remote key-value store) could not answer, by plugin.
    pub plugin_unavailable: Family<Labels, Counter>,
    /// Plugin call time, by plugin and version.
    pub plugin_call_seconds: HistogramFamily,
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
            messages: Family::default(),
            message_bytes: Counter::default(),
            ack_latency: latency_histogram(),
            in_flow_delay_seconds: latency_histogram(),
            queue: Family::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            plugin_calls: Family::default(),
            plugin_faults: Family::default(),
            plugin_unavailable: Family::default(),
            plugin_call_seconds: Family::new_with_constructor(latency_histogram),
            deliveries: Counter::default(),
            bounces: Counter::default(),
            discards: Counter::default(),
            deferrals: Counter::default(),
            holds: Counter::default(),
            dsns: Counter::default(),
            dsns_withheld: Counter::default(),
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
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition, with queue sizes counted now.
    pub fn render(&self, spool: &Spool) -> String {
        for state in [
            QueueState::Incoming,
            QueueState::Active,
            QueueState::Deferred,
            QueueState::Hold,
            QueueState::Corrupt,
        ] {
            let n = spool.count(state);
            self.queue
                .get_or_create(&labels(&[("state", state.dir_name())]))
                .set(n as i64);
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A histogram read back from the exposition: (upper bound, cumulative count).
fn buckets(text: &str, metric: &str, label_filter: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{metric}_bucket{{");
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label_filter))
    {
        let le = line
            .split("le=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .map(|s| {
                if s == "+Inf" {
                    f64::INFINITY
                } else {
                    s.parse().unwrap_or(f64::INFINITY)
                }
            });
        let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
        if let (Some(le), Some(count)) = (le, count) {
            out.push((le, count));
        }
    }
    out
}

/// The q-quantile from cumulative buckets (as Prometheus' histogram_quantile).
fn quantile(b: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = b.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let within = if c > prev.1 {
                (rank - prev.1) / (c - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * within);
        }
        prev = (le, c);
    }
    None
}

fn ms(v: Option<f64>) -> String {
    v.map(|s| format!("{:.2} ms", s * 1000.0))
        .unwrap_or_else(|| "-".into())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How often the graphs' history is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How far back the graphs go.
pub const HISTORY_SPAN: Duration = Duration::from_secs(3600);

/// The queue states the graphs draw, in order.
const GRAPHED_STATES: [&str; 4] = ["incoming", "active", "deferred", "hold"];

/// The counters the graphs need, at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// Messages per state of [`GRAPHED_STATES`].
    queue: [f64; 4],
    /// Messages accepted so far.
    accepted: f64,
    /// Recipients delivered so far.
    delivered: f64,
    /// The ack-latency histogram (cumulative buckets).
    ack: Vec<(f64, f64)>,
}

/// The value of the first sample of `name` (with no labels, or any).
fn value_of(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of `name` whose labels contain `filter`.
fn sum_of(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

impl Sample {
    /// The sample in an exposition (`Metrics::render`'s text).
    fn of(text: &str, at: Instant) -> Sample {
        let mut queue = [0.0; 4];
        for (n, state) in queue.iter_mut().zip(GRAPHED_STATES) {
            *n = sum_of(
                text,
                "finaldot_queue_messages",
                &format!("state=\"{state}\""),
            );
        }
        Sample {
            at,
            queue,
            accepted: sum_of(text, "finaldot_smtp_messages_total", "result=\"accepted\""),
            delivered: value_of(text, "finaldot_deliveries_total"),
            ack: buckets(text, "finaldot_smtp_ack_latency_seconds", ""),
        }
    }
}

/// The samples of the last hour.
fn history() -> &'static Mutex<VecDeque<Sample>> {
    static H: OnceLock<Mutex<VecDeque<Sample>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// Records a sample of `text` now, dropping what is older than the span.
fn record(text: &str) {
    let now = Instant::now();
    if let Ok(mut h) = history().lock() {
        h.push_back(Sample::of(text, now));
        while h
            .front()
            .is_some_and(|s| now.duration_since(s.at) > HISTORY_SPAN)
        {
            h.pop_front();
        }
    }
}

/// A series of a graph: its name, colour and points (seconds ago, value).
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v` (the top of a graph's axis).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|c| *c >= v * 0.999_999)
        .unwrap_or(10.0 * mag)
}

/// A number for a label: whole when it is, else two or three figures.
fn figure(v: f64) -> String {
    // An empty sum is -0.
    let v = if v == 0.0 { 0.0 } else { v };
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// "−60 min", "−90 s": how long ago `secs` was, for an axis.
fn ago_label(secs: f64) -> String {
    if secs >= 120.0 {
        format!("−{:.0} min", secs / 60.0)
    } else {
        format!("−{secs:.0} s")
    }
}

/// One graph over the last `span` seconds: an inline SVG with a grid, the
/// series as polylines and a legend with each series' latest value.
fn chart(id: &str, title: &str, unit: &str, span: f64, series: &[Series]) -> String {
    const W: f64 = 560.0;
    const H: f64 = 170.0;
    const LEFT: f64 = 52.0;
    const RIGHT: f64 = 10.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 24.0;
    let top = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x = |ago: f64| LEFT + (1.0 - ago.min(span) / span) * (W - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / top) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg id=\"{id}\" class=\"graph\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{}\" data-max=\"{}\">",
        html_escape(title),
        figure(top)
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = top * frac;
        let yy = y(v);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\"/><text class=\"axis\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            yy + 4.0,
            figure(v),
        ));
    }
    for (ago, label) in [
        (span, ago_label(span)),
        (span / 2.0, ago_label(span / 2.0)),
        (0.0, "now".to_string()),
    ] {
        svg.push_str(&format!(
            "<text class=\"axis\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            x(ago),
            H - 6.0
        ));
    }
    let mut legend = String::new();
    for s in series {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(ago, v)| format!("{:.1},{:.1}", x(*ago), y(*v)))
            .collect();
        match pts.len() {
            0 => {}
            1 => {
                let (ago, v) = s.points[0];
                svg.push_str(&format!(
                    "<circle class=\"series\" data-series=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                    s.name,
                    x(ago),
                    y(v),
                    s.color
                ));
            }
            _ => svg.push_str(&format!(
                "<polyline class=\"series\" data-series=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                s.name,
                s.color,
                pts.join(" ")
            )),
        }
        let latest = s
            .points
            .last()
            .map(|p| figure(p.1))
            .unwrap_or_else(|| "-".into());
        legend.push_str(&format!(
            "<span class=\"key\" data-series=\"{}\" data-latest=\"{latest}\"><i style=\"background:{}\"></i>{} {latest}</span>",
            s.name, s.color, s.name
        ));
    }
    svg.push_str("</svg>");
    format!(
        "<figure><figcaption>{} ({unit}) {legend}</figcaption>{svg}</figure>",
        html_escape(title)
    )
}

/// The three graphs from the samples (oldest first, the last one now).
fn graphs(samples: &[Sample]) -> String {
    let Some(now) = samples.last().map(|s| s.at) else {
        return String::new();
    };
    let ago = |s: &Sample| now.duration_since(s.at).as_secs_f64();
    // The whole history, at least a minute: a young daemon's graphs are
    // not squeezed against the right edge of an hour.
    let span = samples
        .first()
        .map(ago)
        .unwrap_or(0.0)
        .clamp(60.0, HISTORY_SPAN.as_secs_f64());
    let colors = ["#4a7", "#37c", "#d82", "#c33"];
    let queue: Vec<Series> = GRAPHED_STATES
        .iter()
        .zip(colors)
        .enumerate()
        .map(|(i, (name, color))| Series {
            name,
            color,
            points: samples.iter().map(|s| (ago(s), s.queue[i])).collect(),
        })
        .collect();
    let mut accepted = Vec::new();
    let mut delivered = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for w in samples.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let secs = b.at.duration_since(a.at).as_secs_f64();
        if secs < 0.5 {
            continue;
        }
        accepted.push((ago(b), (b.accepted - a.accepted).max(0.0) / secs));
        delivered.push((ago(b), (b.delivered - a.delivered).max(0.0) / secs));
        // The interval's own histogram: the difference of the cumulative ones.
        let delta: Vec<(f64, f64)> = b
            .ack
            .iter()
            .map(|(le, c)| {
                let before = a.ack.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
                (*le, c - before)
            })
            .collect();
        if let (Some(m), Some(n)) = (quantile(&delta, 0.5), quantile(&delta, 0.99)) {
            p50.push((ago(b), m * 1000.0));
            p99.push((ago(b), n * 1000.0));
        }
    }
    [
        chart("graph-queue", "Queue by state", "messages", span, &queue),
        chart(
            "graph-rates",
            "Accepted and delivered per second",
            "per s",
            span,
            &[
                Series {
                    name: "accepted",
                    color: colors[0],
                    points: accepted,
                },
                Series {
                    name: "delivered",
                    color: colors[1],
                    points: delivered,
                },
            ],
        ),
        chart(
            "graph-latency",
            "Ack latency (end of message → reply)",
            "ms",
            span,
            &[
                Series {
                    name: "p50",
                    color: colors[0],
                    points: p50,
                },
                Series {
                    name: "p99",
                    color: colors[3],
                    points: p99,
                },
            ],
        ),
    ]
    .concat()
}

/// The status page: the history's graphs (with a sample of `metrics_text`
/// as their last point), then the tables.
// Long on purpose: the page is one HTML template.
fn status_page(metrics_text: &str, plugins_json: &str) -> String {
    let mut samples: Vec<Sample> = history()
        .lock()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    samples.push(Sample::of(metrics_text, Instant::now()));
    let graphs = graphs(&samples);
    let value = |name: &str| figure(value_of(metrics_text, name));
    let mut queue_rows = String::new();
    for state in ["incoming", "active", "deferred", "hold", "corrupt"] {
        let n = figure(sum_of(
            metrics_text,
            "finaldot_queue_messages",
            &format!("state=\"{state}\""),
        ));
        queue_rows.push_str(&format!(
            "<tr data-state=\"{state}\"><td>{state}</td><td class=n>{n}</td></tr>"
        ));
    }
    let ack = buckets(metrics_text, "finaldot_smtp_ack_latency_seconds", "");
    let mut ack_rows = String::new();
    let mut prev = 0.0;
    let total = ack.last().map(|b| b.1).unwrap_or(0.0).max(1.0);
    for (le, c) in &ack {
        let n = c - prev;
        prev = *c;
        if n == 0.0 {
            continue;
        }
        let width = (300.0 * n / total).ceil() as u32;
        let bound = if le.is_infinite() {
            "more".to_string()
        } else {
            format!("≤ {:.2} ms", le * 1000.0)
        };
        ack_rows.push_str(&format!(
            "<tr><td>{bound}</td><td class=n>{n}</td><td><div class=bar style=\"width:{width}px\"></div></td></tr>"
        ));
    }
    let mut plugin_rows = String::new();
    let plugins: Vec<serde_json::Value> = serde_json::from_str(plugins_json).unwrap_or_default();
    for p in &plugins {
        let name = p["name"].as_str().unwrap_or("?");
        let filter = format!("plugin=\"{name}\"");
        let b = buckets(
            metrics_text,
            "finaldot_plugin_call_duration_seconds",
            &filter,
        );
        let state = if p["loaded"].as_bool().unwrap_or(false) {
            format!(
                "{}</td><td>{}",
                html_escape(p["version"].as_str().unwrap_or("")),
                html_escape(p["source"].as_str().unwrap_or("file")),
            )
        } else {
            format!(
                "<b>not loaded</b>: {}</td><td>",
                html_escape(p["error"].as_str().unwrap_or(""))
            )
        };
        // From the same counters as /metrics, every version of the plugin.
        let calls = sum_of(metrics_text, "finaldot_plugin_calls_total", &filter);
        let faults = sum_of(metrics_text, "finaldot_plugin_faults_total", &filter);
        let seconds = sum_of(
            metrics_text,
            "finaldot_plugin_call_duration_seconds_sum",
            &filter,
        );
        let timed = sum_of(
            metrics_text,
            "finaldot_plugin_call_duration_seconds_count",
            &filter,
        );
        let mean = (timed > 0.0).then(|| seconds / timed);
        plugin_rows.push_str(&format!(
            "<tr data-plugin=\"{}\"><td>{}</td><td>{}</td><td class=\"n calls\">{}</td><td class=\"n faults\">{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            html_escape(name),
            html_escape(name),
            state,
            figure(calls),
            figure(faults),
            ms(mean),
            ms(quantile(&b, 0.5)),
            ms(quantile(&b, 0.99)),
        ));
    }
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>finaldot status</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222 }}
table {{ border-collapse: collapse; margin-bottom: 1.5em }}
td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; text-align: left }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums }}
.bar {{ background: #4a7; height: 10px }}
figure {{ display: inline-block; margin: 0 1.5em 1.5em 0; vertical-align: top }}
figcaption {{ font-weight: 600; margin-bottom: 4px }}
.key {{ font-weight: normal; margin-left: 1em; font-variant-numeric: tabular-nums }}
.key i {{ display: inline-block; width: 10px; height: 10px; margin-right: 4px }}
svg.graph {{ background: #fafafa; border: 1px solid #ddd }}
svg .grid {{ stroke: #ddd; stroke-width: 1 }}
svg .axis {{ font-size: 10px; fill: #666 }}
</style></head><body>
<h1>finaldot</h1>
<p>Accepted: <span id="accepted">{accepted}</span> messages, {bytes} bytes. Connections open: {open}. Delivered: <span id="delivered">{deliveries}</span> recipients; bounced: {bounces}; discarded: {discards}; deferrals: {deferrals}; holds: {holds}. Refreshes every 5 s. <a href="/metrics">/metrics</a></p>
<h2>The last hour</h2>
{graphs}
<h2>Queue</h2>
<table><tr><th>state</th><th>messages</th></tr>{queue_rows}</table>
<h2>Ack latency (end of message → 250), p50 {p50}, p99 {p99}</h2>
<table><tr><th>bucket</th><th>messages</th><th></th></tr>{ack_rows}</table>
<h2>Plugins</h2>
<table><tr><th>name</th><th>version</th><th>from</th><th>calls</th><th>faults</th><th>mean per call</th><th>p50</th><th>p99</th></tr>{plugin_rows}</table>
</body></html>
"#,
        accepted = figure(sum_of(
            metrics_text,
            "finaldot_smtp_messages_total",
            "result=\"accepted\""
        )),
        bytes = value("finaldot_smtp_message_bytes_total"),
        open = value("finaldot_smtp_connections_open"),
        deliveries = value("finaldot_deliveries_total"),
        bounces = value("finaldot_bounces_total"),
        discards = value("finaldot_discards_total"),
        deferrals = value("finaldot_deferrals_total"),
        holds = value("finaldot_holds_total"),
        p50 = ms(quantile(&ack, 0.5)),
        p99 = ms(quantile(&ack, 0.99)),
    )
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    spool: Arc<Spool>,
    plugins_status: Arc<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = || global().render(&spool);
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (200, "text/plain; version=0.0.4; charset=utf-8", text()),
        "/" => {
            let plugins =
                std::fs::read_to_string(plugins_status.as_ref()).unwrap_or_else(|_| "[]".into());
            (
                200,
                "text/html; charset=utf-8",
                status_page(&text(), &plugins),
            )
        }
        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)));
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error")))))
}

/// Most connections the metrics listener serves at once; more are closed.
const MAX_CONNECTIONS: usize = 64;

/// The longest wait for a request's header.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest a connection may last, request and response.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `/metrics` and `/` on `addr`; returns the bound address. At
/// most [`MAX_CONNECTIONS`] at once, one request each, the header within
/// [`HEADER_TIMEOUT`]: the page cannot be held hostage by idle sockets.
pub async fn serve(
    addr: SocketAddr,
    spool: Arc<Spool>,
    plugins_status: PathBuf,
) -> std::io::Result<SocketAddr> {
    let listener = crate::bind_listener(addr, "metrics").await?;
    let bound = listener.local_addr()?;
    let plugins_status = Arc::new(plugins_status);
    // The graphs' history: a sample now and every SAMPLE_EVERY.
    let sampled = spool.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            every.tick().await;
            let spool = sampled.clone();
            let _ = tokio::task::spawn_blocking(move || record(&global().render(&spool))).await;
        }
    });
    tokio::spawn(async move {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the cap: closed at once, nothing read.
            let Ok(slot) = open.clone().try_acquire_owned() else {
                continue;
            };
            let (spool, plugins_status) = (spool.clone(), plugins_status.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, spool.clone(), plugins_status.clone())
                });
                // One request a connection, its header within
                // HEADER_TIMEOUT, the whole exchange within CONNECTION_TIMEOUT:
                // an idle or half-sent request holds no slot for long.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Err(e)) => debug!(error = %e, "metrics connection"),
                    Err(_) => debug!("metrics connection timed out"),
                    Ok(Ok(())) => {}
                }
                drop(slot);
            });
        }
    });
    info!(addr = %bound, "metrics and status page on http://{bound}/");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = vec![
            (0.001, 0.0),
            (0.002, 50.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        let p50 = quantile(&b, 0.5).expect("p50");
        assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
        let p99 = quantile(&b, 0.99).expect("p99");
        assert!(p99 > 0.0038 && p99 <= 0.004, "{p99}");
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn axes_end_at_one_two_or_five() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(0.07), 0.1);
    }

    #[test]
    fn a_graph_draws_each_series_and_says_its_latest_value() {
        let svg = chart(
            "g",
            "T",
            "u",
            3600.0,
            &[
                Series {
                    name: "a",
                    color: "#000",
                    points: vec![(3600.0, 0.0), (0.0, 4.0)],
                },
                Series {
                    name: "b",
                    color: "#111",
                    points: vec![(0.0, 1.5)],
                },
            ],
        );
        // a spans the whole width, ending at the top of a 0..5 axis.
        assert!(svg.contains("points=\"52.0,146.0 550.0,37.2\""), "{svg}");
        assert!(svg.contains("data-series=\"a\" data-latest=\"4\""), "{svg}");
        assert!(
            svg.contains("<circle class=\"series\" data-series=\"b\""),
            "{svg}"
        );
        assert!(svg.contains("data-max=\"5\""), "{svg}");
        assert!(
            svg.contains(">−60 min<") && svg.contains(">−30 min<"),
            "{svg}"
        );
        assert_eq!(ago_label(90.0), "−90 s");
        assert_eq!(figure(-0.0), "0");
    }
}
