//! Filesystem space per mount: `node_filesystem_size_bytes`, `node_filesystem_free_bytes` and
//! `node_filesystem_avail_bytes` (gauges) with `device`, `fstype` and `mountpoint` labels.
//!
//! The figures come from sysinfo's `Disks`, which lists `/proc/mounts` (always the agent's own
//! mount namespace, not `proc_path`) and calls `statvfs` on each mount: size is blocks * fragment
//! size, avail is the space unprivileged users may still use. sysinfo does not give free space
//! (including root-reserved blocks), so that one comes from our own `statvfs` call through
//! `rustix` (safe bindings); a mount whose call fails reports no free figure that round.
//!
//! Skipped: pseudo filesystems ([`is_pseudo`]; overlay is kept, it is a container's root) and
//! mounts with a size of 0. sysinfo itself also drops mounts under `/sys`, `/proc` and `/run`
//! (but not `/run/media`) and network filesystems (NFS, CIFS, autofs), whose `statvfs` can hang.
//! If a mount's `statvfs` fails after it was first seen, sysinfo keeps its previous figures.

use std::borrow::Cow;

use sonde_common::model::MetricKind;

use super::reading;
use crate::sources::Reading;

/// One mounted filesystem, as sysinfo reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount<'a> {
    pub device: Cow<'a, str>,
    pub fstype: Cow<'a, str>,
    pub mountpoint: Cow<'a, str>,
    pub size: u64,
    pub avail: u64,
    /// Free blocks including those reserved for root; `None` if statvfs failed.
    pub free: Option<u64>,
}

/// Filesystems that hold no user data. sysinfo skips most of these already; the list is ours
/// too so that a feature enabled elsewhere in the build (sysinfo's `linux-tmpfs`) changes nothing.
pub fn is_pseudo(fstype: &str) -> bool {
    matches!(
        fstype,
        "autofs"
            | "binfmt_misc"
            | "bpf"
            | "cgroup"
            | "cgroup2"
            | "configfs"
            | "debugfs"
            | "devpts"
            | "devtmpfs"
            | "efivarfs"
            | "fusectl"
            | "hugetlbfs"
            | "mqueue"
            | "nsfs"
            | "proc"
            | "pstore"
            | "ramfs"
            | "rootfs"
            | "rpc_pipefs"
            | "securityfs"
            | "selinuxfs"
            | "sysfs"
            | "tmpfs"
            | "tracefs"
    )
}

pub fn readings<'a>(mounts: impl IntoIterator<Item = Mount<'a>>, host: &str) -> Vec<Reading> {
    let mut out = Vec::new();
    for m in mounts {
        if is_pseudo(&m.fstype) || m.size == 0 || m.device.is_empty() || m.mountpoint.is_empty() {
            continue;
        }
        let labels = [
            ("device", &*m.device),
            ("fstype", &*m.fstype),
            ("mountpoint", &*m.mountpoint),
        ];
        for (name, value) in [
            ("node_filesystem_size_bytes", Some(m.size)),
            ("node_filesystem_free_bytes", m.free),
            ("node_filesystem_avail_bytes", Some(m.avail)),
        ] {
            let Some(value) = value else { continue };
            out.push(reading(
                name,
                MetricKind::Gauge,
                value as f64,
                host,
                &labels,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(
        device: &str,
        fstype: &str,
        mountpoint: &str,
        size: u64,
        avail: u64,
    ) -> Mount<'static> {
        Mount {
            device: Cow::Owned(device.to_owned()),
            fstype: Cow::Owned(fstype.to_owned()),
            mountpoint: Cow::Owned(mountpoint.to_owned()),
            size,
            avail,
            free: Some(avail + 1000),
        }
    }

    #[test]
    fn reports_real_filesystems_and_skips_pseudo_ones() {
        let mounts = [
            mount("/dev/vda", "ext4", "/", 105_089_261_568, 97_417_138_176),
            mount(
                "overlay",
                "overlay",
                "/var/lib/docker/overlay2/x/merged",
                1 << 30,
                1 << 29,
            ),
            mount("tmpfs", "tmpfs", "/dev/shm", 25_276_063_744, 25_276_063_744),
            mount("proc", "proc", "/proc", 0, 0),
            mount("cgroup2", "cgroup2", "/sys/fs/cgroup/unified", 0, 0),
            mount("/dev/loop0", "ext4", "/mnt/empty", 0, 0),
            mount("", "ext4", "/mnt/odd", 4096, 4096),
            Mount {
                free: None,
                ..mount("/dev/sdb1", "xfs", "/data with space", 4096, 0)
            },
        ];
        let out = readings(mounts, "h");
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.series.name.as_str(),
                    r.series.label("mountpoint").unwrap(),
                    r.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("node_filesystem_size_bytes", "/", 105_089_261_568.0),
                ("node_filesystem_free_bytes", "/", 97_417_139_176.0),
                ("node_filesystem_avail_bytes", "/", 97_417_138_176.0),
                (
                    "node_filesystem_size_bytes",
                    "/var/lib/docker/overlay2/x/merged",
                    1_073_741_824.0
                ),
                (
                    "node_filesystem_free_bytes",
                    "/var/lib/docker/overlay2/x/merged",
                    536_871_912.0
                ),
                (
                    "node_filesystem_avail_bytes",
                    "/var/lib/docker/overlay2/x/merged",
                    536_870_912.0
                ),
                ("node_filesystem_size_bytes", "/data with space", 4096.0),
                ("node_filesystem_avail_bytes", "/data with space", 0.0),
            ]
        );
        assert_eq!(out[0].series.label("device"), Some("/dev/vda"));
        assert_eq!(out[0].series.label("fstype"), Some("ext4"));
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }
}
