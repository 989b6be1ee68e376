//! Plugin call cost: instantiate + configure + encode + call + decode, for a
//! fresh pooled instance per message (the default) and a reused instance, for
//! 4 KiB and 1 MiB messages, with a plugin that does not read the body
//! (`stamp`) and one that reads all of it (`finaldot-testbed`, mode ok).
//!
//! Reproduce: `./dev bench` (or build the plugins as `./dev test` does, then
//! `cargo bench -p finaldot-e2e --bench plugin_call`).

use std::time::{Duration, Instant};

use finaldot::plugins::{Body, Limits, Plugin, PluginSpec, Runtime, RuntimeOptions};
use finaldot_e2e::{message_input, wasm};
use finaldot_sdk::wire::{MessageInput, Value};

fn message(size: usize) -> (MessageInput, Body) {
    let mut raw = String::new();
    for i in 0..12 {
        raw.push_str(&format!(
            "X-Header-{i}: some typical header value number {i}\r\n"
        ));
    }
    raw.push_str("Subject: benchmark\r\n\r\n");
    let line = "the quick brown fox jumps over the lazy dog, again and again.....\r\n";
    while raw.len() < size {
        raw.push_str(line);
    }
    raw.truncate(size);
    let raw = raw.into_bytes();
    message_input(&raw)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn bench(
    rt: &Runtime,
    plugin: &str,
    file: &str,
    config: Value,
    reuse: bool,
    size: usize,
    iters: usize,
) {
    let p = Plugin::new(
        rt,
        PluginSpec {
            name: plugin.into(),
            file: wasm(file),
            config,
            limits: Limits::default(),
            grants: Default::default(),
            reuse_instance: reuse,
            builtin: None,
        },
    )
    .expect("load");
    let (input, body) = message(size);
    for _ in 0..iters / 10 + 5 {
        p.call(&input, body.clone(), false).expect("warm-up call");
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        p.call(&input, body.clone(), false).expect("call");
        times.push(t.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e6 / iters as f64;
    println!(
        "{:<10} {:<7} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        plugin,
        if reuse { "reused" } else { "fresh" },
        if size >= 1 << 20 {
            format!("{} MiB", size >> 20)
        } else {
            format!("{} KiB", size >> 10)
        },
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
        mean
    );
}

fn main() {
    let rt = Runtime::new(RuntimeOptions::default()).expect("runtime");
    println!("plugin call cost in microseconds (instantiate + configure + encode + call + decode)");
    println!(
        "{:<10} {:<7} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "plugin", "inst", "message", "p50", "p90", "p99", "mean"
    );
    for (size, iters) in [
        (1024, 5000),
        (4096, 5000),
        (64 * 1024, 2000),
        (1 << 20, 300),
    ] {
        for reuse in [false, true] {
            bench(&rt, "stamp", "stamp", Value::empty(), reuse, size, iters);
            bench(
                &rt,
                "reads-body",
                "finaldot_testbed",
                Value::empty(),
                reuse,
                size,
                iters,
            );
        }
    }
}
