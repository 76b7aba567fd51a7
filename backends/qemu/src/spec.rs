//! Checking a [`VmSpec`] before anything is started, so a mistake is reported
//! as what it is rather than as QEMU's exit status.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use hyper_hypervisor::VmSpec;

use crate::accel::Accel;
use crate::cmdline::{kernel_cmdline, RunPaths, MAX_KERNEL_CMDLINE};
use crate::config::Machine;

pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u32 = 16;
/// virtio-mmio slots on microvm are limited; more disks than this is a bug
/// in the caller anyway.
pub const MAX_DISKS: usize = 16;
pub const MAX_DISK_ID: usize = 20;
/// NICs per VM (each a virtio-mmio slot on microvm, next to the disks).
pub const MAX_NICS: usize = 8;
pub const MAX_VM_ID: usize = 64;
/// virtio-mmio transports on QEMU's microvm (7.2: a 25th device finds no
/// `virtio-bus`); the agent's virtio-serial takes one.
pub const MICROVM_MMIO_SLOTS: usize = 24;
/// `sun_path` is 108 bytes including the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

fn id_chars_ok(s: &str, extra: &[char]) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

fn readable_file(what: &str, path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{what} {} is not a regular file", path.display()));
    }
    OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| format!("{what} {} cannot be read: {e}", path.display()))?;
    Ok(())
}

/// Checks everything about `spec` that can be checked without starting QEMU.
/// `host_memory_mib` is the host's total memory, when known. The checks are
/// quick local file-system calls, fine to make from async code.
pub fn validate(
    spec: &VmSpec,
    machine: Machine,
    accel: Accel,
    host_memory_mib: Option<u64>,
) -> Result<(), String> {
    if spec.id.is_empty() || spec.id.len() > MAX_VM_ID || !id_chars_ok(&spec.id, &['.']) {
        return Err(format!(
            "VM id {:?} must be 1 to {MAX_VM_ID} characters of [A-Za-z0-9_.-]",
            spec.id
        ));
    }
    if !(1..=MAX_VCPUS).contains(&spec.vcpus) {
        return Err(format!(
            "vcpus = {} is out of range: use 1 to {MAX_VCPUS}",
            spec.vcpus
        ));
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(format!(
            "memory_mib = {} is too small: a guest needs at least {MIN_MEMORY_MIB} MiB",
            spec.memory_mib
        ));
    }
    if let Some(host) = host_memory_mib {
        if u64::from(spec.memory_mib) > host {
            return Err(format!(
                "memory_mib = {} is more than this host has ({host} MiB)",
                spec.memory_mib
            ));
        }
    }
    let cmdline = kernel_cmdline(&spec.cmdline, machine, accel);
    if cmdline.len() > MAX_KERNEL_CMDLINE {
        return Err(format!(
            "the kernel command line is {} bytes with this backend's additions; the limit is {MAX_KERNEL_CMDLINE}",
            cmdline.len()
        ));
    }
    readable_file("kernel", &spec.kernel)?;
    readable_file("initrd", &spec.initrd)?;
    if spec.disks.len() > MAX_DISKS {
        return Err(format!(
            "{} disks: at most {MAX_DISKS} are supported",
            spec.disks.len()
        ));
    }
    let mut ids = HashSet::new();
    for disk in &spec.disks {
        if disk.id.is_empty() || disk.id.len() > MAX_DISK_ID || !id_chars_ok(&disk.id, &[]) {
            return Err(format!(
                "disk id {:?} must be 1 to {MAX_DISK_ID} bytes of [A-Za-z0-9_-] (it becomes the virtio-blk serial)",
                disk.id
            ));
        }
        if !ids.insert(disk.id.as_str()) {
            return Err(format!(
                "disk id {:?} is used twice: the guest could not tell the disks apart",
                disk.id
            ));
        }
        let what = format!("disk {}", disk.id);
        let meta = std::fs::metadata(&disk.path)
            .map_err(|e| format!("{what} {}: {e}", disk.path.display()))?;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(format!(
                "{what} {} is neither a regular file nor a block device",
                disk.path.display()
            ));
        }
        OpenOptions::new()
            .read(true)
            .write(!disk.read_only)
            .open(&disk.path)
            .map_err(|e| {
                let mode = if disk.read_only {
                    "read"
                } else {
                    "read and written"
                };
                format!("{what} {} cannot be {mode}: {e}", disk.path.display())
            })?;
    }
    validate_nics(spec)?;
    hyper_hypervisor::virtiofs::validate(&spec.run_dir, &spec.shares).map_err(|e| e.to_string())?;
    let devices = 1 + spec.disks.len() + spec.nics.len() + spec.shares.len();
    if machine == Machine::Microvm && devices > MICROVM_MMIO_SLOTS {
        return Err(format!(
            "{} disks, {} NICs and {} shares need {devices} virtio-mmio slots with the agent's channel; microvm has {MICROVM_MMIO_SLOTS}: use fewer, or machine = \"q35\"",
            spec.disks.len(),
            spec.nics.len(),
            spec.shares.len()
        ));
    }
    if spec.save_as_template && !spec.shares.is_empty() {
        return Err(format!(
            "a template VM cannot have directory shares ({} asked): QEMU {} cannot migrate vhost-user-fs devices; start such pods cold",
            spec.shares.len(),
            crate::template::TESTED_QEMU
        ));
    }
    let paths = RunPaths::new(&spec.run_dir);
    for socket in [&paths.qmp, &paths.agent, &paths.migrate] {
        let len = socket.as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path {} is {len} bytes, over the unix socket limit of {MAX_SOCKET_PATH}: use a shorter state directory",
                socket.display()
            ));
        }
    }
    if !spec.run_dir.is_dir() {
        return Err(format!(
            "run directory {} does not exist",
            spec.run_dir.display()
        ));
    }
    match spec.console_log.parent() {
        Some(dir) if dir.as_os_str().is_empty() || dir.is_dir() => {}
        _ => {
            return Err(format!(
                "the directory of console log {} does not exist",
                spec.console_log.display()
            ))
        }
    }
    Ok(())
}

/// The NICs: each one well-formed (the kit's checks: names, a unicast MAC,
/// the MTU), no two with the same MAC or the same device in one namespace.
fn validate_nics(spec: &VmSpec) -> Result<(), String> {
    if spec.nics.len() > MAX_NICS {
        return Err(format!(
            "{} NICs: at most {MAX_NICS} are supported",
            spec.nics.len()
        ));
    }
    let mut macs = HashSet::new();
    let mut devices = HashSet::new();
    let mut peers = HashSet::new();
    for (i, nic) in spec.nics.iter().enumerate() {
        let mac = hyper_hypervisor::nic::validate(nic).map_err(|e| format!("NIC {i}: {e}"))?;
        if !macs.insert(mac) {
            return Err(format!(
                "NIC {i}: MAC {} is used twice: the guest could not tell the NICs apart",
                nic.mac
            ));
        }
        if !devices.insert((&nic.netns, &nic.device)) {
            return Err(format!(
                "NIC {i}: device {} is used twice in {}",
                nic.device,
                nic.netns.display()
            ));
        }
        // One redirect per peer: a second NIC on it would replace the first.
        if !peers.insert((&nic.netns, &nic.peer)) {
            return Err(format!(
                "NIC {i}: peer {} in {} already carries another NIC",
                nic.peer,
                nic.netns.display()
            ));
        }
    }
    Ok(())
}

/// MemTotal from /proc/meminfo, in MiB.
pub fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total_mib(&meminfo)
}

fn parse_meminfo_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_hypervisor::DiskSpec;
    use std::path::PathBuf;

    struct Fixture {
        _dir: tempfile::TempDir,
        spec: VmSpec,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, b"x").unwrap();
            p
        };
        let run_dir = dir.path().join("vm");
        std::fs::create_dir(&run_dir).unwrap();
        let spec = VmSpec {
            id: "abc123".into(),
            kernel: file("vmlinux"),
            initrd: file("initrd"),
            cmdline: "quiet".into(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![DiskSpec {
                path: file("root.img"),
                read_only: true,
                id: "rootfs".into(),
            }],
            console_log: dir.path().join("console.log"),
            run_dir,
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        };
        Fixture { _dir: dir, spec }
    }

    fn check(spec: &VmSpec) -> Result<(), String> {
        validate(spec, Machine::Microvm, Accel::Tcg, Some(4096))
    }

    #[test]
    fn valid() {
        let f = fixture();
        check(&f.spec).unwrap();
    }

    #[test]
    fn ranges() {
        let f = fixture();
        let mut s = f.spec.clone();
        s.vcpus = 0;
        assert!(check(&s).unwrap_err().contains("vcpus = 0"));
        s.vcpus = 65;
        assert!(check(&s).unwrap_err().contains("1 to 64"));
        let mut s = f.spec.clone();
        s.memory_mib = 8;
        assert!(check(&s).unwrap_err().contains("at least 16 MiB"));
        s.memory_mib = 8192;
        assert!(check(&s).unwrap_err().contains("4096 MiB"));
        let mut s = f.spec.clone();
        s.cmdline = "a".repeat(3000);
        assert!(check(&s).unwrap_err().contains("limit is 2047"));
        let mut s = f.spec.clone();
        s.id = "a/b".into();
        assert!(check(&s).unwrap_err().contains("VM id"));
    }

    #[test]
    fn files() {
        let f = fixture();
        let mut s = f.spec.clone();
        s.kernel = PathBuf::from("/nonexistent/vmlinux");
        let e = check(&s).unwrap_err();
        assert!(e.starts_with("kernel /nonexistent/vmlinux"), "{e}");
        let mut s = f.spec.clone();
        s.initrd = s.run_dir.clone();
        assert!(check(&s).unwrap_err().contains("not a regular file"));
        let mut s = f.spec.clone();
        s.disks[0].path = PathBuf::from("/nonexistent.img");
        assert!(check(&s)
            .unwrap_err()
            .starts_with("disk rootfs /nonexistent.img"));
        let mut s = f.spec.clone();
        s.run_dir = s.run_dir.join("missing");
        assert!(check(&s).unwrap_err().contains("run directory"));
    }

    #[test]
    fn nics() {
        let f = fixture();
        let nic = |i: u8| hyper_hypervisor::NicSpec {
            netns: "/run/netns/hyper-abc123".into(),
            peer: format!("eth{i}"),
            device: format!("tap{i}"),
            mac: format!("02:00:00:00:00:{i:02x}"),
            mtu: 1500,
        };
        let mut s = f.spec.clone();
        s.nics = vec![nic(0), nic(1)];
        check(&s).unwrap();

        let mut bad = s.clone();
        bad.nics[1].mac = "ff:ff:ff:ff:ff:ff".into();
        let e = check(&bad).unwrap_err();
        assert!(e.starts_with("NIC 1: invalid NIC mac"), "{e}");
        let mut bad = s.clone();
        bad.nics[1].mac = bad.nics[0].mac.clone();
        assert!(check(&bad).unwrap_err().contains("used twice"));
        let mut bad = s.clone();
        bad.nics[1].device = "tap0".into();
        assert!(check(&bad)
            .unwrap_err()
            .contains("device tap0 is used twice"));
        let mut bad = s.clone();
        bad.nics[0].device = "tap/0".into();
        assert!(check(&bad).unwrap_err().contains("invalid NIC device"));
        let mut bad = s.clone();
        bad.nics = (0..9).map(nic).collect();
        assert!(check(&bad).unwrap_err().contains("at most 8"));
    }

    #[test]
    fn shares() {
        let f = fixture();
        let mut s = f.spec.clone();
        s.shares = vec![hyper_hypervisor::ShareSpec {
            tag: "data".into(),
            source: f._dir.path().to_path_buf(),
            read_only: false,
        }];
        check(&s).unwrap();
        s.shares[0].tag = "bad tag".into();
        let e = check(&s).unwrap_err();
        assert!(e.starts_with("share \"bad tag\": the tag"), "{e}");
        s.shares[0].tag = "data".into();
        s.shares[0].source = f.spec.kernel.clone();
        assert!(check(&s).unwrap_err().contains("is not a directory"));
        // 1 + 16 disks + 8 shares: over microvm's slots, fine on q35.
        s.shares = (0..8)
            .map(|i| hyper_hypervisor::ShareSpec {
                tag: format!("s{i}"),
                source: f._dir.path().to_path_buf(),
                read_only: true,
            })
            .collect();
        s.disks = (0..16)
            .map(|i| DiskSpec {
                id: format!("d{i}"),
                ..f.spec.disks[0].clone()
            })
            .collect();
        let e = check(&s).unwrap_err();
        assert!(
            e.contains("need 25 virtio-mmio slots") && e.contains("q35"),
            "{e}"
        );
        validate(&s, Machine::Q35, Accel::Tcg, Some(4096)).unwrap();
    }

    #[test]
    fn disk_ids() {
        let f = fixture();
        for bad in [
            "",
            "has space",
            "comma,id",
            "a-very-long-disk-id-over-20",
            "é",
        ] {
            let mut s = f.spec.clone();
            s.disks[0].id = bad.into();
            let e = check(&s).unwrap_err();
            assert!(e.contains("[A-Za-z0-9_-]"), "{bad}: {e}");
        }
        let mut s = f.spec.clone();
        s.disks[0].id = "Ab_0-9xxxxxxxxxxxxxx".into(); // exactly 20 bytes
        check(&s).unwrap();
        s.disks.push(s.disks[0].clone());
        assert!(check(&s).unwrap_err().contains("used twice"));
    }

    #[test]
    fn socket_path_length() {
        let f = fixture();
        let mut s = f.spec.clone();
        let long = s.run_dir.join("d".repeat(100));
        std::fs::create_dir(&long).unwrap();
        s.run_dir = long;
        assert!(check(&s).unwrap_err().contains("unix socket limit"));
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24578060 kB\nMemFree:         1 kB\n";
        assert_eq!(parse_meminfo_total_mib(text), Some(24002));
        assert_eq!(parse_meminfo_total_mib("nothing"), None);
        assert!(host_memory_mib().is_some());
    }
}
