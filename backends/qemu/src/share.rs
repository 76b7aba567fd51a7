//! Directory shares over virtio-fs: the QEMU arguments that connect the
//! guest to the `virtiofsd` of each [`hyper_hypervisor::ShareSpec`]. The
//! daemons themselves are the backend kit's
//! ([`hyper_hypervisor::virtiofs`]): started before QEMU, which connects to
//! each socket as the vhost-user frontend when it creates the device.

use std::ffi::{OsStr, OsString};

use hyper_hypervisor::virtiofs::socket_path;
use hyper_hypervisor::VmSpec;

use crate::cmdline::escape;
use crate::config::Machine;

/// The id of the guest-RAM backend object.
pub const MEMORY_ID: &str = "mem";
/// Descriptors per virtqueue; more requests in flight than the default 128
/// (Kata's choice too).
pub const QUEUE_SIZE: u32 = 1024;

/// The `-machine` value: the machine type, plus the RAM backend when the
/// VM has shares.
pub fn machine_arg(machine: Machine, spec: &VmSpec) -> String {
    if spec.shares.is_empty() {
        machine.as_str().to_string()
    } else {
        format!("{},memory-backend={MEMORY_ID}", machine.as_str())
    }
}

/// Guest RAM as a shared memfd, only for a VM with shares. virtiofsd is a
/// separate process that reads and writes the guest's buffers itself: the
/// vhost-user protocol hands it the RAM's file descriptors to map, which
/// needs RAM that is a file (memfd) mapped `MAP_SHARED` (`share=on`).
/// Without shares QEMU's default private anonymous RAM stays: it can be
/// neither mapped by another process nor leaked through a descriptor.
pub fn memory_args(spec: &VmSpec) -> Vec<OsString> {
    if spec.shares.is_empty() {
        return Vec::new();
    }
    vec![
        "-object".into(),
        format!(
            "memory-backend-memfd,id={MEMORY_ID},size={}M,share=on",
            spec.memory_mib
        )
        .into(),
    ]
}

/// One vhost-user socket chardev and one vhost-user-fs device per share,
/// `vfsN` in the spec's order (tags were validated: `[A-Za-z0-9_-]`,
/// nothing to escape).
pub fn device_args(machine: Machine, spec: &VmSpec) -> Vec<OsString> {
    let device = match machine {
        Machine::Microvm => "vhost-user-fs-device",
        Machine::Q35 => "vhost-user-fs-pci",
    };
    let mut args = Vec::new();
    for (i, share) in spec.shares.iter().enumerate() {
        let mut chardev = OsString::from(format!("socket,id=vfs{i},path="));
        chardev.push(escape(&socket_path(&spec.run_dir, &share.tag)));
        args.push(OsStr::new("-chardev").to_owned());
        args.push(chardev);
        args.push("-device".into());
        args.push(
            format!(
                "{device},chardev=vfs{i},tag={},queue-size={QUEUE_SIZE}",
                share.tag
            )
            .into(),
        );
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_hypervisor::ShareSpec;

    fn spec(shares: &[(&str, bool)]) -> VmSpec {
        VmSpec {
            id: "p1".into(),
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 256,
            disks: Vec::new(),
            console_log: "c".into(),
            run_dir: "/pods/p,1/vm".into(),
            nics: Vec::new(),
            shares: shares
                .iter()
                .map(|(tag, ro)| ShareSpec {
                    tag: tag.to_string(),
                    source: format!("/srv/{tag}").into(),
                    read_only: *ro,
                })
                .collect(),
            cgroup: None,
            save_as_template: false,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn no_shares_no_shared_memory() {
        let s = spec(&[]);
        assert_eq!(machine_arg(Machine::Microvm, &s), "microvm");
        assert!(memory_args(&s).is_empty());
        assert!(device_args(Machine::Microvm, &s).is_empty());
    }

    #[test]
    #[rustfmt::skip]
    fn shares_on_microvm() {
        let s = spec(&[("data", false), ("cfg_1", true)]);
        assert_eq!(machine_arg(Machine::Microvm, &s), "microvm,memory-backend=mem");
        assert_eq!(
            strings(memory_args(&s)),
            ["-object", "memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(strings(device_args(Machine::Microvm, &s)), [
            "-chardev", "socket,id=vfs0,path=/pods/p,,1/vm/vfs-data.sock",
            "-device", "vhost-user-fs-device,chardev=vfs0,tag=data,queue-size=1024",
            "-chardev", "socket,id=vfs1,path=/pods/p,,1/vm/vfs-cfg_1.sock",
            "-device", "vhost-user-fs-device,chardev=vfs1,tag=cfg_1,queue-size=1024",
        ]);
    }

    #[test]
    fn shares_on_q35_are_pci() {
        let s = spec(&[("data", false)]);
        assert_eq!(machine_arg(Machine::Q35, &s), "q35,memory-backend=mem");
        let args = strings(device_args(Machine::Q35, &s));
        assert_eq!(
            args[3],
            "vhost-user-fs-pci,chardev=vfs0,tag=data,queue-size=1024"
        );
    }
}
