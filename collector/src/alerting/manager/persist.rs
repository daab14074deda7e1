//! Small pieces every persisted or exported part of the manager shares: atomic file
//! replacement (write `.tmp`, fsync, rename, fsync the directory), the stable 64-bit hash behind
//! fingerprints and idempotency keys, random ids, and RFC 3339 times as Alertmanager writes them.

use super::super::LabelMap;

pub use crate::alerting::write_atomic;

pub use sonde_common::hash::Fnv;

/// An alert's identity: a hash of its sorted labels (Alertmanager's fingerprint, in spirit).
pub fn fingerprint(labels: &LabelMap) -> u64 {
    let mut h = Fnv::default();
    for (k, v) in labels {
        h.field(k);
        h.field(v);
    }
    h.finish()
}

/// A fingerprint as the API shows it: 16 hex digits.
pub fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// A random id shaped like a UUID v4 (silence ids).
pub fn random_id() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    let b = (b & !(0xc000_0000_0000_0000)) | 0x8000_0000_0000_0000;
    let a = (a & !0xf000) | 0x4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Milliseconds since the epoch -> `2024-05-01T12:00:00.123Z`; 0 or less is Go's zero time
/// `0001-01-01T00:00:00Z`, which is what Alertmanager writes for an unset time.
pub fn rfc3339(ms: i64) -> String {
    if ms <= 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    sonde_common::time::format_rfc3339_ms(ms)
}

/// Parses an RFC 3339 time (`Z` or `±hh:mm`, optional fraction) to ms since the epoch; the
/// zero time (year 1) gives 0.
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    if s.starts_with("0001-") {
        sonde_common::time::parse_rfc3339_ms(s)?;
        return Ok(0);
    }
    sonde_common::time::parse_rfc3339_ms(s)
}

/// A duration as Alertmanager's status shows uptimes and Go prints durations: `1h2m3s`.
pub fn go_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec}s"),
        (0, _) => format!("{m}m{sec}s"),
        _ => format!("{h}h{m}m{sec}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_rfc3339() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        for ms in [1_700_000_000_123i64, 951_782_400_000, 4_102_444_800_000] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Ok(ms));
        }
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), Ok(0));
        assert!(parse_rfc3339("yesterday").is_err());
        assert!(parse_rfc3339("2023-13-14T23:13:20Z").is_err());
    }

    #[test]
    fn fingerprints_are_stable_and_label_sensitive() {
        let mut a = LabelMap::new();
        a.insert("alertname".into(), "Up".into());
        let fa = fingerprint(&a);
        assert_eq!(fa, fingerprint(&a.clone()));
        a.insert("job".into(), "x".into());
        assert_ne!(fa, fingerprint(&a));
        assert_eq!(fp_hex(1), "0000000000000001");
        let id = random_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, random_id());
    }

    #[test]
    fn atomic_writes_replace_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        assert!(!p.with_extension("tmp").exists());
    }
}
