//! The PROXY protocol (HAProxy's, versions 1 and 2) on listeners behind a
//! load balancer: the header that comes before any SMTP byte and names the
//! real client, so that the Received field, the session facts, SPF and the
//! per-IP limits see the client, not the balancer. Parsing is the `ppp`
//! crate's; this module only reads the header's bytes off the socket,
//! exactly and no further (the client speaks only after the greeting).

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v1;
use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Version 2's signature, its first 12 bytes.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Version 1's longest header (the specification's 107 bytes).
const V1_MAX: usize = 107;

/// Version 2's longest header accepted (addresses plus the TLVs HAProxy
/// adds: ALPN, authority, SSL details, unique id).
const V2_MAX: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The connection closed or failed before the header was complete.
    #[error("connection lost before the PROXY header was complete: {0}")]
    Io(#[from] std::io::Error),
    /// It did not come within the timeout.
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not a PROXY header.
    #[error("the connection does not start with a PROXY header (v1 or v2)")]
    Missing,
    /// A header that does not parse.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Reads the header and returns the client it names; `None` when it names
/// none (v2 `LOCAL`, the balancer's own health check; v1 `UNKNOWN`; a Unix
/// socket), in which case the connection's own peer stands.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| ProxyError::Timeout(timeout))?
}

async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, ProxyError> {
    // v1's shortest header ("PROXY UNKNOWN\r\n") is 15 bytes, v2's 16: the
    // first 12 are there in either.
    let mut buf = vec![0u8; 12];
    stream.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        stream.read_exact(&mut fixed).await?;
        buf.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if 16 + len > V2_MAX {
            return Err(ProxyError::Malformed(format!(
                "a v2 header of {} bytes (at most {V2_MAX})",
                16 + len
            )));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        stream.read_exact(&mut buf[start..]).await?;
        let header = v2::Header::try_from(buf.as_slice())
            .map_err(|e| ProxyError::Malformed(e.to_string()))?;
        return Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, _) => None,
        });
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    // A line: read to its CRLF a byte at a time, never past it.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Malformed(format!(
                "a v1 header longer than {V1_MAX} bytes"
            )));
        }
        buf.push(stream.read_u8().await?);
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| ProxyError::Malformed("a v1 header that is not ASCII".into()))?;
    let header = v1::Header::try_from(text).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}
