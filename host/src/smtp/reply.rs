//! SMTP replies: a code, an enhanced status code (RFC 3463, sent on every reply
//! because ENHANCEDSTATUSCODES is always advertised) and one or more lines of text.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"2.0.0"`; empty for 220/221 style greetings.
    pub enhanced: Cow<'static, str>,
    /// The text lines; at least one.
    pub text: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, enhanced: impl Into<Cow<'static, str>>, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: enhanced.into(),
            text: vec![text.into()],
        }
    }

    /// A multi-line reply.
    pub fn lines(code: u16, enhanced: &'static str, text: Vec<String>) -> Self {
        debug_assert!(!text.is_empty());
        Reply {
            code,
            enhanced: Cow::Borrowed(enhanced),
            text,
        }
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx and 5xx replies.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.text.len().saturating_sub(1);
        for (i, line) in self.text.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            // RFC 2034: the enhanced code goes on every line, but not on the
            // greeting (220) nor on EHLO's keyword lines (only its first line).
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        f.write_str(String::from_utf8_lossy(&bytes).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_carries_enhanced_code() {
        let r = Reply::new(250, "2.1.0", "Ok");
        assert_eq!(r.to_bytes(), b"250 2.1.0 Ok\r\n");
    }

    #[test]
    fn multi_line_uses_dash_until_the_last() {
        let r = Reply::lines(214, "2.0.0", vec!["a".into(), "b".into()]);
        assert_eq!(r.to_bytes(), b"214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn greeting_has_no_enhanced_code() {
        let r = Reply::new(220, "", "mx ESMTP");
        assert_eq!(r.to_bytes(), b"220 mx ESMTP\r\n");
    }
}
