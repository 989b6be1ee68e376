//! The plugin runtime against real wasm: the testbed plugin (built from
//! tests/guests/testbed for wasm32-unknown-unknown by `./dev test`) in each of
//! its well-behaved and hostile modes, and hand-written modules (WAT) for the
//! cases the SDK would never produce. Every hostile case asserts the exact
//! fault and that the same runtime still serves the next call.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use finaldot::plugins::{
    Body, DirGrant, Fault, Grants, Limits, Plugin, PluginSpec, Runtime, RuntimeOptions,
};
use finaldot_e2e::{message_input, wasm};
use finaldot_sdk::testing::config_from_toml;
use finaldot_sdk::wire::MessageInput;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::new(RuntimeOptions::default()).expect("runtime"))
}

fn message(raw: &[u8]) -> (MessageInput, Body) {
    message_input(raw)
}

fn spec(name: &str, file: PathBuf, config: &str) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        file,
        config: config_from_toml(config).expect("toml"),
        limits: Limits {
            timeout: Duration::from_millis(300),
            memory: 32 * 1024 * 1024,
        },
        grants: Grants::default(),
        reuse_instance: false,
        builtin: None,
    }
}

fn testbed(config: &str) -> Plugin {
    Plugin::new(runtime(), spec("testbed", wasm("finaldot_testbed"), config)).expect("load testbed")
}

fn call_fault(p: &Plugin) -> Fault {
    let (input, body) = message(b"Subject: x\r\n\r\nbody\r\n");
    let err = p.call(&input, body, false).expect_err("must fault");
    assert_eq!(err.plugin, "testbed");
    assert!(
        err.version.starts_with("finaldot-testbed 0.1.0 #"),
        "{}",
        err.version
    );
    err.fault
}

/// After every hostile case: a good plugin on the same runtime still works.
fn host_still_serves() {
    let good = testbed("");
    let (input, body) = message(b"Subject: x\r\n\r\n12345\r\n");
    let out = good.call(&input, body, false).expect("good call");
    assert!(out.output.changes.len() == 2, "{:?}", out.output.changes);
}

#[test]
fn well_behaved_plugin_reads_the_body_and_adds_headers() {
    let p = testbed("");
    let (input, body) = message(b"Subject: x\r\n\r\n12345\r\n");
    let out = p.call(&input, body, true).expect("call");
    let mut state = input.state.clone();
    for c in &out.output.changes {
        state.apply(c);
    }
    let h = |n: &str| state.headers.iter().find(|h| h.is(n)).map(|h| h.text());
    assert_eq!(h("X-Testbed").as_deref(), Some("ok"));
    assert_eq!(h("X-Body-Len").as_deref(), Some("7"));
    assert_eq!(out.logs.len(), 1);
    assert_eq!(out.logs[0].text, "testbed ok");
    assert_eq!(p.module().info.name, "finaldot-testbed");
}

#[test]
fn infinite_loop_times_out() {
    let p = testbed("mode = \"loop\"");
    let start = Instant::now();
    let f = call_fault(&p);
    assert!(matches!(f, Fault::Timeout { .. }), "{f:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    host_still_serves();
}

#[test]
fn memory_bomb_hits_the_cap() {
    let p = testbed("mode = \"membomb\"");
    assert_eq!(call_fault(&p), Fault::MemoryLimit(32 * 1024 * 1024));
    host_still_serves();
}

#[test]
fn deep_recursion_is_a_stack_overflow() {
    let p = testbed("mode = \"recurse\"");
    assert_eq!(call_fault(&p), Fault::StackOverflow);
    host_still_serves();
}

#[test]
fn panic_is_reported_with_its_message() {
    let p = testbed("mode = \"panic\"");
    match call_fault(&p) {
        Fault::Panic(m) => assert!(m.contains("testbed panic: boom"), "{m}"),
        f => panic!("expected a panic, got {f:?}"),
    }
    host_still_serves();
}

#[test]
fn unreachable_is_a_trap() {
    let p = testbed("mode = \"unreachable\"");
    match call_fault(&p) {
        Fault::Trap(m) => assert!(m.contains("unreachable"), "{m}"),
        f => panic!("expected a trap, got {f:?}"),
    }
    host_still_serves();
}

#[test]
fn plugin_error_and_configure_error_are_named() {
    let p = testbed("mode = \"error\"");
    assert_eq!(call_fault(&p), Fault::Guest("testbed error".into()));
    let e = Plugin::new(
        runtime(),
        spec(
            "testbed",
            wasm("finaldot_testbed"),
            "mode = \"configure-error\"",
        ),
    )
    .err()
    .expect("refused");
    assert_eq!(
        e.fault,
        Fault::Configure("testbed refuses this configuration".into())
    );
    let e = Plugin::new(
        runtime(),
        spec("testbed", wasm("finaldot_testbed"), "mode = 7"),
    )
    .err()
    .expect("refused");
    assert_eq!(e.fault, Fault::Configure("`mode` must be a string".into()));
}

fn wat_module(dir: &Path, name: &str, abi: u32, on_message_body: &str) -> PathBuf {
    // GuestResult::Ok(PluginInfo { abi: 1, name: "g", version: "0" }) in postcard.
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 2048) "\00\01\01g\010")
  (data (i32.const 3072) "\ff\ff\ff\ff\ff\ff\ff\ff")
  (func (export "finaldot_abi_version") (result i32) (i32.const {abi}))
  (func (export "finaldot_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "finaldot_dealloc") (param i32 i32))
  (func (export "finaldot_info") (result i64) (i64.const 0x0000080000000006))
  (func (export "finaldot_configure") (param i32 i32) (result i64) (i64.const 0x0000080000000006))
  (func (export "finaldot_on_message") (param i32 i32) (result i64) {on_message_body})
)"#
    );
    let p = dir.join(format!("{name}.wasm"));
    std::fs::write(&p, wat::parse_str(&text).expect("wat")).expect("write");
    p
}

#[test]
fn garbage_output_is_malformed_output() {
    let dir = tempfile::tempdir().expect("tmp");
    for body in [
        "(i64.const 0x00000C0000000008)",
        "(i64.const 0x7fff000000001000)",
    ] {
        let file = wat_module(dir.path(), "garbage", 1, body);
        let p = Plugin::new(runtime(), spec("garbage", file, "")).expect("loads");
        let (input, b) = message(b"Subject: x\r\n\r\n");
        let err = p.call(&input, b, false).expect_err("malformed");
        assert!(matches!(err.fault, Fault::MalformedOutput(_)), "{err}");
        assert!(err.to_string().contains("plugin garbage (g 0 #"), "{err}");
    }
    host_still_serves();
}

#[test]
fn wrong_abi_version_is_refused_naming_file_and_versions() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = wat_module(dir.path(), "abi2", 2, "(i64.const 0)");
    let err = runtime().load(&file).expect_err("refused");
    assert_eq!(
        err.fault,
        Fault::AbiMismatch {
            found: 2,
            supported: 1
        }
    );
    let text = err.to_string();
    assert!(text.contains("abi2.wasm"), "{text}");
    assert!(
        text.contains("ABI version 2 is not supported (this host supports 1)"),
        "{text}"
    );
}

/// The fixture of a plugin built with a newer SDK, compiled into `dir`.
fn needs_a_future_feature(dir: &Path) -> PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plugins/needs-a-future-feature.wat");
    let file = dir.join("future.wasm");
    std::fs::write(&file, wat::parse_file(&fixture).expect("wat")).expect("write");
    file
}

#[test]
fn a_plugin_needing_an_abi_feature_this_host_lacks_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = needs_a_future_feature(dir.path());
    let err = runtime().load(&file).expect_err("refused");
    assert_eq!(
        err.fault,
        Fault::NeedsFeatures(vec!["from-the-future".into()])
    );
    let text = err.to_string();
    assert!(text.contains("future.wasm"), "{text}");
    assert!(
        text.contains("needs an ABI feature this finaldot does not have: from-the-future"),
        "{text}"
    );
    assert!(text.contains("newer finaldot-sdk"), "{text}");
    // A plugin whose info predates the feature list loads, needing nothing.
    let old = wat_module(dir.path(), "old-info", 1, "(i64.const 0)");
    let m = runtime().load(&old).expect("loads");
    assert!(m.info.needs.is_empty());
    // Today's SDK declares every feature it speaks, all known here.
    let m = runtime().load(&wasm("finaldot_testbed")).expect("loads");
    let known: Vec<String> = finaldot_sdk::wire::FEATURES
        .iter()
        .map(|f| f.to_string())
        .collect();
    assert_eq!(m.info.needs, known);
}

#[test]
fn wasi_imports_and_non_wasm_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("wasi.wasm");
    let wasi = wat::parse_str(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#,
    )
    .expect("wat");
    std::fs::write(&file, wasi).expect("write");
    let err = runtime().load(&file).expect_err("refused");
    assert!(
        matches!(&err.fault, Fault::Import(m) if m.contains("wasi_snapshot_preview1::fd_write")),
        "{err}"
    );
    let file = dir.path().join("junk.wasm");
    std::fs::write(&file, b"not wasm at all").expect("write");
    let err = runtime().load(&file).expect_err("refused");
    assert!(matches!(err.fault, Fault::Compile(_)), "{err}");
    // A truncated copy of a real plugin (a half-written file) is refused too.
    let good = std::fs::read(wasm("finaldot_testbed")).expect("read");
    std::fs::write(&file, &good[..good.len() / 2]).expect("write");
    assert!(runtime().load(&file).is_err());
}

fn fs_result(grants: Grants, config: &str) -> String {
    let mut s = spec("testbed", wasm("finaldot_testbed"), config);
    s.grants = grants;
    let p = Plugin::new(runtime(), s).expect("load");
    let (input, body) = message(b"Subject: x\r\n\r\n");
    let out = p.call(&input, body, false).expect("call");
    let mut state = input.state.clone();
    for c in &out.output.changes {
        state.apply(c);
    }
    state
        .headers
        .iter()
        .find(|h| h.is("X-Result"))
        .map(|h| h.text())
        .expect("X-Result")
}

#[test]
fn directory_grants_confine_the_plugin() {
    let root = tempfile::tempdir().expect("tmp");
    let granted = root.path().join("granted");
    std::fs::create_dir_all(&granted).expect("mkdir");
    std::fs::write(granted.join("inside.txt"), b"hello").expect("write");
    std::fs::write(root.path().join("secret.txt"), b"secret").expect("write");
    std::os::unix::fs::symlink(root.path(), granted.join("link")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", granted.join("passwd")).expect("symlink");
    let ro = Grants {
        dirs: vec![DirGrant {
            name: "data".into(),
            path: granted.clone(),
            writable: false,
        }],
        ..Grants::default()
    };
    let rw = Grants {
        dirs: vec![DirGrant {
            name: "data".into(),
            path: granted.clone(),
            writable: true,
        }],
        ..Grants::default()
    };
    let case = |g: &Grants, cfg: &str| fs_result(g.clone(), &format!("mode = \"fs\"\n{cfg}"));
    assert_eq!(case(&ro, "path = \"inside.txt\""), "ok");
    assert_eq!(case(&ro, "path = \"/etc/passwd\""), "Escape");
    assert_eq!(case(&ro, "path = \"../secret.txt\""), "Escape");
    assert_eq!(case(&ro, "path = \"link/secret.txt\""), "Escape");
    assert_eq!(case(&ro, "path = \"passwd\""), "Escape");
    assert_eq!(case(&ro, "path = \"missing.txt\""), "NotFound");
    assert_eq!(
        case(&ro, "grant = \"other\"\npath = \"inside.txt\""),
        "NotGranted"
    );
    assert_eq!(
        case(&ro, "op = \"write\"\npath = \"new.txt\""),
        "NotGranted"
    );
    assert!(!granted.join("new.txt").exists());
    assert_eq!(case(&rw, "op = \"write\"\npath = \"new.txt\""), "ok");
    assert_eq!(
        std::fs::read(granted.join("new.txt")).expect("written"),
        b"written by testbed"
    );
    assert_eq!(
        case(&rw, "op = \"write\"\npath = \"link/evil.txt\""),
        "Escape"
    );
    assert!(!root.path().join("evil.txt").exists());
    assert_eq!(case(&rw, "op = \"mkdir\"\npath = \"a/b/c\""), "ok");
    assert!(granted.join("a/b/c").is_dir());
    // No grant at all: every request is refused.
    assert_eq!(
        fs_result(Grants::default(), "mode = \"fs\"\npath = \"x\""),
        "NotGranted"
    );
}

#[test]
fn write_message_puts_headers_and_host_body_in_the_file() {
    let out_dir = tempfile::tempdir().expect("tmp");
    let mut s = spec(
        "testbed",
        wasm("finaldot_testbed"),
        "mode = \"deliver\"\ngrant = \"out\"",
    );
    s.grants.dirs.push(DirGrant {
        name: "out".into(),
        path: out_dir.path().to_path_buf(),
        writable: true,
    });
    let p = Plugin::new(runtime(), s).expect("load");
    let raw = b"Subject: deliver me\r\nFrom: a@b\r\n\r\nline 1\r\n.line 2\r\n";
    let (input, body) = message(raw);
    let out = p.call(&input, body, false).expect("call");
    assert!(matches!(
        &out.output.changes[..],
        [finaldot_sdk::wire::Change::MarkDelivered { address, .. }] if address == "alice@localhost"
    ));
    assert_eq!(std::fs::read(out_dir.path().join("Q1")).expect("file"), raw);
    assert!(!out_dir.path().join("tmp-Q1").exists());
}

#[test]
fn kv_namespace_persists_across_fresh_instances() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = spec("testbed", wasm("finaldot_testbed"), "mode = \"kv\"");
    s.grants.kv = Some(finaldot::plugins::kv::KvGrant::Local(dir.path().join("kv")));
    let p = Plugin::new(runtime(), s.clone()).expect("load");
    for want in ["1", "2", "3"] {
        let (input, body) = message(b"Subject: x\r\n\r\n");
        let out = p.call(&input, body, false).expect("call");
        let mut state = input.state.clone();
        for c in &out.output.changes {
            state.apply(c);
        }
        assert_eq!(
            state
                .headers
                .iter()
                .find(|h| h.is("X-Count"))
                .map(|h| h.text())
                .as_deref(),
            Some(want)
        );
    }
    // Without the grant, the same plugin gets an error, not access.
    s.grants.kv = None;
    let p = Plugin::new(runtime(), s).expect("load");
    let (input, body) = message(b"Subject: x\r\n\r\n");
    let err = p.call(&input, body, false).expect_err("no kv grant");
    assert!(
        matches!(&err.fault, Fault::Guest(m) if m.contains("no key-value namespace")),
        "{err}"
    );
}

#[test]
fn reused_instance_serves_many_messages_and_is_dropped_after_a_fault() {
    let mut s = spec("testbed", wasm("finaldot_testbed"), "");
    s.reuse_instance = true;
    let p = Plugin::new(runtime(), s).expect("load");
    for _ in 0..20 {
        let (input, body) = message(b"Subject: x\r\n\r\nabc\r\n");
        p.call(&input, body, false).expect("call");
    }
    assert_eq!(p.stats.calls.load(std::sync::atomic::Ordering::Relaxed), 20);
    assert_eq!(p.stats.faults.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    let dir = tempfile::tempdir().expect("tmp");
    let opts = RuntimeOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        max_instances: 8,
        ..RuntimeOptions::default()
    };
    let first = Runtime::new(opts.clone()).expect("rt");
    let m = first.load(&wasm("stamp")).expect("load");
    assert!(!m.from_cache);
    drop(first);
    let second = Runtime::new(opts).expect("rt");
    let m2 = second.load(&wasm("stamp")).expect("load");
    assert!(m2.from_cache);
    assert_eq!(m.hash, m2.hash);
}

#[test]
fn a_large_body_never_enters_a_plugin_that_does_not_read_it() {
    // A 40 MiB body and a 16 MiB memory cap: if the body were copied into the
    // plugin, the call would hit the cap.
    let big = {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        m.resize(40 << 20, b'a');
        m
    };
    let mut s = spec("stamp", wasm("stamp"), "");
    s.limits.memory = 16 << 20;
    let p = Plugin::new(runtime(), s).expect("load");
    let (input, body) = message(&big);
    p.call(&input, body, false)
        .expect("stamp never reads the body");

    // And a delivery plugin writes it to a file without holding it either.
    let out_dir = tempfile::tempdir().expect("tmp");
    let mut s = spec(
        "testbed",
        wasm("finaldot_testbed"),
        "mode = \"deliver\"\ngrant = \"out\"",
    );
    s.limits.memory = 16 << 20;
    s.grants.dirs.push(DirGrant {
        name: "out".into(),
        path: out_dir.path().to_path_buf(),
        writable: true,
    });
    let p = Plugin::new(runtime(), s).expect("load");
    let (input, body) = message(&big);
    p.call(&input, body, false).expect("deliver");
    assert_eq!(
        std::fs::metadata(out_dir.path().join("Q1"))
            .expect("file")
            .len(),
        big.len() as u64
    );
}
