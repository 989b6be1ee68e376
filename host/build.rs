//! Builds the default chain's plugins (dedup, list-expand, filter,
//! local-delivery), the two filters an MX usually adds (dnsbl, rspamd) and
//! the two door plugins (greylist, ratelimit)
//! for wasm32-unknown-unknown, so that the `finaldot` binary
//! carries them (`plugins::builtin`) and delivers mail on its own, started in
//! an empty directory. A `.wasm` of the same name in the plugin directory
//! always wins over the built-in copy.
//!
//! The plugins are built by a nested `cargo build` into their own target
//! directory (`target/builtin-plugins`): the outer build holds the lock of
//! its own. Packagers who build the plugins themselves may point
//! `FINALDOT_BUILTIN_PLUGINS` at a directory (an absolute path) holding
//! the eight `.wasm` files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, file stem) of every built-in plugin.
const PLUGINS: [(&str, &str); 8] = [
    ("dedup", "dedup"),
    ("list-expand", "list_expand"),
    ("filter", "filter"),
    ("local-delivery", "local_delivery"),
    ("dnsbl", "dnsbl"),
    ("rspamd", "rspamd"),
    ("greylist", "greylist"),
    ("ratelimit", "ratelimit"),
];

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=FINALDOT_BUILTIN_PLUGINS");
    let built = match std::env::var_os("FINALDOT_BUILTIN_PLUGINS") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            for (_, stem) in PLUGINS {
                println!(
                    "cargo:rerun-if-changed={}",
                    dir.join(format!("{stem}.wasm")).display()
                );
            }
            dir
        }
        None => build_plugins(&root, &out),
    };
    for (_, stem) in PLUGINS {
        let from = built.join(format!("{stem}.wasm"));
        let to = out.join(format!("{stem}.wasm"));
        if let Err(e) = std::fs::copy(&from, &to) {
            panic!("built-in plugin {}: {e}", from.display());
        }
    }
}

/// Runs the nested build; returns the directory holding the `.wasm` files.
fn build_plugins(root: &Path, out: &Path) -> PathBuf {
    for path in ["Cargo.toml", "Cargo.lock", "plugin-sdk"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    for (package, _) in PLUGINS {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("example-plugins").join(package).display()
        );
    }
    let target_dir = target_root(out).join("builtin-plugins");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    for (package, _) in PLUGINS {
        cmd.args(["-p", package]);
    }
    // The outer build's settings are for the host (a profile, clippy as the
    // compiler wrapper, sanitizer flags under cargo-fuzz): none of them is
    // for these wasm builds. Keep what reaches the registry and the jobserver.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = ["CARGO_HOME", "CARGO_MAKEFLAGS"].contains(&key)
            || ["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTR"]
                .iter()
                .any(|p| key.starts_with(p));
        let drop = (key.starts_with("CARGO_") && !keep)
            || [
                "RUSTC_WRAPPER",
                "RUSTC_WORKSPACE_WRAPPER",
                "RUSTFLAGS",
                "RUSTDOCFLAGS",
                "CLIPPY_ARGS",
                "CLIPPY_CONF_DIR",
            ]
            .contains(&key);
        if drop {
            cmd.env_remove(key);
        }
    }
    // Cargo reads this script's stdout for `cargo:` lines: the nested
    // build's output goes to stderr.
    cmd.stdout(std::io::stderr());
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo for the built-in plugins: {e}"));
    if !status.success() {
        panic!(
            "building the built-in plugins for {WASM_TARGET} failed (see above). \
             If the target is missing: `rustup target add {WASM_TARGET}` \
             (`./dev run` and `./dev test` add it themselves)."
        );
    }
    target_dir.join(WASM_TARGET).join("release")
}

/// The outer build's target directory (the ancestor of OUT_DIR that cargo
/// marks with CACHEDIR.TAG), or OUT_DIR itself.
fn target_root(out: &Path) -> PathBuf {
    out.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .unwrap_or(out)
        .to_path_buf()
}
