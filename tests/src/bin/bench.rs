//! `bench`: the benchmark matrix. Starts finaldot itself (the release build)
//! on a temporary spool for every cell and drives it with the load generator:
//! concurrency 1, 8 and 64 with 4 KiB bodies and 8 with 100 KiB, for the
//! plugin chains *none*, *default* (dedup → filter → local-delivery) and
//! *heavy* (the default plus a plugin burning 50 ms of CPU per message).
//! Prints, per cell, accepted msg/s and ack-latency percentiles and, with a
//! chain, delivered msg/s and the backlog at the end; then the ratios the
//! targets are about. Optionally the same load against another server
//! (`--compare HOST:PORT --compare-to ADDRESS`, e.g. a local Postfix).
//! With `--full`, then: three back-to-back pairs of the target-1 cells
//! (`--pairs N` alone), hot-reload latency for a small and a ~1 MiB plugin,
//! cached and not (`--reload N` alone), and the pipeline's drain rate with
//! no SMTP load (`--drain N` alone; with `--dnsbl-delay-ms D`, the default
//! chain plus dnsbl with every DNS answer D ms late). Each cell also reports the daemon's CPU
//! per accepted message (outside the pipeline) and per delivered message
//! (pipeline threads).
//!
//! ```text
//! ./dev bench            # builds everything, runs this with --full
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use finaldot_e2e::load::{run, LoadReport, LoadSpec};
use finaldot_e2e::{
    log_field, log_time, plugin_toml, test_config, wasm, Daemon, QueueState, TestDir,
};

/// Benchmark matrix.
#[derive(Parser, Clone)]
struct Args {
    /// Seconds per cell.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Only these chains (none, default, heavy).
    #[arg(long, value_delimiter = ',', default_value = "none,default,heavy")]
    chains: Vec<String>,
    /// CPU each message costs in the heavy chain, milliseconds.
    #[arg(long, default_value_t = 50)]
    heavy_ms: u64,
    /// Another SMTP server to run the same cells against (e.g. Postfix on 127.0.0.1:2526).
    #[arg(long)]
    compare: Option<std::net::SocketAddr>,
    /// Recipient address for --compare.
    #[arg(long, default_value = "alice@bench.test")]
    compare_to: String,
    /// Pipeline workers in the daemon (default: the daemon's default).
    #[arg(long)]
    workers: Option<usize>,
    /// Pipeline thread priority (pipeline.nice; 19 = SCHED_IDLE).
    #[arg(long)]
    nice: Option<i32>,
    /// Plugin calls running WebAssembly at once (pipeline.max_running_plugins).
    #[arg(long)]
    max_running_plugins: Option<usize>,
    /// Keep the default chain's plugin instances between messages
    /// (`reuse_instance = true` for dedup, filter and local-delivery).
    #[arg(long)]
    reuse_instances: bool,
    /// Only these concurrencies.
    #[arg(long, value_delimiter = ',')]
    only_concurrency: Vec<usize>,
    /// Niceness of the load generator's threads: real clients are on other
    /// machines, so by default the local client yields the CPU to the server
    /// (finaldot and the --compare server alike).
    #[arg(long, default_value_t = 10)]
    client_nice: i32,
    /// Write the results as JSON lines here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The daemon's smtp.in_flow_delay_ms (0 = off; default: the daemon's
    /// default, except in the no-chain cells, which measure acceptance
    /// alone and never deliver, so they run with it off).
    #[arg(long)]
    in_flow_delay_ms: Option<u64>,
    /// Only the end-to-end figure: this many 4 KiB messages at c=64 to the
    /// embedded default configuration, from the first connection to the
    /// last Maildir file (and the same against --compare with
    /// --compare-maildir).
    #[arg(long)]
    e2e: Option<u64>,
    /// With --e2e: run it a second time with dedup's namespace on a Redis
    /// the bench starts (appendfsync always, as durable as the local
    /// store), and print the two side by side.
    #[arg(long)]
    dedup_on_redis: bool,
    /// With --e2e: local mail goes over LMTP into a private Dovecot the
    /// bench starts (the default chain without local-delivery, `[lmtp]`),
    /// and "delivered" is a file in Dovecot's Maildir.
    #[arg(long)]
    lmtp: bool,
    /// With --e2e --lmtp and --compare: reconfigure the local Postfix
    /// (`postconf -e virtual_transport=lmtp:inet:…`, `postfix reload`) to
    /// deliver into the same Dovecot, and count there. Bench machines only.
    #[arg(long)]
    postfix_lmtp: bool,
    /// Only the sustained-overload cell: c=64 for this many seconds to the
    /// embedded default configuration, printing the backlog every second.
    #[arg(long)]
    overload: Option<u64>,
    /// The Maildir `new/` directory the --compare server delivers into
    /// (for --e2e and --overload against it).
    #[arg(long)]
    compare_maildir: Option<PathBuf>,
    /// The --compare server's queue directories whose files count as its
    /// backlog (e.g. /var/spool/postfix/incoming,/var/spool/postfix/active).
    #[arg(long, value_delimiter = ',')]
    compare_queue: Vec<PathBuf>,
    /// Only the memory measurements (idle connections, large messages), no matrix.
    #[arg(long)]
    memory_only: bool,
    /// After the matrix, everything else too: three target-1 pairs, the
    /// hot-reload latencies, the pipeline's drain rate (what `./dev bench` runs).
    #[arg(long)]
    full: bool,
    /// Only target 1, measured robustly: this many back-to-back pairs of
    /// cells (no chain, then the heavy chain; c=8, 4 KiB), each pair's p99
    /// ratio and their median. On a noisy machine one pair proves little.
    #[arg(long)]
    pairs: Option<usize>,
    /// Only the hot-reload latency, this many rounds per plugin and cache state.
    #[arg(long)]
    reload: Option<usize>,
    /// Only the pipeline's own ceiling: queue this many 4 KiB messages with no
    /// chain, restart with the default chain and time the drain (no SMTP load).
    #[arg(long)]
    drain: Option<usize>,
    /// With --drain: add the dnsbl plugin to the default chain, its DNS
    /// answers delayed by this many milliseconds, and queue the messages
    /// (straight into the spool) from distinct client addresses, so every
    /// message makes a lookup the cache cannot answer.
    #[arg(long)]
    dnsbl_delay_ms: Option<u64>,
}

const CELLS: [(usize, usize); 4] = [(1, 4096), (8, 4096), (64, 4096), (8, 100 * 1024)];

/// The `[pipeline]` keys --workers, --nice and --max-running-plugins set.
fn pipeline_overrides(args: &Args) -> String {
    let mut t = String::new();
    if let Some(w) = args.workers {
        t.push_str(&format!("workers = {w}\n"));
    }
    if let Some(n) = args.nice {
        t.push_str(&format!("nice = {n}\n"));
    }
    if let Some(n) = args.max_running_plugins {
        t.push_str(&format!("max_running_plugins = {n}\n"));
    }
    t
}

fn chain_toml(dir: &Path, chain: &str, args: &Args) -> String {
    let heavy_ms = args.heavy_ms;
    let mail = dir.join("mail");
    let mut t = format!("[pipeline]\nrescan_secs = 5\n{}", pipeline_overrides(args));
    t.push('\n');
    if chain == "none" {
        return t;
    }
    let reuse = if args.reuse_instances {
        "reuse_instance = true\n"
    } else {
        ""
    };
    t.push_str(&plugin_toml("dedup", "dedup", &format!("{reuse}kv = true")));
    t.push_str(&plugin_toml("filter", "filter", reuse));
    if chain == "heavy" {
        t.push_str(&plugin_toml(
            "heavy",
            "finaldot_testbed",
            &format!("timeout_ms = 10000\nconfig = {{ mode = \"spin\", ms = {heavy_ms} }}"),
        ));
    }
    t.push_str(&plugin_toml(
        "local-delivery",
        "local_delivery",
        &format!(
            "{reuse}dirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"localhost\", \"example.test\"] }}"
        ),
    ));
    t
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of an idle daemon, then with `n` idle connections open.
fn memory(n: usize) {
    let dir = TestDir::new("bench-memory");
    let cfg = test_config(
        dir.path(),
        "max_connections = 5000\nmax_connections_per_ip = 5000",
        "",
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(d.pid());
    let conns: Vec<_> = (0..n)
        .filter_map(|_| {
            let mut c = std::net::TcpStream::connect(d.addr).ok()?;
            let mut buf = [0u8; 512];
            std::io::Read::read(&mut c, &mut buf).ok()?;
            Some(c)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let with = rss_kib(d.pid());
    println!(
        "memory: daemon RSS {} KiB idle, {} KiB with {} idle connections ({:.1} KiB per connection)",
        idle,
        with,
        conns.len(),
        (with.saturating_sub(idle)) as f64 / conns.len().max(1) as f64
    );
}

/// Samples a process's resident memory every 20 ms until stopped; the peak.
struct PeakRss {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        PeakRss { done, thread }
    }

    fn stop(self) -> u64 {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// CPU seconds (user + system) the daemon's threads have used so far: the
/// pipeline's (threads named `pipeline-N`) and everything else (SMTP
/// sessions, the spool committer, the runtime).
fn cpu_seconds(pid: u32) -> (f64, f64) {
    // Clock ticks per second; 100 on Linux.
    const TICKS: f64 = 100.0;
    let (mut pipeline, mut rest) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0.0, 0.0);
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ... utime stime" with comm possibly holding spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        if comm.starts_with("pipeline-") && comm != "pipeline-schedu" {
            pipeline += ticks / TICKS;
        } else {
            rest += ticks / TICKS;
        }
    }
    (pipeline, rest)
}

/// Peak resident memory while `n` clients each send one `mib` MiB message at once.
fn memory_large(n: usize, mib: usize) {
    let dir = TestDir::new("bench-memory-large");
    let cfg = test_config(
        dir.path(),
        &format!("max_message_size = {}", (mib + 1) * 1024 * 1024),
        "",
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(d.pid());
    let sampler = PeakRss::start(d.pid());
    let report = run(&LoadSpec {
        addr: d.addr,
        concurrency: n,
        duration: None,
        count: Some(n as u64),
        size: mib * 1024 * 1024,
        recipients: 1,
        domain: "localhost".into(),
        user: "alice".into(),
        nice: 0,
    });
    let peak = sampler.stop();
    println!(
        "memory: {} concurrent {} MiB messages ({} accepted, {} errors): daemon RSS {} KiB idle, peak {} KiB ({:.0} KiB per message in flight)",
        n,
        mib,
        report.accepted,
        report.errors,
        idle,
        peak,
        peak.saturating_sub(idle) as f64 / n.max(1) as f64
    );
}

/// Returns the cells, for the caller to keep until its run ends (see `Cell::_dir`).
fn target1_pairs(args: &Args, pairs: usize) -> Vec<Cell> {
    print_header();
    let mut ratios = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..pairs {
        let none = run_cell(args, "none", 8, 4096);
        print_cell(&none);
        let heavy = run_cell(args, "heavy", 8, 4096);
        print_cell(&heavy);
        ratios.push(heavy.report.p99_ms / none.report.p99_ms.max(1e-9));
        keep.push(none);
        keep.push(heavy);
    }
    if ratios.is_empty() {
        return keep;
    }
    let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "\ntarget 1: p99 ack at c=8, heavy chain / no chain, per pair: {}; median {:.2} (target <= 1.2)",
        list.join(", "),
        ratios[ratios.len() / 2]
    );
    keep
}

/// `wasm` with a custom section holding `nonce`: the same code under a new
/// content hash, so the daemon has never compiled it (or, for a nonce seen
/// before, has it in its compiled-module cache).
fn with_nonce(wasm: &[u8], nonce: u64) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"finaldot-bench-nonce";
    let mut content = Vec::new();
    leb(name.len(), &mut content);
    content.extend_from_slice(name);
    content.extend_from_slice(&nonce.to_le_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    leb(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// Hot reload: from a new `.wasm` landing in the plugin directory (written
/// aside, renamed into place) to the new version being live ("plugin
/// reloaded" in the log) and to the first message processed by it, while a
/// message arrives every 5 ms. Uncached: bytes the daemon has never seen.
/// Cached: bytes it compiled before (a rollback, or a copy precompiled by
/// another daemon sharing the cache).
fn reload(kind: &str, wasm_name: &str, config: &str, rounds: usize) {
    let dir = TestDir::new("bench-reload");
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    let original = std::fs::read(wasm(wasm_name)).expect("plugin wasm");
    let land = |bytes: &[u8]| {
        let tmp = plugins.join(".probe.wasm.part");
        std::fs::write(&tmp, bytes).expect("write");
        let t = std::time::SystemTime::now();
        std::fs::rename(&tmp, plugins.join("probe.wasm")).expect("rename");
        t
    };
    land(&with_nonce(&original, 0));
    let mail = dir.path().join("mail");
    let cfg = test_config(
        dir.path(),
        "",
        &format!(
            "[pipeline]\nplugin_dir = {plugins:?}\n\n[[plugins]]\nname = \"probe\"\nfile = \"probe.wasm\"\nconfig = {{ {config} }}\n\n{}",
            plugin_toml(
                "local-delivery",
                "local_delivery",
                &format!("dirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"localhost\"] }}"),
            )
        ),
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let mut c = d.connect();
        c.expect("EHLO bench.test", 250);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let body = format!("Subject: probe {n}\r\n\r\nhello\r\n");
                c.send_message("load@bench.test", &["alice@localhost"], body.as_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let size = original.len();
    // (cached?, live ms, first message ms, load ms as logged)
    let mut results: Vec<(bool, f64, f64, f64)> = Vec::new();
    for round in 0..rounds * 2 {
        std::thread::sleep(Duration::from_millis(300));
        // Even rounds: never-seen bytes; odd rounds: back to nonce 0 (cached).
        let nonce = if round % 2 == 0 { round as u64 + 1 } else { 0 };
        let seen_before = d.log().matches("plugin reloaded").count();
        let landed = land(&with_nonce(&original, nonce));
        let mut found = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while found.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let log = d.log();
            let Some(line) = log
                .lines()
                .filter(|l| l.contains("plugin reloaded"))
                .nth(seen_before)
            else {
                continue;
            };
            let field = |k: &str| log_field(line, &format!("{k}="));
            let Some(hash) = line
                .split('#')
                .nth(1)
                .map(|h| h.chars().take(12).collect::<String>())
            else {
                continue;
            };
            // The first message after the reload line (an earlier version
            // with the same bytes may have processed some before).
            let Some(first) = log
                .lines()
                .skip_while(|l| *l != line)
                .find(|l| l.contains("stage 0 done") && l.contains(&format!("#{hash}")))
            else {
                continue;
            };
            let ms = |t: Option<std::time::SystemTime>| {
                t.and_then(|t| t.duration_since(landed).ok())
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(f64::NAN)
            };
            found = Some((
                field("cached") == Some("true"),
                ms(log_time(line)),
                ms(log_time(first)),
                field("load_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            ));
        }
        match found {
            Some(r) => results.push(r),
            None => {
                println!("  round {round}: the new version did not process a message within 30 s")
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = stream.join();
    for cached in [false, true] {
        let mut rows: Vec<_> = results.iter().filter(|r| r.0 == cached).collect();
        if rows.is_empty() {
            continue;
        }
        let stat = |rows: &mut Vec<&(bool, f64, f64, f64)>,
                    f: fn(&(bool, f64, f64, f64)) -> f64| {
            rows.sort_by(|a, b| f(a).total_cmp(&f(b)));
            (f(rows[rows.len() / 2]), f(rows[rows.len() - 1]))
        };
        let (live50, livemax) = stat(&mut rows, |r| r.1);
        let (first50, firstmax) = stat(&mut rows, |r| r.2);
        let (load50, loadmax) = stat(&mut rows, |r| r.3);
        println!(
            "reload {kind} plugin ({:.0} KiB), {}: landing -> live p50 {live50:.1} ms, max {livemax:.1} ms; -> first message processed p50 {first50:.1} ms, max {firstmax:.1} ms; {} p50 {load50:.2} ms, max {loadmax:.2} ms ({} swaps)",
            size as f64 / 1024.0,
            if cached { "cached" } else { "uncached" },
            if cached { "load from cache" } else { "compile + load" },
            rows.len()
        );
    }
}

/// The pipeline alone: `n` queued messages, the default chain, no SMTP load.
/// Queues `n` 4 KiB messages for alice@localhost straight into the spool
/// of `data_dir`, each from its own client address in 198.18.0.0/15 (the
/// benchmarking range, RFC 2544).
fn queue_from_distinct_clients(data_dir: &Path, n: usize) -> u64 {
    let spool = finaldot::spool::Spool::open(&data_dir.join("spool")).expect("spool");
    let mut queued = 0;
    for i in 0..n {
        // A Message-ID of its own: dedup must not take copies for duplicates.
        let body = format!(
            "Subject: bench\r\nMessage-ID: <{i}.{}@bench.test>\r\n\r\n{}\r\n",
            std::process::id(),
            "x".repeat(4096)
        );
        let env = finaldot::spool::Envelope {
            mail_from: "bench@remote.test".into(),
            rcpt_to: vec!["alice@localhost".into()],
            client_ip: std::net::IpAddr::from([
                198,
                18 + (i >> 16) as u8 % 2,
                (i >> 8) as u8,
                i as u8,
            ]),
            client_port: 40000,
            listener: finaldot_sdk::Listener::Smtp,
            helo: "bench.test".into(),
            protocol: "ESMTP".into(),
            received_at: finaldot::unix_now(),
            body_8bit: false,
            smtputf8: false,
            tls: None,
            auth: None,
            dsn: Default::default(),
        };
        let Ok(mut w) = spool.begin(&env) else {
            continue;
        };
        if w.write(body.as_bytes()).is_err() {
            continue;
        }
        if let Ok(p) = w.finish() {
            if spool.commit_blocking(p).is_ok() {
                queued += 1;
            }
        }
    }
    queued
}

/// The `[smtp]` line for the in-flow delay of a cell with `chain`.
fn in_flow(args: &Args, chain: &str) -> String {
    match (args.in_flow_delay_ms, chain) {
        (Some(ms), _) => format!("in_flow_delay_ms = {ms}"),
        (None, "none") => "in_flow_delay_ms = 0".into(),
        (None, _) => String::new(),
    }
}

fn drain(args: &Args, n: usize) {
    let dir = TestDir::new("bench-drain");
    // Queued with no chain: nothing is delivered, so no pacing.
    let smtp = "max_connections = 2000\nmax_connections_per_ip = 1000\nin_flow_delay_ms = 0";
    // The dnsbl variant: a DNS server whose every answer (NXDOMAIN: no
    // client is listed) comes after the delay.
    let dns = args.dnsbl_delay_ms.map(|ms| {
        finaldot_e2e::dns::DnsServer::start_delayed(Vec::new(), Duration::from_millis(ms))
    });
    let chain = |name: &str| {
        let mut t = chain_toml(dir.path(), name, args);
        if let (Some(dns), "default") = (&dns, name) {
            t = t.replacen(
                "[[plugins]]",
                &format!(
                    "{}[[plugins]]",
                    plugin_toml(
                        "dnsbl",
                        "dnsbl",
                        "dns = { timeout_ms = 2000, max_lookups = 4 }\ntimeout_ms = 5000\nconfig = { zones = [{ zone = \"bl.bench.test\" }], skip_networks = [] }"
                    )
                ),
                1,
            );
            t = format!("[dns]\nnameservers = [\"{}\"]\n\n{t}", dns.addr);
        }
        t
    };
    let report = if dns.is_some() {
        let queued = queue_from_distinct_clients(&dir.path().join("data"), n);
        println!("queued {queued} messages straight into the spool, each from its own address");
        LoadReport {
            accepted: queued,
            ..LoadReport::default()
        }
    } else {
        let d = Daemon::start_with(dir.path(), &test_config(dir.path(), smtp, &chain("none")));
        let report = run(&LoadSpec {
            addr: d.addr,
            concurrency: 8,
            duration: None,
            count: Some(n as u64),
            size: 4096,
            recipients: 1,
            domain: "localhost".into(),
            user: "alice".into(),
            nice: args.client_nice,
        });
        drop(d);
        println!(
            "queued {} messages ({:.0}/s, {} errors); restarting with the default chain",
            report.accepted, report.per_second, report.errors
        );
        report
    };
    let maildir = dir.path().join("mail/alice/Maildir/new");
    let t = Instant::now();
    let d = Daemon::start_with(
        dir.path(),
        &test_config(dir.path(), smtp, &chain("default")),
    );
    let cpu_before = cpu_seconds(d.pid());
    let mut last = (Instant::now(), 0usize);
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let done = count_files(&maildir);
        let now = Instant::now();
        println!(
            "  {:>5.1} s: {done} delivered ({:.0}/s in the last second)",
            t.elapsed().as_secs_f64(),
            (done - last.1) as f64 / (now - last.0).as_secs_f64()
        );
        last = (now, done);
        if done as u64 >= report.accepted || t.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(d.pid());
    println!(
        "  pipeline threads' CPU per delivered message: {:.0} µs (the rest of the daemon: {:.0} µs)",
        (cpu_after.0 - cpu_before.0) * 1e6 / last.1.max(1) as f64,
        (cpu_after.1 - cpu_before.1) * 1e6 / last.1.max(1) as f64
    );
    println!(
        "pipeline alone (default chain{}, workers {}): {} delivered in {secs:.1} s = {:.0}/s (including the daemon's start)",
        args.dnsbl_delay_ms
            .map(|ms| format!(" + dnsbl, DNS answers after {ms} ms"))
            .unwrap_or_default(),
        args.workers.map(|w| w.to_string()).unwrap_or_else(|| "default".into()),
        last.1,
        last.1 as f64 / secs
    );
    // Per plugin: mean time of a call as the daemon logged it (the CPU gate
    // wait and host I/O done for the plugin included).
    let log = d.log();
    let mut per: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for line in log.lines().filter(|l| l.contains("done: ")) {
        let field = |k: &str| log_field(line, &format!("{k}="));
        if let (Some(p), Some(m)) = (field("plugin"), field("micros")) {
            let e = per.entry(p.to_string()).or_default();
            e.0 += 1;
            e.1 += m.parse::<u64>().unwrap_or(0);
        }
    }
    for (p, (n, total)) in per {
        println!(
            "  {p}: {n} calls, mean {:.0} µs",
            total as f64 / n.max(1) as f64
        );
    }
    drop(d);
}

/// A server the end-to-end and overload cells send to, and where to see
/// what it delivered and what it still holds.
struct Target {
    name: String,
    addr: std::net::SocketAddr,
    user: String,
    domain: String,
    /// The Maildir `new/` directory the recipient's mail lands in.
    maildir: PathBuf,
    /// Directories whose files are the server's backlog.
    queue: Vec<PathBuf>,
}

impl Target {
    fn backlog(&self) -> usize {
        self.queue.iter().map(|d| count_files(d)).sum()
    }

    fn spec(&self, args: &Args, count: Option<u64>, duration: Option<Duration>) -> LoadSpec {
        LoadSpec {
            addr: self.addr,
            concurrency: 64,
            duration,
            count,
            size: 4096,
            recipients: 1,
            domain: self.domain.clone(),
            user: self.user.clone(),
            nice: args.client_nice,
        }
    }
}

/// finaldot with the embedded default configuration (what `./dev run`
/// starts), in a fresh directory: its chain is dedup, list-expand, filter
/// and local-delivery, every default in force (pacing included) except
/// what --workers, --nice, --max-running-plugins, --reuse-instances and
/// --in-flow-delay-ms change.
fn finaldot_target(args: &Args, dir: &TestDir) -> (Daemon, Target) {
    finaldot_target_kv(args, dir, None)
}

/// The embedded default configuration on free ports, with what
/// --workers, --nice, --max-running-plugins, --reuse-instances and
/// --in-flow-delay-ms change.
fn default_config(args: &Args) -> String {
    let pipeline = format!("[pipeline]\n{}", pipeline_overrides(args));
    let config = finaldot::config::DEFAULT_CONFIG
        .replace(
            "listen = [\"127.0.0.1:2525\"]",
            &format!("listen = [\"127.0.0.1:0\"]\n{}", in_flow(args, "default")),
        )
        .replace("listen = \"127.0.0.1:9425\"", "listen = \"127.0.0.1:0\"")
        .replace("[pipeline]\n", &pipeline);
    if args.reuse_instances {
        config.replace(
            "builtin = true\n",
            "builtin = true\nreuse_instance = true\n",
        )
    } else {
        config
    }
}

/// [`finaldot_target`], with dedup's namespace on the Redis at `redis`.
fn finaldot_target_kv(args: &Args, dir: &TestDir, redis: Option<&str>) -> (Daemon, Target) {
    let mut config = default_config(args);
    if let Some(url) = redis {
        // dedup's is the default configuration's one namespace.
        config = config.replace(
            "kv = true\n",
            &format!("kv = {{ backend = \"redis\", url = \"{url}\" }}\n"),
        );
    }
    let d = Daemon::start_with(dir.path(), &config);
    let spool = dir.path().join("var/spool");
    let t = Target {
        name: if redis.is_some() {
            "finaldot, dedup on Redis".into()
        } else {
            "finaldot".into()
        },
        addr: d.addr,
        user: "alice".into(),
        domain: "localhost".into(),
        maildir: dir.path().join("var/mail/alice/Maildir/new"),
        queue: vec![spool.join("incoming"), spool.join("active")],
    };
    (d, t)
}

/// The other server of --compare, if its Maildir was given.
fn compare_target(args: &Args) -> Option<Target> {
    let addr = args.compare?;
    let maildir = args.compare_maildir.clone()?;
    let (user, domain) = args.compare_to.rsplit_once('@')?;
    Some(Target {
        name: format!("other ({addr})"),
        addr,
        user: user.into(),
        domain: domain.into(),
        maildir,
        queue: args.compare_queue.clone(),
    })
}

/// The newest modification time among the files of `dir`.
fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
}

/// Samples a target's backlog once a second until stopped; the peak.
fn backlog_sampler(
    t: &Target,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let queue = t.queue.clone();
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(queue.iter().map(|d| count_files(d)).sum());
            std::thread::sleep(Duration::from_millis(1000));
        }
        peak
    })
}

/// What the user waits for: `n` messages of 4 KiB at c=64, from the first
/// connection to the last message in the Maildir (its file's mtime).
fn end_to_end(args: &Args, t: &Target, pid: Option<u32>, n: u64) -> Option<f64> {
    let before = count_files(&t.maildir);
    let cpu_before = pid.map(cpu_seconds);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = backlog_sampler(t, stop.clone());
    let started = std::time::SystemTime::now();
    let clock = Instant::now();
    let report = run(&t.spec(args, Some(n), None));
    let acked = clock.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while ((count_files(&t.maildir) - before) as u64) < report.accepted && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    let delivered = count_files(&t.maildir) - before;
    let last = newest_mtime(&t.maildir)
        .and_then(|m| m.duration_since(started).ok())
        .map(|d| d.as_secs_f64());
    let Some(last) = last.filter(|_| delivered as u64 >= report.accepted) else {
        println!(
            "end to end, {}: {} of {} accepted messages delivered within 600 s",
            t.name, delivered, report.accepted
        );
        return None;
    };
    let rate = report.accepted as f64 / last;
    if let (Some(pid), Some(b)) = (pid, cpu_before) {
        let a = cpu_seconds(pid);
        println!(
            "  daemon CPU per message: pipeline threads {:.0} µs, the rest (SMTP, spool, runtime) {:.0} µs",
            (a.0 - b.0) * 1e6 / delivered.max(1) as f64,
            (a.1 - b.1) * 1e6 / delivered.max(1) as f64
        );
    }
    println!(
        "end to end, {:<24} {:>6} msgs, c=64, 4 KiB: accepted {:>6.0}/s ({} errors), last delivery {:>5.1} s after the last 250, first connection -> last delivery {:>5.1} s = {:>6.0} msg/s, peak backlog {}",
        format!("{}:", t.name),
        report.accepted,
        report.per_second,
        report.errors,
        (last - acked).max(0.0),
        last,
        rate,
        peak
    );
    Some(rate)
}

/// Sustained overload: c=64 for `secs`, the backlog printed every second.
fn overload(args: &Args, t: &Target, secs: u64) {
    println!(
        "sustained overload, {}: c=64, 4 KiB, {secs} s (backlog = messages queued, and the seconds of delivery they hold at the last 5 s' delivery rate)",
        t.name
    );
    let before = count_files(&t.maildir);
    let spec = t.spec(args, None, Some(Duration::from_secs(secs)));
    let load = std::thread::spawn(move || run(&spec));
    let clock = Instant::now();
    let mut history: Vec<(f64, usize)> = vec![(0.0, 0)];
    let (mut max_backlog, mut max_secs) = (0usize, 0.0f64);
    while !load.is_finished() {
        std::thread::sleep(Duration::from_millis(1000));
        let now = clock.elapsed().as_secs_f64();
        let delivered = count_files(&t.maildir).saturating_sub(before);
        let backlog = t.backlog();
        history.push((now, delivered));
        let (t5, d5) = history[history.len().saturating_sub(6)];
        let rate = (delivered - d5) as f64 / (now - t5).max(1e-9);
        let held = backlog as f64 / rate.max(1.0);
        max_backlog = max_backlog.max(backlog);
        max_secs = max_secs.max(held);
        println!(
            "  {now:>5.1} s: delivered {delivered:>7}, backlog {backlog:>6} ({held:>5.1} s of delivery at {rate:>5.0}/s)"
        );
    }
    let report = load.join().unwrap_or_default();
    let delivered = count_files(&t.maildir).saturating_sub(before);
    println!(
        "sustained overload, {}: accepted {} ({:.0}/s, p99 {:.1} ms), delivered {} ({:.0}/s) during the {} s; backlog at most {} messages, {:.1} s of delivery",
        t.name,
        report.accepted,
        report.per_second,
        report.p99_ms,
        delivered,
        delivered as f64 / report.seconds.max(1e-9),
        secs,
        max_backlog,
        max_secs
    );
}

/// The end-to-end figure for finaldot and, with --compare-maildir, the
/// other server, with their ratio.
fn e2e_cells(args: &Args, n: u64) {
    if args.lmtp {
        return lmtp_cells(args, n);
    }
    let dir = TestDir::new("bench-e2e");
    let (d, t) = finaldot_target(args, &dir);
    let ours = end_to_end(args, &t, Some(d.pid()), n);
    drop(d);
    if args.dedup_on_redis {
        std::thread::sleep(Duration::from_secs(30));
        let rdir = TestDir::new("bench-e2e-redis");
        let redis = finaldot_e2e::redis::Redis::start(rdir.path());
        let (d, t) = finaldot_target_kv(args, &rdir, Some(&redis.url()));
        let shared = end_to_end(args, &t, Some(d.pid()), n);
        drop(d);
        if let (Some(ours), Some(shared)) = (ours, shared) {
            println!(
                "end to end: dedup on Redis / on the local store = {:.2}",
                shared / ours.max(1e-9)
            );
        }
    }
    let Some(other) = compare_target(args) else {
        return;
    };
    // The first run's file deletions must not slow the second's creations.
    std::thread::sleep(Duration::from_secs(30));
    if let (Some(ours), Some(theirs)) = (ours, end_to_end(args, &other, None, n)) {
        println!(
            "end to end: finaldot / other = {:.2} (target >= 2)",
            ours / theirs.max(1e-9)
        );
    }
}

/// The end-to-end figure into a real Dovecot over LMTP: finaldot, and with
/// --postfix-lmtp the local Postfix delivering into the same Dovecot.
fn lmtp_cells(args: &Args, n: u64) {
    let ddir = TestDir::new("bench-dovecot");
    let dovecot = finaldot_e2e::dovecot::Dovecot::start(ddir.path());
    let inbox = dovecot.dir.join("mail/alice/Maildir/new");
    let dir = TestDir::new("bench-e2e-lmtp");
    let cfg = default_config(args);
    let cut = cfg
        .find("[[plugins]]\nname = \"local-delivery\"")
        .zip(cfg.find("[metrics]"));
    let Some((from, to)) = cut else {
        println!("the default configuration has no local-delivery entry to replace");
        return;
    };
    let config = format!(
        "{}{}\n[lmtp]\naddress = \"127.0.0.1:{}\"\n",
        &cfg[..from],
        &cfg[to..],
        dovecot.lmtp_port
    );
    let d = Daemon::start_with(dir.path(), &config);
    let spool = dir.path().join("var/spool");
    let ours_t = Target {
        name: "finaldot -> LMTP".into(),
        addr: d.addr,
        user: "alice".into(),
        domain: "localhost".into(),
        maildir: inbox.clone(),
        queue: vec![spool.join("incoming"), spool.join("active")],
    };
    let ours = end_to_end(args, &ours_t, Some(d.pid()), n);
    drop(d);
    if !args.postfix_lmtp {
        return;
    }
    let Some(mut other) = compare_target(args) else {
        println!("--postfix-lmtp needs --compare (and --compare-to)");
        return;
    };
    let transport = format!(
        "virtual_transport = lmtp:inet:127.0.0.1:{}",
        dovecot.lmtp_port
    );
    let ok = std::process::Command::new("postconf")
        .args(["-e", &transport])
        .status()
        .is_ok_and(|s| s.success())
        && std::process::Command::new("postfix")
            .arg("reload")
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        println!("could not reconfigure Postfix ({transport}); is it installed and running?");
        return;
    }
    other.name = "Postfix -> LMTP".into();
    other.maildir = inbox;
    std::thread::sleep(Duration::from_secs(30));
    let theirs = end_to_end(args, &other, None, n);
    let _ = std::process::Command::new("postconf")
        .args(["-e", "virtual_transport = virtual"])
        .status();
    let _ = std::process::Command::new("postfix").arg("reload").status();
    if let (Some(ours), Some(theirs)) = (ours, theirs) {
        println!(
            "end to end into Dovecot over LMTP: finaldot / Postfix = {:.2}",
            ours / theirs.max(1e-9)
        );
    }
}

/// The sustained-overload cell for finaldot and, with --compare-maildir,
/// the other server.
fn overload_cells(args: &Args, secs: u64) {
    let dir = TestDir::new("bench-overload");
    let (d, t) = finaldot_target(args, &dir);
    overload(args, &t, secs);
    drop(d);
    if let Some(other) = compare_target(args) {
        std::thread::sleep(Duration::from_secs(30));
        overload(args, &other, secs);
    }
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

struct Cell {
    chain: String,
    concurrency: usize,
    size: usize,
    report: LoadReport,
    delivered_per_second: Option<f64>,
    backlog: Option<usize>,
    peak_rss_kib: u64,
    /// Daemon CPU outside the pipeline per accepted message, microseconds.
    smtp_cpu_us: Option<f64>,
    /// Pipeline CPU per delivered message, microseconds.
    pipeline_cpu_us: Option<f64>,
    /// Kept until the whole run ends: deleting a cell's tens of thousands of
    /// files makes the next cell's file creations slow (ext4 skips inodes
    /// freed in the last 30 s), which would measure the bench, not the server.
    _dir: Option<TestDir>,
}

fn run_cell(args: &Args, chain: &str, concurrency: usize, size: usize) -> Cell {
    let dir = TestDir::new(&format!("bench-{chain}-{concurrency}-{size}"));
    let cfg = test_config(
        dir.path(),
        &format!(
            "max_connections = 2000\nmax_connections_per_ip = 1000\n{}",
            in_flow(args, chain)
        ),
        &chain_toml(dir.path(), chain, args),
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    let maildir = dir.path().join("mail/alice/Maildir/new");
    let spec = LoadSpec {
        addr: d.addr,
        concurrency,
        duration: Some(Duration::from_secs(args.seconds)),
        count: None,
        size,
        recipients: 1,
        domain: "localhost".into(),
        user: "alice".into(),
        nice: args.client_nice,
    };
    let before = count_files(&maildir);
    let t = Instant::now();
    let sampler = PeakRss::start(d.pid());
    let cpu_before = cpu_seconds(d.pid());
    let report = run(&spec);
    let elapsed = t.elapsed().as_secs_f64();
    let cpu_after = cpu_seconds(d.pid());
    let peak_rss = sampler.stop();
    let smtp_cpu_us = (cpu_after.1 - cpu_before.1) * 1e6 / (report.accepted.max(1) as f64);
    let mut pipeline_cpu_us = None;
    let (delivered_per_second, backlog) = if chain == "none" {
        (None, None)
    } else {
        let delivered = count_files(&maildir) - before;
        pipeline_cpu_us = Some((cpu_after.0 - cpu_before.0) * 1e6 / (delivered.max(1) as f64));
        let backlog = [
            QueueState::Incoming,
            QueueState::Active,
            QueueState::Deferred,
        ]
        .iter()
        .map(|s| d.spool_files(*s).len())
        .sum();
        (Some(delivered as f64 / elapsed), Some(backlog))
    };
    drop(d);
    Cell {
        chain: chain.to_string(),
        concurrency,
        size,
        report,
        delivered_per_second,
        backlog,
        peak_rss_kib: peak_rss,
        smtp_cpu_us: Some(smtp_cpu_us),
        pipeline_cpu_us,
        _dir: Some(dir),
    }
}

fn print_header() {
    println!(
        "{:<8} {:>4} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>11} {:>8} {:>9} {:>11} {:>11}",
        "chain",
        "conc",
        "body",
        "acc/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors",
        "deliv/s",
        "backlog",
        "rss MiB",
        "cpu µs/acc",
        "cpu µs/dlv"
    );
}

fn print_cell(c: &Cell) {
    let r = &c.report;
    println!(
        "{:<8} {:>4} {:>6}K {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>11} {:>8} {:>9} {:>11} {:>11}",
        c.chain,
        c.concurrency,
        c.size / 1024,
        r.per_second,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.p999_ms,
        r.max_ms,
        r.errors,
        c.delivered_per_second.map(|d| format!("{d:.0}")).unwrap_or_else(|| "-".into()),
        c.backlog.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
        if c.peak_rss_kib > 0 { format!("{:.1}", c.peak_rss_kib as f64 / 1024.0) } else { "-".into() },
        c.smtp_cpu_us.map(|u| format!("{u:.0}")).unwrap_or_else(|| "-".into()),
        c.pipeline_cpu_us.map(|u| format!("{u:.0}")).unwrap_or_else(|| "-".into()),
    );
    if let Some(e) = &r.first_error {
        println!("         first error: {e}");
    }
}

fn main() {
    let args = Args::parse();
    // Everything the cells need must exist before the clock starts.
    for p in [
        "dedup",
        "filter",
        "local_delivery",
        "finaldot_testbed",
        "finaldot_bulky",
    ] {
        let _ = wasm(p);
    }
    println!(
        "finaldot benchmark matrix: {} s per cell, {} cores, binary {}",
        args.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        finaldot_e2e::finaldot_bin().display()
    );
    if let Some(rounds) = args.reload {
        for (kind, wasm_name, config) in RELOAD_PLUGINS {
            reload(kind, wasm_name, config, rounds);
        }
        return;
    }
    if let Some(n) = args.drain {
        drain(&args, n);
        return;
    }
    if let Some(n) = args.e2e {
        e2e_cells(&args, n);
        return;
    }
    if let Some(secs) = args.overload {
        overload_cells(&args, secs);
        return;
    }
    if let Some(pairs) = args.pairs {
        let _kept = target1_pairs(&args, pairs);
        return;
    }
    memory(1000);
    memory_large(50, 25);
    if args.memory_only {
        return;
    }
    print_header();
    let mut cells = Vec::new();
    for chain in &args.chains {
        for (c, size) in CELLS {
            if !args.only_concurrency.is_empty() && !args.only_concurrency.contains(&c) {
                continue;
            }
            let cell = run_cell(&args, chain, c, size);
            print_cell(&cell);
            cells.push(cell);
        }
    }
    if let Some(addr) = args.compare {
        let (user, domain) = args
            .compare_to
            .rsplit_once('@')
            .unwrap_or(("alice", "bench.test"));
        println!("\nthe same load against {addr} (to {}):", args.compare_to);
        print_header();
        for (c, size) in CELLS {
            let report = run(&LoadSpec {
                addr,
                concurrency: c,
                duration: Some(Duration::from_secs(args.seconds)),
                count: None,
                size,
                recipients: 1,
                domain: domain.into(),
                user: user.into(),
                nice: args.client_nice,
            });
            let cell = Cell {
                chain: "other".into(),
                concurrency: c,
                size,
                report,
                delivered_per_second: None,
                backlog: None,
                peak_rss_kib: 0,
                smtp_cpu_us: None,
                pipeline_cpu_us: None,
                _dir: None,
            };
            print_cell(&cell);
            cells.push(cell);
        }
    }
    let find = |chain: &str, c: usize, size: usize| {
        cells
            .iter()
            .find(|x| x.chain == chain && x.concurrency == c && x.size == size)
    };
    println!();
    if let (Some(none), Some(heavy)) = (find("none", 8, 4096), find("heavy", 8, 4096)) {
        println!(
            "target 1: p99 ack at c=8 with the heavy chain / without a chain = {:.2} (target <= 1.2)",
            heavy.report.p99_ms / none.report.p99_ms.max(1e-9)
        );
    }
    if let Some(def) = find("default", 8, 4096) {
        if let Some(d) = def.delivered_per_second {
            println!(
                "target 4: default chain at c=8 delivers {:.0}/s of {:.0}/s accepted = {:.0}% (target >= 80%)",
                d,
                def.report.per_second,
                100.0 * d / def.report.per_second.max(1e-9)
            );
        }
    }
    if let (Some(fd), Some(other)) = (find("default", 64, 4096), find("other", 64, 4096)) {
        println!(
            "target 2: at c=64, finaldot (default chain) accepts {:.0}/s vs {:.0}/s = {:.2}x, p99 {:.1} ms vs {:.1} ms",
            fd.report.per_second,
            other.report.per_second,
            fd.report.per_second / other.report.per_second.max(1e-9),
            fd.report.p99_ms,
            other.report.p99_ms
        );
    }
    if let Some(path) = &args.json {
        let lines: Vec<String> = cells
            .iter()
            .map(|c| {
                serde_json::json!({
                    "chain": c.chain, "concurrency": c.concurrency, "size": c.size,
                    "report": c.report, "delivered_per_second": c.delivered_per_second, "backlog": c.backlog, "peak_rss_kib": c.peak_rss_kib,
                    "smtp_cpu_us_per_accepted": c.smtp_cpu_us, "pipeline_cpu_us_per_delivered": c.pipeline_cpu_us,
                })
                .to_string()
            })
            .collect();
        let _ = std::fs::write(path, lines.join("\n") + "\n");
    }
    if args.full {
        println!();
        cells.extend(target1_pairs(&args, 3));
        println!();
        for (kind, wasm_name, config) in RELOAD_PLUGINS {
            reload(kind, wasm_name, config, 3);
        }
        println!();
        e2e_cells(&args, 20_000);
        println!();
        overload_cells(&args, 60);
        println!();
        drain(&args, 8000);
        // Issue 17's section 5: the default chain plus dnsbl, DNS answers
        // at once and after 100 ms (the slow case should drain at least
        // half as fast).
        for ms in [0, 100] {
            let with_dnsbl = Args {
                dnsbl_delay_ms: Some(ms),
                ..args.clone()
            };
            drain(&with_dnsbl, 2000);
        }
    }
}

/// The plugins `--reload` swaps: the small test plugin and the ~1 MiB one.
const RELOAD_PLUGINS: [(&str, &str, &str); 2] = [
    ("small", "finaldot_testbed", "mode = \"ok\""),
    ("~1 MiB", "finaldot_bulky", ""),
];
