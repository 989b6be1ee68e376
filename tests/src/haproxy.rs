//! A private HAProxy (Debian's package) for the tests: one TCP frontend on a
//! free 127.0.0.1 port whose one backend server is a finaldot listener,
//! with the PROXY header HAProxy really sends (`send-proxy` for v1,
//! `send-proxy-v2` for v2), started in the foreground and stopped on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running HAProxy.
pub struct Haproxy {
    child: Option<Child>,
    /// Its frontend's port on 127.0.0.1.
    pub port: u16,
}

impl Haproxy {
    /// Starts it in `dir/haproxy` in front of `backend`, with `send`
    /// (`send-proxy` or `send-proxy-v2`) on the server line; panics with
    /// the install command when haproxy is not installed (`./dev test`
    /// installs it as root).
    pub fn start(dir: &Path, backend: SocketAddr, send: &str) -> Haproxy {
        let found = Command::new("haproxy").arg("-v").output().is_ok();
        assert!(
            found,
            "haproxy is needed for this test: apt-get install -y haproxy (./dev test installs it when run as root)"
        );
        let dir = dir.join("haproxy");
        std::fs::create_dir_all(&dir).expect("mkdir haproxy");
        let port = crate::free_port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\nfrontend smtp\n    bind 127.0.0.1:{port}\n    default_backend finaldot\n\nbackend finaldot\n    server mx {backend} {send}\n"
            ),
        )
        .expect("write haproxy.cfg");
        let mut lb = Haproxy { child: None, port };
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn haproxy");
        // Owned before any panic, so that dropping it stops the process.
        lb.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return lb;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "haproxy did not listen on {port} (config {})",
            cfg.display()
        );
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
