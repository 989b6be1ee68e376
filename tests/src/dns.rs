//! A tiny authoritative DNS server on loopback UDP for tests: MX, A, AAAA,
//! TXT (one string or several), SPF (type 99), PTR and CNAME records from a
//! table (CNAMEs chased within it), NXDOMAIN for names it does not know,
//! NODATA for known names without the asked type, SERVFAIL for names so
//! marked, silence (a timeout) for names so marked (or only for some
//! types), and an optional delay before every answer. Just enough of RFC 1035 for a resolver's queries; never
//! used outside tests (a real server cannot be told to fail on cue).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One record.
#[derive(Debug, Clone)]
pub enum Record {
    /// `name MX preference exchange` (exchange "." is the null MX).
    Mx(String, u16, String),
    /// `name A address`.
    A(String, Ipv4Addr),
    /// `name AAAA address`.
    Aaaa(String, Ipv6Addr),
    /// `name TXT "text"`.
    Txt(String, String),
    /// `name PTR target`.
    Ptr(String, String),
    /// Queries for `name` get SERVFAIL.
    ServFail(String),
    /// Queries for `name` get no answer at all.
    Silent(String),
    /// `name TXT "a" "b" …`: one record of several strings.
    TxtStrings(String, Vec<String>),
    /// `name SPF "a" …` (type 99, which RFC 7208 retired).
    Spf(String, Vec<String>),
    /// `name CNAME target`.
    Cname(String, String),
    /// Queries for `name` of a type not listed get no answer (a timeout);
    /// the listed types are answered from the table.
    SilentExcept(String, Vec<u16>),
    /// `name` exists but has no records (NODATA, not NXDOMAIN).
    Empty(String),
}

/// The type numbers the server knows.
pub mod rtype {
    /// A.
    pub const A: u16 = 1;
    /// CNAME.
    pub const CNAME: u16 = 5;
    /// PTR.
    pub const PTR: u16 = 12;
    /// MX.
    pub const MX: u16 = 15;
    /// TXT.
    pub const TXT: u16 = 16;
    /// AAAA.
    pub const AAAA: u16 = 28;
    /// SPF.
    pub const SPF: u16 = 99;
}

impl Record {
    fn name(&self) -> &str {
        match self {
            Record::Mx(n, ..)
            | Record::A(n, _)
            | Record::Aaaa(n, _)
            | Record::Txt(n, _)
            | Record::Ptr(n, _)
            | Record::ServFail(n)
            | Record::Silent(n)
            | Record::TxtStrings(n, _)
            | Record::Spf(n, _)
            | Record::Cname(n, _)
            | Record::SilentExcept(n, _)
            | Record::Empty(n) => n,
        }
    }

    /// Its type and wire data, for a record that answers queries.
    fn rdata(&self) -> Option<(u16, Vec<u8>)> {
        let strings = |texts: &[&[u8]]| {
            let mut d = Vec::new();
            for t in texts {
                for chunk in t.chunks(255) {
                    d.push(chunk.len() as u8);
                    d.extend_from_slice(chunk);
                }
                if t.is_empty() {
                    d.push(0);
                }
            }
            // No strings at all cannot be written: one empty string, the
            // nearest a DNS message can carry.
            if texts.is_empty() {
                d.push(0);
            }
            d
        };
        Some(match self {
            Record::Mx(_, pref, exchange) => {
                let mut d = pref.to_be_bytes().to_vec();
                encode_name(exchange, &mut d);
                (rtype::MX, d)
            }
            Record::A(_, ip) => (rtype::A, ip.octets().to_vec()),
            Record::Aaaa(_, ip) => (rtype::AAAA, ip.octets().to_vec()),
            Record::Txt(_, text) => (rtype::TXT, strings(&[text.as_bytes()])),
            Record::TxtStrings(_, texts) => {
                let texts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
                (rtype::TXT, strings(&texts))
            }
            Record::Spf(_, texts) => {
                let texts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
                (rtype::SPF, strings(&texts))
            }
            Record::Ptr(_, target) => {
                let mut d = Vec::new();
                encode_name(target, &mut d);
                (rtype::PTR, d)
            }
            Record::Cname(_, target) => {
                let mut d = Vec::new();
                encode_name(target, &mut d);
                (rtype::CNAME, d)
            }
            Record::ServFail(_)
            | Record::Silent(_)
            | Record::SilentExcept(..)
            | Record::Empty(_) => return None,
        })
    }
}

/// The running server.
pub struct DnsServer {
    /// Where it answers.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

/// The question's name (lowercase, no trailing dot), type, and where it ends.
fn parse_question(q: &[u8]) -> Option<(String, u16, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*q.get(pos)?, *q.get(pos + 1)?]);
    Some((labels.join("."), qtype, pos + 4))
}

fn answer(query: &[u8], records: &[Record]) -> Option<Vec<u8>> {
    let (name, qtype, end) = parse_question(query)?;
    let silent = records.iter().any(|r| match r {
        Record::Silent(n) => *n == name,
        Record::SilentExcept(n, answered) => *n == name && !answered.contains(&qtype),
        _ => false,
    });
    if silent {
        return None;
    }
    let servfail = records
        .iter()
        .any(|r| matches!(r, Record::ServFail(n) if *n == name));
    let known = records.iter().any(|r| r.name() == name);
    let mut answers = Vec::new();
    let mut count = 0u16;
    // The records of `owner` of the asked type; a CNAME (when CNAME was
    // not asked) is answered and chased, at most 8 links (a loop ends).
    let mut owner = name.clone();
    for hop in 0..8 {
        let mut next = None;
        for r in records.iter().filter(|r| r.name() == owner) {
            let Some((rtype, rdata)) = r.rdata() else {
                continue;
            };
            let chase = rtype == rtype::CNAME && qtype != rtype::CNAME;
            if rtype != qtype && !chase {
                continue;
            }
            if chase {
                if let Record::Cname(_, target) = r {
                    next = Some(target.trim_end_matches('.').to_ascii_lowercase());
                }
            }
            count += 1;
            if hop == 0 {
                answers.extend_from_slice(&[0xC0, 0x0C]);
            } else {
                encode_name(&owner, &mut answers);
            }
            answers.extend_from_slice(&rtype.to_be_bytes());
            answers.extend_from_slice(&1u16.to_be_bytes());
            answers.extend_from_slice(&60u32.to_be_bytes());
            answers.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            answers.extend_from_slice(&rdata);
        }
        match next {
            Some(n) => owner = n,
            None => break,
        }
    }
    let mut out = Vec::with_capacity(end + answers.len());
    out.extend_from_slice(&query[..2]);
    let rd = query[2] & 0x01;
    out.push(0x84 | rd); // QR, AA, RD copied
    out.push(if servfail {
        0x82 // RA; SERVFAIL
    } else if known {
        0x80 // RA; NOERROR
    } else {
        0x83 // RA; NXDOMAIN
    });
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    out.extend_from_slice(&answers);
    Some(out)
}

impl DnsServer {
    /// Starts it on 127.0.0.1 with these records.
    pub fn start(records: Vec<Record>) -> DnsServer {
        DnsServer::start_delayed(records, std::time::Duration::ZERO)
    }

    /// Starts it, every answer sent `delay` after its query (each query on
    /// a thread of its own, so a slow answer holds up no other).
    pub fn start_delayed(records: Vec<Record>, delay: std::time::Duration) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
        let addr = sock.local_addr().expect("addr");
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(reply) = answer(&buf[..n], &records) else {
                    continue;
                };
                if delay.is_zero() {
                    let _ = sock.send_to(&reply, from);
                } else if let Ok(out) = sock.try_clone() {
                    std::thread::spawn(move || {
                        std::thread::sleep(delay);
                        let _ = out.send_to(&reply, from);
                    });
                }
            }
        });
        DnsServer { addr, stop }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
