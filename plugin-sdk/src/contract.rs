//! The host-function contract: what every [`HostRequest`] answers, written
//! once and run against both implementations of it, the real host's
//! capability layer (finaldot's `plugins::caps`, in its unit tests) and the
//! native [`TestHost`](super::TestHost) (in this crate's), so a plugin that
//! passes its `cargo test` behaves the same inside the daemon.
//!
//! The caller prepares two granted directories, `rw` (writable) and `ro`
//! (read-only), both empty, and a key-value namespace that is empty; the
//! message body is [`BODY`]; the clock does not move during the run.

use std::path::Path;

use crate::wire::{Header, HostErrorKind, HostRequest, HostResponse};

/// The message body the caller makes available to `WriteMessage`.
pub const BODY: &[u8] = b"line one\r\nline two\r\n";

/// Runs every case through `call`; `rw` and `ro` are the granted
/// directories on disk (to check what a write left there). Panics on the
/// first answer that breaks the contract, naming the case.
pub fn check(rw: &Path, ro: &Path, call: &mut dyn FnMut(&HostRequest) -> HostResponse) {
    let mut expect = |case: &str, req: HostRequest, want: HostResponse| {
        let got = call(&req);
        let same = match (&want, &got) {
            (HostResponse::Error { kind: a, .. }, HostResponse::Error { kind: b, .. }) => a == b,
            _ => want == got,
        };
        assert!(
            same,
            "{case}: {req:?} answered {got:?}, the contract says {want:?}"
        );
    };
    grants_and_paths(&mut expect);
    files_and_directories(rw, ro, &mut expect);
    key_value(&mut expect);
}

/// One case: a request and the answer the contract wants (for an error,
/// only its kind is compared).
type Expect<'a> = dyn FnMut(&str, HostRequest, HostResponse) + 'a;

fn error(kind: HostErrorKind) -> HostResponse {
    HostResponse::Error {
        kind,
        message: String::new(),
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

/// Paths that escape, grants that do not exist or are read-only.
fn grants_and_paths(expect: &mut Expect<'_>) {
    for (case, grant, path) in [
        ("absolute path", "rw", "/etc/passwd"),
        ("dot-dot", "rw", "a/../../x"),
        ("dot component", "rw", "a/./b"),
    ] {
        expect(
            case,
            HostRequest::ReadFile {
                grant: s(grant),
                path: s(path),
            },
            error(HostErrorKind::Escape),
        );
    }
    expect(
        "unknown grant",
        HostRequest::Exists {
            grant: s("nope"),
            path: s("x"),
        },
        error(HostErrorKind::NotGranted),
    );
    expect(
        "write to a read-only grant",
        HostRequest::WriteFile {
            grant: s("ro"),
            path: s("x"),
            data: b"x".to_vec(),
        },
        error(HostErrorKind::NotGranted),
    );
    expect(
        "create in a read-only grant",
        HostRequest::CreateDir {
            grant: s("ro"),
            path: s("d"),
        },
        error(HostErrorKind::NotGranted),
    );
    expect(
        "missing file",
        HostRequest::ReadFile {
            grant: s("ro"),
            path: s("missing"),
        },
        error(HostErrorKind::NotFound),
    );
}

/// Reads, writes, listings and the durable message write.
// Long on purpose: one host request after another, each with the answer the contract expects; split, the order of the file operations (write, then read it back, then list) would be lost.
fn files_and_directories(rw: &Path, ro: &Path, expect: &mut Expect<'_>) {
    expect(
        "exists before",
        HostRequest::Exists {
            grant: s("rw"),
            path: s("d/f"),
        },
        HostResponse::Bool(false),
    );
    expect(
        "write into a missing directory",
        HostRequest::WriteFile {
            grant: s("rw"),
            path: s("d/f"),
            data: b"data".to_vec(),
        },
        error(HostErrorKind::NotFound),
    );
    expect(
        "create a directory and its parents",
        HostRequest::CreateDir {
            grant: s("rw"),
            path: s("d/e"),
        },
        HostResponse::Done,
    );
    expect(
        "write a file",
        HostRequest::WriteFile {
            grant: s("rw"),
            path: s("d/f"),
            data: b"data".to_vec(),
        },
        HostResponse::Done,
    );
    expect(
        "read it back",
        HostRequest::ReadFile {
            grant: s("rw"),
            path: s("d/f"),
        },
        HostResponse::Data(Some(b"data".to_vec())),
    );
    expect(
        "exists after",
        HostRequest::Exists {
            grant: s("rw"),
            path: s("d/f"),
        },
        HostResponse::Bool(true),
    );
    expect(
        "list, sorted",
        HostRequest::ListDir {
            grant: s("rw"),
            path: s("d"),
        },
        HostResponse::Entries(vec![s("e"), s("f")]),
    );
    expect(
        "list the grant's root",
        HostRequest::ListDir {
            grant: s("ro"),
            path: String::new(),
        },
        HostResponse::Entries(Vec::new()),
    );
    for (lf, name, want) in [
        (
            false,
            "crlf",
            &b"Return-Path: <a@b>\r\n\r\nline one\r\nline two\r\n"[..],
        ),
        (
            true,
            "lf",
            &b"Return-Path: <a@b>\n\nline one\nline two\n"[..],
        ),
    ] {
        expect(
            "write the message",
            HostRequest::WriteMessage {
                grant: s("rw"),
                tmp_path: format!("d/e/{name}.tmp"),
                path: format!("d/{name}"),
                headers: vec![Header::new("Return-Path", "<a@b>")],
                lf_endings: lf,
            },
            HostResponse::Done,
        );
        let written = std::fs::read(rw.join("d").join(name)).unwrap_or_default();
        assert_eq!(written, want, "write the message ({name}): bytes on disk");
        assert!(
            !rw.join("d/e").join(format!("{name}.tmp")).exists(),
            "write the message ({name}): the temporary file was renamed"
        );
    }
    assert!(
        !ro.join("x").exists(),
        "nothing was written into the read-only grant"
    );
}

/// The key-value namespace.
fn key_value(expect: &mut Expect<'_>) {
    let key = || b"k".to_vec();
    expect(
        "get a missing key",
        HostRequest::KvGet { key: key() },
        HostResponse::Data(None),
    );
    expect(
        "put",
        HostRequest::KvPut {
            key: key(),
            value: b"v1".to_vec(),
            ttl_secs: None,
        },
        HostResponse::Done,
    );
    expect(
        "get",
        HostRequest::KvGet { key: key() },
        HostResponse::Data(Some(b"v1".to_vec())),
    );
    expect(
        "put if absent, present",
        HostRequest::KvPutIfAbsent {
            key: key(),
            value: b"v2".to_vec(),
            ttl_secs: Some(60),
        },
        HostResponse::Data(Some(b"v1".to_vec())),
    );
    expect(
        "delete",
        HostRequest::KvDelete { key: key() },
        HostResponse::Done,
    );
    expect(
        "delete again",
        HostRequest::KvDelete { key: key() },
        HostResponse::Done,
    );
    expect(
        "put if absent, absent",
        HostRequest::KvPutIfAbsent {
            key: key(),
            value: b"v3".to_vec(),
            ttl_secs: Some(60),
        },
        HostResponse::Data(None),
    );
    expect(
        "get after put if absent",
        HostRequest::KvGet { key: key() },
        HostResponse::Data(Some(b"v3".to_vec())),
    );
    expect(
        "a binary key",
        HostRequest::KvPut {
            key: vec![0, 255, b'/', b'.'],
            value: Vec::new(),
            ttl_secs: Some(3600),
        },
        HostResponse::Done,
    );
    expect(
        "an empty value is a value",
        HostRequest::KvGet {
            key: vec![0, 255, b'/', b'.'],
        },
        HostResponse::Data(Some(Vec::new())),
    );
    let counter = || b"contract-counter".to_vec();
    for (delta, now) in [(1, 1), (41, 42), (-2, 40)] {
        expect(
            "a counter adds up",
            HostRequest::KvIncr {
                key: counter(),
                delta,
                ttl_secs: Some(60),
            },
            HostResponse::Count(now),
        );
    }
    expect(
        "a counter reads as decimal text",
        HostRequest::KvGet { key: counter() },
        HostResponse::Data(Some(b"40".to_vec())),
    );
    expect(
        "a value that is not a counter",
        HostRequest::KvIncr {
            key: key(),
            delta: 1,
            ttl_secs: None,
        },
        error(HostErrorKind::Invalid),
    );
}
