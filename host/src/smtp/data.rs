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
}

impl LineCheck {
    /// Feeds the next piece of content.
    pub fn feed(&mut self, data: &[u8]) {
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
