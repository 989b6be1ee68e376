//! DKIM keys for an administrator: `finaldot dkim keygen` writes a new
//! private key (RSA 2048 or Ed25519, PEM PKCS#8, mode 0600) and gives the
//! TXT record to publish; `finaldot dkim check` looks the record up and
//! says whether it carries the key's public half.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use finaldot_sdk::wire::{DnsOutcome, DnsRecord, DnsType};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey, LineEnding};

use super::sign::{parse_private_key, read_private_key, ParsedKey};
use crate::dns::Dns;

/// The key types `keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA-SHA256, 2048 bits: what every receiver verifies.
    Rsa,
    /// Ed25519-SHA256 (RFC 8463): small, but not verified everywhere yet;
    /// publish it beside an RSA key.
    Ed25519,
}

/// Why a key could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// Writing the key failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file exists: never overwrite a key that may be published.
    #[error("{0} exists; choose another selector (a published key must stay until its record is gone) or remove the file first")]
    Exists(PathBuf),
    /// Making the key failed.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] super::sign::KeyError),
}

/// `SELECTOR._domainkey.DOMAIN`.
pub fn record_name(domain: &str, selector: &str) -> String {
    format!(
        "{selector}._domainkey.{}",
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// The TXT record's text for a public key.
pub fn record_text(kind: &str, public: &[u8]) -> String {
    format!(
        "v=DKIM1; k={kind}; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    )
}

/// The record as a zone file line, its text in strings of at most 255
/// octets (RFC 1035 §3.3.14).
pub fn zone_line(name: &str, text: &str) -> String {
    let chunks: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{name}. 3600 IN TXT ( {} )", chunks.join(" "))
}

/// A new key written to `path` (which must not exist), and its record text.
pub fn keygen(algorithm: Algorithm, path: &Path) -> Result<String, KeysError> {
    if path.exists() {
        return Err(KeysError::Exists(path.to_path_buf()));
    }
    let pem = match algorithm {
        Algorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                .map_err(|e| KeysError::Generate(e.to_string()))?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| KeysError::Generate(e.to_string()))?
                .to_string()
        }
        Algorithm::Ed25519 => {
            let doc =
                ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|e| KeysError::Generate(e.to_string()))?;
            rsa::pkcs8::SecretDocument::try_from(doc.as_ref())
                .and_then(|d| d.to_pem("PRIVATE KEY", LineEnding::LF))
                .map_err(|e| KeysError::Generate(e.to_string()))?
                .to_string()
        }
    };
    let parsed = parse_private_key(pem.as_bytes()).map_err(KeysError::Generate)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| KeysError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let write = |path: &Path| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(pem.as_bytes())?;
        f.sync_all()
    };
    write(path).map_err(|source| KeysError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(record_text(parsed.kind(), parsed.public()))
}

/// What `dkim check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The record carries the key's public half.
    Matches,
    /// The record is there, with another key (or unreadable).
    Differs(String),
    /// No usable record: not published yet, or DNS failed.
    Missing(String),
}

fn same_public_key(parsed: &ParsedKey, published: &[u8]) -> bool {
    match parsed {
        ParsedKey::Ed25519 { public, .. } => public.as_slice() == published,
        ParsedKey::Rsa { public, .. } => {
            let ours = rsa::RsaPublicKey::from_public_key_der(public).ok();
            // p= is SubjectPublicKeyInfo; some tools publish the bare
            // RSAPublicKey (PKCS#1), which verifiers accept too.
            let theirs = rsa::RsaPublicKey::from_public_key_der(published)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(published))
                .ok();
            ours.is_some() && ours == theirs
        }
    }
}

/// Looks up `SELECTOR._domainkey.DOMAIN` and compares it with the key in
/// `key_file`.
pub fn check(dns: &Dns, domain: &str, selector: &str, key_file: &Path) -> Result<Check, KeysError> {
    let parsed = read_private_key(key_file)?;
    let name = record_name(domain, selector);
    let answer = dns.lookup(&name, DnsType::Txt, Duration::from_secs(10));
    let records: Vec<Vec<u8>> = match answer.outcome {
        DnsOutcome::Found => answer
            .records
            .into_iter()
            .filter_map(|r| match r {
                DnsRecord::Txt(t) => Some(t),
                _ => None,
            })
            .collect(),
        DnsOutcome::NxDomain | DnsOutcome::NoData => {
            return Ok(Check::Missing(format!("no TXT record at {name}")))
        }
        DnsOutcome::ServFail => {
            return Ok(Check::Missing(format!("DNS failed (SERVFAIL) for {name}")))
        }
        DnsOutcome::Timeout => return Ok(Check::Missing(format!("DNS timed out for {name}"))),
        _ => return Ok(Check::Missing(format!("DNS failed for {name}"))),
    };
    let Some(record) = records.iter().find(|r| {
        let t = String::from_utf8_lossy(r);
        t.contains("p=") && !t.trim_start().starts_with("v=spf1")
    }) else {
        return Ok(Check::Missing(format!(
            "{name} has TXT records, none a DKIM key"
        )));
    };
    if let Err(e) = DomainKey::parse(record) {
        return Ok(Check::Differs(format!(
            "the record at {name} is not a valid DKIM key record ({e})"
        )));
    }
    // The p= tag (RFC 6376 §3.6.1; white space inside the value is allowed).
    let text = String::from_utf8_lossy(record);
    let p: String = text
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim() == "p")
        .map(|(_, v)| v.chars().filter(|c| !c.is_whitespace()).collect())
        .unwrap_or_default();
    if p.is_empty() {
        return Ok(Check::Differs(format!(
            "the key at {name} is revoked (empty p=)"
        )));
    }
    let Ok(published) = base64::engine::general_purpose::STANDARD.decode(p.as_bytes()) else {
        return Ok(Check::Differs(format!("p= at {name} is not base64")));
    };
    if same_public_key(&parsed, &published) {
        Ok(Check::Matches)
    } else {
        Ok(Check::Differs(format!(
            "{name} publishes another key than {}; publish: {}",
            key_file.display(),
            record_text(parsed.kind(), parsed.public())
        )))
    }
}
