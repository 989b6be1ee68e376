//! A scripted SMTP server on loopback that plays the next hop in outbound
//! delivery tests: it records every transaction it accepts (envelope and
//! exact message bytes) and answers RCPT and end-of-data as the test says.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One transaction the next hop accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// MAIL FROM address.
    pub mail_from: String,
    /// The recipients it accepted.
    pub rcpt_to: Vec<String>,
    /// The message, dot-unstuffed, without the final `.CRLF`.
    pub data: Vec<u8>,
    /// What followed `MAIL FROM:<…>` (its parameters), trimmed.
    pub mail_params: String,
    /// What followed each accepted `RCPT TO:<…>`, in order, trimmed.
    pub rcpt_params: Vec<String>,
}

#[derive(Default)]
struct Script {
    /// Replies to successive ends of data; when empty, "250 2.0.0 ok".
    data_replies: VecDeque<String>,
    /// RCPT replies per address (always).
    rcpt_replies: HashMap<String, String>,
    /// How long to think before answering the end of data.
    data_delay: Duration,
    /// Whether EHLO offers DSN (RFC 3461).
    dsn: bool,
}

/// The running next hop.
pub struct NextHop {
    /// Where it listens.
    pub addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Accepted>>>,
    script: Arc<Mutex<Script>>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Most transactions that were inside DATA at the same time.
    pub max_in_data: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl NextHop {
    /// Starts it on 127.0.0.1, port chosen by the OS.
    pub fn start() -> NextHop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind next hop");
        let addr = listener.local_addr().expect("addr");
        let hop = NextHop {
            addr,
            accepted: Arc::default(),
            script: Arc::default(),
            connections: Arc::default(),
            max_in_data: Arc::default(),
            stop: Arc::default(),
        };
        let (accepted, script, conns, stop) = (
            hop.accepted.clone(),
            hop.script.clone(),
            hop.connections.clone(),
            hop.stop.clone(),
        );
        let in_data = Arc::new(AtomicUsize::new(0));
        let max_in_data = hop.max_in_data.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                conns.fetch_add(1, Ordering::Relaxed);
                let (accepted, script) = (accepted.clone(), script.clone());
                let (in_data, max_in_data) = (in_data.clone(), max_in_data.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &accepted, &script, &in_data, &max_in_data);
                });
            }
        });
        hop
    }

    /// From now on, EHLO offers DSN.
    pub fn offer_dsn(&self) {
        if let Ok(mut s) = self.script.lock() {
            s.dsn = true;
        }
    }

    /// The next ends of data get these replies, in order (then 250).
    pub fn answer_data(&self, replies: &[&str]) {
        if let Ok(mut s) = self.script.lock() {
            s.data_replies.extend(replies.iter().map(|r| r.to_string()));
        }
    }

    /// Every end of data is answered after `delay`.
    pub fn delay_data(&self, delay: Duration) {
        if let Ok(mut s) = self.script.lock() {
            s.data_delay = delay;
        }
    }

    /// RCPT TO this address always gets `reply`.
    pub fn answer_rcpt(&self, address: &str, reply: &str) {
        if let Ok(mut s) = self.script.lock() {
            s.rcpt_replies
                .insert(address.to_string(), reply.to_string());
        }
    }

    /// What it accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Waits until it accepted `n` transactions (panics after `limit`).
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Accepted> {
        let start = std::time::Instant::now();
        loop {
            let got = self.accepted();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < limit,
                "next hop got {} of {n} transactions in {limit:?}: {got:?}",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NextHop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: TcpStream,
    accepted: &Mutex<Vec<Accepted>>,
    script: &Mutex<Script>,
    in_data: &AtomicUsize,
    max_in_data: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    w.write_all(b"220 nexthop.test ESMTP\r\n")?;
    let mut from = None;
    let mut rcpts = Vec::new();
    let mut mail_params = String::new();
    let mut rcpt_params = Vec::new();
    let after_path = |text: &str| {
        text.split_once('>')
            .map(|(_, p)| p.trim().to_string())
            .unwrap_or_default()
    };
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply = if upper.starts_with("EHLO") {
            let dsn = script.lock().map(|s| s.dsn).unwrap_or(false);
            format!(
                "250-nexthop.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n{}250 SMTPUTF8",
                if dsn { "250-DSN\r\n" } else { "" }
            )
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 ok".to_string()
        } else if upper.starts_with("RSET") {
            from = None;
            rcpts.clear();
            "250 ok".to_string()
        } else if upper.starts_with("MAIL FROM:") {
            from = Some(angle(&text));
            mail_params = after_path(&text);
            rcpts.clear();
            rcpt_params.clear();
            "250 2.1.0 ok".to_string()
        } else if upper.starts_with("RCPT TO:") {
            let a = angle(&text);
            let scripted = script
                .lock()
                .ok()
                .and_then(|s| s.rcpt_replies.get(&a).cloned());
            match scripted {
                Some(reply) => reply,
                None => {
                    rcpts.push(a);
                    rcpt_params.push(after_path(&text));
                    "250 2.1.5 ok".to_string()
                }
            }
        } else if upper == "DATA" {
            w.write_all(b"354 go ahead\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let l = if l.starts_with(b".") { &l[1..] } else { &l[..] };
                data.extend_from_slice(l);
            }
            let now = in_data.fetch_add(1, Ordering::SeqCst) + 1;
            max_in_data.fetch_max(now, Ordering::SeqCst);
            let delay = script.lock().map(|s| s.data_delay).unwrap_or_default();
            std::thread::sleep(delay);
            in_data.fetch_sub(1, Ordering::SeqCst);
            let reply = script
                .lock()
                .ok()
                .and_then(|mut s| s.data_replies.pop_front())
                .unwrap_or_else(|| "250 2.0.0 ok: queued".to_string());
            if reply.starts_with('2') {
                if let Ok(mut a) = accepted.lock() {
                    a.push(Accepted {
                        mail_from: from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut rcpts),
                        data,
                        mail_params: std::mem::take(&mut mail_params),
                        rcpt_params: std::mem::take(&mut rcpt_params),
                    });
                }
            }
            reply
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            "502 5.5.2 not here".to_string()
        };
        w.write_all(reply.as_bytes())?;
        w.write_all(b"\r\n")?;
    }
}

/// The address between `<` and `>`.
fn angle(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}
