//! The key-value conformance suite: the five operations plugins use, run
//! the same way against both backends (the local redb store and a real
//! redis-server), so a plugin behaves the same on one node and on many.
//! Then what only a remote backend can do: be down, be slow, restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use finaldot::plugins::kv::redis::RedisGrant;
use finaldot::plugins::kv::{Kv, KvError, KvGrant};
use finaldot::unix_now;
use finaldot_e2e::redis::Redis;
use finaldot_e2e::TestDir;

const LIMIT: Option<Duration> = Some(Duration::from_secs(5));

fn redis_grant(url: &str, timeout_ms: u64) -> KvGrant {
    KvGrant::Redis(RedisGrant {
        url: url.to_string(),
        password: None,
        prefix: "finaldot:conformance:".into(),
        timeout: Duration::from_millis(timeout_ms),
    })
}

fn get(kv: &Kv, key: &[u8]) -> Option<Vec<u8>> {
    kv.get(key, unix_now(), LIMIT).expect("get")
}

fn pia(kv: &Kv, key: &[u8], value: &[u8], ttl: Option<u64>) -> Option<Vec<u8>> {
    kv.put_if_absent(key, value, unix_now(), ttl, LIMIT)
        .expect("put_if_absent")
}

/// Everything a plugin may rely on, on one backend.
fn conformance(kv: Arc<Kv>, backend: &str) {
    let put = |k: &[u8], v: &[u8], ttl| kv.put(k, v, unix_now(), ttl, LIMIT).expect("put");
    // Absent, put, overwrite, delete (absent is fine too).
    assert_eq!(get(&kv, b"a"), None, "{backend}");
    put(b"a", b"1", None);
    assert_eq!(get(&kv, b"a"), Some(b"1".to_vec()), "{backend}");
    put(b"a", b"2", Some(3600));
    assert_eq!(get(&kv, b"a"), Some(b"2".to_vec()), "{backend}");
    kv.delete(b"a", LIMIT).expect("delete");
    kv.delete(b"never-there", LIMIT).expect("delete absent");
    assert_eq!(get(&kv, b"a"), None, "{backend}");
    // Keys and values are bytes: NULs, high bytes, empty, large.
    let big = vec![0xA5u8; 256 * 1024];
    put(b"k\0\xff\x01", &big, None);
    put(b"empty", b"", None);
    assert_eq!(get(&kv, b"k\0\xff\x01"), Some(big), "{backend}");
    assert_eq!(get(&kv, b"empty"), Some(Vec::new()), "{backend}");
    assert_eq!(
        get(&kv, b"k\0\xff"),
        None,
        "{backend}: a prefix is another key"
    );
    // Put-if-absent: stores when absent, else answers what is there and
    // leaves it; the same value again is still "there".
    assert_eq!(pia(&kv, b"claim", b"Q1", Some(3600)), None, "{backend}");
    assert_eq!(
        pia(&kv, b"claim", b"Q2", Some(3600)),
        Some(b"Q1".to_vec()),
        "{backend}"
    );
    assert_eq!(
        pia(&kv, b"claim", b"Q1", Some(3600)),
        Some(b"Q1".to_vec()),
        "{backend}"
    );
    assert_eq!(get(&kv, b"claim"), Some(b"Q1".to_vec()), "{backend}");
    // A lifetime of zero stores nothing a read can see.
    put(b"zero", b"z", Some(0));
    assert_eq!(get(&kv, b"zero"), None, "{backend}");
    assert_eq!(pia(&kv, b"zero2", b"z", Some(0)), None, "{backend}");
    assert_eq!(get(&kv, b"zero2"), None, "{backend}");
    // Of concurrent put-if-absents for one key exactly one stores.
    for round in 0..10 {
        let key = format!("race-{round}");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (kv, key) = (kv.clone(), key.clone());
                std::thread::spawn(move || {
                    pia(&kv, key.as_bytes(), format!("{t}").as_bytes(), None)
                })
            })
            .collect();
        let found: Vec<_> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        assert_eq!(
            found.iter().filter(|f| f.is_none()).count(),
            1,
            "{backend} round {round}: {found:?}"
        );
        let stored = get(&kv, key.as_bytes()).expect("stored");
        assert!(found.iter().flatten().all(|f| *f == stored), "{backend}");
    }
    // Lifetimes end: a value for 1 s is gone after 2, and an expired claim
    // can be taken again.
    put(b"short", b"s", Some(1));
    assert_eq!(pia(&kv, b"lease", b"A", Some(1)), None, "{backend}");
    assert_eq!(get(&kv, b"short"), Some(b"s".to_vec()), "{backend}");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(get(&kv, b"short"), None, "{backend}");
    assert_eq!(pia(&kv, b"lease", b"B", Some(60)), None, "{backend}");
    assert_eq!(get(&kv, b"lease"), Some(b"B".to_vec()), "{backend}");
}

#[test]
fn the_local_store_conforms() {
    let dir = TestDir::new("kv-local");
    let kv = Kv::open(&KvGrant::Local(dir.path().join("kv"))).expect("open");
    conformance(Arc::new(kv), "local");
}

#[test]
fn redis_conforms_and_its_keys_carry_the_prefix() {
    let dir = TestDir::new("kv-redis");
    let redis = Redis::start(dir.path());
    let kv = Kv::open(&redis_grant(&redis.url(), 2000)).expect("open");
    conformance(Arc::new(kv), "redis");
    // Everything the suite stored is under the namespace's prefix.
    let keys = redis.command(&["--raw", "KEYS", "*"]).expect("KEYS");
    assert!(keys.lines().count() >= 10, "{keys}");
    assert!(
        keys.lines().all(|k| k.starts_with("finaldot:conformance:")),
        "{keys}"
    );
    // And a lifetime is Redis's own, visible to every node.
    let kv = Kv::open(&redis_grant(&redis.url(), 2000)).expect("open");
    kv.put(b"ttl", b"v", unix_now(), Some(600), LIMIT)
        .expect("put");
    let ttl = redis
        .command(&["TTL", "finaldot:conformance:ttl"])
        .expect("TTL");
    let ttl: u64 = ttl.trim().parse().expect("a number");
    assert!((590..=600).contains(&ttl), "{ttl}");
}

#[test]
fn redis_down_or_silent_is_unavailable_within_the_timeout_and_recovers() {
    let dir = TestDir::new("kv-redis-down");
    let mut redis = Redis::start(dir.path());
    let kv = Kv::open(&redis_grant(&redis.url(), 300)).expect("open");
    kv.put(b"before", b"1", unix_now(), None, LIMIT)
        .expect("put");
    // Down: refused at once, the error names the server.
    redis.stop();
    let started = Instant::now();
    match kv.put(b"during", b"2", unix_now(), None, LIMIT) {
        Err(e @ KvError::Unavailable { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!("127.0.0.1:{}", redis.port)),
                "{text}"
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Back (same data): the pool's dead connections are replaced, and what
    // was stored before is there.
    redis.resume();
    assert_eq!(get(&kv, b"before"), Some(b"1".to_vec()));
    assert_eq!(get(&kv, b"during"), None);
    // Silent: a listener that accepts and never answers costs the timeout,
    // not more, and says it timed out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("redis://{}/0", silent.local_addr().expect("addr"));
    let kv = Kv::open(&redis_grant(&url, 300)).expect("open");
    let started = Instant::now();
    match kv.get(b"k", unix_now(), LIMIT) {
        Err(KvError::Unavailable { timed_out, .. }) => assert!(timed_out),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The plugin call's own time limit wins when it is shorter.
    let started = Instant::now();
    assert!(kv
        .get(b"k", unix_now(), Some(Duration::from_millis(50)))
        .is_err());
    assert!(started.elapsed() < Duration::from_millis(1000));
}

#[test]
fn a_password_protected_redis_needs_the_password_file_s_password() {
    let dir = TestDir::new("kv-redis-auth");
    let redis = Redis::start_with_password(dir.path(), Some("s3cret pass"));
    // Through the configuration, as an operator writes it.
    std::fs::write(dir.path().join("redis.pw"), "s3cret pass\n").expect("write");
    let config = format!(
        "data_dir = \"data\"\n[domains.a]\n[[plugins]]\nname = \"d\"\nfile = \"d.wasm\"\nkv = {{ backend = \"redis\", url = \"{}\", password_file = \"redis.pw\" }}\n",
        redis.url()
    );
    let parsed = finaldot::config::Config::parse(&config, "test.toml", dir.path()).expect("config");
    let grant = parsed.plugins[0].grants.kv.clone().expect("kv");
    let kv = Kv::open(&grant).expect("open");
    kv.put(b"k", b"v", unix_now(), None, LIMIT)
        .expect("put with the password");
    assert_eq!(get(&kv, b"k"), Some(b"v".to_vec()));
    // Without it Redis refuses, and that is "unavailable" naming why.
    let kv = Kv::open(&redis_grant(&redis.url(), 500)).expect("open");
    match kv.get(b"k", unix_now(), LIMIT) {
        Err(e @ KvError::Unavailable { .. }) => {
            assert!(
                e.to_string().contains("NOAUTH") || e.to_string().contains("uthentication"),
                "{e}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
