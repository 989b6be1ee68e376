//! The submission users file: one `user:PHC-hash` line per user, the hash an
//! argon2id PHC string (never a password in plain text). `finaldot user add`
//! and `remove` edit it (atomically: temp file, fsync, rename); the daemon
//! reads it at every AUTH, so a change takes effect without a reload.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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

/// Whether `password` is `user`'s. Takes tens of milliseconds (argon2):
/// call it off the async runtime.
pub fn verify(path: &Path, user: &str, password: &str) -> Result<bool, UsersError> {
    let users = read(path)?;
    let Some((_, hash)) = users.iter().find(|(u, _)| u == user) else {
        return Ok(false);
    };
    let Ok(parsed) = PasswordHash::new(hash) else {
        tracing::warn!(file = %path.display(), user, "unreadable password hash; this user cannot log in");
        return Ok(false);
    };
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        remove(&path, "alice").expect("remove");
        assert!(list(&path).expect("list").is_empty());
        assert!(matches!(
            remove(&path, "alice"),
            Err(UsersError::NoSuchUser(_))
        ));
    }
}
