//! STAND-IN, to delete at merge: rendezvous hashing with the signature of
//! `pool::owners(members, key, replicas)`, which lands with the pool membership work. Callers
//! use this module's `owners` until then; at merge they switch to `pool::owners` and this file
//! goes.

use super::target::stable_hash;

/// The `replicas` members with the highest scores for `key` (all of them if fewer).
pub(super) fn owners(members: &[String], key: &str, replicas: usize) -> Vec<String> {
    let mut scored: Vec<(u64, &String)> = members
        .iter()
        .map(|m| (fmix64(stable_hash(&[m, key])), m))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(replicas.max(1))
        .map(|(_, m)| m.clone())
        .collect()
}

/// MurmurHash3's finalizer: FNV alone orders near-identical inputs poorly.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::owners;

    #[test]
    fn spreads_and_is_stable() {
        let members = vec!["http://a".to_owned(), "http://b".to_owned()];
        let mut counts = [0, 0];
        for i in 0..100 {
            let key = format!("job/{i}");
            let o = owners(&members, &key, 1);
            assert_eq!(o.len(), 1);
            assert_eq!(o, owners(&members, &key, 1));
            counts[usize::from(o[0] == "http://b")] += 1;
        }
        assert!(counts[0] > 20 && counts[1] > 20, "{counts:?}");
        assert_eq!(owners(&members, "k", 5).len(), 2);
        assert!(owners(&[], "k", 1).is_empty());
    }
}
