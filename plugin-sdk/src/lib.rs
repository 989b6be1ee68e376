//! `finaldot-sdk`: what a finaldot plugin author depends on.
//!
//! finaldot runs WebAssembly plugins after a message has been accepted and made
//! durable. This crate will hold the wire types shared by the host and its
//! plugins (defined once, so both sides can never disagree about a layout),
//! the plugin trait, the export macro and a native test harness. For now it
//! carries the ABI version that both sides check before a plugin is loaded.
#![forbid(unsafe_code)]

/// The plugin ABI version this SDK speaks; the host refuses any other.
pub const ABI_VERSION: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_version_is_one() {
        assert_eq!(ABI_VERSION, 1);
    }
}
