//! AUTH on the submission listener (RFC 4954): PLAIN and LOGIN, with or
//! without an initial response, and the client's lines in between. The
//! session never checks a password: it hands the credentials out as
//! [`Step::CheckAuth`] and takes the verdict back with
//! [`Session::auth_checked`].
//!
//! SECURITY: the client's lines are capped at `MAX_AUTH_LINE` (the
//! session logs nothing, credentials included), and every refusal counts
//! toward the error cap.

use super::*;

impl Session {
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.cfg.submission {
            return self.error_reply(Reply::new(
                502,
                "5.5.1",
                "Error: AUTH is not available here; use the submission port",
            ));
        }
        if self.greeting.is_none() {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: send EHLO first"));
        }
        if self.tls.is_none() {
            return self.error_reply(Reply::new(
                538,
                "5.7.11",
                "Error: encryption required for requested authentication mechanism (STARTTLS first)",
            ));
        }
        if self.authenticated.is_some() {
            return self.error_reply(Reply::new(503, "5.5.1", "Error: already authenticated"));
        }
        if self.tx.is_some() {
            return self.error_reply(Reply::new(
                503,
                "5.5.1",
                "Error: AUTH not permitted during a mail transaction",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(resp)) => self.auth_response(AuthWait::Plain, resp.as_bytes()),
            ("PLAIN", None) => {
                self.reply(Reply::new(334, "", ""));
                self.phase = Phase::AuthResponse(AuthWait::Plain);
            }
            ("LOGIN", Some(resp)) => self.auth_response(AuthWait::LoginUser, resp.as_bytes()),
            ("LOGIN", None) => {
                self.reply(Reply::new(334, "", "VXNlcm5hbWU6"));
                self.phase = Phase::AuthResponse(AuthWait::LoginUser);
            }
            _ => self.error_reply(Reply::new(
                504,
                "5.5.4",
                "Error: unrecognized authentication type (PLAIN and LOGIN are offered)",
            )),
        }
    }

    /// Reads one AUTH response line (RFC 4954 allows 12288 octets).
    pub(super) fn auth_line_step(&mut self) -> bool {
        let Phase::AuthResponse(wait) = &self.phase else {
            return false;
        };
        let wait = wait.clone();
        let avail = &self.input[self.pos..];
        let Some(lf) = memchr(b'\n', avail) else {
            if avail.len() > MAX_AUTH_LINE {
                self.pos = self.input.len();
                self.phase = Phase::SkipLongLine { auth: true };
            }
            return false;
        };
        let line = avail[..lf]
            .strip_suffix(b"\r")
            .unwrap_or(&avail[..lf])
            .to_vec();
        self.pos += lf + 1;
        self.phase = Phase::Command;
        if line.len() > MAX_AUTH_LINE {
            self.error_reply(line_too_long(true));
            return true;
        }
        self.auth_response(wait, &line);
        true
    }

    pub(super) fn auth_response(&mut self, wait: AuthWait, line: &[u8]) {
        use base64::Engine;
        if line == b"*" {
            return self.error_reply(Reply::new(501, "5.0.0", "Error: authentication cancelled"));
        }
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line)
        };
        let Ok(decoded) = decoded else {
            return self.error_reply(Reply::new(
                501,
                "5.5.2",
                "Error: cannot decode the response (base64)",
            ));
        };
        let text = String::from_utf8_lossy(&decoded).into_owned();
        match wait {
            AuthWait::Plain => {
                // authzid NUL authcid NUL passwd (RFC 4616); authzid must be
                // empty or the same user.
                let parts: Vec<&str> = text.split('\0').collect();
                match parts.as_slice() {
                    [authz, user, password] if authz.is_empty() || authz == user => {
                        self.phase = Phase::AwaitAuth;
                        self.pending.push_back(Step::Authenticate {
                            user: user.to_string(),
                            password: password.to_string(),
                        });
                    }
                    _ => self.error_reply(Reply::new(
                        535,
                        "5.7.8",
                        "Error: authentication credentials invalid",
                    )),
                }
            }
            AuthWait::LoginUser => {
                self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                self.phase = Phase::AuthResponse(AuthWait::LoginPassword(text));
            }
            AuthWait::LoginPassword(user) => {
                self.phase = Phase::AwaitAuth;
                self.pending.push_back(Step::Authenticate {
                    user,
                    password: text,
                });
            }
        }
    }
}
