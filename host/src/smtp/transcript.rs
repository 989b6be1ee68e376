//! A session driver with no I/O, for tests: it feeds a [`Session`] input in
//! pieces, answers every [`Step`] as a well-behaved driver would (every
//! `Begin` and `Commit` succeeds unless told to fail, STARTTLS completes,
//! AUTH succeeds only for `alice`/`secret`, the door answers as scripted or
//! continues) and records what the session
//! did. The session's unit tests, the property tests and the fuzz target all
//! drive sessions through this one copy.

use super::reply::Reply;
use super::session::{Session, Step};
use crate::spool::Envelope;
use finaldot_sdk::wire::TlsFacts;

/// The TLS a test handshake "negotiates".
pub fn test_tls() -> TlsFacts {
    TlsFacts {
        protocol: "TLSv1.3".into(),
        cipher: "TEST".into(),
    }
}

/// What a session did when driven.
#[derive(Debug, Default)]
pub struct Transcript {
    /// Every reply, as sent on the wire.
    pub replies: Vec<u8>,
    /// Committed messages: envelope and content, in order.
    pub committed: Vec<(Envelope, Vec<u8>)>,
    /// The message begun and not yet committed or aborted.
    pub open: Option<(Envelope, Vec<u8>)>,
    /// `Begin` steps seen.
    pub begins: usize,
    /// `Abort` steps seen.
    pub aborts: usize,
    /// Whether the session asked to close.
    pub closed: bool,
    /// Answer every `Begin` with this error instead of success.
    pub begin_fail: Option<Reply>,
    /// Answer every `Commit` with this error instead of a queue id.
    pub commit_fail: Option<Reply>,
    /// STARTTLS handshakes done.
    pub tls_started: usize,
    /// What the door answers, in order (then continue).
    pub door_answers: std::collections::VecDeque<crate::door::DoorAnswer>,
    /// What the session asked the door.
    pub door_asks: Vec<finaldot_sdk::wire::DoorInput>,
}

impl Transcript {
    /// Feeds `input` to `session` cut at `cuts` (offsets taken modulo the
    /// input's length plus one, in any order), driving it after each piece,
    /// until the input ends or the session closes.
    pub fn run(mut self, session: &mut Session, input: &[u8], cuts: &[usize]) -> Transcript {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        points.push(input.len());
        let mut prev = 0;
        for p in points {
            session.feed(&input[prev..p]);
            prev = p;
            self.drive(session);
            if self.closed {
                break;
            }
        }
        self
    }

    /// Answers the session's steps until it needs input or closes.
    pub fn drive(&mut self, s: &mut Session) {
        loop {
            match s.next_step() {
                Step::NeedInput => return,
                Step::Close => {
                    self.closed = true;
                    return;
                }
                Step::Reply(r) => r.write_to(&mut self.replies),
                Step::Begin(env) => {
                    self.begins += 1;
                    match self.begin_fail.clone() {
                        Some(r) => s.begun(Err(r)),
                        None => {
                            self.open = Some((*env, Vec::new()));
                            s.begun(Ok(()));
                        }
                    }
                }
                Step::Data(d) => match self.open.as_mut() {
                    Some(open) => open.1.extend(d),
                    None => panic!("the session sent content with no message begun"),
                },
                Step::Abort => {
                    self.aborts += 1;
                    self.open = None;
                }
                Step::StartTls => {
                    self.tls_started += 1;
                    s.tls_established(test_tls());
                }
                Step::Door(ask) => {
                    let answer = self
                        .door_answers
                        .pop_front()
                        .unwrap_or(crate::door::DoorAnswer::Continue);
                    self.door_asks.push(*ask);
                    s.door_answered(answer);
                }
                Step::Authenticate { user, password } => {
                    let ok = user == "alice" && password == "secret";
                    s.auth_checked(if ok {
                        super::session::AuthResult::Valid(user)
                    } else {
                        super::session::AuthResult::Invalid
                    });
                }
                Step::Commit => {
                    let Some(m) = self.open.take() else {
                        panic!("the session committed with no message begun");
                    };
                    match self.commit_fail.clone() {
                        Some(r) => s.committed(Err(r)),
                        None => {
                            self.committed.push(m);
                            s.committed(Ok(format!("Q{}", self.committed.len())));
                        }
                    }
                }
            }
        }
    }

    /// The code of every final reply line, in order.
    pub fn codes(&self) -> Vec<u16> {
        String::from_utf8_lossy(&self.replies)
            .lines()
            .filter(|l| l.len() >= 4 && &l[3..4] == " ")
            .filter_map(|l| l[..3].parse().ok())
            .collect()
    }
}
