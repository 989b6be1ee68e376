//! Message-content framing: the DATA decoder (end-of-data detection and
//! dot-unstuffing, RFC 5321 §4.5.2) and the line checker that both DATA and
//! BDAT content pass through.
//!
//! SECURITY: only `CRLF.CRLF` ends DATA. A bare LF or bare CR never ends a line,
//! so `\n.\n`, `\r\n.\n`, `\n.\r\n` and `\r.\r` are message content, and the
//! line checker flags them so that the whole message is refused after its end
//! (SMTP smuggling, CVE-2023-51764 family). Nothing here allocates beyond the
//! output buffer the caller provides.

use memchr::{memchr, memchr2};

/// Longest text line, excluding CRLF (RFC 5321 §4.5.3.1.6: 1000 octets with CRLF).
pub const MAX_TEXT_LINE: usize = 998;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CRLF, or at the start of DATA).
    LineStart,
    /// Inside a line.
    Mid,
    /// Just emitted a CR inside a line.
    Cr,
    /// Saw a `.` at the start of a line (not yet emitted).
    Dot,
    /// Saw `.` CR at the start of a line.
    DotCr,
}

/// Decodes DATA content: finds the `CRLF.CRLF` terminator and undoes dot-stuffing.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    /// A decoder positioned just after the DATA command's CRLF.
    pub fn new() -> Self {
        DataDecoder {
            state: State::LineStart,
        }
    }

    /// Decodes from `input`, appending message bytes to `out`. Returns how many
    /// input bytes were consumed and whether the terminator was reached (in which
    /// case the bytes after it were not consumed).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Mid => match memchr(b'\r', &input[i..]) {
                    Some(off) => {
                        out.extend_from_slice(&input[i..i + off + 1]);
                        i += off + 1;
                        self.state = State::Cr;
                    }
                    None => {
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                },
                State::Cr => {
                    if input[i] == b'\n' {
                        out.push(b'\n');
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::LineStart => {
                    if input[i] == b'.' {
                        i += 1;
                        self.state = State::Dot;
                    } else {
                        self.state = State::Mid;
                    }
                }
                State::Dot => {
                    if input[i] == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        // A leading dot followed by more text: the dot is removed.
                        self.state = State::Mid;
                    }
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        return (i + 1, true);
                    }
                    // ".\r" + something else: the dot is removed, the CR is content.
                    out.push(b'\r');
                    self.state = State::Cr;
                }
            }
        }
        (i, false)
    }
}

/// Checks message content for bare CR, bare LF and over-long lines, across
/// chunk boundaries.
#[derive(Debug, Clone, Default)]
pub struct LineCheck {
    pending_cr: bool,
    line_len: usize,
    /// An LF not preceded by CR was seen.
    pub bare_lf: bool,
    /// A CR not followed by LF was seen.
    pub bare_cr: bool,
    /// A line longer than [`MAX_TEXT_LINE`] octets was seen.
    pub long_line: bool,
    /// A NUL octet was seen (RFC 5322 §3.5 text and RFC 6152's 8bit data
    /// exclude it; only BINARYMIME, which is not offered, would allow it).
    pub nul: bool,
}

impl LineCheck {
    /// Feeds the next piece of content.
    pub fn feed(&mut self, data: &[u8]) {
        if !self.nul && memchr::memchr(0, data).is_some() {
            self.nul = true;
        }
        let mut i = 0;
        if self.pending_cr && !data.is_empty() {
            self.pending_cr = false;
            if data[0] == b'\n' {
                self.line_len = 0;
                i = 1;
            } else {
                self.bare_cr = true;
                self.grow(1);
            }
        }
        while i < data.len() {
            match memchr2(b'\r', b'\n', &data[i..]) {
                None => {
                    self.grow(data.len() - i);
                    break;
                }
                Some(off) => {
                    let p = i + off;
                    self.grow(off);
                    if data[p] == b'\n' {
                        self.bare_lf = true;
                        self.grow(1);
                        i = p + 1;
                    } else if p + 1 == data.len() {
                        self.pending_cr = true;
                        i = p + 1;
                    } else if data[p + 1] == b'\n' {
                        self.line_len = 0;
                        i = p + 2;
                    } else {
                        self.bare_cr = true;
                        self.grow(1);
                        i = p + 1;
                    }
                }
            }
        }
    }

    fn grow(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_TEXT_LINE {
            self.long_line = true;
        }
    }

    /// Ends the content: a CR left pending at the very end is a bare CR.
    pub fn finish(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare_cr = true;
        }
    }

    /// True when the content broke a framing rule.
    pub fn is_bad(&self) -> bool {
        self.bare_lf || self.bare_cr || self.long_line
    }
}

/// Largest header section accepted (RFC 5322 sets no limit; the pipeline
/// reads at most this much of it).
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Most header fields accepted in one message.
pub const MAX_HEADER_FIELDS: usize = 1000;

/// `Received:` fields at which a message is taken to be looping (RFC 5321
/// §6.3: count them, and do not set the limit below 100).
pub const MAX_RECEIVED: usize = 100;

/// Counts the header section of message content (fields, `Received:` fields
/// and bytes) across chunk boundaries, until the empty line that ends it.
#[derive(Debug, Clone)]
pub struct HeaderCheck {
    in_headers: bool,
    at_line_start: bool,
    prefix: [u8; 9],
    prefix_len: usize,
    /// Bytes of header section seen so far.
    pub bytes: usize,
    /// Header fields seen so far (continuation lines not counted).
    pub fields: usize,
    /// `Received:` fields seen so far.
    pub received: usize,
}

impl Default for HeaderCheck {
    fn default() -> Self {
        HeaderCheck {
            in_headers: true,
            at_line_start: true,
            prefix: [0; 9],
            prefix_len: 0,
            bytes: 0,
            fields: 0,
            received: 0,
        }
    }
}

impl HeaderCheck {
    /// Feeds the next piece of content; cheap once the header section has ended.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if !self.in_headers {
                return;
            }
            self.bytes += 1;
            if self.bytes > MAX_HEADER_BYTES {
                // Over the cap: the verdict is known, stop counting.
                self.in_headers = false;
                return;
            }
            if self.at_line_start {
                self.at_line_start = false;
                match b {
                    b'\r' | b'\n' => {
                        self.in_headers = false;
                        return;
                    }
                    b' ' | b'\t' => {
                        // A continuation line: collect no prefix.
                        self.prefix_len = self.prefix.len() + 1;
                    }
                    _ => {
                        self.fields += 1;
                        self.prefix_len = 0;
                    }
                }
            }
            if b == b'\n' {
                self.at_line_start = true;
                continue;
            }
            if self.prefix_len < self.prefix.len() {
                self.prefix[self.prefix_len] = b.to_ascii_lowercase();
                self.prefix_len += 1;
                if self.prefix_len == self.prefix.len() && &self.prefix == b"received:" {
                    self.received += 1;
                }
            }
        }
    }

    /// The refusal this header section deserves, if any: (code, enhanced code, text).
    pub fn verdict(&self) -> Option<(u16, &'static str, String)> {
        if self.bytes > MAX_HEADER_BYTES {
            Some((
                552,
                "5.3.4",
                format!("Error: message header section exceeds {MAX_HEADER_BYTES} octets"),
            ))
        } else if self.received >= MAX_RECEIVED {
            Some((
                554,
                "5.4.6",
                format!(
                    "Error: too many hops ({} Received: header fields; mail loop?)",
                    self.received
                ),
            ))
        } else if self.fields > MAX_HEADER_FIELDS {
            Some((
                552,
                "5.3.4",
                format!("Error: message has more than {MAX_HEADER_FIELDS} header fields"),
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces split at `split`, returning (message, consumed, done).
    fn decode_split(input: &[u8], split: usize) -> (Vec<u8>, usize, bool) {
        let mut d = DataDecoder::new();
        let mut out = Vec::new();
        let (a, done) = d.decode(&input[..split], &mut out);
        if done {
            return (out, a, true);
        }
        assert_eq!(a, split, "a non-terminated piece is consumed whole");
        let (b, done) = d.decode(&input[split..], &mut out);
        (out, a + b, done)
    }

    fn check_every_split(input: &[u8], want: &[u8], want_consumed: usize) {
        for split in 0..=input.len() {
            let (out, consumed, done) = decode_split(input, split);
            assert!(done, "split {split}: not done");
            assert_eq!(out, want, "split {split}");
            assert_eq!(consumed, want_consumed, "split {split}");
        }
    }

    #[test]
    fn unstuffs_and_stops_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n";
        check_every_split(
            input,
            b"Subject: x\r\n\r\n.leading dot\r\n",
            input.len() - 6,
        );
    }

    #[test]
    fn empty_message() {
        check_every_split(b".\r\n", b"", 3);
    }

    #[test]
    fn lone_dot_lines_inside_are_not_the_end_unless_crlf() {
        for (input, want) in [
            (&b"a\n.\nb\r\n.\r\n"[..], &b"a\n.\nb\r\n"[..]),
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n"),
            (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),
            (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
            (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),
        ] {
            let n = input.len();
            check_every_split(input, want, n);
        }
    }

    #[test]
    fn line_check_flags_every_smuggling_variant() {
        for bad in [
            &b"a\n.\nb\r\n"[..],
            b"a\r\n.\nb\r\n",
            b"a\n.\r\nb\r\n",
            b"a\r.\rb\r\n",
            b"x\r",
        ] {
            for split in 0..=bad.len() {
                let mut c = LineCheck::default();
                c.feed(&bad[..split]);
                c.feed(&bad[split..]);
                c.finish();
                assert!(
                    c.bare_lf || c.bare_cr,
                    "{:?} split {split}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
    }

    #[test]
    fn line_check_accepts_clean_crlf_across_splits() {
        let good = b"Subject: a\r\n\r\nbody\r\n\r\n";
        for split in 0..=good.len() {
            let mut c = LineCheck::default();
            c.feed(&good[..split]);
            c.feed(&good[split..]);
            c.finish();
            assert!(!c.is_bad(), "split {split}");
        }
    }

    fn header_counts(input: &[u8]) -> Vec<(usize, usize, usize)> {
        (0..=input.len())
            .map(|split| {
                let mut h = HeaderCheck::default();
                h.feed(&input[..split]);
                h.feed(&input[split..]);
                (h.fields, h.received, h.bytes)
            })
            .collect()
    }

    #[test]
    fn header_check_counts_fields_and_received_until_the_empty_line() {
        let input = b"Received: a\r\n  folded\r\nRECEIVED: b\r\nSubject: Received: no\r\nX-Received: no\r\n\r\nReceived: body\r\n";
        let header_len = input.len() - b"\r\nReceived: body\r\n".len() + 1;
        for got in header_counts(input) {
            assert_eq!(got, (4, 2, header_len));
        }
    }

    #[test]
    fn header_check_verdicts() {
        let mut h = HeaderCheck::default();
        h.feed(&b"Received: x\r\n".repeat(MAX_RECEIVED - 1));
        assert!(h.verdict().is_none());
        h.feed(b"Received: x\r\n\r\n");
        assert_eq!(h.verdict().map(|v| (v.0, v.1)), Some((554, "5.4.6")));

        let mut h = HeaderCheck::default();
        h.feed(&b"X: y\r\n".repeat(MAX_HEADER_FIELDS + 1));
        assert_eq!(h.verdict().map(|v| (v.0, v.1)), Some((552, "5.3.4")));

        let mut h = HeaderCheck::default();
        h.feed(&b"X: y\r\n".repeat(MAX_HEADER_FIELDS));
        h.feed(b"\r\n");
        h.feed(&b"X: y\r\n".repeat(MAX_HEADER_FIELDS));
        assert!(h.verdict().is_none(), "body lines are not header fields");

        let mut h = HeaderCheck::default();
        h.feed(b"X: ");
        h.feed(&vec![b'a'; MAX_HEADER_BYTES]);
        assert_eq!(h.verdict().map(|v| (v.0, v.1)), Some((552, "5.3.4")));
    }

    #[test]
    fn line_check_limits_line_length() {
        let mut c = LineCheck::default();
        c.feed(&[b'a'; MAX_TEXT_LINE]);
        c.feed(b"\r\n");
        assert!(!c.long_line);
        c.feed(&[b'a'; MAX_TEXT_LINE + 1]);
        c.feed(b"\r\n");
        assert!(c.long_line);
    }
}
