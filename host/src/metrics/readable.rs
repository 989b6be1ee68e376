//! Metric types whose values can be read back, for the status page:
//! prometheus-client's `Family` and `Histogram` give theirs only to the
//! text encoder, so the page would have to parse `/metrics` again. Each
//! encodes exactly as its prometheus-client counterpart does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

use super::Labels;

/// A metric per label set (prometheus-client's `Family`), readable. A
/// clone shares the metrics (so the registry's copy and ours are one).
#[derive(Debug)]
pub struct Labeled<M> {
    metrics: Arc<RwLock<BTreeMap<Labels, Arc<M>>>>,
    make: fn() -> M,
}

impl<M> Clone for Labeled<M> {
    fn clone(&self) -> Self {
        Labeled {
            metrics: self.metrics.clone(),
            make: self.make,
        }
    }
}

impl<M> Labeled<M> {
    /// An empty family whose metrics `make` creates.
    pub fn new(make: fn() -> M) -> Labeled<M> {
        Labeled {
            metrics: Arc::new(RwLock::new(BTreeMap::new())),
            make,
        }
    }

    /// The metric of `labels`, created on first use.
    pub fn get_or_create(&self, labels: &Labels) -> Arc<M> {
        if let Some(m) = self
            .metrics
            .read()
            .ok()
            .and_then(|map| map.get(labels).cloned())
        {
            return m;
        }
        // A poisoned lock still holds a consistent map (inserts are whole).
        let mut map = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        map.entry(labels.clone())
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    /// Every label set with its metric, in label order.
    pub fn each(&self) -> Vec<(Labels, Arc<M>)> {
        self.metrics
            .read()
            .map(|map| map.iter().map(|(l, m)| (l.clone(), m.clone())).collect())
            .unwrap_or_default()
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, m) in self.each() {
            m.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// Latency buckets: 50 µs doubling up to about 26 s (20 bounds, then +Inf).
const LATENCY_BOUNDS: usize = 20;

/// A histogram of seconds with fixed buckets (prometheus-client's
/// `Histogram` with exponential buckets from 50 µs), readable. A clone
/// shares the counts.
#[derive(Debug, Clone)]
pub struct Latency {
    inner: Arc<LatencyCounts>,
}

/// What a [`Latency`] counts.
#[derive(Debug)]
struct LatencyCounts {
    /// Observations per bucket (not cumulative); the last is +Inf.
    counts: [AtomicU64; LATENCY_BOUNDS + 1],
    /// The sum of the observations, as `f64` bits.
    sum: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            inner: Arc::new(LatencyCounts {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }
}

impl Latency {
    /// The upper bound of bucket `i` (`+Inf` for the last).
    fn bound(i: usize) -> f64 {
        if i >= LATENCY_BOUNDS {
            f64::INFINITY
        } else {
            0.00005 * 2f64.powi(i as i32)
        }
    }

    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        let i = (0..LATENCY_BOUNDS)
            .find(|&i| seconds <= Latency::bound(i))
            .unwrap_or(LATENCY_BOUNDS);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    /// The cumulative buckets: (upper bound, observations at or below it).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.inner
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                total += c.load(Ordering::Relaxed);
                (Latency::bound(i), total)
            })
            .collect()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.inner.sum.load(Ordering::Relaxed))
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The encoder takes each bucket's own count and accumulates.
        let own: Vec<(f64, u64)> = self
            .inner
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (Latency::bound(i), c.load(Ordering::Relaxed)))
            .collect();
        let count = own.iter().map(|b| b.1).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &own, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Adds cumulative buckets `more` into `into` (same bounds; `into` may be
/// empty).
pub fn add_buckets(into: &mut Vec<(f64, u64)>, more: &[(f64, u64)]) {
    if into.is_empty() {
        into.extend_from_slice(more);
        return;
    }
    for (a, b) in into.iter_mut().zip(more) {
        a.1 += b.1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_encodes_as_a_prometheus_histogram_and_reads_back() {
        let ours = Latency::default();
        let theirs = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 20),
        );
        for v in [0.00001, 0.00005, 0.0003, 0.02, 1.5, 100.0] {
            ours.observe(v);
            theirs.observe(v);
        }
        let text = |m: Box<dyn Fn(&mut prometheus_client::registry::Registry)>| {
            let mut r = prometheus_client::registry::Registry::default();
            m(&mut r);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
            out
        };
        let o = ours.clone();
        let a = text(Box::new(move |r| r.register("x", "h", o.clone())));
        let b = text(Box::new(move |r| r.register("x", "h", theirs.clone())));
        assert_eq!(a, b);
        let buckets = ours.buckets();
        assert_eq!(buckets.len(), 21);
        assert_eq!(buckets[0], (0.00005, 2));
        assert_eq!(buckets[20].1, 6);
        assert_eq!(ours.count(), 6);
        assert!((ours.sum() - 101.52036).abs() < 1e-9, "{}", ours.sum());
    }

    #[test]
    fn a_labeled_family_reads_back_each_label_set() {
        let f: Labeled<prometheus_client::metrics::counter::Counter> =
            Labeled::new(Default::default);
        let l = |v: &str| vec![("plugin".to_string(), v.to_string())];
        f.get_or_create(&l("b")).inc();
        f.get_or_create(&l("a")).inc_by(2);
        f.get_or_create(&l("b")).inc();
        let each: Vec<(String, u64)> = f
            .each()
            .into_iter()
            .map(|(l, c)| (l[0].1.clone(), c.get()))
            .collect();
        assert_eq!(each, vec![("a".into(), 2), ("b".into(), 2)]);
    }
}
