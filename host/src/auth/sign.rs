//! Outbound DKIM signing (RFC 6376): every configured key whose domain is
//! the From domain signs the message as it leaves, after every plugin's
//! change (a list's rewritten headers included). Keys are RSA-SHA256 (at
//! least 1024 bits, 2048 recommended; RFC 8301) or Ed25519-SHA256 (RFC
//! 8463), read from PEM files when the configuration is loaded.
//!
//! What is signed follows RFC 6376 §5.4: the fields a reader sees and a
//! forger would change (From, Subject, Date, To, Cc, Reply-To, the
//! Resent-, List- and MIME fields, Message-ID, In-Reply-To, References),
//! each listed once more than it occurs (§5.4.2 oversigning), so no such
//! field can be added after signing; From is listed twice besides. The
//! canonicalisation is relaxed/relaxed, the receivers' most tolerant.
//!
//! SECURITY: the keys live in this process only; [`Signer`]'s `Debug`
//! names keys, never their material.

use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use mail_auth::AuthenticatedMessage;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// The fields signed, in the order they are listed (§5.4.1's list).
pub const SIGNED_FIELDS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no private key this server can use.
    #[error("{path}: {why}")]
    Unusable {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what would be right.
        why: String,
    },
}

/// A DKIM signature could not be made.
#[derive(Debug, thiserror::Error)]
#[error("DKIM signing with {selector}._domainkey.{domain} failed: {why}")]
pub struct SignError {
    /// The key's domain.
    pub domain: String,
    /// The key's selector.
    pub selector: String,
    /// What mail-auth said.
    pub why: String,
}

enum Keys {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

/// One configured signing key.
pub struct SigningKey {
    /// The signing domain, `d=`, lowercase.
    pub domain: String,
    /// The selector, `s=`.
    pub selector: String,
    /// Where the key was read from.
    pub path: PathBuf,
    /// `k=` of its DNS record: `rsa` or `ed25519`.
    pub kind: &'static str,
    /// The key's size in bits (256 for Ed25519).
    pub bits: usize,
    /// Its public key as the DNS record's `p=` carries it, decoded: RSA's
    /// SubjectPublicKeyInfo, Ed25519's 32 bytes.
    pub public_key: Vec<u8>,
    keys: Keys,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}._domainkey.{} ({} {} bits, {})",
            self.selector,
            self.domain,
            self.kind,
            self.bits,
            self.path.display()
        )
    }
}

fn signer<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    domain: &str,
    selector: &str,
) -> Box<DkimSigner<T, Done>> {
    Box::new(
        DkimSigner::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(SIGNED_FIELDS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed),
    )
}

/// The key in `pem` (PKCS#8 Ed25519 or RSA, or PKCS#1 RSA), as a DER
/// document and what it is.
pub fn parse_private_key(pem: &[u8]) -> Result<ParsedKey, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        format!("no PEM private key in it ({e}); `finaldot dkim keygen` writes one")
    })?;
    match &der {
        PrivateKeyDer::Pkcs8(p) => {
            let bytes = p.secret_pkcs8_der();
            if let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes) {
                return Ok(ParsedKey::Ed25519 {
                    public: k.public_key(),
                    der: bytes.to_vec(),
                });
            }
            let rsa = rsa::RsaPrivateKey::from_pkcs8_der(bytes)
                .map_err(|e| format!("neither an Ed25519 nor an RSA key: {e}"))?;
            ParsedKey::rsa(rsa, der.clone_key())
        }
        PrivateKeyDer::Pkcs1(p) => {
            let rsa = rsa::RsaPrivateKey::from_pkcs1_der(p.secret_pkcs1_der())
                .map_err(|e| format!("not an RSA key: {e}"))?;
            ParsedKey::rsa(rsa, der.clone_key())
        }
        _ => Err("an EC (SEC1) key: DKIM signs with RSA or Ed25519".into()),
    }
}

/// The private key in the PEM file at `path`.
pub fn read_private_key(path: &Path) -> Result<ParsedKey, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_private_key(&pem).map_err(|why| KeyError::Unusable {
        path: path.to_path_buf(),
        why,
    })
}

/// A private key read from a file.
pub enum ParsedKey {
    /// RSA.
    Rsa {
        /// Its size.
        bits: usize,
        /// Its SubjectPublicKeyInfo (DER).
        public: Vec<u8>,
        /// The private key.
        der: PrivateKeyDer<'static>,
    },
    /// Ed25519.
    Ed25519 {
        /// Its 32-byte public key.
        public: Vec<u8>,
        /// The PKCS#8 document.
        der: Vec<u8>,
    },
}

impl ParsedKey {
    fn rsa(key: rsa::RsaPrivateKey, der: PrivateKeyDer<'static>) -> Result<ParsedKey, String> {
        let bits = key.size() * 8;
        let public = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| format!("its public key does not encode: {e}"))?
            .as_bytes()
            .to_vec();
        Ok(ParsedKey::Rsa { bits, public, der })
    }

    /// `k=` of the DNS record.
    pub fn kind(&self) -> &'static str {
        match self {
            ParsedKey::Rsa { .. } => "rsa",
            ParsedKey::Ed25519 { .. } => "ed25519",
        }
    }

    /// The public key as `p=` carries it, decoded.
    pub fn public(&self) -> &[u8] {
        match self {
            ParsedKey::Rsa { public, .. } | ParsedKey::Ed25519 { public, .. } => public,
        }
    }
}

impl SigningKey {
    /// Reads the key for `selector._domainkey.domain` from `path`.
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<SigningKey, KeyError> {
        let parsed = read_private_key(path)?;
        let unusable = |why: String| KeyError::Unusable {
            path: path.to_path_buf(),
            why,
        };
        let (keys, bits) = match &parsed {
            ParsedKey::Rsa { bits, der, .. } => {
                if *bits < 1024 {
                    return Err(unusable(format!(
                        "an RSA key of {bits} bits; RFC 8301 requires at least 1024 (use 2048)"
                    )));
                }
                let key = RsaKey::<Sha256>::from_key_der(der.clone_key())
                    .map_err(|e| unusable(format!("RSA key refused: {e}")))?;
                (Keys::Rsa(signer(key, domain, selector)), *bits)
            }
            ParsedKey::Ed25519 { der, .. } => {
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der)
                    .map_err(|e| unusable(format!("Ed25519 key refused: {e}")))?;
                (Keys::Ed25519(signer(key, domain, selector)), 256)
            }
        };
        Ok(SigningKey {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            path: path.to_path_buf(),
            kind: parsed.kind(),
            bits,
            public_key: parsed.public().to_vec(),
            keys,
        })
    }

    /// The `DKIM-Signature` field (name, value and CRLF) for `message`.
    fn sign(&self, message: &[u8]) -> Result<String, SignError> {
        let signed = match &self.keys {
            Keys::Rsa(signer) => signer.sign(message),
            Keys::Ed25519(signer) => signer.sign(message),
        };
        signed.map(|s| s.to_header()).map_err(|e| SignError {
            domain: self.domain.clone(),
            selector: self.selector.clone(),
            why: e.to_string(),
        })
    }
}

/// Every configured key, and the signing of one message with the ones
/// whose domain is its From domain.
#[derive(Debug, Default)]
pub struct Signer {
    keys: Vec<SigningKey>,
}

impl Signer {
    /// A signer with these keys.
    pub fn new(keys: Vec<SigningKey>) -> Signer {
        Signer { keys }
    }

    /// The configured keys.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The `DKIM-Signature` fields to put at the top of `message` (empty
    /// when no key's domain is its From domain), one per matching key.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        if self.keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return Ok(Vec::new());
        };
        let domains: Vec<String> = parsed
            .froms()
            .iter()
            .filter_map(|f| f.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
            .collect();
        let mut out = String::new();
        for key in self.keys.iter().filter(|k| domains.contains(&k.domain)) {
            out.push_str(&key.sign(message)?);
        }
        Ok(out.into_bytes())
    }
}
