//! docs/PLUGINS.md's tutorial, executed: every ```sh block (all but the one
//! marked `sh setup`, whose two variables this test sets itself) runs, in
//! order, in one bash, in an empty directory. If the tutorial rots, this fails.

use std::path::Path;
use std::process::Command;

use finaldot_e2e::{finaldot_bin, TestDir};

fn tutorial_blocks() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PLUGINS.md"))
        .expect("docs/PLUGINS.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_plugin_tutorial_runs_as_written() {
    let blocks = tutorial_blocks();
    assert!(blocks.len() >= 5, "tutorial blocks not found: {blocks:?}");
    let dir = TestDir::new("tutorial");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo");
    let bin_dir = finaldot_bin().parent().expect("bin dir").to_path_buf();
    let pid_file = dir.path().join("tutorial/daemon.pid");
    let script = format!(
        "set -euo pipefail\ntrap 'kill \"$(cat {pid:?} 2>/dev/null)\" 2>/dev/null || true' EXIT\n{}",
        blocks.join("\n"),
        pid = pid_file
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("FINALDOT_SRC", &repo)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("RUST_LOG", "info")
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("tutorial/daemon.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the tutorial failed:\n--- stdout\n{stdout}\n--- stderr\n{}\n--- daemon log\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("X-Greeting: hello from the tutorial"),
        "{stdout}"
    );
    assert!(stdout.contains("loads:    yes"), "{stdout}");
}
