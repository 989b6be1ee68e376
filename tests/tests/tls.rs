//! STARTTLS (RFC 3207) with a certificate generated at test time and a real
//! TLS client (rustls), including the CVE-2011-0411 class: commands pipelined
//! after STARTTLS in plaintext must not run inside the TLS session.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use finaldot_e2e::*;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

fn make_cert(dir: &Path) -> (PathBuf, PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key, ck.cert.der().clone())
}

/// A TLS client trusting only `der`, and the name its certificate carries.
fn connector(
    der: rustls::pki_types::CertificateDer<'static>,
) -> (
    tokio_rustls::TlsConnector,
    rustls::pki_types::ServerName<'static>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    (tokio_rustls::TlsConnector::from(Arc::new(client)), name)
}

async fn reply<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> (u16, String) {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.expect("read");
        assert!(n > 0, "closed; got {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return (line[..3].parse().expect("code"), all);
        }
    }
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(s: &mut BufReader<S>, line: &str) -> (u16, String) {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await
        .expect("write");
    reply(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_upgrades_resets_and_discards_pipelined_plaintext() {
    let dir = TestDir::new("tls");
    let (cert, key, der) = make_cert(dir.path());
    let cfg = test_config(
        dir.path(),
        &format!("tls = {{ cert = {cert:?}, key = {key:?} }}"),
        "",
    );
    let d = Daemon::start_with(dir.path(), &cfg);

    let tcp = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    let mut plain = BufReader::new(tcp);
    assert_eq!(reply(&mut plain).await.0, 220);
    let (code, ehlo) = cmd(&mut plain, "EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(
        ehlo.contains("250-STARTTLS\r\n") || ehlo.contains("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    // STARTTLS with a command pipelined behind it, in plaintext.
    plain
        .get_mut()
        .write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await
        .expect("write");
    let (code, text) = reply(&mut plain).await;
    assert_eq!(code, 220, "{text}");
    assert!(
        plain.buffer().is_empty(),
        "the server answered the pipelined plaintext"
    );

    let (connector, name) = connector(der);
    let tls = connector
        .connect(name, plain.into_inner())
        .await
        .expect("TLS handshake");
    let mut tls = BufReader::new(tls);

    // The session started over: the injected MAIL did not run.
    let (code, text) = cmd(&mut tls, "RCPT TO:<alice@example.test>").await;
    assert_eq!(code, 503, "{text}");
    let (code, ehlo) = cmd(&mut tls, "EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered again inside TLS: {ehlo}"
    );
    assert_eq!(cmd(&mut tls, "STARTTLS").await.0, 503);
    assert_eq!(cmd(&mut tls, "MAIL FROM:<a@b.test>").await.0, 250);
    assert_eq!(cmd(&mut tls, "RCPT TO:<alice@example.test>").await.0, 250);
    assert_eq!(cmd(&mut tls, "DATA").await.0, 354);
    tls.get_mut()
        .write_all(b"Subject: over TLS\r\n\r\nsecret\r\n.\r\n")
        .await
        .expect("write");
    let (code, text) = reply(&mut tls).await;
    assert_eq!(code, 250, "{text}");
    let _ = cmd(&mut tls, "QUIT").await;

    let files = d.spool_files(QueueState::Incoming);
    assert_eq!(files.len(), 1);
    let (h, msg) = read_message(&files[0]).expect("read");
    assert_eq!(
        h.envelope.mail_from, "a@b.test",
        "the injected sender must not be used"
    );
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.contains("with ESMTPS (using TLSv1.3 with cipher TLS13_"),
        "{text}"
    );
}

#[test]
fn a_bad_certificate_path_fails_the_start_with_the_file_named() {
    let dir = TestDir::new("tls-bad");
    let cfg = test_config(
        dir.path(),
        "tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }",
        "",
    );
    std::fs::write(dir.path().join("finaldot.toml"), cfg).expect("write");
    let out = std::process::Command::new(finaldot_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("finaldot.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_listener_handshakes_before_the_greeting() {
    let dir = TestDir::new("tls-implicit");
    let (cert, key, der) = make_cert(dir.path());
    let cfg = test_config(
        dir.path(),
        &format!("tls = {{ cert = {cert:?}, key = {key:?} }}\ntls_listen = [\"127.0.0.1:0\"]"),
        "",
    );
    let d = Daemon::start_with(dir.path(), &cfg);
    // The harness returns at the plain listener's line; this one follows it.
    let addr = d.logged_addr("listening (implicit TLS) at ");
    assert_ne!(addr, d.addr);

    // A plaintext client gets no greeting: the server waits for a ClientHello.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"EHLO plain\r\n").await.expect("write");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut raw, &mut buf),
    )
    .await
    .expect("the server must close, not hang")
    .unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"220"),
        "plaintext greeting on the TLS port"
    );

    let (connector, name) = connector(der);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let mut tls = BufReader::new(tls);
    assert_eq!(reply(&mut tls).await.0, 220);
    let (code, ehlo) = cmd(&mut tls, "EHLO client.test").await;
    assert_eq!(code, 250);
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS offered inside TLS: {ehlo}"
    );
    assert_eq!(cmd(&mut tls, "MAIL FROM:<a@b.test>").await.0, 250);
    assert_eq!(cmd(&mut tls, "RCPT TO:<alice@example.test>").await.0, 250);
    assert_eq!(cmd(&mut tls, "DATA").await.0, 354);
    tls.get_mut()
        .write_all(b"Subject: implicit\r\n\r\nsecret\r\n.\r\n")
        .await
        .expect("write");
    assert_eq!(reply(&mut tls).await.0, 250);
    let _ = cmd(&mut tls, "QUIT").await;

    let files = d.spool_files(QueueState::Incoming);
    assert_eq!(files.len(), 1);
    let (_, msg) = read_message(&files[0]).expect("read");
    let text = String::from_utf8_lossy(&msg);
    assert!(text.contains("with ESMTPS (using TLSv1.3"), "{text}");
}

#[test]
fn tls_listen_without_a_certificate_is_a_config_error() {
    let dir = TestDir::new("tls-listen-nocert");
    let cfg = test_config(dir.path(), "tls_listen = [\"127.0.0.1:0\"]", "");
    std::fs::write(dir.path().join("finaldot.toml"), cfg).expect("write");
    let out = std::process::Command::new(finaldot_bin())
        .arg("check-config")
        .arg(dir.path().join("finaldot.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smtp.tls_listen"), "{err}");
}
