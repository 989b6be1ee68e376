//! The plugins the `finaldot` binary carries: the embedded default chain's
//! four (dedup, list-expand, filter, local-delivery), the two filters an
//! MX usually adds (dnsbl, rspamd) and the two door plugins (greylist,
//! ratelimit), built for
//! wasm32-unknown-unknown by `host/build.rs` from `example-plugins/`.
//!
//! A `[[plugins]]` entry with `builtin = true` (the embedded default
//! configuration's four have it) whose `file` is one of these names, given
//! without a directory (so it lives in `pipeline.plugin_dir`), is served by
//! the built-in copy while no such file exists there. Without it, a missing
//! file makes the stage's messages wait, as for any plugin (a plugin
//! directory on a mount not yet up must not mean unfiltered mail). A file an administrator
//! puts there always wins, is hot-reloaded like any other, and when it is
//! removed the built-in copy serves again. Nothing is written into the
//! plugin directory, so an upgraded binary brings upgraded built-ins.

/// One plugin carried in the binary.
#[derive(Debug, PartialEq, Eq)]
pub struct Builtin {
    /// The file name it stands in for (`dedup.wasm`).
    pub file_name: &'static str,
    /// The module.
    pub wasm: &'static [u8],
}

/// Every built-in plugin.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        file_name: "dedup.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/dedup.wasm")),
    },
    Builtin {
        file_name: "list_expand.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/list_expand.wasm")),
    },
    Builtin {
        file_name: "filter.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/filter.wasm")),
    },
    Builtin {
        file_name: "local_delivery.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/local_delivery.wasm")),
    },
    Builtin {
        file_name: "dnsbl.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/dnsbl.wasm")),
    },
    Builtin {
        file_name: "rspamd.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/rspamd.wasm")),
    },
    Builtin {
        file_name: "greylist.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/greylist.wasm")),
    },
    Builtin {
        file_name: "ratelimit.wasm",
        wasm: include_bytes!(concat!(env!("OUT_DIR"), "/ratelimit.wasm")),
    },
];

/// The built-in plugin that stands in for `file` as written in the
/// configuration: a bare file name (no directory) of one of [`BUILTINS`].
pub fn for_file(file: &std::path::Path) -> Option<&'static Builtin> {
    let mut parts = file.components();
    let only = match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(name)), None) => name.to_str()?,
        _ => return None,
    };
    BUILTINS.iter().find(|b| b.file_name == only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_names_of_builtins_are_served() {
        let p = std::path::Path::new;
        assert_eq!(
            for_file(p("dedup.wasm")).map(|b| b.file_name),
            Some("dedup.wasm")
        );
        assert!(for_file(p("local_delivery.wasm")).is_some());
        assert!(for_file(p("sub/dedup.wasm")).is_none());
        assert!(for_file(p("/opt/dedup.wasm")).is_none());
        assert!(for_file(p("stamp.wasm")).is_none());
    }

    #[test]
    fn every_builtin_is_a_wasm_module() {
        for b in BUILTINS {
            assert!(b.wasm.starts_with(b"\0asm"), "{}", b.file_name);
        }
    }
}
