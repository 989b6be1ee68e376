//! `finaldot dkim`: make a signing key and the DNS record to publish, check a published one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use finaldot::config::Config;

/// `finaldot dkim` subcommands.
#[derive(Subcommand)]
pub(crate) enum DkimCommand {
    /// Write a new private key and print the TXT record to publish and the
    /// [[dkim]] entry to add to the configuration.
    Keygen {
        /// The signing domain (the From domain of the mail to sign).
        domain: String,
        /// The selector (for example the year: 2026).
        selector: String,
        /// rsa (2048 bits, verified everywhere) or ed25519 (RFC 8463; publish one beside an RSA key).
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
        algorithm: KeyAlgorithm,
        /// Where to write the key (default: [data_dir]/dkim/DOMAIN.SELECTOR.key); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Look up SELECTOR._domainkey.DOMAIN and say whether it publishes the
    /// key's public half (exit status 0 when it does).
    Check {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
        /// The private key (default: the configuration's [[dkim]] entry for DOMAIN and SELECTOR).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Key types for `dkim keygen`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KeyAlgorithm {
    /// RSA-SHA256, 2048 bits.
    Rsa,
    /// Ed25519-SHA256.
    Ed25519,
}

/// Carries out `finaldot dkim …`.
pub(crate) fn dkim(config: Option<PathBuf>, command: DkimCommand) -> anyhow::Result<()> {
    use finaldot::auth::keys;
    let config = Config::load(config.as_deref())?;
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            out,
        } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let path = out.unwrap_or_else(|| {
                config
                    .data_dir
                    .join("dkim")
                    .join(format!("{domain}.{selector}.key"))
            });
            let (algorithm, label) = match algorithm {
                KeyAlgorithm::Rsa => (keys::Algorithm::Rsa, "RSA 2048"),
                KeyAlgorithm::Ed25519 => (keys::Algorithm::Ed25519, "Ed25519"),
            };
            let text = keys::keygen(algorithm, &path)?;
            let path = std::fs::canonicalize(&path).unwrap_or(path);
            let name = keys::record_name(&domain, &selector);
            println!(
                "Wrote the {label} private key to {} (mode 0600).",
                path.display()
            );
            println!();
            println!("Publish this TXT record:");
            println!();
            println!("{}", keys::zone_line(&name, &text));
            println!();
            println!("Then add to the configuration and reload:");
            println!();
            println!("[[dkim]]");
            println!("domain = \"{domain}\"");
            println!("selector = \"{selector}\"");
            println!("key_file = \"{}\"", path.display());
            println!();
            println!("and check the record once it is published: finaldot dkim check {domain} {selector}");
            Ok(())
        }
        DkimCommand::Check {
            domain,
            selector,
            key,
        } => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            let key = match key {
                Some(k) => k,
                None => config
                    .dkim
                    .keys()
                    .iter()
                    .find(|k| k.domain == domain && k.selector == selector)
                    .map(|k| k.path.clone())
                    .with_context(|| {
                        format!("no [[dkim]] entry for {domain} with selector {selector} in the configuration; name the key with --key FILE")
                    })?,
            };
            let dns = finaldot::dns::Dns::new(&config.nameservers)?;
            let name = keys::record_name(&domain, &selector);
            match keys::check(&dns, &domain, &selector, &key)? {
                keys::Check::Matches => {
                    println!("ok: {name} publishes the public key of {}", key.display());
                    Ok(())
                }
                keys::Check::Differs(why) => anyhow::bail!("mismatch: {why}"),
                keys::Check::Missing(why) => anyhow::bail!("not published: {why}"),
            }
        }
    }
}
