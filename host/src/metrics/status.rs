//! The status page at `/`: the last hour (or the daemon's life, if
//! shorter) as graphs (SVG written here, no scripts, no external assets: it
//! works offline): the queue by state, accepted and delivered per second,
//! ack-latency p50/p99; then tables of the queue, the ack latency and the
//! plugins. Every number is read from the registry ([`Reading`]), the same
//! values `/metrics` gives; the graphs come from a reading every
//! [`SAMPLE_EVERY`] kept for [`HISTORY_SPAN`], plus one taken as the page
//! is made.
//!
//! SECURITY: the page is read-only and shows queue counts and plugin names,
//! nothing from messages; plugin names and versions are HTML-escaped.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Reading;

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

impl Sample {
    /// The sample of a reading taken `at`.
    fn of(r: &Reading, at: Instant) -> Sample {
        let mut queue = [0.0; 4];
        for (n, state) in queue.iter_mut().zip(GRAPHED_STATES) {
            *n = r.in_queue(state) as f64;
        }
        Sample {
            at,
            queue,
            accepted: r.accepted as f64,
            delivered: r.deliveries as f64,
            ack: as_f64(&r.ack),
        }
    }
}

/// Cumulative buckets with their counts as `f64` (for [`quantile`]).
fn as_f64(b: &[(f64, u64)]) -> Vec<(f64, f64)> {
    b.iter().map(|&(le, c)| (le, c as f64)).collect()
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

/// The samples of the last hour.
fn history() -> &'static Mutex<VecDeque<Sample>> {
    static H: OnceLock<Mutex<VecDeque<Sample>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// Records a sample of `reading` now, dropping what is older than the span.
pub(super) fn record(reading: &Reading) {
    let now = Instant::now();
    if let Ok(mut h) = history().lock() {
        h.push_back(Sample::of(reading, now));
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

/// The status page: the history's graphs (with a sample of `reading` as
/// their last point), then the tables.
// Long on purpose: the page is one HTML template.
pub(super) fn status_page(reading: &Reading, plugins_json: &str) -> String {
    let mut samples: Vec<Sample> = history()
        .lock()
        .map(|h| h.iter().cloned().collect())
        .unwrap_or_default();
    samples.push(Sample::of(reading, Instant::now()));
    let graphs = graphs(&samples);
    let value = |v: u64| figure(v as f64);
    let mut queue_rows = String::new();
    for (state, n) in &reading.queue {
        let n = value(*n);
        queue_rows.push_str(&format!(
            "<tr data-state=\"{state}\"><td>{state}</td><td class=n>{n}</td></tr>"
        ));
    }
    let ack = as_f64(&reading.ack);
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
        let counted = reading.plugins.get(name).cloned().unwrap_or_default();
        let b = as_f64(&counted.buckets);
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
        let mean = (counted.timed > 0).then(|| counted.seconds / counted.timed as f64);
        plugin_rows.push_str(&format!(
            "<tr data-plugin=\"{}\"><td>{}</td><td>{}</td><td class=\"n calls\">{}</td><td class=\"n faults\">{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            html_escape(name),
            html_escape(name),
            state,
            value(counted.calls),
            value(counted.faults),
            ms(mean),
            ms(quantile(&b, 0.5)),
            ms(quantile(&b, 0.99)),
        ));
    }
    let mut door_rows = String::new();
    for ((plugin, stage), d) in &reading.door {
        let b = as_f64(&d.buckets);
        door_rows.push_str(&format!(
            "<tr data-door=\"{}\" data-stage=\"{}\"><td>{}</td><td>{}</td><td class=\"n calls\">{}</td><td class=\"n refusals\">{}</td><td class=\"n failures\">{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            html_escape(plugin),
            html_escape(stage),
            html_escape(plugin),
            html_escape(stage),
            value(d.calls),
            value(d.refusals),
            value(d.failures),
            ms(quantile(&b, 0.5)),
            ms(quantile(&b, 0.99)),
        ));
    }
    if door_rows.is_empty() {
        door_rows.push_str("<tr><td colspan=7>no [[door]] plugin has been called</td></tr>");
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
<h2>Door (before DATA)</h2>
<table><tr><th>plugin</th><th>stage</th><th>calls</th><th>refused</th><th>failed</th><th>p50</th><th>p99</th></tr>{door_rows}</table>
</body></html>
"#,
        accepted = value(reading.accepted),
        bytes = value(reading.bytes),
        open = figure(reading.open as f64),
        deliveries = value(reading.deliveries),
        bounces = value(reading.bounces),
        discards = value(reading.discards),
        deferrals = value(reading.deferrals),
        holds = value(reading.holds),
        p50 = ms(quantile(&ack, 0.5)),
        p99 = ms(quantile(&ack, 0.99)),
    )
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
