//! A transaction's content: DATA (dot-stuffed, read until the final dot)
//! and BDAT chunks (RFC 3030), streamed to the spool in chunks, with the
//! bare CR/LF, line length, header and size checks; the end of the content
//! is where [`Step::Commit`] is asked for.
//!
//! SECURITY: every byte is the client's: only CRLF ends a line, and a
//! message that fails a check is refused whole, never partly kept.

use super::*;

impl Session {
    /// Checks that a transaction can take content; returns the refusal otherwise.
    pub(super) fn content_allowed(&self, bdat: bool) -> Result<(), Reply> {
        match (&self.greeting, &self.tx) {
            (None, _) => Err(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")),
            (Some((Greeting::Helo, _)), _) if bdat => Err(Reply::new(
                503,
                "5.5.1",
                "Error: BDAT needs EHLO (CHUNKING)",
            )),
            (_, None) => Err(Reply::new(503, "5.5.1", "Error: need MAIL command")),
            (_, Some(tx)) if tx.rcpt_to.is_empty() => {
                Err(Reply::new(554, "5.5.1", "Error: no valid recipients"))
            }
            (_, Some(tx)) if !bdat && tx.content.is_some() => {
                Err(Reply::new(503, "5.5.1", "Error: DATA after BDAT"))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn data(&mut self) {
        if let Err(reply) = self.content_allowed(false) {
            return self.error_reply(reply);
        }
        match self.envelope() {
            Some(env) => {
                self.phase = Phase::AwaitBegin(Box::new(Phase::Data(DataDecoder::new())));
                self.pending.push_back(Step::Begin(Box::new(env)));
            }
            None => self.error_reply(Reply::new(503, "5.5.1", "Error: need MAIL command")),
        }
    }

    pub(super) fn bdat(&mut self, size: u64, last: bool) {
        if let Err(reply) = self.content_allowed(true) {
            self.phase = Phase::Bdat {
                remaining: size,
                last,
                refuse: Some(reply),
            };
            return;
        }
        let chunk = Phase::Bdat {
            remaining: size,
            last,
            refuse: None,
        };
        if self.tx.as_ref().is_some_and(|t| t.content.is_some()) {
            self.phase = chunk;
            return;
        }
        match self.envelope() {
            Some(env) => {
                self.phase = Phase::AwaitBegin(Box::new(chunk));
                self.pending.push_back(Step::Begin(Box::new(env)));
            }
            None => self.error_reply(Reply::new(503, "5.5.1", "Error: need MAIL command")),
        }
    }

    /// Takes message bytes decoded into `data_out`: checks them, counts them, and
    /// queues them as a Data step unless the message is already too big. The
    /// first bytes are held until the first line shows whether an empty line
    /// must go before them; `last` releases what is held at the end.
    pub(super) fn take_content(&mut self, last: bool) {
        let max = self.cfg.max_message_size;
        let Some(content) = self.tx.as_mut().and_then(|t| t.content.as_mut()) else {
            self.data_out.clear();
            return;
        };
        // The client's bytes count against the size limit as they arrive
        // (held or not); the empty line is ours.
        content.size += self.data_out.len() as u64;
        if content.size > max {
            content.too_big = true;
        }
        let mut separator = false;
        if let Some(held) = content.first_line.as_mut() {
            held.append(&mut self.data_out);
            match needs_separator(held) {
                None if !last => return,
                decided => {
                    separator = decided.unwrap_or(!held.is_empty());
                    self.data_out = content.first_line.take().unwrap_or_default();
                }
            }
        }
        if self.data_out.is_empty() {
            return;
        }
        if separator {
            self.data_out.splice(0..0, *b"\r\n");
        }
        content.check.feed(&self.data_out);
        content.headers.feed(&self.data_out);
        if content.too_big {
            self.data_out.clear();
        } else {
            let out = std::mem::replace(&mut self.data_out, Vec::with_capacity(DATA_CHUNK));
            self.pending.push_back(Step::Data(out));
        }
    }

    /// Ends the content: queues Commit, or Abort and the refusal.
    pub(super) fn end_content(&mut self) {
        self.take_content(true);
        let refusal = match self.tx.as_mut().and_then(|t| t.content.as_mut()) {
            None => Some(Reply::new(503, "5.5.1", "Error: no message in progress")),
            Some(c) => {
                c.check.finish();
                if c.too_big {
                    Some(Reply::new(
                        552,
                        "5.3.4",
                        "Error: message size exceeds fixed maximum message size",
                    ))
                } else if c.check.bare_lf || c.check.bare_cr {
                    Some(Reply::new(
                        550,
                        "5.6.0",
                        "Error: message contains a bare <CR> or <LF>; lines must end with <CR><LF> (RFC 5321 section 2.3.8)",
                    ))
                } else if c.check.nul {
                    Some(Reply::new(
                        550,
                        "5.6.0",
                        "Error: message contains a NUL octet, which mail text may not carry (RFC 5322, RFC 6152)",
                    ))
                } else if c.check.long_line {
                    Some(Reply::new(
                        550,
                        "5.6.0",
                        "Error: message has a line longer than 1000 octets (RFC 5321 section 4.5.3.1.6)",
                    ))
                } else {
                    c.headers
                        .verdict()
                        .map(|(code, enhanced, text)| Reply::new(code, enhanced, text))
                }
            }
        };
        match refusal {
            None => {
                self.phase = Phase::AwaitCommit;
                self.pending.push_back(Step::Commit);
            }
            Some(reply) => {
                self.pending.push_back(Step::Abort);
                self.tx = None;
                self.phase = Phase::Command;
                self.error_reply(reply);
            }
        }
    }

    pub(super) fn data_step(&mut self) -> bool {
        let Phase::Data(decoder) = &mut self.phase else {
            return false;
        };
        if self.pos == self.input.len() {
            return false;
        }
        let room = DATA_CHUNK.saturating_sub(self.data_out.len()).max(1);
        let end = self.input.len().min(self.pos + room);
        let (used, done) = decoder.decode(&self.input[self.pos..end], &mut self.data_out);
        self.pos += used;
        if done || self.data_out.len() >= DATA_CHUNK || self.pos == self.input.len() {
            self.take_content(false);
        }
        if done {
            self.end_content();
        }
        true
    }

    pub(super) fn bdat_step(&mut self) -> bool {
        let Phase::Bdat {
            remaining,
            last,
            refuse,
        } = &mut self.phase
        else {
            return false;
        };
        let avail = (self.input.len() - self.pos) as u64;
        let take = avail.min(*remaining).min(DATA_CHUNK as u64) as usize;
        *remaining -= take as u64;
        let chunk_done = *remaining == 0;
        let last = *last;
        let refuse = if chunk_done { refuse.take() } else { None };
        let refusing = refuse.is_some()
            || matches!(
                &self.phase,
                Phase::Bdat {
                    refuse: Some(_),
                    ..
                }
            );
        if take == 0 && !chunk_done {
            return false;
        }
        if !refusing {
            self.data_out
                .extend_from_slice(&self.input[self.pos..self.pos + take]);
            self.take_content(false);
        }
        self.pos += take;
        if !chunk_done {
            return true;
        }
        self.phase = Phase::Command;
        if let Some(reply) = refuse {
            self.error_reply(reply);
        } else if last {
            self.end_content();
        } else {
            let too_big = self
                .tx
                .as_ref()
                .and_then(|t| t.content.as_ref())
                .is_some_and(|c| c.too_big);
            if too_big {
                self.pending.push_back(Step::Abort);
                self.tx = None;
                self.error_reply(Reply::new(
                    552,
                    "5.3.4",
                    "Error: message size exceeds fixed maximum message size",
                ));
            } else {
                let size = self
                    .tx
                    .as_ref()
                    .and_then(|t| t.content.as_ref())
                    .map(|c| c.size)
                    .unwrap_or(0);
                self.reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("Ok: {size} octets received"),
                ));
            }
        }
        true
    }
}
