//! The submission users file: one `user:PHC-hash` line per user, the hash an
//! argon2id PHC string (never a password in plain text). `finaldot user add`
//! and `remove` edit it (atomically: temp file, fsync, rename); the daemon
//! reads it at every AUTH, so a change takes effect without a reload.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;

/// What can go wrong with the users file.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A user name that cannot be stored.
    #[error("invalid user name {0:?}: use letters, digits and . _ - + @")]
    BadName(String),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// Hashing failed.
    #[error("hashing the password: {0}")]
    Hash(String),
    /// `remove` of a user that is not there.
    #[error("no user {0:?}")]
    NoSuchUser(String),
}

fn io(path: &Path, source: std::io::Error) -> UsersError {
    UsersError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lines of the file as (user, hash); a missing file has no users.
fn read(path: &Path) -> Result<Vec<(String, String)>, UsersError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path, e)),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(u, h)| (u.to_string(), h.to_string()))
        .collect())
}

fn write(path: &Path, users: &[(String, String)]) -> Result<(), UsersError> {
    let mut text = String::from(
        "# finaldot submission users: user:argon2id hash (edit with `finaldot user`)\n",
    );
    for (u, h) in users {
        text.push_str(&format!("{u}:{h}\n"));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    written.map_err(|e| io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn valid_name(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 256
        && user
            .chars()
            .all(|c| c.is_alphanumeric() || ".-_+@".contains(c))
}

/// Adds `user` with `password`, or replaces the password of an existing one.
/// Returns true when the user was new.
pub fn add(path: &Path, user: &str, password: &str) -> Result<bool, UsersError> {
    if !valid_name(user) {
        return Err(UsersError::BadName(user.to_string()));
    }
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    let salt = SaltString::generate(&mut OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| UsersError::Hash(e.to_string()))?
        .to_string();
    let mut users = read(path)?;
    let new = match users.iter_mut().find(|(u, _)| u == user) {
        Some(entry) => {
            entry.1 = hash;
            false
        }
        None => {
            users.push((user.to_string(), hash));
            true
        }
    };
    write(path, &users)?;
    Ok(new)
}

/// Removes `user`.
pub fn remove(path: &Path, user: &str) -> Result<(), UsersError> {
    let mut users = read(path)?;
    let before = users.len();
    users.retain(|(u, _)| u != user);
    if users.len() == before {
        return Err(UsersError::NoSuchUser(user.to_string()));
    }
    write(path, &users)
}

/// The user names, in file order.
pub fn list(path: &Path) -> Result<Vec<String>, UsersError> {
    Ok(read(path)?.into_iter().map(|(u, _)| u).collect())
}

/// Argon2's working memory (about 19 MiB with the default parameters),
/// kept by one checking thread and reused for every check, so the memory
/// AUTH uses is bounded by the number of checking threads, whatever the
/// number of clients.
#[derive(Default)]
pub struct Scratch(Vec<argon2::Block>);

impl Scratch {
    /// At least `blocks` blocks of working memory.
    fn blocks(&mut self, blocks: usize) -> &mut [argon2::Block] {
        if self.0.len() < blocks {
            self.0 = vec![argon2::Block::new(); blocks];
        }
        &mut self.0[..blocks]
    }
}

/// The salt an unknown user's check is computed with (the result is
/// thrown away; only the time it takes matters).
const DUMMY_SALT: &[u8] = b"finaldot-no-such-user";

/// Whether `password` is `user`'s, computed in `scratch` (argon2's working
/// memory, reused). Takes tens of milliseconds: call it off the async
/// runtime. An unknown user costs the same argon2 computation as a known
/// one (with the parameters of the file's first readable hash, or argon2's
/// defaults), so the time of a refusal says nothing about whether the name
/// exists.
pub fn verify_with(
    path: &Path,
    user: &str,
    password: &str,
    scratch: &mut Scratch,
) -> Result<bool, UsersError> {
    let users = read(path)?;
    fn parsed<'a>(path: &Path, (u, h): &'a (String, String)) -> Option<PasswordHash<'a>> {
        let p = PasswordHash::new(h);
        if p.is_err() {
            tracing::warn!(file = %path.display(), user = %crate::Printable(u), "unreadable password hash; this user cannot log in");
        }
        p.ok()
    }
    let own = users
        .iter()
        .find(|(u, _)| u == user)
        .and_then(|e| parsed(path, e));
    let Some(hash) = own else {
        // The same work as a wrong password: parameters from the file.
        let model = users.iter().find_map(|(_, h)| PasswordHash::new(h).ok());
        let argon = model.as_ref().and_then(argon_of).unwrap_or_default();
        let mut out = vec![0u8; argon.params().output_len().unwrap_or(32)];
        let blocks = scratch.blocks(argon.params().block_count());
        let _ =
            argon.hash_password_into_with_memory(password.as_bytes(), DUMMY_SALT, &mut out, blocks);
        return Ok(false);
    };
    Ok(check(&hash, password, scratch))
}

/// The argon2 instance (algorithm, version, parameters) `hash` was made
/// with; `None` when it names something argon2 does not know.
fn argon_of(hash: &PasswordHash) -> Option<Argon2<'static>> {
    let params = argon2::Params::try_from(hash).ok()?;
    let algorithm = argon2::Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        None => argon2::Version::default(),
        Some(v) => argon2::Version::try_from(v).ok()?,
    };
    Some(Argon2::new(algorithm, version, params))
}

/// Whether `password` gives `hash`, computed in `scratch`; the comparison
/// takes constant time.
fn check(hash: &PasswordHash, password: &str, scratch: &mut Scratch) -> bool {
    let Some(argon) = argon_of(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = scratch.blocks(argon.params().block_count());
    let mut out = vec![0u8; expected.len()];
    if argon
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_err()
    {
        return false;
    }
    // Output's equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check with working memory of its own.
    fn verify(path: &Path, user: &str, password: &str) -> Result<bool, UsersError> {
        verify_with(path, user, password, &mut Scratch::default())
    }

    #[test]
    fn add_verify_replace_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        assert!(!verify(&path, "alice", "pw").expect("verify"));
        assert!(add(&path, "alice", "correct horse").expect("add"));
        let text = fs::read_to_string(&path).expect("read");
        assert!(text.contains("alice:$argon2id$"), "{text}");
        assert!(!text.contains("correct horse"));
        assert!(verify(&path, "alice", "correct horse").expect("verify"));
        assert!(!verify(&path, "alice", "wrong").expect("verify"));
        assert!(!verify(&path, "bob", "correct horse").expect("verify"));
        assert!(!add(&path, "alice", "new one").expect("replace"));
        assert!(!verify(&path, "alice", "correct horse").expect("verify"));
        assert!(verify(&path, "alice", "new one").expect("verify"));
        assert!(matches!(
            add(&path, "bad name", "x"),
            Err(UsersError::BadName(_))
        ));
        assert!(matches!(
            add(&path, "bob", ""),
            Err(UsersError::EmptyPassword)
        ));
        // The reused working memory gives the same answers.
        let mut scratch = Scratch::default();
        assert!(verify_with(&path, "alice", "new one", &mut scratch).expect("verify"));
        assert!(!verify_with(&path, "alice", "new on", &mut scratch).expect("verify"));
        assert!(!verify_with(&path, "nobody", "new one", &mut scratch).expect("verify"));
        assert!(verify_with(&path, "alice", "new one", &mut scratch).expect("verify"));
        remove(&path, "alice").expect("remove");
        assert!(list(&path).expect("list").is_empty());
        assert!(matches!(
            remove(&path, "alice"),
            Err(UsersError::NoSuchUser(_))
        ));
    }
}
