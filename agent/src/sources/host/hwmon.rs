//! Temperatures from the kernel's hardware monitors, `sys_path/class/hwmon/hwmon*/temp*_input`,
//! as node_exporter's `hwmon` collector names them (gauges):
//! - `node_hwmon_temp_celsius{chip, sensor}`: millidegrees / 1000; `sensor` is `temp<N>`;
//! - `node_hwmon_chip_names{chip, chip_name}` = 1: the chip's `name` file (`coretemp`, `nvme`,
//!   `k10temp`), cleaned, to tell chips apart in dashboards;
//! - `node_hwmon_sensor_label{chip, sensor, label}` = 1: a sensor's `temp<N>_label` file
//!   (`Package id 0`, `Core 3`, `Composite`), where the driver has one.
//!
//! `chip` is built as node_exporter builds it, so series match side by side: from the real path
//! of the hwmon's `device` link, `<parent dir>_<dir>` (`/sys/devices/platform/coretemp.0` ->
//! `platform_coretemp_0`, an NVMe drive -> `nvme_nvme0`, a PCI sensor ->
//! `pci0000:00_0000:00:18_3`), which stays stable across reboots where `hwmonN` numbering does
//! not; without a `device` link, the cleaned `name` file; failing both, `hwmonN`. Cleaning
//! lowercases and turns every character outside `[a-z0-9:_]` into `_`, then trims `_`.
//! Sensor files are looked for in the hwmon directory and, as old kernels put them, in its
//! `device` directory.
//!
//! Only temperatures: fans, voltages, power and the `_max`/`_crit` limits node_exporter also
//! exports are left out. A missing `class/hwmon` (virtual machines, containers without `/sys`)
//! is not an error; a sensor whose read fails (drivers answer EAGAIN or EIO while a device
//! sleeps) or reads no number is skipped that round. Reading a sensor may make the driver talk to
//! the chip over I2C, so this area is the slowest per series on real hardware: disable `hwmon` if
//! that matters.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use sonde_common::model::MetricKind;

use super::{HostError, reading};
use crate::sources::Reading;

/// Longest free text (a `name` or `_label` file) used as a label value; sysfs allows a page.
pub const MAX_TEXT: usize = 256;

/// Reads every hwmon chip under `sys_path`.
pub fn collect(sys_path: &Path, host: &str) -> Result<Vec<Reading>, HostError> {
    let mut out = Vec::new();
    let class = sys_path.join("class/hwmon");
    let Some(dirs) = list(&class)? else {
        return Ok(out);
    };
    let mut seen = BTreeSet::new();
    for dir in dirs {
        if dir.is_dir() {
            read_chip(&dir, host, &mut seen, &mut out);
        }
    }
    Ok(out)
}

/// The entries of a sysfs class directory, sorted; `None` if it does not exist.
pub fn list(class: &Path) -> Result<Option<Vec<PathBuf>>, HostError> {
    let entries = match std::fs::read_dir(class) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => {
            let path = class.to_owned();
            return Err(HostError::Read { path, cause });
        }
    };
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    dirs.sort();
    Ok(Some(dirs))
}

fn read_chip(dir: &Path, host: &str, seen: &mut BTreeSet<(String, u32)>, out: &mut Vec<Reading>) {
    let name = read_text(&dir.join("name")).map(|n| clean(&n));
    let device = dir.join("device");
    let real_device = std::fs::canonicalize(&device).ok();
    let real_dir = std::fs::canonicalize(dir).ok();
    let Some(chip) = chip_name(real_device.as_deref(), name.as_deref(), real_dir.as_deref()) else {
        return;
    };
    if let Some(name) = name.as_deref().filter(|n| !n.is_empty()) {
        let labels = [("chip", chip.as_str()), ("chip_name", name)];
        out.push(reading(
            "node_hwmon_chip_names",
            MetricKind::Gauge,
            1.0,
            host,
            &labels,
        ));
    }
    // Sensor number -> (directory, digits as written); the device directory wins, as there.
    let mut sensors: BTreeMap<u32, (PathBuf, String)> = BTreeMap::new();
    for base in [dir, device.as_path()] {
        let Ok(entries) = std::fs::read_dir(base) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some((number, digits)) = file.to_str().and_then(temp_input) else {
                continue;
            };
            sensors.insert(number, (base.to_owned(), digits.to_owned()));
        }
    }
    for (number, (base, digits)) in sensors {
        if !seen.insert((chip.clone(), number)) {
            continue; // two hwmon directories on one device: keep the first, never a duplicate
        }
        let Some(celsius) = read_text(&base.join(format!("temp{digits}_input")))
            .as_deref()
            .and_then(celsius)
        else {
            continue;
        };
        let sensor = format!("temp{number}");
        let labels = [("chip", chip.as_str()), ("sensor", sensor.as_str())];
        out.push(reading(
            "node_hwmon_temp_celsius",
            MetricKind::Gauge,
            celsius,
            host,
            &labels,
        ));
        if let Some(label) = read_text(&base.join(format!("temp{digits}_label"))) {
            let label = label.trim_matches('\n');
            let labels = [
                ("chip", chip.as_str()),
                ("sensor", sensor.as_str()),
                ("label", label),
            ];
            out.push(reading(
                "node_hwmon_sensor_label",
                MetricKind::Gauge,
                1.0,
                host,
                &labels,
            ));
        }
    }
}

/// node_exporter's chip name: `<type>_<device>` from the device's real path, else its cleaned
/// `name` file, else the hwmon directory's own name. `None` if all are empty.
pub fn chip_name(
    real_device: Option<&Path>,
    name: Option<&str>,
    real_dir: Option<&Path>,
) -> Option<String> {
    let last = |p: &Path| p.file_name().map(|n| clean(&n.to_string_lossy()));
    if let Some(device) = real_device {
        let dev = last(device).unwrap_or_default();
        let kind = device.parent().and_then(last).unwrap_or_default();
        match (kind.is_empty(), dev.is_empty()) {
            (false, false) => return Some(format!("{kind}_{dev}")),
            (true, false) => return Some(dev),
            _ => {}
        }
    }
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        return Some(name.to_owned());
    }
    real_dir.and_then(last).filter(|n| !n.is_empty())
}

/// node_exporter's `cleanMetricName`: lowercase, `[^a-z0-9:_]` -> `_`, trim `_`.
pub fn clean(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'a'..='z' | '0'..='9' | ':' | '_' => c,
            _ => '_',
        })
        .collect();
    cleaned.trim_matches('_').to_owned()
}

/// `temp<N>_input` -> (N, N's digits as written). node_exporter reads `temp_input` as sensor 0.
pub fn temp_input(file: &str) -> Option<(u32, &str)> {
    let digits = file.strip_prefix("temp")?.strip_suffix("_input")?;
    if digits.is_empty() {
        return Some((0, digits));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, digits))
}

/// A sysfs temperature in millidegrees Celsius -> degrees. `None` for anything but a finite
/// number.
pub fn celsius(text: &str) -> Option<f64> {
    let millis: f64 = text.trim().parse().ok()?;
    millis.is_finite().then_some(millis / 1000.0)
}

/// A small sysfs file's text, lossily decoded; `None` if unreadable or longer than
/// [`MAX_TEXT`] bytes.
pub fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() > MAX_TEXT {
        return None;
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn cleans_names_as_node_exporter() {
        assert_eq!(clean("coretemp\n"), "coretemp");
        assert_eq!(clean("coretemp.0"), "coretemp_0");
        assert_eq!(clean("0000:00:18.3"), "0000:00:18_3");
        assert_eq!(clean("  Package id 0 "), "package_id_0");
        assert_eq!(clean("__x__"), "x");
        assert_eq!(clean("thermal-zone°"), "thermal_zone");
        assert_eq!(clean("..."), "");
    }

    #[test]
    fn chip_name_prefers_the_device_path() {
        let dev = Path::new("/sys/devices/platform/coretemp.0");
        let dir = Path::new("/sys/devices/platform/coretemp.0/hwmon/hwmon3");
        assert_eq!(
            chip_name(Some(dev), Some("coretemp"), Some(dir)).as_deref(),
            Some("platform_coretemp_0")
        );
        let nvme = Path::new("/sys/devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0");
        assert_eq!(
            chip_name(Some(nvme), Some("nvme"), None).as_deref(),
            Some("nvme_nvme0")
        );
        assert_eq!(
            chip_name(Some(Path::new("/coretemp.0")), None, None).as_deref(),
            Some("coretemp_0"),
            "no parent name: the device alone"
        );
        assert_eq!(
            chip_name(None, Some("acpitz"), Some(dir)).as_deref(),
            Some("acpitz")
        );
        assert_eq!(
            chip_name(None, Some(""), Some(dir)).as_deref(),
            Some("hwmon3")
        );
        assert_eq!(chip_name(None, None, None), None);
        assert_eq!(chip_name(Some(Path::new("/")), None, None), None);
    }

    #[test]
    fn recognises_temperature_inputs() {
        assert_eq!(temp_input("temp1_input"), Some((1, "1")));
        assert_eq!(temp_input("temp12_input"), Some((12, "12")));
        assert_eq!(temp_input("temp01_input"), Some((1, "01")));
        assert_eq!(temp_input("temp_input"), Some((0, "")));
        for other in [
            "temp1_max",
            "temp1_label",
            "in0_input",
            "fan1_input",
            "temp1a_input",
            "temp99999999999_input",
            "name",
        ] {
            assert_eq!(temp_input(other), None, "{other}");
        }
    }

    #[test]
    fn parses_millidegrees() {
        assert_eq!(celsius("45000\n"), Some(45.0));
        assert_eq!(celsius("-5500"), Some(-5.5));
        assert_eq!(celsius("27800"), Some(27.8));
        assert_eq!(celsius(""), None);
        assert_eq!(celsius("N/A"), None);
        assert_eq!(celsius("nan"), None);
        assert_eq!(celsius("inf"), None);
    }

    /// `root/devices/...` holds the real directories and `root/class/hwmon/*` links to them,
    /// as in sysfs.
    fn fake_sysfs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let write = |path: &str, text: &str| {
            let path = r.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let link = |target: &str, at: &str| {
            let at = r.join(at);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            symlink(r.join(target), at).unwrap();
        };
        // A platform chip with labels, one sensor unreadable and one not a number.
        let core = "devices/platform/coretemp.0/hwmon/hwmon0";
        write(&format!("{core}/name"), "coretemp\n");
        write(&format!("{core}/temp1_input"), "45000\n");
        write(&format!("{core}/temp1_label"), "Package id 0\n");
        write(&format!("{core}/temp2_input"), "43000\n");
        write(&format!("{core}/temp2_label"), "Core 0\n");
        write(&format!("{core}/temp2_max"), "100000\n");
        write(&format!("{core}/temp3_input"), "N/A\n");
        std::fs::create_dir_all(r.join(core).join("temp4_input")).unwrap();
        link("devices/platform/coretemp.0", &format!("{core}/device"));
        link(core, "class/hwmon/hwmon0");
        // A virtual chip: no device link, so its name file names it.
        let acpi = "devices/virtual/hwmon/hwmon1";
        write(&format!("{acpi}/name"), "acpitz\n");
        write(&format!("{acpi}/temp1_input"), "-1500\n");
        link(acpi, "class/hwmon/hwmon1");
        // Neither device nor name: the directory's own name.
        let bare = "devices/virtual/hwmon/hwmon2";
        write(&format!("{bare}/temp1_input"), "30000\n");
        link(bare, "class/hwmon/hwmon2");
        // An old driver keeping its sensors in the device directory.
        let pci = "devices/pci0000:00/0000:00:18.3";
        write(&format!("{pci}/temp1_input"), "51250\n");
        write(&format!("{pci}/name"), "k10temp\n");
        let old = "devices/pci0000:00/0000:00:18.3/hwmon/hwmon3";
        std::fs::create_dir_all(r.join(old)).unwrap();
        link(pci, &format!("{old}/device"));
        link(old, "class/hwmon/hwmon3");
        // A stray file in the class directory.
        write("class/hwmon/README", "not a chip");
        root
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let root = fake_sysfs();
        let out = collect(root.path(), "h").unwrap();
        let temps: Vec<_> = out
            .iter()
            .filter(|r| r.series.name == "node_hwmon_temp_celsius")
            .map(|r| {
                (
                    r.series.label("chip").unwrap(),
                    r.series.label("sensor").unwrap(),
                    r.value,
                )
            })
            .collect();
        assert_eq!(
            temps,
            [
                ("platform_coretemp_0", "temp1", 45.0),
                ("platform_coretemp_0", "temp2", 43.0),
                ("acpitz", "temp1", -1.5),
                ("hwmon2", "temp1", 30.0),
                ("pci0000:00_0000:00:18_3", "temp1", 51.25),
            ]
        );
        let names: Vec<_> = out
            .iter()
            .filter(|r| r.series.name == "node_hwmon_chip_names")
            .map(|r| {
                (
                    r.series.label("chip").unwrap(),
                    r.series.label("chip_name").unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("platform_coretemp_0", "coretemp"), ("acpitz", "acpitz")]
        );
        let labels: Vec<_> = out
            .iter()
            .filter(|r| r.series.name == "node_hwmon_sensor_label")
            .map(|r| {
                (
                    r.series.label("sensor").unwrap(),
                    r.series.label("label").unwrap(),
                )
            })
            .collect();
        assert_eq!(labels, [("temp1", "Package id 0"), ("temp2", "Core 0")]);
        for r in &out {
            assert_eq!(r.kind, MetricKind::Gauge);
            assert_eq!(r.series.label("host"), Some("h"));
        }
    }

    #[test]
    fn no_hwmon_class_is_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(collect(root.path(), "h").unwrap(), Vec::new());
        std::fs::write(root.path().join("class"), "a file, not a directory").unwrap();
        assert!(collect(root.path(), "h").is_err());
    }
}
