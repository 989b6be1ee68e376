//! What one plugin call carries that the capabilities read: the message
//! body a plugin may read ([`Body`], never copied in unasked) and what the
//! call may still spend on requests that wait ([`CallBudget`]). Below the
//! instance (which makes them) and the capabilities (which use them), so
//! neither imports the other for these.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The message body a plugin may read, without copying it in unasked.
#[derive(Clone, Debug)]
pub enum Body {
    /// In memory.
    Bytes(Arc<[u8]>),
    /// A range of a file (the spool file).
    File {
        /// The open file.
        file: Arc<File>,
        /// Where the body starts.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

impl Body {
    /// An empty body.
    pub fn empty() -> Body {
        Body::Bytes(Arc::from(Vec::new()))
    }

    /// The body's length.
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads at `offset` into `buf`; 0 at the end.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = self.len();
        if offset >= len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(len - offset) as usize;
        match self {
            Body::Bytes(b) => {
                let start = offset as usize;
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            Body::File {
                file, offset: base, ..
            } => file.read_at(&mut buf[..n], base + offset),
        }
    }
}

/// What the current plugin call may still spend on requests that wait.
pub struct CallBudget<'a> {
    /// DNS lookups made for the message so far (the grant's `max_lookups`).
    pub dns_used: &'a mut u32,
    /// When the call runs out of time, if it has a limit.
    pub deadline: Option<std::time::Instant>,
    /// Set when a service the call needed (a remote key-value store) could
    /// not answer: the call then ends in a deferral, not a fault.
    pub unavailable: &'a mut Option<String>,
}

impl CallBudget<'_> {
    /// How long a wait may last within the call's limit, leaving the plugin
    /// a little time to use the answer; `None` when the call has no limit.
    pub(crate) fn left(&self) -> Option<std::time::Duration> {
        self.deadline.map(|d| {
            d.saturating_duration_since(std::time::Instant::now())
                .saturating_sub(std::time::Duration::from_millis(50))
        })
    }
}
