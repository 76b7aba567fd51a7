//! hyper-vmm's configuration (a JSON file, or the same fields as flags).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::devices::blk::valid_serial;
use super::devices::fs::valid_tag;
use super::devices::net::{parse_mac, MIN_MTU};
use super::layout::{MAX_MEMORY_MIB, MIN_MEMORY_MIB, VIRTIO_IRQS};

pub const MAX_VCPUS: u8 = 64;
/// virtio-mmio devices besides the console (disks, NICs and shares
/// together).
pub const MAX_DEVICES: usize = VIRTIO_IRQS.len() - 1;
pub const MAX_DISKS: usize = MAX_DEVICES;
pub const DEFAULT_CONSOLE_LIMIT: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmmConfig {
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "one")]
    pub vcpus: u8,
    pub memory_mib: u64,
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices, each over a tap fd this process inherited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetConfig>,
    /// virtio-fs devices, each served by a virtiofsd listening on
    /// `socket` (vhost-user). Guest memory becomes a shared memfd.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareConfig>,
    /// Serial console output; stdout when absent.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    #[serde(default = "default_limit")]
    pub console_log_limit: u64,
    /// Where the VMM listens for the host end of the virtio-console port.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// Where the machine-readable exit status (JSON) goes.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// Honour writes to the debug-exit port 0xf4 (test guests).
    #[serde(default)]
    pub debug_exit: bool,
    /// Restore this snapshot directory (see `vmm::snapshot`) instead of
    /// booting the kernel; everything else here is the new VM's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// On SIGUSR1, pause the vCPUs, save a snapshot into the directory named
    /// in this file (one line) and stop. Such a VM (a template being made:
    /// our own payload, no container) writes files by path after it ran,
    /// so it is never put in the mount jail nor dropped to `run_as`; its
    /// seccomp lists gain the save's few calls (src/vmm/seccomp.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_request: Option<PathBuf>,
    /// Run every thread under its seccomp allow-list (src/vmm/seccomp.rs);
    /// off only to debug a VMM the filters kill.
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Run in a private mount namespace rooted at an empty read-only tmpfs
    /// once the VM is set up (src/vmm/jail.rs); needs CAP_SYS_ADMIN.
    #[serde(default = "yes")]
    pub jail: bool,
    /// Drop to this uid/gid (no supplementary groups, so no capabilities
    /// left) once the VM is set up and jailed; unset: keep the caller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<RunAs>,
}

/// An unprivileged identity for the VMM once everything is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default = "yes")]
    pub read_only: bool,
    pub id: String,
}

/// A NIC: the tap (opened by whoever started hyper-vmm, inside the pod's
/// netns) arrives as an inherited fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub fd: i32,
    /// The guest's MAC, `aa:bb:cc:dd:ee:ff` (unicast).
    pub mac: String,
    /// Offered to the guest with VIRTIO_NET_F_MTU.
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// A directory share: the guest mounts `-t virtiofs <tag>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub tag: String,
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
}

fn one() -> u8 {
    1
}
fn yes() -> bool {
    true
}
fn default_limit() -> u64 {
    DEFAULT_CONSOLE_LIMIT
}

/// MemTotal from /proc/meminfo, in MiB.
pub fn host_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

impl VmmConfig {
    /// Problems a person can act on, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            problems.push(format!("vcpus = {}: must be 1..={MAX_VCPUS}", self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > MAX_MEMORY_MIB {
            problems.push(format!(
                "memory_mib = {}: must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}",
                self.memory_mib
            ));
        }
        if let Some(host) = host_memory_mib() {
            if self.memory_mib > host {
                problems.push(format!(
                    "memory_mib = {}: larger than this host's RAM ({host} MiB); give the VM less memory",
                    self.memory_mib
                ));
            }
        }
        if self.disks.len() + self.nets.len() + self.shares.len() > MAX_DEVICES {
            problems.push(format!(
                "{} disks, {} NICs and {} shares: at most {MAX_DEVICES} together",
                self.disks.len(),
                self.nets.len(),
                self.shares.len()
            ));
        }
        let mut tags = std::collections::HashSet::new();
        for s in &self.shares {
            if !valid_tag(&s.tag) {
                problems.push(format!(
                    "share tag {:?}: 1..=36 characters of [A-Za-z0-9_-]",
                    s.tag
                ));
            } else if !tags.insert(s.tag.as_str()) {
                problems.push(format!("share tag {:?} given twice", s.tag));
            }
            if s.socket.as_os_str().is_empty() {
                problems.push(format!("share {:?}: empty socket path", s.tag));
            }
        }
        let mut fds = std::collections::HashSet::new();
        for n in &self.nets {
            if n.fd < 3 {
                problems.push(format!(
                    "net fd {}: not a tap fd (0, 1 and 2 are stdio)",
                    n.fd
                ));
            } else if !fds.insert(n.fd) {
                problems.push(format!("net fd {} given twice", n.fd));
            }
            if parse_mac(&n.mac).is_none() {
                problems.push(format!(
                    "net mac {:?}: want a unicast aa:bb:cc:dd:ee:ff",
                    n.mac
                ));
            }
            if n.mtu.is_some_and(|m| m < MIN_MTU) {
                problems.push(format!(
                    "net mtu {:?}: at least {MIN_MTU}",
                    n.mtu.unwrap_or(0)
                ));
            }
        }
        for d in &self.disks {
            if !valid_serial(&d.id) {
                problems.push(format!(
                    "disk id {:?}: 1..=20 characters of [A-Za-z0-9_-]",
                    d.id
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmmConfig {
        serde_json::from_str(r#"{"kernel":"/k","memory_mib":64}"#).unwrap()
    }

    #[test]
    fn defaults() {
        let c = base();
        assert_eq!(c.vcpus, 1);
        assert!(c.seccomp, "seccomp is on unless switched off");
        assert!(c.jail, "the mount jail is on unless switched off");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(
            serde_json::from_str::<VmmConfig>(r#"{"kernel":"/k","memory_mib":64,"memroy":1}"#)
                .is_err()
        );
    }

    #[test]
    fn memory_larger_than_the_host_is_refused() {
        let mut c = base();
        c.memory_mib = MAX_MEMORY_MIB;
        let e = c.validate().unwrap_err();
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn shares_are_validated_and_count_as_devices() {
        let c: VmmConfig = serde_json::from_str(
            r#"{"kernel":"/k","memory_mib":64,"shares":[{"tag":"vol-a","socket":"/run/a.sock"}]}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        let mut c = base();
        let share = |tag: &str| ShareConfig {
            tag: tag.into(),
            socket: "/s".into(),
        };
        c.shares = vec![
            share("a"),
            share("a"),
            share("bad tag"),
            share(&"x".repeat(37)),
        ];
        let e = c.validate().unwrap_err();
        for want in ["\"a\" given twice", "\"bad tag\"", "xxx"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        c.shares = (0..MAX_DEVICES).map(|i| share(&format!("s{i}"))).collect();
        assert!(c.validate().is_ok());
        c.disks.push(DiskConfig {
            path: "/d".into(),
            read_only: false,
            id: "vol".into(),
        });
        assert!(c.validate().unwrap_err().contains("together"));
    }

    #[test]
    fn several_rw_disks_with_their_ids() {
        let c: VmmConfig = serde_json::from_str(
            r#"{"kernel":"/k","memory_mib":64,"disks":[
                {"path":"/r","id":"hyper-rootfs0"},
                {"path":"/a","id":"vol-a","read_only":false},
                {"path":"/b","id":"vol-b","read_only":false}]}"#,
        )
        .unwrap();
        assert!(c.validate().is_ok());
        let ro: Vec<(bool, &str)> = c
            .disks
            .iter()
            .map(|d| (d.read_only, d.id.as_str()))
            .collect();
        assert_eq!(
            ro,
            vec![(true, "hyper-rootfs0"), (false, "vol-a"), (false, "vol-b")]
        );
    }

    #[test]
    fn bad_disk_id_and_vcpus() {
        let mut c = base();
        c.vcpus = 0;
        c.disks.push(DiskConfig {
            path: "/d".into(),
            read_only: true,
            id: "bad id".into(),
        });
        let e = c.validate().unwrap_err();
        assert!(e.contains("vcpus") && e.contains("disk id"), "{e}");
    }

    #[test]
    fn bad_nics_are_refused() {
        let mut c = base();
        let nic = |fd, mac: &str, mtu| NetConfig {
            fd,
            mac: mac.into(),
            mtu,
        };
        c.nets = vec![nic(5, "02:00:00:00:00:01", Some(1500))];
        assert!(c.validate().is_ok());
        let parsed: VmmConfig = serde_json::from_str(
            r#"{"kernel":"/k","memory_mib":64,"nets":[{"fd":5,"mac":"02:00:00:00:00:01"}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.nets[0].mtu, None);
        c.nets = vec![
            nic(1, "02:00:00:00:00:01", None),
            nic(7, "01:00:5e:00:00:01", None),
            nic(7, "02:00:00:00:00:01", Some(20)),
        ];
        let e = c.validate().unwrap_err();
        for want in ["net fd 1", "net fd 7 given twice", "unicast", "net mtu 20"] {
            assert!(e.contains(want), "{want}: {e}");
        }
        c.nets = (0..MAX_DEVICES as i32)
            .map(|i| nic(10 + i, "02:00:00:00:00:01", None))
            .collect();
        c.disks.push(DiskConfig {
            path: "/d".into(),
            read_only: true,
            id: "d".into(),
        });
        assert!(c.validate().unwrap_err().contains("together"));
    }
}
