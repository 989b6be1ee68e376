//! The plugins' HTTP capability: requests to the URLs a plugin's `http`
//! grant allows (scheme, host, port and path prefix), with a timeout and a
//! cap on the response's size, over rustls (the system's CA bundle, else
//! Mozilla's roots; or a configured CA). Redirects are followed only while they stay inside the
//! allow-list (at most five); one that leaves it is refused. A message body
//! sent with `HttpBody::Message` is read from the spool by the host and
//! never passes through the plugin.
//!
//! SECURITY: the URL, the headers and the body are the plugin's; nothing is
//! sent to a URL the configuration did not list, and the response is cut at
//! the cap before it is handed back.

use std::io::Read;
use std::time::Duration;

use finaldot_sdk::wire::{Header, HostErrorKind, HostResponse, HttpBody, HttpResponse};
use url::Url;

use super::call::Body;

/// The HTTP capability as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// The URL prefixes a request may go to.
    pub allow: Vec<String>,
    /// The longest wait for a whole response.
    pub timeout: Duration,
    /// The largest response body handed back.
    pub max_response_bytes: u64,
    /// CA certificates (PEM) trusted instead of the system's bundle.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why the grant could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("http grant: {0}")]
pub struct HttpSetupError(String);

/// An opened grant: the agent and the parsed allow-list.
pub struct HttpAccess {
    agent: ureq::Agent,
    allow: Vec<Url>,
    grant: HttpGrant,
}

/// How many redirects inside the allow-list are followed.
const MAX_REDIRECTS: u32 = 5;

fn refuse(kind: HostErrorKind, message: String) -> HostResponse {
    HostResponse::Error { kind, message }
}

impl HttpAccess {
    /// Opens `grant`: parses its allow-list and its CA file.
    pub fn open(grant: &HttpGrant) -> Result<HttpAccess, HttpSetupError> {
        let allow = grant
            .allow
            .iter()
            .map(|u| Url::parse(u).map_err(|e| HttpSetupError(format!("{u:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = match &grant.ca_file {
            Some(path) => {
                let certs = certificates(path)?;
                if certs.is_empty() {
                    return Err(HttpSetupError(format!(
                        "{}: no certificate in the file",
                        path.display()
                    )));
                }
                ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs))
            }
            // The system's roots: the first bundle found where the common
            // distributions keep it (as Go's crypto/x509 looks), else the
            // Mozilla roots built in.
            None => system_bundle()
                .and_then(|p| certificates(&p).ok())
                .filter(|c| !c.is_empty())
                .map(|c| ureq::tls::RootCerts::Specific(std::sync::Arc::new(c)))
                .unwrap_or(ureq::tls::RootCerts::WebPki),
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(grant.timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Ok(HttpAccess {
            agent,
            allow,
            grant: grant.clone(),
        })
    }

    /// Whether `url` is inside the allow-list.
    fn allowed(&self, url: &Url) -> bool {
        self.allow.iter().any(|a| {
            a.scheme() == url.scheme()
                && a.host_str() == url.host_str()
                && a.port_or_known_default() == url.port_or_known_default()
                && url.path().starts_with(a.path())
        })
    }

    /// Sends one request; `timeout` may be shorter than the grant's (what
    /// is left of the plugin call).
    // Long on purpose: one request's allow-list check, redirects kept
    // inside the list, the size cap and the timeout, in the order they apply.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: &HttpBody,
        message: &Body,
        timeout: Duration,
    ) -> HostResponse {
        let method = method.to_ascii_uppercase();
        if !["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"].contains(&method.as_str()) {
            return refuse(HostErrorKind::Invalid, format!("HTTP method {method:?}"));
        }
        let bytes = match body {
            HttpBody::Empty => Vec::new(),
            HttpBody::Bytes(b) => b.clone(),
            HttpBody::Message { headers } => match message_bytes(headers, message) {
                Ok(b) => b,
                Err(e) => return refuse(HostErrorKind::Io, format!("reading the message: {e}")),
            },
            _ => {
                return refuse(
                    HostErrorKind::Invalid,
                    "a body this finaldot does not know".into(),
                )
            }
        };
        let mut url = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return refuse(HostErrorKind::Invalid, format!("{url:?}: {e}")),
        };
        let deadline = std::time::Instant::now() + timeout.min(self.grant.timeout);
        for _ in 0..=MAX_REDIRECTS {
            if !self.allowed(&url) {
                return refuse(
                    HostErrorKind::NotGranted,
                    format!("{url} is not in this plugin's http allow-list"),
                );
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return refuse(HostErrorKind::Timeout, format!("{url}: no time left"));
            }
            let mut req = ureq::http::Request::builder()
                .method(method.as_str())
                .uri(url.as_str());
            for (n, v) in headers {
                req = req.header(n.as_str(), v.as_str());
            }
            let req = match req.body(bytes.clone()) {
                Ok(r) => r,
                Err(e) => return refuse(HostErrorKind::Invalid, format!("{url}: {e}")),
            };
            let req = self
                .agent
                .configure_request(req)
                .timeout_global(Some(left))
                .build();
            let mut resp = match self.agent.run(req) {
                Ok(r) => r,
                Err(ureq::Error::Timeout(_)) => {
                    return refuse(HostErrorKind::Timeout, format!("{url}: timed out"))
                }
                Err(e) => return refuse(HostErrorKind::Io, format!("{url}: {e}")),
            };
            let status = resp.status().as_u16();
            if (300..400).contains(&status) {
                let next = resp
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok());
                if let Some(next) = next {
                    url = next;
                    continue;
                }
            }
            let fields = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let cap = self.grant.max_response_bytes;
            return match resp.body_mut().with_config().limit(cap).read_to_vec() {
                Ok(body) => HostResponse::Http(HttpResponse {
                    status,
                    headers: fields,
                    body,
                }),
                Err(ureq::Error::BodyExceedsLimit(_)) => refuse(
                    HostErrorKind::LimitReached,
                    format!("{url}: the response is larger than {cap} bytes"),
                ),
                Err(ureq::Error::Timeout(_)) => {
                    refuse(HostErrorKind::Timeout, format!("{url}: timed out"))
                }
                Err(e) => refuse(HostErrorKind::Io, format!("{url}: {e}")),
            };
        }
        refuse(
            HostErrorKind::Io,
            format!("{url}: more than {MAX_REDIRECTS} redirects"),
        )
    }
}

/// The certificates of a PEM file.
fn certificates(
    path: &std::path::Path,
) -> Result<Vec<ureq::tls::Certificate<'static>>, HttpSetupError> {
    let pem =
        std::fs::read(path).map_err(|e| HttpSetupError(format!("{}: {e}", path.display())))?;
    Ok(ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect())
}

/// The system's CA bundle: `SSL_CERT_FILE`, or the first of the usual places.
fn system_bundle() -> Option<std::path::PathBuf> {
    if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
        return Some(f.into());
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.is_file())
}

/// The message as sent: `headers`, a blank line, the body from the spool.
fn message_bytes(headers: &[Header], body: &Body) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for h in headers {
        h.write_to(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    let mut reader = BodyReader { body, at: 0 };
    reader.read_to_end(&mut out)?;
    Ok(out)
}

/// Reads a [`Body`] from the start.
struct BodyReader<'a> {
    body: &'a Body,
    at: u64,
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.body.read_at(self.at, buf)?;
        self.at += n as u64;
        Ok(n)
    }
}
