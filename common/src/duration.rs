//! Durations as operators write them in flags and config: Prometheus's notation (`500ms`,
//! `10s`, `5m`, `1h30m`, `15d`, `2w`, `1y`).

use std::time::Duration;

/// Parses a Prometheus-style duration. Units: ms, s, m, h, d (24h), w (7d), y (365d); several
/// may be concatenated from largest to smallest (`1h30m`). A bare `0` is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let bad = || format!("invalid duration '{s}': expected e.g. 500ms, 10s, 5m, 1h30m, 15d");
    let mut total: u128 = 0;
    let mut rest = s;
    let mut last_unit_ms = u128::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 18 {
            return Err(bad());
        }
        let n: u128 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(bad()),
        };
        if unit_ms >= last_unit_ms {
            return Err(bad());
        }
        last_unit_ms = unit_ms;
        rest = &rest[unit_len..];
        total = total.checked_add(n * unit_ms).ok_or_else(bad)?;
    }
    u64::try_from(total)
        .map(Duration::from_millis)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("15d"), Ok(Duration::from_secs(15 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1x",
            "30m1h",
            "1h1h",
            "-1s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
