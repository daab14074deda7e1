//! FNV-1a, 64 bits: a hash that is the same in every process, build and version (unlike the
//! std hashers), for what must agree across restarts and machines: alert fingerprints and
//! idempotency keys, rule-state file names and evaluation offsets, scrape target keys and
//! offsets, pool ownership.

/// An FNV-1a hasher.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// A string followed by a separator byte no UTF-8 text contains, so ("ab", "c") and
    /// ("a", "bc") differ.
    pub fn field(&mut self, s: &str) {
        self.write(s.as_bytes());
        self.write(&[0xff]);
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(bytes);
    h.finish()
}

/// FNV-1a of `parts`, each followed by the separator byte.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h = Fnv::default();
    for p in parts {
        h.field(p);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_separated_fields() {
        // The FNV-1a reference values.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_ne!(stable_hash(&["ab", "c"]), stable_hash(&["a", "bc"]));
        assert_eq!(stable_hash(&["ab"]), fnv1a(&[b'a', b'b', 0xff]));
    }
}
