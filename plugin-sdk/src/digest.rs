//! A small, stable, non-cryptographic hash (64-bit FNV-1a) for names and
//! identities that must be the same on every run: a Maildir file name derived
//! from a queue id and a recipient, a message identity for duplicate
//! suppression. Not for anything an attacker must not be able to collide:
//! for that, [`crate::plugin::Kv::mac`] and [`same_tag`].

/// Whether two tags (MACs) are equal, in time that depends only on their
/// length, so a forger learns nothing from how long a refusal took.
pub fn same_tag(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Streaming 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) -> &mut Self {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }

    /// The hash so far as 16 lowercase hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The FNV-1a hash of `data` as 16 hex digits.
pub fn fnv64_hex(data: &[u8]) -> String {
    Fnv64::new().update(data).hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(Fnv64::new().finish(), 0xcbf29ce484222325);
        assert_eq!(Fnv64::new().update(b"a").finish(), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv64_hex(b"foobar"), "85944171f73967e8");
        let mut h = Fnv64::new();
        h.update(b"foo").update(b"bar");
        assert_eq!(h.hex(), fnv64_hex(b"foobar"));
    }
}
