//! A small HTTP/1.1 server on loopback for the HTTP capability's own edge
//! cases (allow-list, redirects, size cap, timeout, a body sent from the
//! spool): one thread per connection, `Connection: close`. Never used
//! outside tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the server received: method, path and body.
pub type Received = (String, String, Vec<u8>);

/// The running server.
pub struct HttpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

/// The response to `path` (request body `body`):
/// `/echo` answers 200 with the body; `/big` 2 MiB; `/slow` waits 3 s;
/// `/redirect-in` sends to `/echo`, `/redirect-out` to another port.
fn respond(path: &str, body: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
    match path {
        "/echo" => (200, vec![("X-Echo".into(), "yes".into())], body.to_vec()),
        "/big" => (200, Vec::new(), vec![b'x'; 2 << 20]),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(3));
            (200, Vec::new(), b"late".to_vec())
        }
        "/redirect-in" => (302, vec![("Location".into(), "/echo".into())], Vec::new()),
        "/redirect-out" => (
            302,
            vec![("Location".into(), "http://127.0.0.1:9/elsewhere".into())],
            Vec::new(),
        ),
        _ => (404, Vec::new(), b"not found".to_vec()),
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>) -> Option<()> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            if n.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    received
        .lock()
        .ok()?
        .push((method, path.clone(), body.clone()));
    let (status, headers, out) = respond(&path, &body);
    let mut w = stream;
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        out.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).ok()?;
    w.write_all(&out).ok()?;
    Some(())
}

impl HttpServer {
    /// Starts it on 127.0.0.1, port 0.
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind http");
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        HttpServer { addr, received }
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
