//! The CPU cost per message of mail authentication: verifying SPF, DKIM
//! (one RSA-2048 or Ed25519 signature), DMARC and ARC of a 4 KiB message
//! with every DNS answer already in the resolver's cache (the steady state
//! of an MX), and DKIM-signing one as it leaves (RSA-2048, Ed25519).
//! Single-threaded; CPU time is the process's (user + system, every
//! thread: the resolver's runtime included) divided by the messages.
//!
//! Reproduce: `./dev bench` (or `cargo bench -p finaldot-e2e --bench auth`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use finaldot::auth::keys;
use finaldot::auth::sign::{Signer, SigningKey};
use finaldot::auth::verify::{Envelope, Verifier};
use finaldot_e2e::dns::{DnsServer, Record};

/// User + system CPU seconds of this process so far (every thread), from
/// /proc/self/stat (clock ticks of 10 ms: the runs are long enough).
fn cpu_seconds() -> f64 {
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let close = stat.rfind(')').expect("comm");
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum::<f64>()
        / TICKS
}

fn message() -> Vec<u8> {
    let mut m = b"From: Carol <carol@example.org>\r\nTo: alice@example.test\r\nSubject: figures\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    while m.len() < 4096 {
        m.extend_from_slice(b"The quarterly figures are attached; see the second table.\r\n");
    }
    m
}

/// µs of CPU and of wall time per call of `f`, over `n` calls.
fn measure(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for _ in 0..n {
        f();
    }
    (
        (cpu_seconds() - cpu) / n as f64 * 1e6,
        wall.elapsed().as_secs_f64() / n as f64 * 1e6,
    )
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut records = vec![
        Record::Txt("example.org".into(), "v=spf1 ip4:192.0.2.0/24 -all".into()),
        Record::Txt("_dmarc.example.org".into(), "v=DMARC1; p=reject".into()),
    ];
    let mut signers = Vec::new();
    for (selector, alg) in [
        ("rsa", keys::Algorithm::Rsa),
        ("ed", keys::Algorithm::Ed25519),
    ] {
        let path = dir.path().join(format!("{selector}.key"));
        let text = keys::keygen(alg, &path).expect("keygen");
        records.push(Record::Txt(
            format!("{selector}._domainkey.example.org"),
            text,
        ));
        let key = SigningKey::load("example.org", selector, &path).expect("load");
        signers.push((selector, Signer::new(vec![key])));
    }
    let dns = DnsServer::start(records);
    let resolver = Arc::new(finaldot::dns::Dns::new(&[dns.addr]).expect("resolver"));
    let verifier = Verifier::new(resolver, "mx.bench", Duration::from_secs(10));
    let envelope = Envelope {
        client_ip: "192.0.2.7".parse().expect("ip"),
        helo: "mail.example.org",
        mail_from: "carol@example.org",
    };
    let n = 3000;
    println!("mail authentication, per 4 KiB message, one thread, DNS answers cached (n = {n}):");
    for (selector, signer) in &signers {
        let msg = message();
        let (cpu, wall) = measure(n, || {
            let signature = signer.sign(&msg).expect("sign");
            assert!(!signature.is_empty());
        });
        println!(
            "  DKIM signing ({selector:>3}):               {cpu:7.1} µs CPU, {wall:7.1} µs wall"
        );
        let mut signed = signer.sign(&msg).expect("sign");
        signed.extend_from_slice(&msg);
        // The first call fills the cache; the rest are the steady state.
        let facts = verifier.verify(&envelope, &signed);
        assert_eq!(facts.dkim_result().as_str(), "pass", "{facts:?}");
        assert_eq!(facts.dmarc.result.as_str(), "pass", "{facts:?}");
        let (cpu, wall) = measure(n, || {
            let facts = verifier.verify(&envelope, &signed);
            assert_eq!(facts.spf.result.as_str(), "pass");
        });
        println!(
            "  verifying SPF+DKIM({selector:>3})+DMARC+ARC: {cpu:7.1} µs CPU, {wall:7.1} µs wall"
        );
    }
}
