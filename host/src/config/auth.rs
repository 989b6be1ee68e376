//! `[auth]` (mail authentication of what arrives) and `[[dkim]]` (the keys
//! that sign what leaves): as written, and validated. DKIM keys are read
//! here, so a missing or unreadable key is a configuration error naming its
//! entry, and a reload reads them again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Cx};
use crate::auth::sign::{Signer, SigningKey};
use crate::pipeline::ForgedSender;

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// Verify SPF, DKIM, DMARC and ARC on mail from the MX listener (default true).
    pub verify: Option<bool>,
    /// The authserv-id of the Authentication-Results field (default: the host name).
    pub authserv_id: Option<String>,
    /// Instead of a DSN to a sender that failed SPF or DMARC: `hold` (default) or `drop`.
    pub forged_sender: Option<String>,
    /// Most milliseconds one message's verification may wait on DNS (default 10000).
    pub timeout_ms: Option<u64>,
    /// Clients whose mail is not verified (default: loopback).
    pub trusted_networks: Option<Vec<String>>,
}

/// One `[[dkim]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    /// The signing domain (`d=`); mail whose From is in this domain is signed.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA), as `finaldot dkim keygen` writes it.
    pub key_file: PathBuf,
}

/// Validated `[auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Verify mail from the MX listener.
    pub verify: bool,
    /// The authserv-id.
    pub authserv_id: String,
    /// Instead of backscatter.
    pub forged_sender: ForgedSender,
    /// The longest one message's verification may take.
    pub timeout: Duration,
    /// Clients whose mail is not verified: local programs that relay
    /// through the MX listener (as OpenDKIM's InternalHosts, loopback by
    /// default).
    pub trusted_networks: Vec<ipnet::IpNet>,
}

impl RawAuth {
    /// Validates `[auth]`; the authserv-id defaults to `hostname`.
    pub fn validate(self, hostname: &str, cx: &Cx) -> Result<AuthConfig, ConfigError> {
        let authserv_id = match self.authserv_id {
            Some(id) if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() && b != b';') => {
                return Err(cx.invalid(
                    "auth.authserv_id",
                    format!("{id:?} is not a host name (RFC 8601 authserv-id: no spaces, no ';')"),
                ))
            }
            Some(id) => id,
            None => hostname.to_string(),
        };
        let forged_sender = match self.forged_sender.as_deref() {
            None | Some("hold") => ForgedSender::Hold,
            Some("drop") => ForgedSender::Drop,
            Some(other) => {
                return Err(cx.invalid(
                    "auth.forged_sender",
                    format!("{other:?} is neither \"hold\" nor \"drop\""),
                ))
            }
        };
        let timeout_ms = self.timeout_ms.unwrap_or(10_000);
        if timeout_ms == 0 {
            return Err(cx.invalid("auth.timeout_ms", "must be at least 1".into()));
        }
        let trusted_networks =
            super::smtp::networks("auth.trusted_networks", self.trusted_networks, cx)?;
        Ok(AuthConfig {
            trusted_networks,
            verify: self.verify.unwrap_or(true),
            authserv_id,
            forged_sender,
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// Validates the `[[dkim]]` entries and reads their keys.
pub fn validate_dkim(raw: Vec<RawDkim>, cx: &Cx) -> Result<Arc<Signer>, ConfigError> {
    let mut keys = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let domain = d.domain.trim().trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
            return Err(cx.invalid(
                &format!("dkim[{i}].domain"),
                format!("{:?} is not a domain", d.domain),
            ));
        }
        let selector = d.selector.trim().to_string();
        if selector.is_empty()
            || !selector
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(cx.invalid(
                &format!("dkim[{i}].selector"),
                format!(
                    "{:?} is not a selector (letters, digits, '-', dots between)",
                    d.selector
                ),
            ));
        }
        if keys
            .iter()
            .any(|k: &SigningKey| k.domain == domain && k.selector == selector)
        {
            return Err(cx.invalid(
                &format!("dkim[{i}]"),
                format!("{selector}._domainkey.{domain} is configured twice"),
            ));
        }
        let path = cx.abs(d.key_file);
        let key = SigningKey::load(&domain, &selector, &path)
            .map_err(|e| cx.invalid(&format!("dkim[{i}].key_file"), e.to_string()))?;
        keys.push(key);
    }
    Ok(Arc::new(Signer::new(keys)))
}
