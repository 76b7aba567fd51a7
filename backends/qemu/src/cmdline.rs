//! The QEMU command line, as a pure function of the config, the accelerator
//! and the spec, and the files a VM keeps in its run directory.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use hyper_hypervisor::VmSpec;

use crate::accel::Accel;
use crate::config::{Machine, QemuConfig};
use crate::memory::GuestMemory;

/// The virtio-serial port name hyperstart looks for in
/// `/sys/class/virtio-ports/*/name`.
pub const CHANNEL_NAME: &str = hyper_protocol::CHANNEL_PORT_NAME;

/// x86's COMMAND_LINE_SIZE is 2048 bytes including the NUL.
pub const MAX_KERNEL_CMDLINE: usize = 2047;

/// The files of one VM inside its run directory.
///
/// `qemu.pid` holds the QEMU process id while the VM runs (written right
/// after spawning, removed once the process has been reaped). Whoever reads it
/// must check that `/proc/<pid>/cmdline` mentions this run directory's QMP
/// socket before acting on the pid, so a recycled pid is never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub qmp: PathBuf,
    pub agent: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
    /// The migration stream's socket while a template is saved (QEMU
    /// connects to the plugin) or a clone restored (the plugin connects to
    /// QEMU); it exists only during that step.
    pub migrate: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            qmp: dir.join("qmp.sock"),
            agent: dir.join("agent.sock"),
            pid: dir.join("qemu.pid"),
            log: dir.join("qemu.log"),
            migrate: dir.join("migrate.sock"),
        }
    }

    /// What the QMP argument looks like in `/proc/<pid>/cmdline`; it names
    /// the run directory, so it identifies our QEMU for this VM.
    pub fn qmp_arg(&self) -> OsString {
        cat(&[
            OsStr::new("unix:"),
            &escape(&self.qmp),
            OsStr::new(",server=on,wait=off"),
        ])
    }
}

/// QEMU option values are comma-separated; a literal comma is doubled.
pub fn escape(path: &Path) -> OsString {
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn cat(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

/// The guest kernel command line: the core's part, then the bits this
/// backend's devices need.
pub fn kernel_cmdline(base: &str, machine: Machine, accel: Accel) -> String {
    let mut parts: Vec<&str> = base.split_whitespace().collect();
    parts.push("console=ttyS0");
    let channel = hyper_protocol::channel_arg(CHANNEL_NAME);
    parts.push(&channel);
    if machine == Machine::Microvm {
        if accel == Accel::Tcg {
            // microvm has no HPET or PM timer and PIT calibration fails under
            // TCG: without this the kernel hangs marking the TSC unstable.
            parts.push("tsc_early_khz=2000000");
        }
        // microvm has no PCI; this saves a probe and a "PCI: Fatal" line.
        parts.push("pci=off");
    }
    parts.join(" ")
}

/// The `-accel` value: TCG with its translation buffer's size when one is
/// configured.
pub fn accel_arg(config: &QemuConfig, accel: Accel) -> String {
    match accel {
        Accel::Tcg if config.tcg_tb_size_mib > 0 => {
            format!("tcg,tb-size={}", config.tcg_tb_size_mib)
        }
        _ => accel.as_str().to_string(),
    }
}

/// The `-sandbox` option every QEMU runs with unless `[hypervisor.qemu]
/// sandbox = false`.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How a VM starts: booting its kernel, or resuming a template's guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot<'a> {
    Cold,
    /// A clone of a template: its RAM is `memory` mapped privately, and
    /// QEMU waits (`-incoming defer`) for the device state the plugin
    /// streams in ([`crate::template`]).
    Incoming {
        memory: &'a Path,
    },
}

/// The arguments (without the binary) that start `spec` on `config`'s
/// machine with `accel`. The spec must have been validated. `tap_fds[i]` is
/// the descriptor (open in QEMU, see [`crate::nic`]) of `spec.nics[i]`'s
/// tap, opened with a vnet header.
pub fn qemu_args(
    config: &QemuConfig,
    accel: Accel,
    spec: &VmSpec,
    tap_fds: &[RawFd],
) -> Vec<OsString> {
    qemu_args_for(config, accel, spec, tap_fds, Boot::Cold)
}

/// [`qemu_args`] for a cold boot or a clone's restore.
pub fn qemu_args_for(
    config: &QemuConfig,
    accel: Accel,
    spec: &VmSpec,
    tap_fds: &[RawFd],
    boot: Boot,
) -> Vec<OsString> {
    let memory = GuestMemory::for_launch(spec, &boot);
    let paths = RunPaths::new(&spec.run_dir);
    let (blk, serial, net) = match config.machine {
        Machine::Microvm => (
            "virtio-blk-device",
            "virtio-serial-device",
            "virtio-net-device",
        ),
        Machine::Q35 => ("virtio-blk-pci", "virtio-serial-pci", "virtio-net-pci"),
    };
    let cpu = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&OsStr]| args.push(cat(parts));
    let s = OsStr::new;
    push(&[s("-name")]);
    push(&[s("hyper-"), s(&spec.id)]);
    push(&[s("-machine")]);
    push(&[s(&memory.machine_arg(config.machine))]);
    push(&[s("-accel")]);
    push(&[s(&accel_arg(config, accel))]);
    push(&[s("-cpu")]);
    push(&[s(cpu)]);
    push(&[s("-m")]);
    push(&[s(&spec.memory_mib.to_string())]);
    push(&[s("-smp")]);
    push(&[s(&spec.vcpus.to_string())]);
    for a in memory.object_args(spec.memory_mib) {
        push(&[&a]);
    }
    for flag in ["-nodefaults", "-no-user-config", "-no-reboot"] {
        push(&[s(flag)]);
    }
    push(&[s("-display")]);
    push(&[s("none")]);
    if config.sandbox {
        // QEMU's seccomp filter: no obsolete syscalls, no set*id, no
        // fork/exec, no scheduler or affinity changes.
        push(&[s("-sandbox")]);
        push(&[s(SANDBOX)]);
    }
    // Appending, so the cap's truncation (crate::console) moves QEMU's
    // next write to the new end.
    push(&[s("-chardev")]);
    push(&[
        s("file,id=console,append=on,path="),
        &escape(&spec.console_log),
    ]);
    push(&[s("-serial")]);
    push(&[s("chardev:console")]);
    push(&[s("-kernel")]);
    push(&[spec.kernel.as_os_str()]);
    push(&[s("-initrd")]);
    push(&[spec.initrd.as_os_str()]);
    push(&[s("-append")]);
    push(&[s(&kernel_cmdline(&spec.cmdline, config.machine, accel))]);
    push(&[s("-chardev")]);
    push(&[
        s("socket,id=agent,path="),
        &escape(&paths.agent),
        s(",server=on,wait=off"),
    ]);
    push(&[s("-device")]);
    push(&[s(serial)]);
    push(&[s("-device")]);
    push(&[s("virtserialport,chardev=agent,name="), s(CHANNEL_NAME)]);
    for (i, disk) in spec.disks.iter().enumerate() {
        let readonly = if disk.read_only { "on" } else { "off" };
        push(&[s("-drive")]);
        push(&[
            s("file="),
            &escape(&disk.path),
            s(&format!(
                ",if=none,id=disk{i},format=raw,readonly={readonly}"
            )),
        ]);
        push(&[s("-device")]);
        // The id charset was validated: no commas, nothing to escape.
        push(&[s(&format!("{blk},drive=disk{i},serial={}", disk.id))]);
    }
    for (i, (nic, fd)) in spec.nics.iter().zip(tap_fds).enumerate() {
        // With fd=, QEMU refuses vnet_hdr= and reads the tap's IFF_VNET_HDR
        // itself. The MAC was validated (hex and ':'), nothing to escape.
        // host_mtu tells the guest driver the MTU (VIRTIO_NET_F_MTU).
        push(&[s("-netdev")]);
        push(&[s(&format!("tap,id=net{i},fd={fd}"))]);
        push(&[s("-device")]);
        push(&[s(&format!(
            "{net},id=nic{i},netdev=net{i},mac={},host_mtu={}",
            nic.mac, nic.mtu
        ))]);
    }
    // Each share's virtiofsd is listening before QEMU starts.
    for a in crate::share::device_args(config.machine, spec) {
        push(&[&a]);
    }
    push(&[s("-qmp")]);
    push(&[&paths.qmp_arg()]);
    if let Boot::Incoming { .. } = boot {
        // The stream's address is given later, over QMP.
        push(&[s("-incoming")]);
        push(&[s("defer")]);
    }
    // Last, so an operator's option can override ours where QEMU lets the
    // last one win.
    for a in &config.extra_args {
        push(&[s(a)]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccelSetting;
    use hyper_hypervisor::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            id: "p1".into(),
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd.img".into(),
            cmdline: "quiet  hyper.debug=1 ".into(),
            vcpus: 2,
            memory_mib: 256,
            disks: vec![
                DiskSpec {
                    path: "/img/root,fs.erofs".into(),
                    read_only: true,
                    id: "rootfs".into(),
                },
                DiskSpec {
                    path: "/img/data.raw".into(),
                    read_only: false,
                    id: "data_1".into(),
                },
            ],
            console_log: "/pods/p1/console.log".into(),
            run_dir: "/pods/p1/vm".into(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        }
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    #[rustfmt::skip]
    fn microvm_tcg() {
        let config = QemuConfig::default();
        let args = strings(qemu_args(&config, Accel::Tcg, &spec(), &[]));
        let expected = [
            "-name", "hyper-p1",
            "-machine", "microvm",
            "-accel", "tcg,tb-size=16",
            "-cpu", "max",
            "-m", "256",
            "-smp", "2",
            "-nodefaults", "-no-user-config", "-no-reboot",
            "-display", "none",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-chardev", "file,id=console,append=on,path=/pods/p1/console.log",
            "-serial", "chardev:console",
            "-kernel", "/k/vmlinux",
            "-initrd", "/k/initrd.img",
            "-append",
            "quiet hyper.debug=1 console=ttyS0 hyper.channel=sh.hyper.channel.0 tsc_early_khz=2000000 pci=off",
            "-chardev", "socket,id=agent,path=/pods/p1/vm/agent.sock,server=on,wait=off",
            "-device", "virtio-serial-device",
            "-device", "virtserialport,chardev=agent,name=sh.hyper.channel.0",
            "-drive", "file=/img/root,,fs.erofs,if=none,id=disk0,format=raw,readonly=on",
            "-device", "virtio-blk-device,drive=disk0,serial=rootfs",
            "-drive", "file=/img/data.raw,if=none,id=disk1,format=raw,readonly=off",
            "-device", "virtio-blk-device,drive=disk1,serial=data_1",
            "-qmp", "unix:/pods/p1/vm/qmp.sock,server=on,wait=off",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    #[rustfmt::skip]
    fn q35_kvm() {
        let config = QemuConfig {
            machine: Machine::Q35,
            accel: AccelSetting::Kvm,
            extra_args: vec!["-d".into(), "guest_errors".into()],
            sandbox: false,
            ..QemuConfig::default()
        };
        let mut spec = spec();
        spec.cmdline = String::new();
        spec.disks.truncate(1);
        let args = strings(qemu_args(&config, Accel::Kvm, &spec, &[]));
        let expected = [
            "-name", "hyper-p1",
            "-machine", "q35",
            "-accel", "kvm",
            "-cpu", "host",
            "-m", "256",
            "-smp", "2",
            "-nodefaults", "-no-user-config", "-no-reboot",
            "-display", "none",
            "-chardev", "file,id=console,append=on,path=/pods/p1/console.log",
            "-serial", "chardev:console",
            "-kernel", "/k/vmlinux",
            "-initrd", "/k/initrd.img",
            "-append", "console=ttyS0 hyper.channel=sh.hyper.channel.0",
            "-chardev", "socket,id=agent,path=/pods/p1/vm/agent.sock,server=on,wait=off",
            "-device", "virtio-serial-pci",
            "-device", "virtserialport,chardev=agent,name=sh.hyper.channel.0",
            "-drive", "file=/img/root,,fs.erofs,if=none,id=disk0,format=raw,readonly=on",
            "-device", "virtio-blk-pci,drive=disk0,serial=rootfs",
            "-qmp", "unix:/pods/p1/vm/qmp.sock,server=on,wait=off",
            "-d", "guest_errors",
        ];
        assert_eq!(args, expected);
    }

    fn with_nics(mut spec: VmSpec) -> VmSpec {
        spec.disks.clear();
        for (i, mac) in ["02:00:00:00:00:01", "02:00:00:00:00:02"]
            .iter()
            .enumerate()
        {
            spec.nics.push(hyper_hypervisor::NicSpec {
                netns: "/run/netns/hyper-p1".into(),
                peer: format!("eth{i}"),
                device: format!("tap{i}"),
                mac: mac.to_string(),
                mtu: 1500 - i as u32 * 100,
            });
        }
        spec
    }

    /// The (netdev, device) argument pairs of a command line.
    fn nic_args(args: &[String]) -> Vec<(String, String)> {
        let netdevs = args
            .windows(2)
            .filter(|w| w[0] == "-netdev")
            .map(|w| w[1].clone());
        let devices = args
            .windows(2)
            .filter(|w| w[0] == "-device" && w[1].starts_with("virtio-net"))
            .map(|w| w[1].clone());
        netdevs.zip(devices).collect()
    }

    #[test]
    fn nics_on_microvm_are_virtio_mmio_over_the_tap_fds() {
        let args = strings(qemu_args(
            &QemuConfig::default(),
            Accel::Tcg,
            &with_nics(spec()),
            &[7, 9],
        ));
        assert_eq!(
            nic_args(&args),
            [
                (
                    "tap,id=net0,fd=7".to_string(),
                    "virtio-net-device,id=nic0,netdev=net0,mac=02:00:00:00:00:01,host_mtu=1500"
                        .to_string()
                ),
                (
                    "tap,id=net1,fd=9".to_string(),
                    "virtio-net-device,id=nic1,netdev=net1,mac=02:00:00:00:00:02,host_mtu=1400"
                        .to_string()
                ),
            ]
        );
        // Before -qmp, like the other devices.
        let qmp = args.iter().position(|a| a == "-qmp").unwrap();
        let last_netdev = args.iter().rposition(|a| a == "-netdev").unwrap();
        assert!(last_netdev < qmp);
    }

    #[test]
    fn nics_on_q35_are_virtio_pci() {
        let config = QemuConfig {
            machine: Machine::Q35,
            ..QemuConfig::default()
        };
        let args = strings(qemu_args(&config, Accel::Kvm, &with_nics(spec()), &[5, 6]));
        let nics = nic_args(&args);
        assert_eq!(nics.len(), 2);
        assert!(
            nics[0].1.starts_with("virtio-net-pci,id=nic0,netdev=net0,"),
            "{nics:?}"
        );
        assert_eq!(nics[1].0, "tap,id=net1,fd=6");
    }

    #[test]
    fn no_nics_no_netdev() {
        let args = strings(qemu_args(&QemuConfig::default(), Accel::Tcg, &spec(), &[]));
        assert!(!args.iter().any(|a| a == "-netdev"));
    }

    /// Shares and a block volume change the command line by exactly these
    /// additions: shared memfd RAM, one more rw disk, a vhost-user-fs device.
    #[test]
    #[rustfmt::skip]
    fn shares_and_block_volumes() {
        let config = QemuConfig::default();
        let base = strings(qemu_args(&config, Accel::Tcg, &spec(), &[]));
        let mut spec = spec();
        // Block volumes: more read-write disks, each found by its serial.
        spec.disks.push(DiskSpec {
            path: "/vols/b.img".into(),
            read_only: false,
            id: "vol-b".into(),
        });
        spec.shares = vec![hyper_hypervisor::ShareSpec {
            tag: "data".into(),
            source: "/srv/data".into(),
            read_only: true,
        }];
        let args = strings(qemu_args(&config, Accel::Tcg, &spec, &[]));
        let mut expected = base;
        let machine = expected.iter().position(|a| a == "microvm").unwrap();
        expected[machine] = "microvm,memory-backend=mem".into();
        let smp = expected.iter().position(|a| a == "-smp").unwrap();
        expected.splice(smp + 2..smp + 2, [
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
        ].map(String::from));
        let qmp = expected.iter().position(|a| a == "-qmp").unwrap();
        expected.splice(qmp..qmp, [
            "-drive", "file=/vols/b.img,if=none,id=disk2,format=raw,readonly=off",
            "-device", "virtio-blk-device,drive=disk2,serial=vol-b",
            "-chardev", "socket,id=vfs0,path=/pods/p1/vm/vfs-data.sock",
            "-device", "vhost-user-fs-device,chardev=vfs0,tag=data,queue-size=1024",
        ].map(String::from));
        assert_eq!(args, expected);
    }

    #[test]
    fn microvm_kvm_needs_no_tsc_hint() {
        let line = kernel_cmdline("", Machine::Microvm, Accel::Kvm);
        assert_eq!(
            line,
            "console=ttyS0 hyper.channel=sh.hyper.channel.0 pci=off"
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(Path::new("/a,b,,c")), OsString::from("/a,,b,,,,c"));
        let paths = RunPaths::new(Path::new("/run/x"));
        assert_eq!(
            paths.qmp_arg(),
            OsString::from("unix:/run/x/qmp.sock,server=on,wait=off")
        );
    }
}
