//! Thermal zone temperatures from `sys_path/class/thermal/thermal_zone*/{type,temp}`, as
//! node_exporter's `thermal_zone` collector names them: `node_thermal_zone_temp{type, zone}`
//! (a gauge, degrees Celsius; the file holds millidegrees), `zone` being the number after
//! `thermal_zone` and `type` the zone's `type` file (`x86_pkg_temp`, `acpitz`, `cpu-thermal`).
//!
//! Cooling devices are left out. A missing `class/thermal` is not an error; a zone whose `type`
//! or `temp` cannot be read (drivers answer ENODATA, EAGAIN or EINVAL while a sensor is off) or
//! holds no number is skipped that round, as node_exporter skips it.

use std::path::Path;

use sonde_common::model::MetricKind;

use super::hwmon::{celsius, list, read_text};
use super::{HostError, reading};
use crate::sources::Reading;

/// Reads every thermal zone under `sys_path`.
pub fn collect(sys_path: &Path, host: &str) -> Result<Vec<Reading>, HostError> {
    let mut out = Vec::new();
    let Some(dirs) = list(&sys_path.join("class/thermal"))? else {
        return Ok(out);
    };
    for dir in dirs {
        let Some(zone) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(zone_number)
        else {
            continue;
        };
        let Some(kind) = read_text(&dir.join("type")) else {
            continue;
        };
        let Some(temp) = read_text(&dir.join("temp")).as_deref().and_then(celsius) else {
            continue;
        };
        let labels = [("type", kind.trim()), ("zone", zone)];
        out.push(reading(
            "node_thermal_zone_temp",
            MetricKind::Gauge,
            temp,
            host,
            &labels,
        ));
    }
    Ok(out)
}

/// `thermal_zone12` -> `12`; cooling devices and other entries -> `None`.
pub fn zone_number(name: &str) -> Option<&str> {
    let number = name.strip_prefix("thermal_zone")?;
    let digits = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
    digits.then_some(number)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn recognises_zone_directories() {
        assert_eq!(zone_number("thermal_zone0"), Some("0"));
        assert_eq!(zone_number("thermal_zone12"), Some("12"));
        assert_eq!(zone_number("thermal_zone"), None);
        assert_eq!(zone_number("cooling_device0"), None);
        assert_eq!(zone_number("thermal_zoneX"), None);
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let zone = |n: &str, kind: Option<&str>, temp: Option<&str>| {
            let real = r.join("devices/virtual/thermal").join(n);
            std::fs::create_dir_all(&real).unwrap();
            if let Some(kind) = kind {
                std::fs::write(real.join("type"), kind).unwrap();
            }
            if let Some(temp) = temp {
                std::fs::write(real.join("temp"), temp).unwrap();
            }
            let class = r.join("class/thermal");
            std::fs::create_dir_all(&class).unwrap();
            symlink(&real, class.join(n)).unwrap();
        };
        zone("thermal_zone0", Some("acpitz\n"), Some("27800\n"));
        zone("thermal_zone1", Some("x86_pkg_temp\n"), Some("45000\n"));
        zone("thermal_zone2", Some("iwlwifi_1\n"), Some("")); // sensor off
        zone("thermal_zone3", None, Some("1000\n"));
        zone("cooling_device0", Some("Processor\n"), None);
        zone("thermal_zone10", Some("cpu-thermal\n"), Some("-2000\n"));
        let out = collect(r, "h").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.series.label("zone").unwrap(),
                    r.series.label("type").unwrap(),
                    r.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("0", "acpitz", 27.8),
                ("1", "x86_pkg_temp", 45.0),
                ("10", "cpu-thermal", -2.0),
            ]
        );
        for r in &out {
            assert_eq!(r.series.name, "node_thermal_zone_temp");
            assert_eq!(r.kind, MetricKind::Gauge);
            assert_eq!(r.series.label("host"), Some("h"));
        }
        assert_eq!(collect(&r.join("absent"), "h").unwrap(), Vec::new());
    }
}
