//! Capabilities a plugin can be granted: directories (read-only or
//! read-write), a key-value namespace (and its MAC key), DNS lookups and
//! HTTP to allow-listed URLs (`http.rs`); this module opens the grants and
//! dispatches every host request to the one that serves it. Nothing is
//! granted by default.
//!
//! SECURITY: every path comes from a plugin and is hostile. It is checked with
//! [`check_relative_path`] and then opened through `cap-std`, whose `Dir`
//! resolves paths beneath its root only: `..`, absolute paths and symlinks
//! that lead outside are refused by the operating system's `openat` walk, not
//! by string checks alone. Writes go to a read-write grant only, and are
//! durable and atomic (temp file, fsync, rename, directory fsync).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use finaldot_sdk::wire::{
    check_relative_path, DnsType, Header, HostErrorKind, HostRequest, HostResponse,
};

use super::call::{Body, CallBudget};
use super::kv::{Kv, KvError, KvGrant};
use crate::group_commit::IoGroupCommit;

/// A directory grant as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The name the plugin uses (`cx.dir(name)`).
    pub name: String,
    /// The directory on the host.
    pub path: PathBuf,
    /// Whether the plugin may write.
    pub writable: bool,
}

/// The DNS capability as configured (`dns = true` or a table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsGrant {
    /// The servers to ask (`[dns] nameservers`); empty: the system's.
    pub nameservers: Vec<std::net::SocketAddr>,
    /// The longest wait for one answer.
    pub timeout: std::time::Duration,
    /// Lookups one message may make (RFC 7208's ten is the model).
    pub max_lookups: u32,
}

/// What one plugin is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Directories.
    pub dirs: Vec<DirGrant>,
    /// The plugin's key-value namespace and its backend, if granted.
    pub kv: Option<KvGrant>,
    /// DNS lookups through the host's resolver, if granted.
    pub dns: Option<DnsGrant>,
    /// HTTP requests to allow-listed URLs, if granted.
    pub http: Option<super::http::HttpGrant>,
}

/// Grants opened for use: directory handles that cannot reach outside.
pub struct OpenGrants {
    dirs: HashMap<String, (Dir, bool)>,
    /// The resolver and the grant's limits, when DNS is granted.
    dns: Option<(Arc<crate::dns::Dns>, DnsGrant)>,
    /// The HTTP agent and allow-list, when HTTP is granted.
    http: Option<super::http::HttpAccess>,
    kv: Option<Kv>,
    /// One group commit per (grant, directory): concurrent deliveries into
    /// the same Maildir share its directory fsync.
    dir_syncs: Mutex<HashMap<(String, String), Arc<DirSync>>>,
    /// The key-value namespace's MAC key, once read or made.
    mac_key: Mutex<Option<ring::hmac::Key>>,
    /// Held around file creations and renames in the granted directories:
    /// concurrent deliveries into one Maildir otherwise spin in the kernel
    /// on its directory lock while the holder allocates an inode; here
    /// they sleep instead (the writes and fsyncs still run concurrently).
    names: Mutex<()>,
}

type DirSync = IoGroupCommit<()>;

/// A capability failure, reported to the plugin as a [`HostResponse::Error`].
#[derive(Debug)]
pub struct CapError {
    kind: HostErrorKind,
    message: String,
}

impl CapError {
    fn new(kind: HostErrorKind, message: impl Into<String>) -> Self {
        CapError {
            kind,
            message: message.into(),
        }
    }

    fn io(what: &str, e: io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => HostErrorKind::StorageFull,
            Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::EPERM) => HostErrorKind::Escape,
            _ if e.kind() == io::ErrorKind::NotFound => HostErrorKind::NotFound,
            _ if e.kind() == io::ErrorKind::PermissionDenied => HostErrorKind::Escape,
            _ => HostErrorKind::Io,
        };
        CapError::new(kind, format!("{what}: {e}"))
    }
}

impl OpenGrants {
    /// Opens every granted directory (creating read-write ones if missing).
    pub fn open(grants: &Grants) -> io::Result<OpenGrants> {
        let mut dirs = HashMap::new();
        for g in &grants.dirs {
            // A missing directory is created empty (for a read-only grant that
            // grants nothing yet, e.g. a lists directory with no lists).
            std::fs::create_dir_all(&g.path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("creating grant {:?} at {}: {e}", g.name, g.path.display()),
                )
            })?;
            let dir = Dir::open_ambient_dir(&g.path, ambient_authority()).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("opening grant {:?} at {}: {e}", g.name, g.path.display()),
                )
            })?;
            dirs.insert(g.name.clone(), (dir, g.writable));
        }
        let kv = match &grants.kv {
            Some(g) => Some(Kv::open(g)?),
            None => None,
        };
        let dns = match &grants.dns {
            Some(g) => Some((
                crate::dns::shared(&g.nameservers).map_err(io::Error::other)?,
                g.clone(),
            )),
            None => None,
        };
        let http = match &grants.http {
            Some(g) => Some(super::http::HttpAccess::open(g).map_err(io::Error::other)?),
            None => None,
        };
        Ok(OpenGrants {
            dirs,
            dns,
            http,
            kv,
            dir_syncs: Mutex::default(),
            mac_key: Mutex::default(),
            names: Mutex::default(),
        })
    }

    /// Nothing granted.
    pub fn none() -> OpenGrants {
        OpenGrants {
            dirs: HashMap::new(),
            dns: None,
            http: None,
            kv: None,
            dir_syncs: Mutex::default(),
            mac_key: Mutex::default(),
            names: Mutex::default(),
        }
    }

    fn dir(&self, grant: &str, path: &str, write: bool) -> Result<&Dir, CapError> {
        let (dir, writable) = self.dirs.get(grant).ok_or_else(|| {
            CapError::new(
                HostErrorKind::NotGranted,
                format!("no directory is granted as {grant:?}"),
            )
        })?;
        if write && !writable {
            return Err(CapError::new(
                HostErrorKind::NotGranted,
                format!("directory grant {grant:?} is read-only"),
            ));
        }
        check_relative_path(path)
            .map_err(|why| CapError::new(HostErrorKind::Escape, format!("{path:?}: {why}")))?;
        Ok(dir)
    }

    /// Serves one request. `now` is seconds since the epoch (for kv expiry);
    /// `budget` is what the current call may still spend.
    pub fn handle(
        &self,
        req: &HostRequest,
        body: &Body,
        now: u64,
        budget: CallBudget<'_>,
    ) -> HostResponse {
        if let HostRequest::DnsLookup { name, rtype } = req {
            return self.dns_lookup(name, *rtype, budget);
        }
        if let HostRequest::Http {
            method,
            url,
            headers,
            body: request_body,
        } = req
        {
            let Some(http) = &self.http else {
                return HostResponse::Error {
                    kind: HostErrorKind::NotGranted,
                    message: "HTTP is not granted to this plugin (http = { allow = [...] } in its [[plugins]] entry)".into(),
                };
            };
            let left = budget.left().unwrap_or(std::time::Duration::MAX);
            return http.send(method, url, headers, request_body, body, left);
        }
        let served = match req {
            HostRequest::KvGet { .. }
            | HostRequest::KvPut { .. }
            | HostRequest::KvDelete { .. }
            | HostRequest::KvPutIfAbsent { .. }
            | HostRequest::KvMac { .. }
            | HostRequest::KvIncr { .. } => self.kv_request(req, now, budget),
            _ => self.serve(req, body),
        };
        match served {
            Ok(r) => r,
            Err(e) => HostResponse::Error {
                kind: e.kind,
                message: e.message,
            },
        }
    }

    /// One DNS lookup within the grant's budget and timeout, and within the
    /// call's own time limit (so a dead DNS server gives the plugin Timeout
    /// answers instead of getting it killed, and its message held).
    fn dns_lookup(&self, name: &str, rtype: DnsType, budget: CallBudget<'_>) -> HostResponse {
        let left = budget.left();
        let used = budget.dns_used;
        let refuse = |kind, message: String| HostResponse::Error { kind, message };
        let Some((resolver, grant)) = &self.dns else {
            return refuse(
                HostErrorKind::NotGranted,
                "DNS is not granted to this plugin (dns = true in its [[plugins]] entry)".into(),
            );
        };
        if name.is_empty()
            || name.len() > 253
            || name.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return refuse(
                HostErrorKind::Invalid,
                format!("{name:?} is not a DNS name"),
            );
        }
        if *used >= grant.max_lookups {
            return refuse(
                HostErrorKind::LimitReached,
                format!(
                    "DNS lookup budget of this message spent ({} lookups; asking {name} {rtype:?})",
                    grant.max_lookups
                ),
            );
        }
        *used += 1;
        let timeout = left.map_or(grant.timeout, |l| l.min(grant.timeout));
        if timeout.is_zero() {
            return HostResponse::Dns(finaldot_sdk::wire::DnsAnswer::empty(
                finaldot_sdk::wire::DnsOutcome::Timeout,
            ));
        }
        HostResponse::Dns(resolver.lookup(name, rtype, timeout))
    }

    /// The namespace's MAC key: read from the namespace, or made at random
    /// and stored there if absent (of two nodes racing, the first store
    /// wins and both use it); kept in memory once known.
    fn mac_key(
        &self,
        kv: &Kv,
        now: u64,
        limit: Option<std::time::Duration>,
    ) -> Result<ring::hmac::Key, KvError> {
        if let Some(key) = self.mac_key.lock().ok().and_then(|k| k.clone()) {
            return Ok(key);
        }
        let mut fresh = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| KvError::Storage(io::Error::other("no randomness for the MAC key")))?;
        let stored = kv.put_if_absent(finaldot_sdk::plugin::MAC_KEY, &fresh, now, None, limit)?;
        let bytes = stored.unwrap_or_else(|| fresh.to_vec());
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
        if let Ok(mut k) = self.mac_key.lock() {
            *k = Some(key.clone());
        }
        Ok(key)
    }

    /// One key-value request, within the call's time limit. A backend that
    /// cannot answer is noted in the budget (the call then defers).
    fn kv_request(
        &self,
        req: &HostRequest,
        now: u64,
        budget: CallBudget<'_>,
    ) -> Result<HostResponse, CapError> {
        let kv = self.kv()?;
        let limit = budget.left();
        let result = match req {
            HostRequest::KvGet { key } => kv.get(key, now, limit).map(HostResponse::Data),
            HostRequest::KvPut {
                key,
                value,
                ttl_secs,
            } => kv
                .put(key, value, now, *ttl_secs, limit)
                .map(|()| HostResponse::Done),
            HostRequest::KvDelete { key } => kv.delete(key, limit).map(|()| HostResponse::Done),
            HostRequest::KvPutIfAbsent {
                key,
                value,
                ttl_secs,
            } => kv
                .put_if_absent(key, value, now, *ttl_secs, limit)
                .map(HostResponse::Data),
            HostRequest::KvMac { data } => self.mac_key(kv, now, limit).map(|key| {
                HostResponse::Data(Some(ring::hmac::sign(&key, data).as_ref().to_vec()))
            }),
            HostRequest::KvIncr {
                key,
                delta,
                ttl_secs,
            } => kv
                .incr(key, *delta, now, *ttl_secs, limit)
                .map(HostResponse::Count),
            _ => {
                return Err(CapError::new(
                    HostErrorKind::Invalid,
                    "not a key-value request",
                ))
            }
        };
        result.map_err(|e| match e {
            KvError::Storage(e) if e.kind() == io::ErrorKind::InvalidData => {
                CapError::new(HostErrorKind::Invalid, format!("kv: {e}"))
            }
            KvError::Storage(e) => CapError::io("kv", e),
            e @ KvError::Unavailable { timed_out, .. } => {
                let message = format!("kv: {e}");
                budget.unavailable.get_or_insert_with(|| message.clone());
                let kind = if timed_out {
                    HostErrorKind::Timeout
                } else {
                    HostErrorKind::Io
                };
                CapError::new(kind, message)
            }
        })
    }

    // Long on purpose: one short arm per HostRequest, beside each other so the capability rules can be read together.
    fn serve(&self, req: &HostRequest, body: &Body) -> Result<HostResponse, CapError> {
        Ok(match req {
            HostRequest::ReadFile { grant, path } => {
                let dir = self.dir(grant, path, false)?;
                let data = dir.read(path).map_err(|e| CapError::io(path, e))?;
                HostResponse::Data(Some(data))
            }
            HostRequest::WriteFile { grant, path, data } => {
                let dir = self.dir(grant, path, true)?;
                let tmp = tmp_name(path);
                self.write_durably(grant, dir, &tmp, path, |f| f.write_all(data))?;
                HostResponse::Done
            }
            HostRequest::ListDir { grant, path } => {
                let dir = self.dir(grant, path, false)?;
                let rd = if path.is_empty() {
                    dir.entries()
                } else {
                    dir.read_dir(path)
                }
                .map_err(|e| CapError::io(path, e))?;
                let mut names: Vec<String> = rd
                    .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
                    .collect();
                names.sort();
                HostResponse::Entries(names)
            }
            HostRequest::CreateDir { grant, path } => {
                let dir = self.dir(grant, path, true)?;
                // One level at a time, fsyncing the parent of each directory
                // made, so that a new Maildir survives a crash together with
                // the first message delivered into it.
                let mut made = String::new();
                for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
                    let parent = made.clone();
                    if !made.is_empty() {
                        made.push('/');
                    }
                    made.push_str(part);
                    match dir.create_dir(&made) {
                        Ok(()) => self.sync_dir_shared(grant, dir, &parent)?,
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(CapError::io(path, e)),
                    }
                }
                HostResponse::Done
            }
            HostRequest::Exists { grant, path } => {
                let dir = self.dir(grant, path, false)?;
                match dir.metadata(path) {
                    Ok(_) => HostResponse::Bool(true),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => HostResponse::Bool(false),
                    Err(e) => return Err(CapError::io(path, e)),
                }
            }
            HostRequest::WriteMessage {
                grant,
                tmp_path,
                path,
                headers,
                lf_endings,
            } => {
                let dir = self.dir(grant, path, true)?;
                self.dir(grant, tmp_path, true)?;
                self.write_durably(grant, dir, tmp_path, path, |f| {
                    write_message(f, headers, body, *lf_endings)
                })?;
                HostResponse::Done
            }
            HostRequest::DnsLookup { .. }
            | HostRequest::Http { .. }
            | HostRequest::KvGet { .. }
            | HostRequest::KvPut { .. }
            | HostRequest::KvDelete { .. }
            | HostRequest::KvPutIfAbsent { .. }
            | HostRequest::KvMac { .. }
            | HostRequest::KvIncr { .. } => {
                return Err(CapError::new(
                    HostErrorKind::Invalid,
                    "DNS, HTTP and key-value requests are served by handle",
                ))
            }
        })
    }

    /// Writes `tmp` with `fill`, fsyncs it, renames it to `path`, fsyncs
    /// `path`'s directory (shared with concurrent writes into it).
    fn write_durably(
        &self,
        grant: &str,
        dir: &Dir,
        tmp: &str,
        path: &str,
        fill: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
    ) -> Result<(), CapError> {
        let file = {
            let _names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            dir.open_with(
                tmp,
                OpenOptions::new().write(true).create(true).truncate(true),
            )
        }
        .map_err(|e| CapError::io(tmp, e))?;
        let mut file = file.into_std();
        let written = fill(&mut file).and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = dir.remove_file(tmp);
            return Err(CapError::io(tmp, e));
        }
        drop(file);
        let renamed = {
            let _names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            dir.rename(tmp, dir, path)
        };
        if let Err(e) = renamed {
            let _ = dir.remove_file(tmp);
            return Err(CapError::io(path, e));
        }
        self.sync_dir_shared(grant, dir, parent_of(path))
    }

    /// fsyncs `parent` (in `grant`), sharing the fsync with concurrent
    /// callers for the same directory.
    fn sync_dir_shared(&self, grant: &str, dir: &Dir, parent: &str) -> Result<(), CapError> {
        let key = (grant.to_string(), parent.to_string());
        let lock = || {
            self.dir_syncs
                .lock()
                .map_err(|_| CapError::new(HostErrorKind::Io, "directory sync lock poisoned"))
        };
        let sync = lock()?
            .entry(key.clone())
            .or_insert_with(|| Arc::new(IoGroupCommit::io("directory fsync")))
            .clone();
        let result = sync
            .submit_io((), |_| sync_dir(dir, parent))
            .map_err(|e| CapError::io("fsync directory", e));
        // Forget a directory nobody else is syncing, so the map stays as small
        // as the set of directories in use (clones are only made under the lock).
        let mut syncs = lock()?;
        if Arc::strong_count(&sync) == 2 {
            syncs.remove(&key);
        }
        result
    }

    fn kv(&self) -> Result<&Kv, CapError> {
        self.kv.as_ref().ok_or_else(|| {
            CapError::new(
                HostErrorKind::NotGranted,
                "no key-value namespace is granted",
            )
        })
    }
}

impl OpenGrants {
    /// Whether serving `req` waits (on the disk for an fsync, on the network
    /// for a DNS answer or a Redis reply), rather than taking a few
    /// microseconds of CPU.
    pub fn waits(&self, req: &HostRequest) -> bool {
        match req {
            HostRequest::KvGet { .. } => self.kv.as_ref().is_some_and(Kv::is_remote),
            HostRequest::WriteFile { .. }
            | HostRequest::WriteMessage { .. }
            | HostRequest::KvPut { .. }
            | HostRequest::KvDelete { .. }
            | HostRequest::KvPutIfAbsent { .. }
            | HostRequest::KvIncr { .. }
            | HostRequest::DnsLookup { .. }
            | HostRequest::Http { .. } => true,
            // The first call makes and stores the key.
            HostRequest::KvMac { .. } => self.mac_key.lock().map_or(true, |k| k.is_none()),
            _ => false,
        }
    }
}

fn tmp_name(path: &str) -> String {
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) => (format!("{p}/"), n),
        None => (String::new(), path),
    };
    format!(
        "{parent}.{name}.finaldot-tmp.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(['(', ')'], "")
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn sync_dir(dir: &Dir, path: &str) -> io::Result<()> {
    // cap-std's directory handles are O_PATH; fsync needs a readable descriptor.
    let target = if path.is_empty() { "." } else { path };
    dir.open_with(target, OpenOptions::new().read(true))?
        .into_std()
        .sync_all()
}

fn write_message(
    f: &mut std::fs::File,
    headers: &[Header],
    body: &Body,
    lf: bool,
) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(64 * 1024, f);
    let mut head = Vec::new();
    for h in headers {
        h.write_to(&mut head);
    }
    head.extend_from_slice(b"\r\n");
    let mut last_cr = false;
    let mut put = |w: &mut io::BufWriter<&mut std::fs::File>, chunk: &[u8]| -> io::Result<()> {
        if !lf {
            return w.write_all(chunk);
        }
        // CRLF → LF, also across chunk boundaries.
        let mut start = 0;
        for (i, &b) in chunk.iter().enumerate() {
            if last_cr && b != b'\n' {
                w.write_all(b"\r")?;
            }
            if b == b'\r' {
                w.write_all(&chunk[start..i])?;
                start = i + 1;
                last_cr = true;
            } else {
                last_cr = false;
            }
        }
        w.write_all(&chunk[start..])
    };
    put(&mut w, &head)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        let n = body.read_at(off, &mut buf)?;
        if n == 0 {
            break;
        }
        put(&mut w, &buf[..n])?;
        off += n as u64;
    }
    if last_cr {
        w.write_all(b"\r")?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real capability layer keeps the contract the SDK's TestHost keeps
    /// (`finaldot_sdk::contract`), so a plugin's `cargo test` means something.
    #[test]
    fn the_host_keeps_the_host_function_contract() {
        let root = tempfile::tempdir().expect("tempdir");
        let (rw, ro) = (root.path().join("rw"), root.path().join("ro"));
        let grants = Grants {
            dirs: vec![
                DirGrant {
                    name: "rw".into(),
                    path: rw.clone(),
                    writable: true,
                },
                DirGrant {
                    name: "ro".into(),
                    path: ro.clone(),
                    writable: false,
                },
            ],
            kv: Some(KvGrant::Local(root.path().join("kv"))),
            dns: None,
            http: None,
        };
        let open = OpenGrants::open(&grants).expect("open grants");
        let body = Body::Bytes(std::sync::Arc::from(finaldot_sdk::contract::BODY));
        let now = crate::unix_now();
        finaldot_sdk::contract::check(&rw, &ro, &mut |req| {
            let budget = CallBudget {
                dns_used: &mut 0,
                deadline: None,
                unavailable: &mut None,
            };
            open.handle(req, &body, now, budget)
        });
    }
}
