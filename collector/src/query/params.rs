//! Request parameters of the Prometheus HTTP API: form fields from the query string or a
//! form-encoded POST body, times as Unix seconds or RFC 3339, steps as seconds or durations.

use sonde_common::duration::parse_duration;

/// Parameters in arrival order (a name such as `match[]` may repeat).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `a=1&b=2` (query string or `application/x-www-form-urlencoded` body).
    pub fn parse(parts: &[&[u8]]) -> Self {
        let mut v = Vec::new();
        for part in parts {
            v.extend(
                url::form_urlencoded::parse(part).map(|(k, v)| (k.into_owned(), v.into_owned())),
            );
        }
        Params(v)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Parses a time parameter into milliseconds: Unix seconds (with fraction) or RFC 3339.
pub fn parse_time(name: &str, value: &str) -> Result<i64, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs.abs() < 1e13
    {
        return Ok((secs * 1000.0).round() as i64);
    }
    sonde_common::time::parse_rfc3339_ms(value).map_err(|_| {
        format!("invalid parameter \"{name}\": cannot parse \"{value}\" to a valid timestamp")
    })
}

/// Parses a step: float seconds or a duration such as `15s`.
pub fn parse_step(value: &str) -> Result<i64, String> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs > 0.0
        && secs < 1e10
    {
        return Ok(((secs * 1000.0).round() as i64).max(1));
    }
    match parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d.as_millis() as i64),
        _ => Err(format!(
            "invalid parameter \"step\": cannot parse \"{value}\" to a valid duration"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("t", "1435781451.781"), Ok(1_435_781_451_781));
        assert_eq!(
            parse_time("t", "2015-07-01T20:10:51.781Z"),
            Ok(1_435_781_451_781)
        );
        assert_eq!(
            parse_time("t", "2015-07-01T22:10:51+02:00"),
            Ok(1_435_781_451_000)
        );
        assert_eq!(parse_time("t", "1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_time("t", "2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        assert!(
            parse_time("time", "yesterday")
                .unwrap_err()
                .contains("\"time\"")
        );
        assert!(parse_time("t", "NaN").is_err());
        assert!(parse_time("t", "2015-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn steps_and_params() {
        assert_eq!(parse_step("15"), Ok(15_000));
        assert_eq!(parse_step("0.5"), Ok(500));
        assert_eq!(parse_step("1m"), Ok(60_000));
        assert!(parse_step("0").is_err());
        assert!(parse_step("-1").is_err());
        let p = Params::parse(&[b"match[]=up&match[]=a%7Bb%3D%22c%22%7D", b"start=1"]);
        assert_eq!(p.all("match[]"), ["up", "a{b=\"c\"}"]);
        assert_eq!(p.get("start"), Some("1"));
        assert_eq!(p.get("end"), None);
    }
}
