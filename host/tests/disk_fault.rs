//! The disk-full and I/O-error paths, through a real socket: a fault injected
//! behind the spool's file interface must give 452 / 451, never a 250, and the
//! session must go on once the fault clears.

use std::path::Path;
use std::sync::Arc;

use finaldot::config::Config;
use finaldot::smtp::server::Server;
use finaldot::spool::{QueueState, Spool};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.r.read_line(&mut line).await.expect("read") > 0,
                "closed"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        self.reply().await
    }
}

async fn start(dir: &Path) -> (Arc<Spool>, Client, tokio::sync::oneshot::Sender<()>) {
    let text = format!(
        "data_dir = {:?}\n[smtp]\nlisten = [\"127.0.0.1:0\"]\n[domains.localhost]\n",
        dir
    );
    let config = Config::parse(&text, "test", dir).expect("config");
    let spool = Arc::new(Spool::open(&config.spool_dir()).expect("spool"));
    let server = Server::bind(
        &config.smtp,
        &config.submission,
        config.session_config(),
        spool.clone(),
        std::sync::Arc::new(finaldot::door::OpenDoor),
    )
    .await
    .expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = stopped.await;
        server.shutdown().await;
    });
    let (r, w) = TcpStream::connect(addr)
        .await
        .expect("connect")
        .into_split();
    let mut c = Client {
        r: BufReader::new(r),
        w,
    };
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.cmd("EHLO c.test").await.starts_with("250"));
    (spool, c, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_before_data_gets_452_instead_of_354() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, mut c, _stop) = start(dir.path()).await;
    spool.inject_write_fault(libc::ENOSPC);
    assert!(c.cmd("MAIL FROM:<a@b.test>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<x@localhost>").await.starts_with("250"));
    let r = c.cmd("DATA").await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    assert!(spool.list(QueueState::Incoming).expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_during_data_gets_452_then_eio_451_then_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, mut c, _stop) = start(dir.path()).await;
    for (errno, want) in [
        (libc::ENOSPC, "452 4.3.1"),
        (libc::EIO, "451 4.3.0"),
        (0, "250 2.0.0"),
    ] {
        spool.inject_write_fault(0);
        assert!(c.cmd("MAIL FROM:<a@b.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<x@localhost>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        spool.inject_write_fault(errno);
        let r = c.cmd("Subject: x\r\n\r\nbody\r\n.").await;
        assert!(r.starts_with(want), "errno {errno}: {r}");
    }
    assert_eq!(spool.list(QueueState::Incoming).expect("list").len(), 1);
    assert_eq!(
        std::fs::read_dir(spool.dir(QueueState::Tmp))
            .expect("ls")
            .count(),
        0,
        "failed messages must leave no tmp file"
    );
}
