//! Headless Chromium (Debian's package) for the tests that look at a page
//! as a browser renders it: the DOM after loading (`--dump-dom`) and a
//! screenshot, each in a fresh profile under the test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The command that installs it.
pub const INSTALL: &str = "apt-get install -y chromium";

fn chromium(profile: &Path) -> Command {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "Chromium is needed for this test: {INSTALL} (./dev test installs it when run as root)"
    );
    let mut c = Command::new("chromium");
    c.arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--disable-extensions")
        // Containers give /dev/shm 64 MiB; Chromium then crashes on it.
        .arg("--disable-dev-shm-usage")
        .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page at `url` as Chromium's DOM after it loaded, serialized.
pub fn dump_dom(profile: &Path, url: &str) -> String {
    let out = chromium(profile)
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium --dump-dom {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG screenshot of `url` in a `width`×`height` window, written to `png`.
pub fn screenshot(profile: &Path, url: &str, png: &Path, width: u32, height: u32) {
    let out = chromium(profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg("--hide-scrollbars")
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success() && png.exists(),
        "chromium --screenshot {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a test keeps what a person may want to look at after the run
/// (`target/test-artifacts/`), created if needed.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("mkdir target/test-artifacts");
    dir
}
