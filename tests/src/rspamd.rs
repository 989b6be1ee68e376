//! A private rspamd (Debian's package) for the tests: its own configuration
//! directory under a temporary directory, its normal worker on a free
//! 127.0.0.1 port, the controller and proxy on others, its DNS pointed at a
//! closed local port (so every network check fails at once instead of
//! waiting out a timeout), the network modules off, and a tiny TLD list (a
//! cold start then takes well under a second instead of ~12 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, stop_child};

/// A running rspamd.
pub struct Rspamd {
    child: Option<Child>,
    /// Its scanning endpoint, `http://127.0.0.1:PORT/checkv2`.
    pub url: String,
    port: u16,
    dir: PathBuf,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Rspamd {
    /// Configures and starts it in `dir`; panics with the install command
    /// when rspamd is not installed (`./dev test` installs it as root).
    pub fn start(dir: &Path) -> Rspamd {
        let found = Command::new("rspamd").arg("--version").output().is_ok();
        assert!(
            found,
            "rspamd is needed for this test: apt-get install -y rspamd (./dev test installs it when run as root)"
        );
        let dir = dir.join("rspamd");
        for sub in ["local.d", "override.d", "db", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        let port = free_port();
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).expect("write rspamd config");
        };
        write(
            "override.d/worker-normal.inc",
            format!("bind_socket = \"127.0.0.1:{port}\";\ncount = 1;\n"),
        );
        write(
            "override.d/worker-controller.inc",
            format!("bind_socket = \"127.0.0.1:{}\";\n", free_port()),
        );
        write(
            "override.d/worker-proxy.inc",
            format!("bind_socket = \"127.0.0.1:{}\";\n", free_port()),
        );
        write("tld.dat", "com\norg\nnet\ntest\n".into());
        write(
            "local.d/options.inc",
            format!(
                "url_tld = \"{}\";\ndns {{\n  nameserver = [\"127.0.0.1:1\"];\n  timeout = 0.5s;\n  retransmits = 1;\n}}\n",
                dir.join("tld.dat").display()
            ),
        );
        for m in [
            "rbl",
            "fuzzy_check",
            "spf",
            "dkim",
            "dmarc",
            "arc",
            "hfilter",
            "phishing",
        ] {
            write(&format!("local.d/{m}.conf"), "enabled = false;\n".into());
        }
        write(
            "override.d/logging.inc",
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                dir.join("log/rspamd.log").display()
            ),
        );
        let mut r = Rspamd {
            child: None,
            url: format!("http://127.0.0.1:{port}/checkv2"),
            port,
            dir,
        };
        r.resume();
        r
    }

    /// Starts it again with the same configuration and port.
    pub fn resume(&mut self) {
        let d = |name: &str| {
            format!(
                "--var={name}={}",
                self.dir
                    .join(name.to_lowercase().trim_end_matches("dir"))
                    .display()
            )
        };
        let mut cmd = Command::new("rspamd");
        cmd.arg("-f");
        if is_root() {
            cmd.args(["-i", "-u", "root", "-g", "root"]);
        }
        cmd.args(["-c", "/etc/rspamd/rspamd.conf"])
            .arg(format!("--var=LOCAL_CONFDIR={}", self.dir.display()))
            .arg(d("DBDIR"))
            .arg(d("RUNDIR"))
            .arg(d("LOGDIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn rspamd");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("log/rspamd.log")).unwrap_or_default();
        panic!(
            "rspamd did not start listening on {}; its log:\n{log}",
            self.port
        );
    }

    /// Stops it (SIGTERM: the main process stops its workers), and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c);
            // Its workers are gone once the port is free again.
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10)
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Rspamd {
    fn drop(&mut self) {
        self.stop();
    }
}
