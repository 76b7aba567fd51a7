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

/// Descriptors per virtqueue; more requests in flight than the default 128
/// (Kata's choice too).
pub const QUEUE_SIZE: u32 = 1024;

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
    fn no_shares_no_devices() {
        let s = spec(&[]);
        assert!(device_args(Machine::Microvm, &s).is_empty());
    }

    #[test]
    #[rustfmt::skip]
    fn shares_on_microvm() {
        let s = spec(&[("data", false), ("cfg_1", true)]);
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
        let args = strings(device_args(Machine::Q35, &s));
        assert_eq!(
            args[3],
            "vhost-user-fs-pci,chardev=vfs0,tag=data,queue-size=1024"
        );
    }
}
