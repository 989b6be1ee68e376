//! The metrics listener (`[metrics] listen`): `/metrics` in the Prometheus
//! text format and the status page at `/`, over HTTP/1.1 with hyper.
//!
//! SECURITY: anyone who can connect may read; bind it to loopback or a
//! management network. At most [`MAX_CONNECTIONS`] at once, one request
//! each, the header within [`HEADER_TIMEOUT`]: idle sockets cannot hold the
//! page hostage.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use tracing::{debug, info, warn};

use super::{global, status, SAMPLE_EVERY};
use crate::spool::Spool;

async fn handle(
    req: Request<hyper::body::Incoming>,
    spool: Arc<Spool>,
    plugins_status: Arc<PathBuf>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            global().render(&spool),
        ),
        "/" => {
            let plugins =
                std::fs::read_to_string(plugins_status.as_ref()).unwrap_or_else(|_| "[]".into());
            (
                200,
                "text/html; charset=utf-8",
                status::status_page(&global().reading(&spool), &plugins),
            )
        }
        _ => (404, "text/plain; charset=utf-8", "not found\n".to_string()),
    };
    let resp = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)));
    Ok(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error")))))
}

/// Most connections the metrics listener serves at once; more are closed.
const MAX_CONNECTIONS: usize = 64;

/// The longest wait for a request's header.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest a connection may last, request and response.
const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `/metrics` and `/` on `addr`; returns the bound address. At
/// most [`MAX_CONNECTIONS`] at once, one request each, the header within
/// [`HEADER_TIMEOUT`]: the page cannot be held hostage by idle sockets.
pub async fn serve(
    addr: SocketAddr,
    spool: Arc<Spool>,
    plugins_status: PathBuf,
) -> std::io::Result<SocketAddr> {
    let listener = crate::bind_listener(addr, "metrics").await?;
    let bound = listener.local_addr()?;
    let plugins_status = Arc::new(plugins_status);
    // The graphs' history: a sample now and every SAMPLE_EVERY.
    let sampled = spool.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        loop {
            every.tick().await;
            let spool = sampled.clone();
            let _ = tokio::task::spawn_blocking(move || status::record(&global().reading(&spool)))
                .await;
        }
    });
    tokio::spawn(async move {
        let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the cap: closed at once, nothing read.
            let Ok(slot) = open.clone().try_acquire_owned() else {
                continue;
            };
            let (spool, plugins_status) = (spool.clone(), plugins_status.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    handle(req, spool.clone(), plugins_status.clone())
                });
                // One request a connection, its header within
                // HEADER_TIMEOUT, the whole exchange within CONNECTION_TIMEOUT:
                // an idle or half-sent request holds no slot for long.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                    Ok(Err(e)) => debug!(error = %e, "metrics connection"),
                    Err(_) => debug!("metrics connection timed out"),
                    Ok(Ok(())) => {}
                }
                drop(slot);
            });
        }
    });
    info!(addr = %bound, "metrics and status page on http://{bound}/");
    Ok(bound)
}
