//! Which local parts name a mailbox: the one rule shared by the SMTP front end
//! (which refuses the others at RCPT time, `550 5.1.1`) and the
//! `local-delivery` plugin (which turns a local part into a mailbox
//! directory name).
//!
//! It lives here, in the SDK, because both sides already depend on this
//! crate and on nothing else in common: the host checks every RCPT for a
//! local domain with [`check_local_part`] in memory, before its 250, and the
//! plugin derives the directory name with [`mailbox_name`], so the two can
//! never disagree about which recipients are deliverable. A recipient the
//! front end accepted is one whose name the plugin can store, so no bounce
//! is ever sent for a name the front end could have refused (a forged sender
//! would receive it: backscatter). Which users exist is configured apart
//! (`[domains] recipients` for the front end, the plugin's `users`): keep
//! those lists the same.
//!
//! The rule (untrusted input: the address is the client's): the local part is
//! an RFC 5321 `Dot-string` (atoms of `atext`, or visible non-ASCII
//! characters for SMTPUTF8 (RFC 6531): no controls, white space or invisible
//! format characters; joined by single dots, with no dot first or last), at most 64 octets (RFC 5321
//! §4.5.3.1.1), with no `/` (a path separator in a mailbox's directory name).
//! A quoted local part (`"john smith"`, `"a@b"`) has no mailbox: the front end
//! already drops quotes that are not needed, so what is still quoted needs
//! them.

/// The longest local part a mailbox can have, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART: usize = 64;

/// Whether `c` may appear in an atom of a deliverable local part: RFC 5322
/// `atext` without `/`, or a non-ASCII character that is visible: not a
/// control, not white space (NBSP, the line and paragraph separators…), not
/// an invisible format character (zero-width spaces and joiners, the
/// bidirectional overrides and isolates, the byte order mark, the soft
/// hyphen), which would make two mailboxes look the same.
fn mailbox_char(c: char) -> bool {
    if !c.is_ascii() {
        let invisible = matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        );
        return !c.is_control() && !c.is_whitespace() && !invisible;
    }
    c.is_ascii_alphanumeric() || "!#$%&'*+-=?^_`{|}~".contains(c)
}

/// Checks that `local` (an address's local part, as the client wrote it)
/// names a mailbox; the error says why not, in words fit for an SMTP reply.
pub fn check_local_part(local: &str) -> Result<(), &'static str> {
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > MAX_LOCAL_PART {
        return Err("local part longer than 64 octets");
    }
    if local.starts_with('"') {
        return Err("quoted local parts have no mailbox here");
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("a local part may not begin or end with a dot or hold two in a row");
    }
    if !local.chars().all(|c| c == '.' || mailbox_char(c)) {
        return Err("local part holds a character a mailbox name cannot have");
    }
    Ok(())
}

/// The mailbox a local part names: lower-cased, with a `+tag` (after the
/// first `delimiter`) removed unless nothing would be left; an error if
/// [`check_local_part`] refuses it.
pub fn mailbox_name(local: &str, delimiter: Option<char>) -> Result<String, &'static str> {
    check_local_part(local)?;
    let user = local.to_lowercase();
    Ok(match delimiter.and_then(|d| user.split_once(d)) {
        Some((base, _tag)) if !base.is_empty() => base.to_string(),
        _ => user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_and_unusual_local_parts_have_mailboxes() {
        for ok in [
            "alice",
            "first.last",
            "a+tag",
            "o'brien",
            "x_y-z",
            "{weird}|~#$%&*=?^`!",
            "jörg",
            "用户",
            &"a".repeat(64),
        ] {
            assert_eq!(check_local_part(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn what_a_mailbox_name_cannot_hold_is_refused() {
        for bad in [
            "",
            "\"victim@relay-target.example\"",
            "\"john smith\"",
            "a/b",
            "../etc",
            ".hidden",
            "trailing.",
            "a..b",
            "a\\b",
            "a\u{0}b",
            "a\u{7}b",
            "a\u{85}b",
            "a b",
            "a@b",
            "a:b",
            "a\u{200B}b",
            "a\u{00A0}b",
            "\u{202E}gnp.exe",
            "a\u{FEFF}",
            "a\u{2028}b",
            &"a".repeat(65),
            &"é".repeat(33),
        ] {
            assert!(check_local_part(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mailbox_names_are_lower_case_without_the_tag() {
        assert_eq!(mailbox_name("Alice+Lists", Some('+')), Ok("alice".into()));
        assert_eq!(mailbox_name("alice+lists", None), Ok("alice+lists".into()));
        assert_eq!(mailbox_name("+tag", Some('+')), Ok("+tag".into()));
        assert_eq!(mailbox_name("JÖRG", Some('+')), Ok("jörg".into()));
        assert!(mailbox_name("a/b+c", Some('+')).is_err());
    }
}
