//! The plugin author's path, word for word: the ten-line example from the
//! SDK's crate docs, copied into a brand-new crate, built for
//! wasm32-unknown-unknown, accepted by `finaldot plugin check`.

use std::path::Path;
use std::process::Command;

use finaldot_e2e::{finaldot_bin, TestDir};

/// The first Rust code block of the SDK's crate docs (lib.rs `//!` lines).
fn ten_line_example() -> String {
    let lib = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugin-sdk/src/lib.rs"
    ))
    .expect("read sdk lib.rs");
    let mut code = String::new();
    let mut inside = false;
    for line in lib.lines().filter_map(|l| l.strip_prefix("//!")) {
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.starts_with("```") {
            if inside {
                break;
            }
            inside = true;
            continue;
        }
        if inside {
            code.push_str(line);
            code.push('\n');
        }
    }
    assert!(
        code.contains("export_plugin!"),
        "example not found in the SDK docs"
    );
    code
}

#[test]
fn ten_line_example_builds_to_wasm_and_passes_plugin_check() {
    let dir = TestDir::new("author");
    let krate = dir.path().join("my-plugin");
    std::fs::create_dir_all(krate.join("src")).expect("mkdir");
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk");
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"my-plugin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nfinaldot-sdk = {{ path = {:?} }}\n\n[workspace]\n",
            sdk.canonicalize().expect("sdk path")
        ),
    )
    .expect("write manifest");
    std::fs::write(krate.join("src/lib.rs"), ten_line_example()).expect("write lib.rs");
    // A shared target dir keeps this fast after the first run.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/author-test");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--offline",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&krate)
        .output()
        .expect("run cargo");
    let out = if out.status.success() {
        out
    } else {
        // --offline fails only if a dependency was never downloaded here.
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&krate)
            .output()
            .expect("run cargo")
    };
    assert!(
        out.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wasm = target.join("wasm32-unknown-unknown/release/my_plugin.wasm");
    let check = plugin_check(&wasm);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains("name:     my-plugin"), "{text}");
    assert!(text.contains("loads:    yes"), "{text}");
    // What it needs of the host, as the SDK declared it.
    let needs = format!("needs:    {}", finaldot_sdk::wire::FEATURES.join(", "));
    assert!(text.contains(&needs), "{text}");
}

#[test]
fn plugin_check_names_what_an_old_or_a_newer_plugin_needs() {
    let dir = TestDir::new("check-needs");
    let old = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/plugins/stamp-sdk-7cbcdca.wasm");
    let out = plugin_check(&old);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("needs:    ABI v1 as first released"),
        "{text}"
    );
    let future = dir.path().join("future.wasm");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/plugins/needs-a-future-feature.wat");
    std::fs::write(&future, wat::parse_file(&fixture).expect("wat")).expect("write");
    let out = plugin_check(&future);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("loads:    no"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("future.wasm") && err.contains("from-the-future"),
        "{err}"
    );
}

#[test]
fn plugin_check_refuses_what_would_not_load() {
    let dir = TestDir::new("check-bad");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0garbage").expect("write");
    let out = plugin_check(&bad);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("loads:    no"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.wasm"));
}

/// `finaldot plugin check FILE`.
fn plugin_check(file: &std::path::Path) -> std::process::Output {
    Command::new(finaldot_bin())
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .expect("plugin check")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn plugin_new_builds_tests_and_runs_with_plugin_test() {
    let dir = TestDir::new("plugin-new");
    let krate = dir.path().join("greeter");
    run_ok(
        Command::new(finaldot_bin())
            .args(["plugin", "new", "greeter", "--dir"])
            .arg(&krate),
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/author-test");
    // Its own test passes with no edits...
    run_ok(
        Command::new(cargo())
            .arg("test")
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&krate),
    );
    // ...it builds for wasm...
    run_ok(
        Command::new(cargo())
            .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(&krate),
    );
    let wasm = target.join("wasm32-unknown-unknown/release/greeter.wasm");
    assert!(run_ok(
        Command::new(finaldot_bin())
            .args(["plugin", "check"])
            .arg(&wasm)
    )
    .contains("loads:    yes"));
    // ...and runs on a message outside the daemon.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hello.eml");
    let out = run_ok(
        Command::new(finaldot_bin())
            .args(["plugin", "test"])
            .arg(&wasm)
            .arg(&fixture),
    );
    assert!(out.contains("verdict:  Continue"), "{out}");
    assert!(out.contains("X-Processed-By"), "{out}");
    assert!(out.contains("1 recipient(s), tagged greeter"), "{out}");
    assert!(out.contains("time:"), "{out}");
}

#[test]
fn plugin_test_uses_the_configured_settings_and_grants() {
    let dir = TestDir::new("plugin-test");
    let mail = dir.path().join("mail");
    let cfg = dir.path().join("finaldot.toml");
    std::fs::write(
        &cfg,
        format!(
            "[domains.localhost]\nrecipients = [\"alice\"]\n[[plugins]]\nname = \"local-delivery\"\nfile = \"local_delivery.wasm\"\ndirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"localhost\"], users = [\"alice\"], aliases = {{ postmaster = \"alice\" }} }}\n"
        ),
    )
    .expect("config");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hello.eml");
    let out = run_ok(
        Command::new(finaldot_bin())
            .args(["plugin", "test"])
            .arg(finaldot_e2e::wasm("local_delivery"))
            .arg(&fixture)
            .arg("--config")
            .arg(&cfg)
            .args(["--to", "alice@localhost", "--to", "mallory@localhost"]),
    );
    assert!(out.contains("alice@localhost Delivered"), "{out}");
    assert!(out.contains("mallory@localhost Failed"), "{out}");
    let files: Vec<_> = std::fs::read_dir(mail.join("alice/Maildir/new"))
        .expect("maildir")
        .collect();
    assert_eq!(files.len(), 1);
    // A plugin that faults makes the command fail, with the fault printed.
    let out = Command::new(finaldot_bin())
        .args(["plugin", "test"])
        .arg(finaldot_e2e::wasm("local_delivery"))
        .arg(&fixture)
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "local-delivery without its config must refuse to load"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("domains"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
