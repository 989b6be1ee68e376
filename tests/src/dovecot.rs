//! A private Dovecot (Debian's dovecot-core, dovecot-lmtpd, dovecot-imapd)
//! for the LMTP tests: LMTP on a free 127.0.0.1 port and on a Unix socket,
//! IMAP on another port, users alice, bob and carol (password `pw`) from a
//! passwd-file, Maildirs, logs and runtime files all under a temporary
//! directory (`dovecot -c FILE -F`, owned by its handle). As root (CI),
//! mail is stored as `nobody`, since Dovecot refuses uid 0 for mail.
//!
//! The messages are read back over IMAP with Python's `imaplib`, as a mail
//! client would.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, python3, stop_child};

/// The packages this harness needs, as the command that installs them.
pub const INSTALL: &str = "apt-get install -y dovecot-core dovecot-lmtpd dovecot-imapd";

/// A running Dovecot.
pub struct Dovecot {
    child: Option<Child>,
    /// Its directory (configuration, users, mail, log).
    pub dir: PathBuf,
    /// LMTP on 127.0.0.1.
    pub lmtp_port: u16,
    /// IMAP on 127.0.0.1.
    pub imap_port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn whoami() -> String {
    Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

impl Dovecot {
    /// Starts it in `dir/dovecot`; panics with the install command when
    /// Dovecot is not installed (`./dev test` installs it as root).
    pub fn start(dir: &Path) -> Dovecot {
        let found = Path::new("/usr/sbin/dovecot").exists()
            && Path::new("/usr/lib/dovecot/lmtp").exists()
            && Path::new("/usr/lib/dovecot/imap").exists();
        assert!(
            found,
            "Dovecot with LMTP and IMAP is needed for this test: {INSTALL} (./dev test installs it when run as root)"
        );
        let root = dir.join("dovecot");
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir dovecot");
        }
        // The mail user must be able to reach its Maildir.
        use std::os::unix::fs::PermissionsExt;
        for d in [dir, root.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))
                .expect("chmod dovecot dir");
        }
        let (mail_user, mail_group, internal, login) = if is_root() {
            let st = Command::new("chown")
                .arg("nobody:nogroup")
                .arg(root.join("mail"))
                .status()
                .expect("chown");
            assert!(st.success(), "chown nobody:nogroup");
            (
                "nobody".into(),
                "nogroup".into(),
                "root".into(),
                "dovenull".into(),
            )
        } else {
            let me = whoami();
            (me.clone(), me.clone(), me.clone(), me)
        };
        let users: String = ["alice", "bob", "carol"]
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}pw::::::\n"))
            .collect();
        std::fs::write(root.join("users"), users).expect("write users");
        let d = Dovecot {
            child: None,
            lmtp_port: free_port(),
            imap_port: free_port(),
            dir: root,
        };
        let t = d.dir.display();
        let conf = format!(
            "protocols = imap lmtp
listen = 127.0.0.1
base_dir = {t}/run
state_dir = {t}/state
log_path = {t}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Ln
default_internal_user = {internal}
default_internal_group = {internal}
default_login_user = {login}
mail_uid = {mail_user}
mail_gid = {mail_group}
mail_location = maildir:{t}/mail/%u/Maildir
hostname = dovecot.test
postmaster_address = postmaster@dovecot.test
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {t}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {t}/users
  default_fields = home={t}/mail/%u
}}
service lmtp {{
  unix_listener {t}/lmtp.sock {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
",
            lmtp = d.lmtp_port,
            imap = d.imap_port,
        );
        std::fs::write(d.dir.join("dovecot.conf"), conf).expect("write dovecot.conf");
        let mut d = d;
        d.resume();
        d
    }

    /// The LMTP Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("lmtp.sock")
    }

    /// Starts it again (same ports, same mail), waiting until LMTP answers.
    pub fn resume(&mut self) {
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-c")
            .arg(self.dir.join("dovecot.conf"))
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dovecot");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if TcpStream::connect(("127.0.0.1", self.lmtp_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.imap_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("dovecot did not start; its log:\n{}", self.log());
    }

    /// Stops it (SIGTERM, waiting for the master to exit).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c);
        }
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }

    /// Makes deliveries to `user` fail for now (451 after the data): a file
    /// stands where its mail directory would be.
    pub fn break_user(&self, user: &str) {
        std::fs::write(self.dir.join("mail").join(user), b"not a directory").expect("break user");
    }

    /// Undoes [`Dovecot::break_user`].
    pub fn fix_user(&self, user: &str) {
        std::fs::remove_file(self.dir.join("mail").join(user)).expect("fix user");
    }

    /// Waits (up to 30 s) until `user`'s INBOX holds `n` messages and
    /// returns them; panics with the daemon's and Dovecot's logs otherwise.
    pub fn wait_for(&self, user: &str, n: usize, d: &crate::Daemon) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let arrived = crate::wait_until(Duration::from_secs(30), || {
            got = self.inbox(user);
            got.len() >= n
        });
        assert!(
            arrived && got.len() == n,
            "{user} has {} messages, not {n}\ndaemon:\n{}\ndovecot:\n{}",
            got.len(),
            d.log(),
            self.log()
        );
        got
    }

    /// Every message in `user`'s INBOX, read over IMAP by Python's imaplib
    /// (`BODY.PEEK[]`, exact bytes, carried as hex).
    pub fn inbox(&self, user: &str) -> Vec<Vec<u8>> {
        let script = "import imaplib, sys\n\
            m = imaplib.IMAP4('127.0.0.1', int(sys.argv[1]))\n\
            m.login(sys.argv[2], 'pw')\n\
            m.select('INBOX', readonly=True)\n\
            typ, data = m.search(None, 'ALL')\n\
            for n in data[0].split():\n\
            \x20   typ, d = m.fetch(n, '(BODY.PEEK[])')\n\
            \x20   print(d[0][1].hex())\n\
            m.logout()\n";
        let out = python3()
            .arg("-c")
            .arg(script)
            .arg(self.imap_port.to_string())
            .arg(user)
            .output()
            .expect("python3 imaplib");
        assert!(
            out.status.success(),
            "imaplib as {user}: {}\ndovecot log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let l = l.trim().as_bytes();
                l.chunks(2)
                    .map(|h| {
                        std::str::from_utf8(h)
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .expect("hex from the script")
                    })
                    .collect()
            })
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}
