//! The end-to-end test harness: starts the real `finaldot` binary on
//! 127.0.0.1 port 0 in a temporary directory, talks SMTP to it over TCP, and
//! reads what it left in the spool.
//!
//! A failing test keeps its temporary directory and prints its path (with the
//! daemon's log inside), so the evidence survives the run.

pub mod chromium;
pub mod dns;
pub mod dovecot;
pub mod haproxy;
pub mod http;
pub mod load;
pub mod nexthop;
pub mod redis;
pub mod rspamd;
pub mod soak;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use finaldot::spool::{read_message, Envelope, QueueState};

/// The path of the `finaldot` binary built by this `cargo test` run.
pub fn finaldot_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FINALDOT_BIN") {
        return PathBuf::from(p);
    }
    // A test runs from target/<profile>/deps/, a bench binary from target/<profile>/.
    let exe = std::env::current_exe().expect("current_exe");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("finaldot"))
        .collect();
    let bin = candidates.iter().find(|p| p.is_file()).cloned();
    bin.unwrap_or_else(|| {
        panic!(
            "finaldot binary not found near {}: run the tests with `cargo test --workspace` (it builds the binary) or set FINALDOT_BIN",
            exe.display()
        )
    })
}

/// A plugin built to wasm by `./dev test` (target/wasm32-unknown-unknown/release/NAME.wasm).
pub fn wasm(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let found = exe
        .ancestors()
        .map(|d| {
            d.join("wasm32-unknown-unknown/release")
                .join(format!("{name}.wasm"))
        })
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{name}.wasm is missing: run `./dev test` (it builds every plugin crate for wasm32-unknown-unknown first)")
    })
}

/// A 127.0.0.1 port free at the moment, for a server (Redis, rspamd,
/// HAProxy) that must be told its port rather than be given port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Stops a server the harness started: SIGTERM, up to 10 s to exit, then
/// SIGKILL; waits for it either way.
pub fn stop_child(mut c: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A `Command` for Python 3, which several tests use as a real client
/// (smtplib, mailbox). Panics with the command that installs it when it is
/// missing (`./dev test` installs it where it can), so no test passes by
/// not running.
pub fn python3() -> Command {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "python3 is needed as a real client in this test: apt-get install -y python3 (./dev test installs it when run as root)"
    );
    Command::new("python3")
}

/// A Python 3 that has the mail authentication modules the tests compare
/// with (dkimpy, pyspf, dnspython, PyNaCl: Debian's python3-dkim,
/// python3-spf, python3-dnspython, python3-nacl). Debian's own interpreter
/// is tried first (a pyenv or venv `python3` earlier in PATH lacks the
/// system's packages). Panics with the install command when none has them.
pub fn python3_mail_auth() -> Command {
    let check = "import dkim, spf, nacl.signing, dns.resolver";
    for candidate in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(candidate)
            .args(["-c", check])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Command::new(candidate);
        }
    }
    panic!(
        "dkimpy, pyspf, dnspython and PyNaCl are needed as the second implementation in this test: apt-get install -y python3-dkim python3-spf python3-dnspython python3-nacl (./dev test installs them when run as root)"
    )
}

/// Runs `script` under `python` (a [`python3`] or [`python3_mail_auth`]
/// command) with `args`, `input` on its standard input; returns its
/// standard output. Panics with its standard error and `context` (a log,
/// the input) when it fails.
pub fn run_python(
    mut python: Command,
    script: &str,
    args: &[&str],
    input: &[u8],
    context: &str,
) -> Vec<u8> {
    let mut child = python
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "python failed: {}\n{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A delivery status notification (RFC 3464) as Python's email package
/// reads it: one JSON object with the parts' content types (`types`),
/// `subject`, `to`, the per-message fields (`message`), one object of
/// fields per recipient (`recipients`) and the returned part as text
/// (`returned`). Panics unless it is a `multipart/report` of
/// `report-type=delivery-status`.
pub fn parse_dsn(raw: &[u8]) -> serde_json::Value {
    let script = "import email, sys, json\n\
        m = email.message_from_bytes(sys.stdin.buffer.read())\n\
        assert m.get_content_type() == 'multipart/report', m.get_content_type()\n\
        assert m.get_param('report-type') == 'delivery-status'\n\
        parts = m.get_payload()\n\
        st = parts[1]\n\
        blocks = st.get_payload()\n\
        out = {'types': [p.get_content_type() for p in parts],\n\
        \x20      'subject': m['Subject'], 'to': m['To'],\n\
        \x20      'message': dict(blocks[0].items()),\n\
        \x20      'recipients': [dict(b.items()) for b in blocks[1:]],\n\
        \x20      'returned': parts[2].as_string() if len(parts) > 2 else ''}\n\
        print(json.dumps(out))\n";
    let out = run_python(python3(), script, &[], raw, &String::from_utf8_lossy(raw));
    serde_json::from_slice(&out).expect("json from the script")
}

/// For a test that needs what this machine cannot give (root, a mount):
/// on CI (`CI` set) that is a failure, elsewhere the test is skipped with
/// `why` printed. Returns true when the test should go on.
pub fn required_on_ci(available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{why} (CI must run this test)"
    );
    eprintln!("skipped: {why}; CI runs this test");
    false
}

/// A temporary directory that is kept, and its path printed, if the test fails.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// A new directory named after the test.
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("finaldot-{name}-"))
            .tempdir()
            .expect("tempdir");
        TestDir { dir: Some(dir) }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("test failed; its directory is kept at {}", p.display());
            }
        }
    }
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// The SMTP address it listens on.
    pub addr: SocketAddr,
    /// Its data directory (spool under `data/spool`).
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    log_path: PathBuf,
}

/// The config text for a test daemon in `dir`, with `extra` appended to `[smtp]`.
pub fn test_config(dir: &Path, smtp_extra: &str, tail: &str) -> String {
    format!(
        "hostname = \"mx.test\"\ndata_dir = {:?}\n\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n{smtp_extra}\n\n[domains.localhost]\n[domains.\"example.test\"]\nrecipients = [\"alice\", \"bob\"]\n{tail}\n",
        dir.join("data")
    )
}

impl Daemon {
    /// Starts a daemon in `dir` with the default test config.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &test_config(dir, "", ""))
    }

    /// Starts a daemon in `dir` with this config text (written to `dir/finaldot.toml`).
    pub fn start_with(dir: &Path, config: &str) -> Daemon {
        let config_path = dir.join("finaldot.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut args: Vec<std::ffi::OsString> = vec!["run".into(), "--config".into()];
        args.push(config_path.into_os_string());
        Daemon::spawn(dir, &args, dir.join("data"))
    }

    /// Starts `finaldot run` with no configuration file (the embedded default)
    /// in `dir` as its working directory, SMTP and metrics on 127.0.0.1 port 0.
    pub fn start_default(dir: &Path) -> Daemon {
        Daemon::start_default_binary(dir, &finaldot_bin())
    }

    /// [`Daemon::start_default`] with another copy of the binary.
    pub fn start_default_binary(dir: &Path, bin: &Path) -> Daemon {
        let args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ];
        Daemon::spawn_binary(bin, dir, &args, dir.join("var"))
    }

    fn spawn(dir: &Path, args: &[std::ffi::OsString], data_dir: PathBuf) -> Daemon {
        Daemon::spawn_binary(&finaldot_bin(), dir, args, data_dir)
    }

    fn spawn_binary(
        bin: &Path,
        dir: &Path,
        args: &[std::ffi::OsString],
        data_dir: PathBuf,
    ) -> Daemon {
        // Not beside the configuration file: the daemon watches that
        // directory, and every log line written there would wake it.
        let logs = dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let log_path = logs.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let mut child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn finaldot");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            let log_path = log_path.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::File::create(&log_path).ok();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    if line.contains("listening on") {
                        if let Some(Ok(a)) = log_field(&line, "addr=").map(str::parse::<SocketAddr>)
                        {
                            let _ = addr_tx.send(a);
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "daemon did not start listening; log:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        };
        Daemon {
            child: Some(child),
            addr,
            data_dir,
            log,
            log_path,
        }
    }

    /// The daemon's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Where the log is also written.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (at most `limit`), returning its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The spool directory of a queue state.
    pub fn spool_dir(&self, state: QueueState) -> PathBuf {
        self.data_dir.join("spool").join(state.dir_name())
    }

    /// The files in a queue state, sorted.
    pub fn spool_files(&self, state: QueueState) -> Vec<PathBuf> {
        spool_files(&self.data_dir, state)
    }

    /// True when nothing waits in `incoming/`, `active/` or `deferred/`.
    pub fn queue_drained(&self) -> bool {
        [
            QueueState::Incoming,
            QueueState::Active,
            QueueState::Deferred,
        ]
        .iter()
        .all(|s| self.spool_files(*s).is_empty())
    }

    /// The address in the first log line containing `marker` followed by an
    /// address (e.g. "listening (submission) at "), waiting up to 10 s.
    pub fn logged_addr(&self, marker: &str) -> SocketAddr {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(a) = log
                .lines()
                .find_map(|l| log_field(l, marker))
                .and_then(|a| a.parse().ok())
            {
                return a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {marker:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The metrics and status page address, from the log line announcing it.
    pub fn metrics_addr(&self) -> SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("metrics and status page on http://"))
            .unwrap_or_else(|| panic!("no metrics line in:\n{log}"));
        line.split("http://")
            .nth(1)
            .and_then(|s| s.split('/').next())
            .expect("addr")
            .parse()
            .expect("socket addr")
    }

    /// Sends one message on a new connection, asserts its 250 and returns
    /// the queue id.
    pub fn send(&self, from: &str, to: &[&str], body: &[u8]) -> String {
        let mut c = self.connect();
        let (code, text) = c.send_message(from, to, body);
        assert_eq!(code, 250, "{text}");
        queued_id(&text)
    }

    /// A new SMTP client connection (greeting already read and checked).
    pub fn connect(&self) -> Client {
        let mut c = Client::connect_raw(self.addr);
        let (code, text) = c.read_reply();
        assert_eq!(code, 220, "greeting: {text}");
        c
    }
}

/// The files in a queue state under `data_dir`, sorted.
pub fn spool_files(data_dir: &Path, state: QueueState) -> Vec<PathBuf> {
    let dir = data_dir.join("spool").join(state.dir_name());
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("daemon log ({}):\n{}", self.log_path.display(), self.log());
        }
    }
}

/// A raw SMTP client over TCP, for exact dialogues.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects without reading the greeting.
    pub fn connect_raw(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    /// A client on a connected stream: 30 s read timeout, no Nagle.
    fn over(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // A message goes out in several writes (body, then the final dot):
        // with Nagle's algorithm the last one waits for the server's delayed
        // ACK, 40 ms per message.
        stream.set_nodelay(true).expect("nodelay");
        Client {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Connects from `source` (a loopback address such as 127.0.0.2, so
    /// the server sees another client) without reading the greeting.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind the source address");
        socket.connect(&addr.into()).expect("connect");
        Client::over(socket.into())
    }

    /// The client side's port (the one the server records as the client's).
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// Sends raw bytes; an error once the server has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Reads one (possibly multi-line) reply: its code and all its text lines joined by '\n'.
    pub fn read_reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply (got {text:?})"
            );
            assert!(
                line.ends_with("\r\n"),
                "reply line not CRLF-terminated: {line:?}"
            );
            let code: u16 = line[..3].parse().expect("reply code");
            text.push_str(line.trim_end());
            text.push('\n');
            if line.as_bytes()[3] == b' ' {
                return (code, text);
            }
        }
    }

    /// Sends a command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Sends a command and asserts the reply code.
    pub fn expect(&mut self, line: &str, code: u16) -> String {
        let (c, text) = self.cmd(line);
        assert_eq!(c, code, "{line:?} got {text}");
        text
    }

    /// True once the server has closed the connection (reads until EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }

    /// Sends one whole message (EHLO…DATA…) and returns the final reply.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &[u8]) -> (u16, String) {
        self.expect("EHLO client.test", 250);
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for r in to {
            self.expect(&format!("RCPT TO:<{r}>"), 250);
        }
        self.expect("DATA", 354);
        self.send(&dot_stuff(body));
        self.send(b".\r\n");
        self.read_reply()
    }
}

/// The whole HTTP/1.0 response to `GET path` (headers and body).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// Dot-stuffs a CRLF message for DATA (RFC 5321 §4.5.2).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// The queue id from a `250 2.0.0 Ok: queued as ID` reply.
pub fn queued_id(reply: &str) -> String {
    reply
        .split("queued as ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("not a queued reply: {reply}"))
}

/// Polls `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Runs `finaldot queue --config DIR/finaldot.toml ARGS...`; returns (success, stdout, stderr).
pub fn queue_cmd(dir: &Path, args: &[&str]) -> (bool, String, String) {
    finaldot_cmd(dir, "queue", args)
}

/// Runs `finaldot COMMAND --config DIR/finaldot.toml ARGS...`; returns
/// (success, stdout, stderr).
pub fn finaldot_cmd(dir: &Path, command: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(finaldot_bin())
        .arg(command)
        .arg("--config")
        .arg(dir.join("finaldot.toml"))
        .args(args)
        .output()
        .expect("run finaldot");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `finaldot queue list --json`, parsed.
pub fn queue_list(dir: &Path) -> Vec<serde_json::Value> {
    let (ok, out, err) = queue_cmd(dir, &["list", "--json"]);
    assert!(ok, "queue list failed: {err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("queue list JSON")
}

/// Copies the example plugins to `DIR/var/plugins`, where the embedded
/// default configuration looks for them (as `./dev run` does).
pub fn install_example_plugins(dir: &Path) {
    let plugins = dir.join("var/plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir var/plugins");
    for p in ["dedup", "list_expand", "filter", "local_delivery"] {
        std::fs::copy(wasm(p), plugins.join(format!("{p}.wasm"))).expect("copy plugin");
    }
}

/// Polls a directory until it holds `n` entries; returns them sorted.
pub fn wait_for_files(dir: &Path, n: usize, limit: Duration) -> Vec<PathBuf> {
    let list = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    wait_until(limit, || list().len() >= n);
    list()
}

/// A `[[plugins]]` table for a wasm built by `./dev test`, with extra lines.
pub fn plugin_toml(name: &str, wasm_name: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"{name}\"\nfile = {:?}\n{extra}\n\n",
        wasm(wasm_name)
    )
}

/// A `[[door]]` table for the plugin built as `wasm_name`, with `extra`
/// lines (stages, grants, `[door.config]`).
pub fn door_toml(name: &str, wasm_name: &str, extra: &str) -> String {
    format!(
        "[[door]]\nname = \"{name}\"\nfile = {:?}\n{extra}\n\n",
        wasm(wasm_name)
    )
}

/// A `[[plugins]]` table for local-delivery into Maildirs under `mail`,
/// for every local part of `example.test`.
pub fn local_delivery_toml(mail: &Path) -> String {
    plugin_toml(
        "local-delivery",
        "local_delivery",
        &format!("dirs = [{{ name = \"mail\", path = {mail:?}, writable = true }}]\nconfig = {{ domains = [\"example.test\"] }}"),
    )
}

/// The config text for a test daemon in `dir` whose chain is `plugins`
/// (`[[plugins]]` tables), rescanning its queue every second.
pub fn chain_config(dir: &Path, plugins: &str) -> String {
    test_config(
        dir,
        "",
        &format!("[pipeline]\nrescan_secs = 1\n\n{plugins}"),
    )
}

/// The config text for a test daemon in `dir` whose chain is list-expand
/// (lists in `dir/lists`) → local-delivery (Maildirs in `dir/mail` for
/// localhost and example.test), with `outbound` lines in `[outbound]`,
/// retries after 1 s.
pub fn list_chain_config(dir: &Path, outbound: &str) -> String {
    std::fs::create_dir_all(dir.join("lists")).expect("mkdir lists");
    let plugins = format!(
        "{}{}",
        plugin_toml(
            "list-expand",
            "list_expand",
            "dirs = [{ name = \"lists\", path = \"lists\" }]"
        ),
        plugin_toml(
            "local-delivery",
            "local_delivery",
            "dirs = [{ name = \"mail\", path = \"mail\", writable = true }]\n[plugins.config]\ndomains = [\"localhost\", \"example.test\"]"
        ),
    );
    test_config(
        dir,
        "",
        &format!("[pipeline]\nretry_min_secs = 1\nretry_max_secs = 2\n\n[outbound]\n{outbound}\n\n{plugins}"),
    )
}

/// The one message delivered to alice@example.test by [`local_delivery_toml`]
/// under `mail` (waiting up to 30 s for it), as text.
pub fn only_delivery(d: &Daemon, mail: &Path) -> String {
    let files = wait_for_files(&mail.join("alice/Maildir/new"), 1, Duration::from_secs(30));
    assert_eq!(files.len(), 1, "{}", d.log());
    std::fs::read_to_string(&files[0]).expect("read the delivered message")
}

/// `config` (from [`chain_config`]) with a `[dns]` table asking `server`.
pub fn with_dns(config: &str, server: SocketAddr) -> String {
    config.replace(
        "[pipeline]",
        &format!("[dns]\nnameservers = [\"{server}\"]\n\n[pipeline]"),
    )
}

/// `items` as the inside of a TOML array of strings: `"a", "b"`.
pub fn toml_strings<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|i| format!("{:?}", i.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The values of every header field `name` in a delivered message, in order.
pub fn field_values<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// A message as the pipeline hands it to a plugin: `raw` split into headers
/// and body, one recipient (`alice@localhost`), queue id `Q1`.
pub fn message_input(raw: &[u8]) -> (finaldot_sdk::wire::MessageInput, finaldot::plugins::Body) {
    use finaldot_sdk::wire::{
        parse_headers, EnvelopeState, MessageInput, MessageState, Recipient, ABI_VERSION,
    };
    let (headers, at) = parse_headers(raw);
    (
        MessageInput {
            abi: ABI_VERSION,
            queue_id: "Q1".into(),
            state: MessageState {
                envelope: EnvelopeState {
                    mail_from: "s@x.test".into(),
                    recipients: vec![Recipient::new("alice@localhost")],
                },
                headers,
            },
            body_len: (raw.len() - at) as u64,
            client_ip: "127.0.0.1".into(),
            helo: "client.test".into(),
            received_at: 0,
            session: finaldot_sdk::wire::SessionFacts {
                helo: "client.test".into(),
                listener: finaldot_sdk::wire::Listener::Smtp,
                ..finaldot_sdk::wire::SessionFacts::local(0)
            },
            auth: None,
            dsn: None,
        },
        finaldot::plugins::Body::Bytes(std::sync::Arc::from(raw[at..].to_vec())),
    )
}

/// The time stamp at the start of a daemon log line (`2026-11-29T19:07:36.000468Z ...`).
pub fn log_time(line: &str) -> Option<SystemTime> {
    // "2026-11-29T19:07:36.000468Z ..." → SystemTime
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + min * 60;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_secs_f64(sec))
}

/// The word after the first `marker` in a daemon log line (`log_field(line,
/// "micros=")` gives the value of the `micros` field).
pub fn log_field<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
}
