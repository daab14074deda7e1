//! Filesystem space and inodes per mount, as node_exporter's `filesystem` collector names them,
//! with `device`, `fstype` and `mountpoint` labels (all gauges):
//! `node_filesystem_size_bytes`, `node_filesystem_free_bytes`, `node_filesystem_avail_bytes`,
//! `node_filesystem_files`, `node_filesystem_files_free`, `node_filesystem_readonly` (0 or 1) and
//! `node_filesystem_device_error` (1 when our `statvfs` call on the mount failed).
//!
//! The list and sizes come from sysinfo's `Disks`, which lists `/proc/mounts` (always the agent's
//! own mount namespace, not `proc_path`) and calls `statvfs` on each mount: size is blocks *
//! fragment size, avail is the space unprivileged users may still use. sysinfo gives neither free
//! space (including root-reserved blocks) nor inodes nor flags, so those come from our own
//! `statvfs` call through `rustix` (safe bindings), one per mount: `f_bfree * f_frsize`,
//! `f_files`, `f_ffree` and `ST_RDONLY` in `f_flag` (set for a read-only mount or superblock;
//! node_exporter looks for `ro` in the mount options, which says the same). A mount whose call
//! fails reports only size and avail that round, which sysinfo keeps from its last success, and
//! `node_filesystem_device_error` 1.
//!
//! Skipped: pseudo filesystems ([`is_pseudo`]; overlay is kept, it is a container's root) and
//! mounts with a size of 0. sysinfo itself also drops mounts under `/sys`, `/proc` and `/run`
//! (but not `/run/media`) and network filesystems (NFS, CIFS, autofs), whose `statvfs` can hang.
//! If a mount's `statvfs` fails after it was first seen, sysinfo keeps its previous figures.

use std::borrow::Cow;
use std::collections::BTreeSet;

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
    /// What our own `statvfs` call found; `None` if it failed.
    pub vfs: Option<Vfs>,
}

/// The figures of one `statvfs` call that sysinfo does not give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vfs {
    /// Free bytes, including those reserved for root.
    pub free: u64,
    /// Inodes, and free inodes.
    pub files: u64,
    pub files_free: u64,
    pub readonly: bool,
}

impl Vfs {
    pub fn from_statvfs(st: &rustix::fs::StatVfs) -> Vfs {
        Vfs {
            free: st.f_bfree.saturating_mul(st.f_frsize),
            files: st.f_files,
            files_free: st.f_ffree,
            readonly: st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY),
        }
    }
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

/// The readings of every real filesystem. A mount listed twice with the same labels (one
/// stacked on another) is reported once, the first, as node_exporter does: two series with one
/// identity would make the batch ambiguous.
pub fn readings<'a>(mounts: impl IntoIterator<Item = Mount<'a>>, host: &str) -> Vec<Reading> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for m in mounts {
        if is_pseudo(&m.fstype) || m.size == 0 || m.device.is_empty() || m.mountpoint.is_empty() {
            continue;
        }
        let identity = (m.device.clone(), m.fstype.clone(), m.mountpoint.clone());
        if !seen.insert(identity) {
            continue;
        }
        let labels = [
            ("device", &*m.device),
            ("fstype", &*m.fstype),
            ("mountpoint", &*m.mountpoint),
        ];
        let vfs = m.vfs.as_ref();
        for (name, value) in [
            ("node_filesystem_size_bytes", Some(m.size)),
            ("node_filesystem_free_bytes", vfs.map(|v| v.free)),
            ("node_filesystem_avail_bytes", Some(m.avail)),
            ("node_filesystem_files", vfs.map(|v| v.files)),
            ("node_filesystem_files_free", vfs.map(|v| v.files_free)),
            (
                "node_filesystem_readonly",
                vfs.map(|v| u64::from(v.readonly)),
            ),
            (
                "node_filesystem_device_error",
                Some(u64::from(vfs.is_none())),
            ),
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
            vfs: Some(Vfs {
                free: avail + 1000,
                files: 6_553_600,
                files_free: 6_500_000,
                readonly: false,
            }),
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
            Mount {
                avail: 1,
                ..mount("/dev/vda", "ext4", "/", 105_089_261_568, 97_417_138_176)
            },
            mount("", "ext4", "/mnt/odd", 4096, 4096),
            Mount {
                vfs: None,
                ..mount("/dev/sdb1", "xfs", "/data with space", 4096, 0)
            },
            Mount {
                vfs: Some(Vfs {
                    free: 0,
                    files: 12,
                    files_free: 0,
                    readonly: true,
                }),
                ..mount("/dev/loop3", "squashfs", "/snap/core/1", 65_536, 0)
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
                ("node_filesystem_files", "/", 6_553_600.0),
                ("node_filesystem_files_free", "/", 6_500_000.0),
                ("node_filesystem_readonly", "/", 0.0),
                ("node_filesystem_device_error", "/", 0.0),
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
                (
                    "node_filesystem_files",
                    "/var/lib/docker/overlay2/x/merged",
                    6_553_600.0
                ),
                (
                    "node_filesystem_files_free",
                    "/var/lib/docker/overlay2/x/merged",
                    6_500_000.0
                ),
                (
                    "node_filesystem_readonly",
                    "/var/lib/docker/overlay2/x/merged",
                    0.0
                ),
                (
                    "node_filesystem_device_error",
                    "/var/lib/docker/overlay2/x/merged",
                    0.0
                ),
                ("node_filesystem_size_bytes", "/data with space", 4096.0),
                ("node_filesystem_avail_bytes", "/data with space", 0.0),
                ("node_filesystem_device_error", "/data with space", 1.0),
                ("node_filesystem_size_bytes", "/snap/core/1", 65_536.0),
                ("node_filesystem_free_bytes", "/snap/core/1", 0.0),
                ("node_filesystem_avail_bytes", "/snap/core/1", 0.0),
                ("node_filesystem_files", "/snap/core/1", 12.0),
                ("node_filesystem_files_free", "/snap/core/1", 0.0),
                ("node_filesystem_readonly", "/snap/core/1", 1.0),
                ("node_filesystem_device_error", "/snap/core/1", 0.0),
            ]
        );
        assert_eq!(out[0].series.label("device"), Some("/dev/vda"));
        assert_eq!(out[0].series.label("fstype"), Some("ext4"));
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }
}
