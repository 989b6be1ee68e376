//! A private redis-server (Debian's package) for the tests: on a free
//! 127.0.0.1 port, its data in a temporary directory, the append-only file
//! fsynced on every write (the durability a dedup claim wants), no RDB
//! snapshots. It can be stopped and started again on the same port with
//! the same data, as an operator's restart would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, stop_child};

/// A running redis-server.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    password: Option<String>,
}

impl Redis {
    /// Starts it in `dir/redis`; panics with the install command when
    /// redis-server is not installed (`./dev test` installs it as root).
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with_password(dir, None)
    }

    /// [`Redis::start`], with `requirepass` when `password` is given.
    pub fn start_with_password(dir: &Path, password: Option<&str>) -> Redis {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok();
        assert!(
            found,
            "redis-server is needed for this test: apt-get install -y redis-server (./dev test installs it when run as root)"
        );
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir).expect("mkdir redis");
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            password: password.map(str::to_string),
        };
        r.resume();
        r
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it again (same port, same data).
    pub fn resume(&mut self) {
        let mut cmd = Command::new("redis-server");
        if let Some(p) = &self.password {
            cmd.arg("--requirepass").arg(p);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--logfile",
            ])
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server did not answer on {}; its log:\n{log}",
            self.port
        );
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        self.command(&["PING"]).is_some_and(|r| r.trim() == "PONG")
    }

    /// Runs one command with `redis-cli` (installed with redis-server)
    /// and returns its output, `None` when the server does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Stops it (SIGTERM, then SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
