//! The plugins' HTTP capability end to end against a small loopback HTTP
//! server: an allowed URL answers (the message body sent from the spool),
//! a URL outside the allow-list and a redirect out of it are refused, a
//! redirect inside it is followed, a response over the cap and a server
//! that does not answer in time are errors, and a plugin without the grant
//! is refused.

use finaldot_e2e::http::HttpServer;
use finaldot_e2e::*;

#[test]
fn a_granted_plugin_reaches_only_its_allow_list_within_its_limits() {
    let server = HttpServer::start();
    let base = format!("http://{}", server.addr);
    let dir = TestDir::new("plugin-http");
    let mail = dir.path().join("mail");
    let requests = [
        format!("POST {base}/echo"),
        format!("GET {base}/redirect-in"),
        format!("GET {base}/redirect-out"),
        format!("GET {base}/big"),
        format!("GET {base}/slow"),
        format!("GET {base}/../outside"),
        "GET http://127.0.0.1:9/elsewhere".to_string(),
    ];
    let only = toml_strings(&requests);
    let plugins = format!(
        "{}{}{}",
        plugin_toml(
            "no-grant",
            "finaldot_testbed",
            &format!("[plugins.config]\nmode = \"http\"\nonly = [\"GET {base}/echo\"]\n"),
        ),
        plugin_toml(
            "asker",
            "finaldot_testbed",
            &format!("timeout_ms = 20000\nhttp = {{ allow = [\"{base}/echo\", \"{base}/redirect\", \"{base}/big\", \"{base}/slow\"], timeout_ms = 1000, max_response_bytes = 65536 }}\n[plugins.config]\nmode = \"http\"\nonly = [{only}]\n"),
        ),
        local_delivery_toml(&mail)
    );
    let d = Daemon::start_with(dir.path(), &chain_config(dir.path(), &plugins));
    let mut c = d.connect();
    let (code, text) = c.send_message(
        "s@remote.test",
        &["alice@example.test"],
        b"Subject: over http\r\n\r\nthe body from the spool\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let text = only_delivery(&d, &mail);
    let answers = field_values(&text, "X-Http");
    assert_eq!(answers.len(), 8, "{text}");
    assert_eq!(answers[0], "error Some(NotGranted)");
    assert!(answers[1].starts_with("200 "), "{text}");
    assert!(answers[1].contains("Received: from"), "{text}");
    assert!(
        answers[2].starts_with("200 0"),
        "redirect inside followed: {text}"
    );
    assert_eq!(answers[3], "error Some(NotGranted)", "redirect out: {text}");
    assert_eq!(answers[4], "error Some(LimitReached)", "{text}");
    assert_eq!(answers[5], "error Some(Timeout)", "{text}");
    // Normalised to /outside, which no prefix covers.
    assert_eq!(answers[6], "error Some(NotGranted)", "{text}");
    assert_eq!(answers[7], "error Some(NotGranted)", "{text}");
    // The POST carried the message: its header fields, then the body from the spool.
    let got = server.received();
    let posted = got
        .iter()
        .find(|(m, p, _)| m == "POST" && p == "/echo")
        .expect("the POST arrived");
    let body = String::from_utf8_lossy(&posted.2);
    assert!(body.contains("Subject: over http\r\n"), "{body}");
    assert!(
        body.ends_with("\r\n\r\nthe body from the spool\r\n"),
        "{body}"
    );
    assert!(
        !got.iter().any(|(_, p, _)| p.contains("outside")),
        "{got:?}"
    );
}
