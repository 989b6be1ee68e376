//! The queue file format: one file per message.
//!
//! ```text
//! "FINALDOT"            8 bytes, magic
//! version               u16 LE (currently 2; 1 still reads)
//! envelope length N     u32 LE
//! envelope              N bytes, postcard-encoded [`Envelope`], then its
//!                       DSN request (RFC 3461) when the client made one
//! message               M bytes, the raw message (Received: header first, CRLF lines)
//! end marker            "\r\nFD-END" (8 bytes)
//! M                     u64 LE
//! ```
//!
//! The end marker carries the message length, and a reader checks that it matches
//! the file's length, so a torn or truncated file can never look complete.
//!
//! SECURITY: a queue file is trusted only after [`read_header`] validated magic,
//! version, envelope and end marker; anything else is corrupt.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::Path;

use finaldot_sdk::wire::{DsnRequest, Listener, SessionFacts, TlsFacts};
use serde::{Deserialize, Serialize};

/// File magic.
pub const MAGIC: &[u8; 8] = b"FINALDOT";
/// The current format version (2: the session facts; 1 still reads).
pub const VERSION: u16 = 2;
/// The end marker that precedes the message length at the end of the file.
pub const END_MARKER: &[u8; 8] = b"\r\nFD-END";
/// Size of the fixed prelude (magic, version, envelope length).
pub const PRELUDE_LEN: u64 = 14;
/// Size of the trailer (end marker, message length).
pub const TRAILER_LEN: u64 = 16;
/// Largest envelope accepted when reading (a sanity bound against garbage lengths).
const MAX_ENVELOPE: u32 = 64 * 1024 * 1024;

/// The SMTP envelope and the session's facts of one queued message, as the
/// front end knew them before its 250.
///
/// Fields are only ever appended (postcard is positional), never reordered;
/// a change of shape is a new [`VERSION`], and every older one still reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// The forward-paths, in the order the client gave them, without duplicates.
    pub rcpt_to: Vec<String>,
    /// The client's IP address.
    pub client_ip: IpAddr,
    /// The client's TCP port (0 for a message the host made).
    pub client_port: u16,
    /// The listener the message arrived on.
    pub listener: Listener,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The protocol for the Received header (RFC 3848): `SMTP`, `ESMTP`, `UTF8ESMTP`…
    pub protocol: String,
    /// When the transaction's content began, in seconds since the Unix epoch.
    pub received_at: u64,
    /// The client declared BODY=8BITMIME.
    pub body_8bit: bool,
    /// The client declared SMTPUTF8.
    pub smtputf8: bool,
    /// The TLS protocol and cipher suite, when the session used TLS.
    pub tls: Option<TlsFacts>,
    /// The identity the client authenticated as (submission AUTH), if any.
    pub auth: Option<String>,
    /// What the client asked of DSNs (RFC 3461). Encoded after the
    /// envelope's other fields within its block (not by this struct's serde):
    /// an older build's postcard decode stops before it, and a file written
    /// before it has none.
    #[serde(skip)]
    pub dsn: DsnRequest,
}

impl Envelope {
    /// The facts a plugin is shown ([`SessionFacts`], the SDK's form).
    pub fn session_facts(&self) -> SessionFacts {
        SessionFacts {
            client_ip: self.client_ip.to_string(),
            client_port: self.client_port,
            listener: self.listener,
            helo: self.helo.clone(),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            received_at: self.received_at,
            body_8bit: self.body_8bit,
            smtputf8: self.smtputf8,
        }
    }
}

/// The envelope of a version 1 queue file (before the session facts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EnvelopeV1 {
    mail_from: String,
    rcpt_to: Vec<String>,
    client_ip: IpAddr,
    helo: String,
    protocol: String,
    received_at: u64,
    body_8bit: bool,
    smtputf8: bool,
    /// `TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384`.
    tls: Option<String>,
}

impl From<EnvelopeV1> for Envelope {
    fn from(v1: EnvelopeV1) -> Envelope {
        let tls = v1.tls.map(|t| match t.split_once(" with cipher ") {
            Some((protocol, cipher)) => TlsFacts {
                protocol: protocol.to_string(),
                cipher: cipher.to_string(),
            },
            None => TlsFacts {
                protocol: t,
                cipher: String::new(),
            },
        });
        Envelope {
            mail_from: v1.mail_from,
            rcpt_to: v1.rcpt_to,
            client_ip: v1.client_ip,
            client_port: 0,
            listener: Listener::Unknown,
            helo: v1.helo,
            protocol: v1.protocol,
            received_at: v1.received_at,
            body_8bit: v1.body_8bit,
            smtputf8: v1.smtputf8,
            tls,
            auth: None,
            dsn: DsnRequest::default(),
        }
    }
}

/// Why a queue file was found invalid.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with the magic.
    #[error("not a finaldot queue file (bad magic)")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error("unsupported queue file version {0}")]
    Version(u16),
    /// The envelope did not decode.
    #[error("envelope does not decode: {0}")]
    Envelope(postcard::Error),
    /// The end marker is missing or its length does not match: a torn file.
    #[error("incomplete file (end marker missing or length mismatch)")]
    Torn,
}

/// A validated queue file: its envelope (decoded from the file's header)
/// and where its message lies.
#[derive(Debug, Clone)]
pub struct QueueFile {
    /// The envelope.
    pub envelope: Envelope,
    /// Offset of the first message byte.
    pub message_offset: u64,
    /// Length of the message in bytes.
    pub message_len: u64,
}

/// Encodes the prelude and envelope that start a queue file.
pub fn encode_prelude(envelope: &Envelope) -> Result<Vec<u8>, postcard::Error> {
    let mut env = postcard::to_allocvec(envelope)?;
    if !envelope.dsn.is_empty() {
        env.extend(postcard::to_allocvec(&envelope.dsn)?);
    }
    let mut out = Vec::with_capacity(PRELUDE_LEN as usize + env.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    out.extend_from_slice(&env);
    Ok(out)
}

/// Encodes the trailer for a message of `message_len` bytes.
pub fn encode_trailer(message_len: u64) -> [u8; TRAILER_LEN as usize] {
    let mut out = [0u8; TRAILER_LEN as usize];
    out[..8].copy_from_slice(END_MARKER);
    out[8..].copy_from_slice(&message_len.to_le_bytes());
    out
}

/// Reads and validates a queue file's header and trailer without reading the message.
pub fn read_header(path: &Path) -> Result<QueueFile, FormatError> {
    read_header_of(&File::open(path)?)
}

/// [`read_header`] of a queue file already open (positioned reads only).
pub fn read_header_of(f: &File) -> Result<QueueFile, FormatError> {
    use std::os::unix::fs::FileExt;
    let file_len = f.metadata()?.len();
    if file_len < PRELUDE_LEN + TRAILER_LEN {
        return Err(FormatError::Torn);
    }
    let mut prelude = [0u8; PRELUDE_LEN as usize];
    f.read_exact_at(&mut prelude, 0)?;
    if &prelude[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_le_bytes([prelude[8], prelude[9]]);
    if version != 1 && version != VERSION {
        return Err(FormatError::Version(version));
    }
    let env_len = u32::from_le_bytes([prelude[10], prelude[11], prelude[12], prelude[13]]);
    if env_len > MAX_ENVELOPE || PRELUDE_LEN + u64::from(env_len) + TRAILER_LEN > file_len {
        return Err(FormatError::Torn);
    }
    let mut env = vec![0u8; env_len as usize];
    f.read_exact_at(&mut env, PRELUDE_LEN)?;
    let envelope: Envelope = if version == 1 {
        postcard::from_bytes::<EnvelopeV1>(&env)
            .map(Envelope::from)
            .map_err(FormatError::Envelope)?
    } else {
        let (mut envelope, rest) =
            postcard::take_from_bytes::<Envelope>(&env).map_err(FormatError::Envelope)?;
        if !rest.is_empty() {
            envelope.dsn = postcard::from_bytes(rest).map_err(FormatError::Envelope)?;
        }
        envelope
    };
    let mut trailer = [0u8; TRAILER_LEN as usize];
    f.read_exact_at(&mut trailer, file_len - TRAILER_LEN)?;
    if &trailer[..8] != END_MARKER {
        return Err(FormatError::Torn);
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer[8..]);
    let message_len = u64::from_le_bytes(len);
    let message_offset = PRELUDE_LEN + u64::from(env_len);
    if message_offset + message_len + TRAILER_LEN != file_len {
        return Err(FormatError::Torn);
    }
    Ok(QueueFile {
        envelope,
        message_offset,
        message_len,
    })
}

/// Reads a whole queue file: its header and the message bytes.
pub fn read_message(path: &Path) -> Result<(QueueFile, Vec<u8>), FormatError> {
    let header = read_header(path)?;
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(header.message_offset))?;
    let mut message = vec![0u8; header.message_len as usize];
    f.read_exact(&mut message)?;
    Ok((header, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A queue file of `version` with this envelope (already encoded) and message.
    fn queue_file(version: u16, envelope: &[u8], message: &[u8]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&(envelope.len() as u32).to_le_bytes());
        bytes.extend_from_slice(envelope);
        bytes.extend_from_slice(message);
        bytes.extend_from_slice(&encode_trailer(message.len() as u64));
        bytes
    }

    /// Reads `bytes` as a queue file.
    fn read_bytes(bytes: &[u8]) -> (QueueFile, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("Q");
        std::fs::write(&path, bytes).expect("write");
        read_message(&path).expect("the fixture reads")
    }

    /// A version 1 queue file (written before the session facts), byte for
    /// byte (`host/tests/golden/`): every build must still read it, so mail
    /// queued before an upgrade is delivered after it.
    #[test]
    fn version_1_queue_file_matches_its_golden_bytes_and_still_reads() {
        let v1 = EnvelopeV1 {
            mail_from: "sender@example.org".into(),
            rcpt_to: vec!["alice@example.test".into(), "bob@example.test".into()],
            client_ip: "2001:db8::7".parse().expect("ip"),
            helo: "client.example.org".into(),
            protocol: "UTF8ESMTPS".into(),
            received_at: 1_796_000_000,
            body_8bit: true,
            smtputf8: true,
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
        };
        let message = b"Received: from x\r\nSubject: golden\r\n\r\nbody\r\n";
        let bytes = queue_file(1, &postcard::to_allocvec(&v1).expect("encode"), message);
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/queue_file_v1.hex");
        let golden = finaldot_sdk::testing::assert_golden(&fixture, &bytes);
        let (header, read) = read_bytes(&golden);
        assert_eq!(header.envelope, Envelope::from(v1.clone()));
        assert_eq!(header.envelope.listener, Listener::Unknown);
        assert_eq!(read, message);
        // What version 1 builds wrote for TLS becomes protocol and cipher.
        let written = EnvelopeV1 {
            tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into()),
            ..v1
        };
        assert_eq!(
            Envelope::from(written).tls,
            Some(TlsFacts {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into()
            })
        );
    }

    /// Today's queue file (version 2: the session facts), byte for byte.
    #[test]
    fn version_2_queue_file_matches_its_golden_bytes_and_reads() {
        let envelope = Envelope {
            mail_from: "sender@example.org".into(),
            rcpt_to: vec!["alice@example.test".into()],
            client_ip: "192.0.2.7".parse().expect("ip"),
            client_port: 40123,
            listener: Listener::Submission,
            helo: "client.example.org".into(),
            protocol: "ESMTPSA".into(),
            received_at: 1_796_000_000,
            body_8bit: true,
            smtputf8: false,
            tls: Some(TlsFacts {
                protocol: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
            auth: Some("alice".into()),
            dsn: Default::default(),
        };
        let message = b"Received: from x\r\n\r\nbody\r\n";
        let mut bytes = encode_prelude(&envelope).expect("encode");
        bytes.extend_from_slice(message);
        bytes.extend_from_slice(&encode_trailer(message.len() as u64));
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/queue_file_v2.hex");
        let golden = finaldot_sdk::testing::assert_golden(&fixture, &bytes);
        let (header, read) = read_bytes(&golden);
        assert_eq!(header.envelope, envelope);
        assert_eq!(read, message);
    }

    fn envelope() -> Envelope {
        Envelope {
            mail_from: "a@x.test".into(),
            rcpt_to: vec!["b@y.test".into(), "c@y.test".into()],
            client_ip: "192.0.2.7".parse().expect("ip"),
            client_port: 40000,
            listener: Listener::Smtp,
            helo: "client.test".into(),
            protocol: "ESMTP".into(),
            received_at: 1_700_000_000,
            body_8bit: true,
            smtputf8: false,
            tls: None,
            auth: None,
            dsn: Default::default(),
        }
    }

    fn write_file(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join("q");
        File::create(&p)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write");
        p
    }

    fn whole(msg: &[u8]) -> Vec<u8> {
        let mut bytes = encode_prelude(&envelope()).expect("encode");
        bytes.extend_from_slice(msg);
        bytes.extend_from_slice(&encode_trailer(msg.len() as u64));
        bytes
    }

    #[test]
    fn round_trips_envelope_and_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_file(dir.path(), &whole(b"Subject: hi\r\n\r\nbody\r\n"));
        let (h, m) = read_message(&p).expect("read");
        assert_eq!(h.envelope, envelope());
        assert_eq!(m, b"Subject: hi\r\n\r\nbody\r\n");
    }

    #[test]
    fn every_truncation_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = whole(b"Subject: hi\r\n\r\nbody\r\n");
        for cut in 0..bytes.len() {
            let p = write_file(dir.path(), &bytes[..cut]);
            assert!(
                read_header(&p).is_err(),
                "truncated at {cut} looked complete"
            );
        }
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = whole(b"x");
        bytes[0] = b'X';
        let p = write_file(dir.path(), &bytes);
        assert!(matches!(read_header(&p), Err(FormatError::BadMagic)));
        let mut bytes = whole(b"x");
        bytes[8] = 9;
        let p = write_file(dir.path(), &bytes);
        assert!(matches!(read_header(&p), Err(FormatError::Version(9))));
    }
}
