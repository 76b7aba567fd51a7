//! hyper-vmm's configuration: what the KVM plugin writes (`vmm.json` in
//! the VM's run directory) and hyper-vmm reads (`--config`, or the same
//! fields as flags), with the checks and limits both sides apply. Its own
//! crate, on serde alone, so that the plugin (loaded into hyperd's plugin
//! host) links none of the VMM's crates (kvm-ioctls, vm-memory, vhost …).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const MAX_VCPUS: u8 = 64;
/// virtio-mmio devices besides the console (disks, NICs and shares
/// together): hyper-vmm has an interrupt line for each (its
/// `layout::VIRTIO_IRQS` is `1 + MAX_DEVICES` long).
pub const MAX_DEVICES: usize = 5;
pub const MAX_DISKS: usize = MAX_DEVICES;
pub const DEFAULT_CONSOLE_LIMIT: u64 = 64 << 20;
/// The smallest guest hyper-vmm boots: its memory layout needs the first
/// 2 MiB.
pub const MIN_MEMORY_MIB: u64 = 2;
/// A ceiling that keeps the arithmetic well inside 64 bits.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The smallest MTU offered to a guest NIC.
pub const MIN_MTU: u16 = 68;
/// virtio-blk's serial (GET_ID) is 20 bytes.
pub const SERIAL_LEN: usize = 20;
/// virtio-fs config: `tag[36]`.
pub const TAG_LEN: usize = 36;

/// 1..=`max` bytes of `[A-Za-z0-9_-]`: what disk serials and share tags
/// may be.
pub fn valid_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a disk id the way hyperstart and QEMU expect it (it becomes the
/// virtio-blk serial).
pub fn valid_serial(id: &str) -> bool {
    valid_id(id, SERIAL_LEN)
}

/// Checks a mount tag: what virtio-fs carries (at most 36 bytes) and what
/// the contract allows (`[A-Za-z0-9_-]`).
pub fn valid_tag(tag: &str) -> bool {
    valid_id(tag, TAG_LEN)
}

/// Parses `aa:bb:cc:dd:ee:ff`; only unicast addresses (a guest NIC's).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 {
        return None;
    }
    Some(mac)
}

/// Whether /dev/kvm is kvm_pvm (a software nested hypervisor).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The kernels hyper-vmm boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux (booted through its PVH note).
    Elf,
    /// A bzImage (64-bit Linux boot protocol).
    BzImage,
}

impl KernelFormat {
    pub fn name(self) -> &'static str {
        match self {
            KernelFormat::Elf => "elf",
            KernelFormat::BzImage => "bzimage",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read kernel {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a kernel: neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    NotAKernel(String),
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"

/// Which kernel format `file` holds, from its first bytes (`path` names it
/// in errors). Reads from the current offset.
pub fn detect_kernel(file: &mut impl Read, path: &str) -> Result<KernelFormat, KernelError> {
    let mut head = [0u8; 0x210];
    let mut got = 0;
    while got < head.len() {
        let n = file
            .read(&mut head[got..])
            .map_err(|source| KernelError::Read {
                path: path.to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    if got >= 0x206 {
        let flag = u16::from_le_bytes([head[0x1fe], head[0x1ff]]);
        let magic = u32::from_le_bytes([head[0x202], head[0x203], head[0x204], head[0x205]]);
        if flag == KERNEL_BOOT_FLAG_MAGIC && magic == KERNEL_HDR_MAGIC {
            return Ok(KernelFormat::BzImage);
        }
    }
    Err(KernelError::NotAKernel(path.to_string()))
}

/// Checks that `path` is a kernel hyper-vmm can boot.
pub fn kernel_format(path: &Path) -> Result<KernelFormat, KernelError> {
    let shown = path.display().to_string();
    let mut f = File::open(path).map_err(|source| KernelError::Read {
        path: shown.clone(),
        source,
    })?;
    detect_kernel(&mut f, &shown)
}

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
    /// Restore this snapshot directory (see hyper-vmm's `snapshot`) instead of
    /// booting the kernel; everything else here is the new VM's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
    /// On SIGUSR1, pause the vCPUs, save a snapshot into the directory named
    /// in this file (one line) and stop. Such a VM (a template being made:
    /// our own payload, no container) writes files by path after it ran,
    /// so it is never put in the mount jail nor dropped to `run_as`; its
    /// seccomp lists gain the save's few calls (hyper-vmm's seccomp.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_request: Option<PathBuf>,
    /// Run every thread under its seccomp allow-list (hyper-vmm's seccomp.rs);
    /// off only to debug a VMM the filters kill.
    #[serde(default = "yes")]
    pub seccomp: bool,
    /// Run in a private mount namespace rooted at an empty read-only tmpfs
    /// once the VM is set up (hyper-vmm's jail.rs); needs CAP_SYS_ADMIN.
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
