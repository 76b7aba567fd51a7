//! Building the VM and running it until the guest stops, a signal arrives,
//! or something fails.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MP_STATE_HALTED, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use serde::Serialize;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::boot;
use super::config::VmmConfig;
use super::cpu;
use super::devices::blk::Block;
use super::devices::bus::{Bus, BusDevice, SharedDevice};
use super::devices::console::Console;
use super::devices::debug_exit::DebugExit;
use super::devices::fs::{self, Fs};
use super::devices::i8042::{self, I8042Device};
use super::devices::lock;
use super::devices::mmio::MmioTransport;
use super::devices::mmio::QUEUE_NOTIFY;
use super::devices::net::{self, parse_mac, Net, NetStats, Tap};
use super::devices::serial::{BoundedLog, SerialDevice};
use super::devices::GUEST_FAULTS;
use super::layout::*;
use super::seccomp::{self, ThreadKind};
use super::snapshot::devices::DevicesState;
use super::snapshot::irqchip::VmState;
use super::snapshot::vcpu::VcpuState;
use super::snapshot::{self, Snapshot};
use crate::guest_fault;

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset, triple fault): Linux's
    /// reboot, poweroff without ACPI, and `panic=-1` all end here.
    GuestReset { how: String },
    /// Every vCPU halted with interrupts disabled, so nothing can wake the
    /// guest again: Linux's poweroff and halt without ACPI end here.
    GuestHalt,
    /// A test guest wrote its status to the debug-exit port.
    DebugExit { status: u32 },
    /// SIGTERM/SIGINT/SIGHUP.
    Signal { signal: i32 },
    /// The VMM could not set up or run the VM.
    Error { message: String },
    /// A process the VM depends on went away or stopped answering (the
    /// virtiofsd of a share): the VM is stopped rather than left with a
    /// dead filesystem.
    HelperDied {
        helper: String,
        tag: String,
        message: String,
    },
    /// A snapshot was saved on request (SIGUSR1) and the VM stopped.
    Saved { dir: String },
    /// The snapshot to restore was refused before anything was built.
    SnapshotRejected { message: String },
}

/// The machine-readable summary written to `status_file`.
#[derive(Debug, Clone, Serialize)]
pub struct ExitStatus {
    #[serde(flatten)]
    pub reason: ExitReason,
    /// From VMM start to the guest's first port write.
    pub first_port_write_us: Option<u64>,
    pub setup_us: Option<u64>,
    pub guest_faults: u64,
    pub vcpu_exits: u64,
    pub vmm_rss_kib: Option<u64>,
    /// Where set-up time went, in µs since process start: KVM VM created,
    /// guest memory registered, kernel loaded, devices built, vCPUs started.
    pub setup_marks_us: Vec<(String, u64)>,
    /// Guest RAM pages resident in the VMM (touched by guest or VMM).
    pub guest_resident_kib: Option<u64>,
    /// Per NIC, in configuration order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<NetStats>,
}

impl ExitStatus {
    /// The process exit code: 0 for a guest that stopped itself or a clean
    /// signal stop, 3 for a non-zero debug-exit status, 1 for errors.
    pub fn exit_code(&self) -> i32 {
        match &self.reason {
            ExitReason::GuestReset { .. } | ExitReason::GuestHalt | ExitReason::Signal { .. } => 0,
            ExitReason::DebugExit { status: 0 } => 0,
            ExitReason::DebugExit { .. } => 3,
            ExitReason::Error { .. } => 1,
            ExitReason::HelperDied { .. } => 4,
            ExitReason::Saved { .. } => 0,
            ExitReason::SnapshotRejected { .. } => 5,
        }
    }
}

struct ExitSlot {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitSlot {
    fn set(&self, r: ExitReason) {
        let mut g = lock(&self.reason);
        if g.is_none() {
            *g = Some(r);
        }
        drop(g);
        let _ = self.evt.write(1);
    }
    fn is_set(&self) -> bool {
        lock(&self.reason).is_some()
    }
}

/// What the vCPU threads and the event loop share: the two device buses,
/// typed handles to the devices the event loop serves and snapshots save
/// (the same devices, behind the same locks), and the VM's run state.
struct Machine {
    /// Port I/O: COM1, the i8042, the debug-exit port.
    pio: Bus,
    /// The virtio-mmio transports, one page each from VIRTIO_MMIO_BASE.
    mmio: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    console: Arc<Mutex<MmioTransport<Console>>>,
    disks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    nets: Vec<Arc<Mutex<MmioTransport<Net>>>>,
    shares: Vec<Arc<Mutex<MmioTransport<Fs>>>>,
    /// Per share: its vhost-user socket, polled for virtiofsd going away.
    share_fds: Vec<RawFd>,
    /// (NIC, queue, eventfd): KVM signals the eventfd when the guest writes
    /// that queue's index to the NIC's QueueNotify register, without an
    /// exit to user space; the event loop runs the queue.
    net_notify: Vec<(usize, usize, EventFd)>,
    exit: Arc<ExitSlot>,
    started: Instant,
    first_io: OnceLock<Instant>,
    /// Devices write it when the event loop has something new to poll.
    kick: Arc<EventFd>,
    exits: AtomicU64,
    /// Per vCPU: its answer to the last halt probe (see [`HaltWatch`]).
    halt_probe: Vec<AtomicU8>,
    /// Set to pause every vCPU for a snapshot: each saves its state into
    /// its slot in `paused` and stays out of KVM_RUN.
    pause: AtomicBool,
    paused: Vec<Mutex<Option<Result<VcpuState, String>>>>,
    msr_indices: Vec<u32>,
}

/// Puts `device` on `bus` at `base..base+len`, keeping the caller's typed
/// handle to it.
fn attach<T: BusDevice + 'static>(
    bus: &mut Bus,
    base: u64,
    len: u64,
    device: &Arc<Mutex<T>>,
) -> Result<(), String> {
    let shared: SharedDevice = device.clone();
    bus.insert(base, len, shared)
        .map_err(|e| format!("device bus: {e}"))
}

/// How often the event loop asks every vCPU whether it is halted for good.
const HALT_PROBE_PERIOD: Duration = Duration::from_millis(200);
/// A vCPU's answer to the last halt probe.
const PROBE_NONE: u8 = 0;
const PROBE_RUNNING: u8 = 1;
const PROBE_DEAD: u8 = 2;
const RFLAGS_IF: u64 = 1 << 9;

/// Linux without ACPI has no way to power off: `reboot(POWER_OFF)` becomes
/// a halt, which stops every CPU with interrupts disabled. With the local
/// APIC in the kernel, KVM handles that HLT itself and never returns to us,
/// so the event loop kicks the vCPUs out of KVM_RUN now and then and asks.
/// Only an answer from every vCPU, twice in a row, counts: a vCPU busy in
/// user space does not answer, and an offline CPU (also halted with
/// interrupts off) can be woken by a live one.
#[derive(Debug, Default)]
pub struct HaltWatch {
    dead_rounds: u32,
}

impl HaltWatch {
    /// Takes one round of answers; true once the guest can never run again.
    pub fn round(&mut self, answers: &[u8]) -> bool {
        if !answers.is_empty() && answers.iter().all(|&a| a == PROBE_DEAD) {
            self.dead_rounds += 1;
        } else {
            self.dead_rounds = 0;
        }
        self.dead_rounds >= 2
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN (its handler does
/// nothing: the interrupted ioctl is the point).
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {}

fn install_kick_handler() -> Result<(), String> {
    // SAFETY: sigaction is plain data; the handler is async-signal-safe (it
    // does nothing) and SA_RESTART is left out so KVM_RUN returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// After a kick: is this vCPU halted with interrupts disabled?
fn probe_answer(vcpu: &VcpuFd) -> u8 {
    let halted = vcpu
        .get_mp_state()
        .is_ok_and(|s| s.mp_state == KVM_MP_STATE_HALTED);
    let irqs_off = vcpu.get_regs().is_ok_and(|r| r.rflags & RFLAGS_IF == 0);
    if halted && irqs_off {
        PROBE_DEAD
    } else {
        PROBE_RUNNING
    }
}

/// Completes any I/O KVM is waiting on (an IN or MMIO read whose data
/// is copied into the guest on the next entry) without running the guest,
/// then reads the vCPU's state into its slot and stays out of the guest
/// until the VMM ends.
fn pause_vcpu(vcpu: &mut VcpuFd, bus: &Machine, id: usize) {
    vcpu.set_kvm_immediate_exit(1);
    let _ = vcpu.run();
    vcpu.set_kvm_immediate_exit(0);
    let state = VcpuState::capture(vcpu, &bus.msr_indices).map_err(|e| format!("vCPU {id}: {e}"));
    if let Some(slot) = bus.paused.get(id) {
        *lock(slot) = Some(state);
    }
    while !bus.exit.is_set() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_vcpu(mut vcpu: VcpuFd, bus: Arc<Machine>, id: usize) {
    loop {
        if bus.pause.load(Ordering::Acquire) {
            pause_vcpu(&mut vcpu, &bus, id);
            return;
        }
        bus.exits.fetch_add(1, Ordering::Relaxed);
        match vcpu.run() {
            Ok(exit) => match exit {
                VcpuExit::IoOut(port, data) => {
                    let _ = bus.first_io.set(Instant::now());
                    // Unmapped ports ignore writes.
                    bus.pio.write(u64::from(port), data);
                }
                // Unmapped ports read all ones.
                VcpuExit::IoIn(port, data) => {
                    bus.pio.read(u64::from(port), data);
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !bus.mmio.read(addr, data) {
                        guest_fault!("MMIO read of unmapped address {addr:#x}");
                    }
                }
                VcpuExit::MmioWrite(addr, data) => {
                    if !bus.mmio.write(addr, data) {
                        guest_fault!("MMIO write to unmapped address {addr:#x}");
                    }
                }
                VcpuExit::Shutdown => bus.exit.set(ExitReason::GuestReset {
                    how: "triple fault / shutdown".into(),
                }),
                VcpuExit::SystemEvent(kind, _) => bus.exit.set(ExitReason::GuestReset {
                    how: format!("KVM system event {kind}"),
                }),
                VcpuExit::Hlt => bus.exit.set(ExitReason::GuestReset {
                    how: "vCPU halted".into(),
                }),
                VcpuExit::Intr => {
                    if let Some(a) = bus.halt_probe.get(id) {
                        a.store(probe_answer(&vcpu), Ordering::Relaxed);
                    }
                }
                VcpuExit::FailEntry(reason, cpu) => bus.exit.set(ExitReason::Error {
                    message: format!("KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"),
                }),
                VcpuExit::InternalError => bus.exit.set(ExitReason::Error {
                    message: "KVM internal error (the instruction emulator gave up)".into(),
                }),
                other => bus.exit.set(ExitReason::Error {
                    message: format!("unexpected vCPU exit {other:?}"),
                }),
            },
            Err(e) if e.errno() == libc::EINTR => {
                if let Some(a) = bus.halt_probe.get(id) {
                    a.store(probe_answer(&vcpu), Ordering::Relaxed);
                }
            }
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => bus.exit.set(ExitReason::Error {
                message: format!("KVM_RUN: {e}"),
            }),
        }
        if bus.exit.is_set() {
            return;
        }
    }
}

fn kvm_open() -> Result<Kvm, String> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => "/dev/kvm does not exist: load kvm_intel or kvm_amd (and enable virtualization in the firmware)".to_string(),
        libc::EACCES | libc::EPERM => "no permission to open /dev/kvm: add this user to the kvm group or run as root".to_string(),
        _ => format!("cannot open /dev/kvm: {e}"),
    })
}

struct Vm {
    marks: Vec<(String, u64)>,
    _kvm: Kvm,
    vm_fd: VmFd,
    cfg: VmmConfig,
    mem: GuestMemoryMmap,
    bus: Arc<Machine>,
    listener: Option<UnixListener>,
    sigfd: OwnedFd,
    /// Kept unjoined so their pthread ids stay valid for kicks.
    vcpu_threads: Vec<std::thread::JoinHandle<()>>,
    /// The mount jail's last step, done once the vCPUs run.
    jail: Option<super::jail::Pending>,
}

fn block_signals() -> Result<OwnedFd, String> {
    // SAFETY: sigset_t is plain data; the libc calls only write into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err("cannot block signals".into());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(format!("signalfd: {}", std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn build(cfg: &VmmConfig, started: Instant) -> Result<Vm, String> {
    let mut marks = Vec::new();
    let mut mark =
        |what: &str| marks.push((what.to_string(), started.elapsed().as_micros() as u64));
    cfg.validate()?;
    let regions = ram_regions(cfg.memory_mib);
    // A snapshot is read and checked whole before anything is built.
    let restore = match &cfg.restore_from {
        Some(dir) => Some(
            snapshot::load(dir, cfg, &regions)
                .map_err(|e| format!("{REJECTED}{}: {e}", dir.display()))?,
        ),
        None => None,
    };
    mark("validated");
    let sigfd = block_signals()?;
    install_kick_handler()?;
    let kvm = kvm_open()?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::UserMemory, "user memory"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Pit2, "PIT"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(format!("this KVM lacks {name}"));
        }
    }
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
    vm.create_irq_chip()
        .map_err(|e| format!("KVM_CREATE_IRQCHIP: {e}"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| format!("KVM_CREATE_PIT2: {e}"))?;
    mark("kvm_vm_created");

    // Shareable (memfd, MAP_SHARED) only when a vhost-user backend must
    // map it: private memory is what every other VM gets. A restored VM
    // maps the snapshot's memory file copy-on-write.
    let (snap, mem) = match restore {
        Some((snap, file)) => {
            let mem = snapshot::private_memory(file, &regions).map_err(|e| e.to_string())?;
            snap.vm.apply(&vm).map_err(|e| e.to_string())?;
            (Some(snap), mem)
        }
        None => (
            None,
            super::memory::guest_memory(&regions, !cfg.shares.is_empty())
                .map_err(|e| e.to_string())?,
        ),
    };
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| format!("guest memory: {e}"))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // returned Vm keeps until the process exits; KVM only maps it.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    }

    mark("memory_registered");

    // Devices and the command line that declares them.
    let mut cmdline = cfg.cmdline.trim().to_string();
    let devices = 1 + cfg.disks.len() + cfg.nets.len() + cfg.shares.len();
    for (i, irq) in VIRTIO_IRQS.iter().enumerate().take(devices) {
        cmdline.push_str(&format!(
            " virtio_mmio.device=4K@{:#x}:{irq}",
            virtio_mmio_addr(i)
        ));
    }
    // A restored guest has its kernel in memory already.
    let entry = match snap {
        Some(_) => None,
        None => {
            let entry = boot::load(
                &mem,
                &regions,
                &cfg.kernel,
                cfg.initrd.as_deref(),
                cmdline.trim(),
            )
            .map_err(|e| e.to_string())?;
            super::mptable::write(&mem, cfg.vcpus)?;
            Some(entry)
        }
    };
    mark("kernel_loaded");

    let irq = |gsi: u32| -> Result<EventFd, String> {
        let e = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        vm.register_irqfd(&e, gsi)
            .map_err(|e| format!("KVM_IRQFD {gsi}: {e}"))?;
        Ok(e)
    };
    let log = match &cfg.console_log {
        Some(p) => BoundedLog::file(
            File::create(p).map_err(|e| format!("console log {}: {e}", p.display()))?,
            cfg.console_log_limit,
        ),
        None => BoundedLog::new(Box::new(std::io::stdout()), cfg.console_log_limit),
    };
    let serial = match &snap {
        Some(s) => SerialDevice::from_state(&s.devices.serial, irq(SERIAL_IRQ)?, log)?,
        None => SerialDevice::new(irq(SERIAL_IRQ)?, log),
    };
    let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?);
    let exit = Arc::new(ExitSlot {
        reason: Mutex::new(None),
        evt: EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?,
    });
    let mut console = MmioTransport::new(Console::new(), mem.clone(), irq(VIRTIO_IRQS[0])?)?;
    console.set_kick(kick.clone());
    let mut disks = Vec::new();
    for (i, d) in cfg.disks.iter().enumerate() {
        let blk = Block::open(&d.path, d.read_only, &d.id).map_err(|e| e.to_string())?;
        disks.push(Arc::new(Mutex::new(MmioTransport::new(
            blk,
            mem.clone(),
            irq(VIRTIO_IRQS[i + 1])?,
        )?)));
    }
    let mut nets = Vec::new();
    let mut net_notify = Vec::new();
    for (i, n) in cfg.nets.iter().enumerate() {
        let notify = virtio_mmio_addr(1 + cfg.disks.len() + i) + QUEUE_NOTIFY;
        for q in [net::RXQ, net::TXQ] {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
            match vm.register_ioevent(&e, &IoEventAddress::Mmio(notify), q as u32) {
                Ok(()) => net_notify.push((i, q, e)),
                // Notifies then come through the MMIO exit: slower, same.
                Err(e) => tracing::warn!("KVM_IOEVENTFD for NIC {i}: {e}"),
            }
        }
        let tap = Tap::new(take_fd(n.fd)?).map_err(|e| e.to_string())?;
        let mac = parse_mac(&n.mac).ok_or_else(|| format!("net mac {:?}", n.mac))?;
        let mut t = MmioTransport::new(
            Net::new(tap, mac, n.mtu),
            mem.clone(),
            irq(VIRTIO_IRQS[1 + cfg.disks.len() + i])?,
        )?;
        t.set_kick(kick.clone());
        nets.push(Arc::new(Mutex::new(t)));
    }
    let mut shares = Vec::new();
    let mut share_fds = Vec::new();
    for (i, s) in cfg.shares.iter().enumerate() {
        let slot = 1 + cfg.disks.len() + cfg.nets.len() + i;
        let call = irq(VIRTIO_IRQS[slot])?;
        let call2 = call.try_clone().map_err(|e| format!("eventfd: {e}"))?;
        let dev = Fs::new(&s.socket, &s.tag, call2, fs::conn::DEFAULT_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let notify = virtio_mmio_addr(slot) + QUEUE_NOTIFY;
        for q in 0..fs::NUM_QUEUES {
            if let Some(k) = dev.kick(q) {
                // Without it, notifies come through the MMIO exit and the
                // device passes them on: slower, same.
                if let Err(e) = vm.register_ioevent(k, &IoEventAddress::Mmio(notify), q as u32) {
                    tracing::warn!("KVM_IOEVENTFD for share {}: {e}", s.tag);
                }
            }
        }
        share_fds.push(dev.socket_fd());
        shares.push(Arc::new(Mutex::new(MmioTransport::new(
            dev,
            mem.clone(),
            call,
        )?)));
    }
    let listener = match &cfg.agent_socket {
        None => None,
        Some(p) => {
            let _ = std::fs::remove_file(p);
            let l =
                UnixListener::bind(p).map_err(|e| format!("agent socket {}: {e}", p.display()))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Some(l)
        }
    };
    if let Some(s) = &snap {
        let d = &s.devices;
        let mut ts = d.transports.iter();
        let mut next = |what: &str| {
            ts.next()
                .ok_or_else(|| format!("snapshot has no state for the {what}"))
        };
        console
            .device_mut()
            .set_pending(&d.console_rx, &d.console_tx);
        console.restore_state(next("console")?)?;
        for (i, t) in disks.iter_mut().enumerate() {
            lock(t)
                .restore_state(next("disk")?)
                .map_err(|e| format!("disk {i}: {e}"))?;
        }
        for (i, t) in nets.iter_mut().enumerate() {
            let mut t = lock(t);
            t.restore_state(next("NIC")?)
                .map_err(|e| format!("NIC {i}: {e}"))?;
            // Chains the guest queued before the save but the device had
            // not sent (budget, a full tap) get no second notify.
            t.process(net::TXQ);
        }
    }
    // The buses: every device registers its range; the console first,
    // then disks, NICs and shares, one virtio-mmio page each, in the order
    // the command line declares them.
    let serial = Arc::new(Mutex::new(serial));
    let console = Arc::new(Mutex::new(console));
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    attach(&mut pio, u64::from(SERIAL_PORT), SERIAL_PORTS, &serial)?;
    let on_reset = {
        let exit = exit.clone();
        Box::new(move || {
            exit.set(ExitReason::GuestReset {
                how: "i8042 reset".into(),
            })
        })
    };
    let i8042 = Arc::new(Mutex::new(I8042Device::new(on_reset)));
    attach(&mut pio, u64::from(I8042_DATA_PORT), i8042::PORTS, &i8042)?;
    if cfg.debug_exit {
        let exit = exit.clone();
        let on_exit = Box::new(move |status| exit.set(ExitReason::DebugExit { status }));
        let port = Arc::new(Mutex::new(DebugExit::new(on_exit)));
        attach(&mut pio, u64::from(DEBUG_EXIT_PORT), 1, &port)?;
    }
    let mut slot = 0;
    let mut page = || {
        slot += 1;
        virtio_mmio_addr(slot - 1)
    };
    attach(&mut mmio, page(), VIRTIO_MMIO_SIZE, &console)?;
    for d in &disks {
        attach(&mut mmio, page(), VIRTIO_MMIO_SIZE, d)?;
    }
    for n in &nets {
        attach(&mut mmio, page(), VIRTIO_MMIO_SIZE, n)?;
    }
    for s in &shares {
        attach(&mut mmio, page(), VIRTIO_MMIO_SIZE, s)?;
    }
    let bus = Arc::new(Machine {
        pio,
        mmio,
        serial,
        console,
        disks,
        nets,
        shares,
        share_fds,
        net_notify,
        exit,
        started,
        first_io: OnceLock::new(),
        kick,
        exits: AtomicU64::new(0),
        halt_probe: (0..cfg.vcpus).map(|_| AtomicU8::new(PROBE_NONE)).collect(),
        pause: AtomicBool::new(false),
        paused: (0..cfg.vcpus).map(|_| Mutex::new(None)).collect(),
        msr_indices: if cfg.save_request.is_some() {
            snapshot::vcpu::saved_msr_indices(&kvm).map_err(|e| e.to_string())?
        } else {
            Vec::new()
        },
    });

    mark("devices_ready");
    let pvm = cpu::host_is_pvm();
    // Everything is open: from here on no thread needs a path. Except in
    // a VM launched to become a template (save_request): it writes its
    // snapshot by path once it ran, so it is neither jailed nor dropped to
    // another uid (it runs our own payload only, never a container); its
    // seccomp filters stay (docs/security/tmplkvm.md).
    let confine = cfg.save_request.is_none();
    if !confine && (cfg.jail || cfg.run_as.is_some()) {
        tracing::info!("a VM to be saved as a template: no mount jail, no uid drop");
    }
    let jail = if cfg.jail && confine {
        let pending = super::jail::enter().map_err(|e| e.to_string())?;
        mark("jailed");
        Some(pending)
    } else {
        None
    };
    // The uid drop goes before the vCPU threads exist (glibc makes every
    // thread change uid, which their filters forbid), and after the jail's
    // last step (a non-root uid may not unmount): that step is then paid
    // here, on the boot path.
    let jail = match (cfg.run_as.filter(|_| confine), jail) {
        (Some(who), pending) => {
            if let Some(p) = pending {
                p.finish().map_err(|e| e.to_string())?;
            }
            super::jail::drop_to(who.uid, who.gid).map_err(|e| e.to_string())?;
            None
        }
        (None, pending) => pending,
    };
    // Every vCPU is set up before any runs (a restored one needs the
    // others' state in place).
    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| format!("KVM_CREATE_VCPU {id}: {e}"))?;
        let cpuid = cpu::cpuid(&kvm, id, cfg.vcpus, pvm).map_err(|e| format!("CPUID: {e}"))?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(|e| format!("KVM_SET_CPUID2: {e}"))?;
        match (&snap, entry) {
            (Some(s), _) => {
                let st = s
                    .vcpus
                    .get(usize::from(id))
                    .ok_or_else(|| format!("snapshot has no vCPU {id}"))?;
                st.apply(&vcpu).map_err(|e| format!("vCPU {id}: {e}"))?;
            }
            (None, Some(entry)) => {
                cpu::setup_common(&vcpu)?;
                if id == 0 {
                    cpu::setup_boot_vcpu(&vcpu, &mem, entry)?;
                }
            }
            (None, None) => return Err("no boot entry".into()),
        }
        vcpus.push(vcpu);
    }
    let mut vcpu_threads = Vec::new();
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let b = bus.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                // Before the first KVM_RUN: nothing the guest does runs
                // on this thread outside its allow-list.
                if let Err(e) = seccomp::install(ThreadKind::Vcpu) {
                    b.exit.set(ExitReason::Error {
                        message: e.to_string(),
                    });
                    return;
                }
                run_vcpu(vcpu, b, id)
            })
            .map_err(|e| format!("vCPU thread: {e}"))?;
        vcpu_threads.push(t);
    }
    mark("vcpus_started");
    Ok(Vm {
        marks,
        _kvm: kvm,
        vm_fd: vm,
        cfg: cfg.clone(),
        mem,
        bus,
        listener,
        sigfd,
        vcpu_threads,
        jail,
    })
}

/// What the event loop waits for on a NIC's tap: (poll events, run TX
/// again at once).
fn net_wants(t: &MmioTransport<Net>) -> (i16, bool) {
    if !t.driver_ok() {
        return (0, false);
    }
    (t.device().poll_events(), t.device().tx_pending())
}

/// Takes ownership of a tap fd inherited from whoever started hyper-vmm.
fn take_fd(fd: RawFd) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only asks whether the descriptor is open.
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!(
            "net fd {fd} is not open in hyper-vmm: the tap must be passed as an inherited fd"
        ));
    }
    // SAFETY: the configuration names each fd once (validated) and nothing
    // else in this process opened or owns it: it was inherited for this.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn poll_fds(fds: &mut [libc::pollfd], timeout: Duration) -> std::io::Result<()> {
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

fn pfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn read_signal(fd: RawFd) -> Option<i32> {
    let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::zeroed();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most `size` bytes into a buffer of that size.
    let n = unsafe { libc::read(fd, info.as_mut_ptr().cast(), size) };
    if n as usize == size {
        // SAFETY: the kernel filled the whole struct.
        Some(unsafe { info.assume_init() }.ssi_signo as i32)
    } else {
        None
    }
}

/// The event loop: agent socket, signals, and the vCPUs' exit event.
fn serve(vm: &Vm) -> ExitReason {
    let bus = &vm.bus;
    let mut halt = HaltWatch::default();
    let mut next_probe = Instant::now() + HALT_PROBE_PERIOD;
    loop {
        let now = Instant::now();
        if now >= next_probe {
            let answers: Vec<u8> = bus
                .halt_probe
                .iter()
                .map(|a| a.swap(PROBE_NONE, Ordering::Relaxed))
                .collect();
            if halt.round(&answers) {
                tracing::info!("every vCPU is halted with interrupts off: the guest has stopped");
                return ExitReason::GuestHalt;
            }
            for t in &vm.vcpu_threads {
                // SAFETY: the thread is not joined, so its pthread id is
                // valid (a finished one just gets ESRCH); the signal's
                // handler does nothing.
                unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            }
            next_probe = now + HALT_PROBE_PERIOD;
        }
        let (want_in, want_out, conn_fd) = {
            let c = lock(&bus.console);
            let d = c.device();
            (
                d.rx_room() > 0,
                d.has_output(),
                d.conn().map(|s| s.as_raw_fd()),
            )
        };
        let mut fds = vec![
            pfd(bus.exit.evt.as_raw_fd(), libc::POLLIN),
            pfd(vm.sigfd.as_raw_fd(), libc::POLLIN),
            pfd(bus.kick.as_raw_fd(), libc::POLLIN),
        ];
        if let Some(l) = &vm.listener {
            fds.push(pfd(l.as_raw_fd(), libc::POLLIN));
        }
        // The connection is polled only while there is room for input or
        // output to send: poll reports a hang-up even for no events, and a
        // hung-up peer with a full receive buffer would spin this loop.
        let conn_fd = conn_fd.filter(|_| want_in || want_out);
        if let Some(fd) = conn_fd {
            let mut ev = 0;
            if want_in {
                ev |= libc::POLLIN;
            }
            if want_out {
                ev |= libc::POLLOUT;
            }
            fds.push(pfd(fd, ev));
        }
        let shares_at = fds.len();
        for &fd in &bus.share_fds {
            fds.push(pfd(fd, libc::POLLIN));
        }
        let notify_at = fds.len();
        for (_, _, e) in &bus.net_notify {
            fds.push(pfd(e.as_raw_fd(), libc::POLLIN));
        }
        // Taps: polled for what each device can take right now.
        let mut taps = Vec::new();
        let mut busy = false;
        for (i, n) in bus.nets.iter().enumerate() {
            let t = lock(n);
            let (ev, more) = net_wants(&t);
            busy |= more;
            if ev != 0 {
                taps.push((i, fds.len()));
                fds.push(pfd(t.device().tap().as_raw_fd(), ev));
            }
        }
        let timeout = if busy {
            Duration::ZERO
        } else {
            next_probe.saturating_duration_since(Instant::now())
        };
        if let Err(e) = poll_fds(&mut fds, timeout) {
            return ExitReason::Error {
                message: format!("poll: {e}"),
            };
        }
        if let Some(r) = lock(&bus.exit.reason).clone() {
            return r;
        }
        if fds[1].revents != 0 {
            match read_signal(vm.sigfd.as_raw_fd()) {
                Some(libc::SIGUSR1) if vm.cfg.save_request.is_some() => return save(vm),
                Some(libc::SIGUSR1) => {
                    tracing::warn!("SIGUSR1 without a save_request file configured: ignored")
                }
                Some(sig) => {
                    tracing::info!("signal {sig}: stopping the VM");
                    return ExitReason::Signal { signal: sig };
                }
                None => {}
            }
        }
        if fds[2].revents != 0 {
            let _ = bus.kick.read();
        }
        for (k, share) in bus.shares.iter().enumerate() {
            if fds.get(shares_at + k).is_none_or(|p| p.revents == 0) {
                continue;
            }
            // A vCPU in the middle of an exchange holds the lock and reads
            // the reply itself: look again on the next round.
            let Ok(mut t) = share.try_lock() else {
                continue;
            };
            if let Err(message) = t.device_mut().check() {
                let tag = t.device().tag().to_string();
                tracing::error!(share = %tag, "{message}: stopping the VM");
                return ExitReason::HelperDied {
                    helper: "virtiofsd".into(),
                    tag,
                    message,
                };
            }
        }
        for (k, (i, q, e)) in bus.net_notify.iter().enumerate() {
            if fds.get(notify_at + k).is_some_and(|p| p.revents != 0) {
                let _ = e.read();
                if let Some(n) = bus.nets.get(*i) {
                    lock(n).process(*q);
                }
            }
        }
        for &(i, at) in &taps {
            let (Some(n), Some(p)) = (bus.nets.get(i), fds.get(at)) else {
                continue;
            };
            let mut t = lock(n);
            if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                t.device_mut().tap_broken();
            }
            if p.revents & libc::POLLOUT != 0 {
                t.device_mut().tap_writable();
                t.process(net::TXQ);
            }
            if p.revents & libc::POLLIN != 0 {
                t.process(net::RXQ);
            }
        }
        if busy {
            for n in &bus.nets {
                let mut t = lock(n);
                if t.device().tx_pending() {
                    t.process(net::TXQ);
                }
            }
        }
        let mut next = 3;
        if let Some(l) = &vm.listener {
            if fds[next].revents != 0 {
                if let Ok((s, _)) = l.accept() {
                    if s.set_nonblocking(true).is_ok() {
                        tracing::info!("agent connection accepted");
                        let mut c = lock(&bus.console);
                        c.device_mut().set_conn(Some(s));
                        if let Err(e) = c.device_mut().flush() {
                            tracing::warn!("agent socket: {e}");
                        }
                        c.process(1);
                    }
                }
            }
            next += 1;
        }
        if conn_fd.is_some() {
            if let Some(p) = fds.get(next) {
                let mut c = lock(&bus.console);
                if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    match c.device_mut().read_conn() {
                        Ok(true) => {}
                        Ok(false) => tracing::info!("agent connection closed"),
                        Err(e) => tracing::warn!("agent socket read: {e}"),
                    }
                    c.process(0);
                }
                if p.revents & libc::POLLOUT != 0 {
                    if let Err(e) = c.device_mut().flush() {
                        tracing::warn!("agent socket write: {e}");
                    }
                    c.process(1);
                }
            }
        }
    }
}

/// The prefix of a build error that is a refused snapshot.
const REJECTED: &str = "snapshot rejected: ";
/// How long the vCPUs get to reach a safe point for a snapshot.
const PAUSE_LIMIT: Duration = Duration::from_secs(10);
/// The save_request file names one directory.
const MAX_REQUEST: u64 = 4096;

/// Pauses every vCPU, saves the VM into the requested directory, and ends
/// the VM (whatever happens, it does not run on: the caller asked to stop
/// it).
fn save(vm: &Vm) -> ExitReason {
    match try_save(vm) {
        Ok(dir) => {
            tracing::info!(dir = %dir.display(), "snapshot saved; stopping the VM");
            ExitReason::Saved {
                dir: dir.display().to_string(),
            }
        }
        Err(message) => {
            tracing::error!("snapshot failed: {message}");
            ExitReason::Error {
                message: format!("snapshot failed: {message}"),
            }
        }
    }
}

fn try_save(vm: &Vm) -> Result<std::path::PathBuf, String> {
    use std::io::Read;
    let req = vm.cfg.save_request.as_ref().ok_or("no save_request file")?;
    let mut text = String::new();
    File::open(req)
        .and_then(|f| f.take(MAX_REQUEST).read_to_string(&mut text))
        .map_err(|e| format!("{}: {e}", req.display()))?;
    let dir = std::path::PathBuf::from(text.trim());
    if !dir.is_absolute() || !dir.is_dir() {
        return Err(format!(
            "{}: {:?} is not an existing absolute directory",
            req.display(),
            text.trim()
        ));
    }
    if !vm.cfg.shares.is_empty() {
        return Err("a VM with virtio-fs shares cannot be snapshotted".into());
    }
    let bus = &vm.bus;
    bus.pause.store(true, Ordering::Release);
    let end = Instant::now() + PAUSE_LIMIT;
    loop {
        if bus.paused.iter().all(|s| lock(s).is_some()) {
            break;
        }
        if Instant::now() > end {
            return Err(format!("the vCPUs did not pause within {PAUSE_LIMIT:?}"));
        }
        for t in &vm.vcpu_threads {
            // SAFETY: as in serve(): an unjoined thread's pthread id, a
            // handler that does nothing.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut vcpus = Vec::new();
    for s in &bus.paused {
        match lock(s).take() {
            Some(Ok(v)) => vcpus.push(v),
            Some(Err(e)) => return Err(e),
            None => return Err("a vCPU left no state".into()),
        }
    }
    let vm_state = VmState::capture(&vm.vm_fd).map_err(|e| e.to_string())?;
    let (console_rx, console_tx, mut transports) = {
        let c = lock(&bus.console);
        let (rx, tx) = c.device().pending();
        (rx, tx, vec![c.save_state()])
    };
    transports.extend(bus.disks.iter().map(|d| lock(d).save_state()));
    transports.extend(bus.nets.iter().map(|n| lock(n).save_state()));
    let snap = Snapshot {
        header: snapshot::format::Header {
            build_id: snapshot::format::build_id(),
            memory_bytes: vm.mem.iter().map(|r| r.len()).sum(),
            vcpus: u32::from(vm.cfg.vcpus),
            device_layout: snapshot::device_layout(&vm.cfg),
        },
        vcpus,
        vm: vm_state,
        devices: DevicesState {
            serial: lock(&bus.serial).state(),
            console_rx,
            console_tx,
            transports,
        },
    };
    snapshot::save(&dir, &snap, &vm.mem).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// `/proc/self/status`, opened before the mount jail and read again (from
/// offset 0: procfs regenerates it) for the exit status.
struct ProcStatus(Option<File>);

impl ProcStatus {
    fn open() -> Self {
        Self(File::open("/proc/self/status").ok())
    }

    fn rss_kib(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let f = self.0.as_ref()?;
        let mut buf = [0u8; 4096];
        let n = f.read_at(&mut buf, 0).ok()?;
        let s = std::str::from_utf8(&buf[..n]).ok()?;
        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        l.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Resident pages of guest RAM, with mincore(2).
fn guest_resident_kib(mem: &GuestMemoryMmap) -> Option<u64> {
    let page = 4096usize;
    let mut total = 0u64;
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .ok()?;
        let len = usize::try_from(region.len()).ok()?;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `host..host+len` is a live mapping owned by `mem`; `vec`
        // has one byte per page as mincore requires.
        let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
        if r != 0 {
            return None;
        }
        total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * 4;
    }
    Some(total)
}

/// Builds and runs the VM described by `cfg`; `started` is when the
/// process started (for timings).
pub fn run(cfg: &VmmConfig, started: Instant) -> ExitStatus {
    let proc_status = ProcStatus::open();
    // Compiled before any thread exists; each thread installs its own.
    let built = seccomp::prepare(cfg.seccomp, cfg.save_request.is_some())
        .map_err(|e| e.to_string())
        .and_then(|()| build(cfg, started))
        .and_then(|mut vm| {
            if let Some(pending) = vm.jail.take() {
                pending.finish().map_err(|e| e.to_string())?;
                let at = started.elapsed().as_micros() as u64;
                vm.marks.push(("jail_finished".into(), at));
            }
            Ok(vm)
        })
        .and_then(|vm| {
            seccomp::install(ThreadKind::Vmm)
                .map(|()| vm)
                .map_err(|e| e.to_string())
        });
    let vm = match built {
        Ok(vm) => vm,
        Err(message) => {
            let reason = match message.strip_prefix(REJECTED) {
                Some(m) => ExitReason::SnapshotRejected {
                    message: m.to_string(),
                },
                None => ExitReason::Error { message },
            };
            return ExitStatus {
                reason,
                first_port_write_us: None,
                setup_us: None,
                guest_faults: GUEST_FAULTS.count(),
                vcpu_exits: 0,
                vmm_rss_kib: proc_status.rss_kib(),
                setup_marks_us: Vec::new(),
                guest_resident_kib: None,
                nets: Vec::new(),
            };
        }
    };
    let setup_us = started.elapsed().as_micros() as u64;
    let reason = serve(&vm);
    let bus = &vm.bus;
    {
        let mut c = lock(&bus.console);
        let _ = c.device_mut().flush();
    }
    ExitStatus {
        reason,
        first_port_write_us: bus
            .first_io
            .get()
            .map(|t| t.duration_since(bus.started).as_micros() as u64),
        setup_us: Some(setup_us),
        guest_faults: GUEST_FAULTS.count(),
        vcpu_exits: bus.exits.load(Ordering::Relaxed),
        vmm_rss_kib: proc_status.rss_kib(),
        setup_marks_us: vm.marks.clone(),
        guest_resident_kib: guest_resident_kib(&vm.mem),
        nets: bus.nets.iter().map(|n| lock(n).device().stats()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_needs_every_vcpu_dead_twice_in_a_row() {
        let mut w = HaltWatch::default();
        assert!(!w.round(&[PROBE_DEAD, PROBE_DEAD]));
        assert!(w.round(&[PROBE_DEAD, PROBE_DEAD]));
    }

    #[test]
    fn a_live_or_silent_vcpu_resets_the_count() {
        let mut w = HaltWatch::default();
        assert!(!w.round(&[PROBE_DEAD, PROBE_DEAD]));
        assert!(!w.round(&[PROBE_DEAD, PROBE_RUNNING]));
        assert!(!w.round(&[PROBE_DEAD, PROBE_DEAD]));
        assert!(!w.round(&[PROBE_NONE, PROBE_DEAD]));
        assert!(!w.round(&[PROBE_DEAD, PROBE_DEAD]));
        assert!(w.round(&[PROBE_DEAD, PROBE_DEAD]));
    }

    #[test]
    fn no_vcpus_is_never_a_halt() {
        let mut w = HaltWatch::default();
        for _ in 0..3 {
            assert!(!w.round(&[]));
        }
    }

    #[test]
    fn guest_halt_is_a_clean_stop_in_the_status_json() {
        let st = ExitStatus {
            reason: ExitReason::GuestHalt,
            first_port_write_us: None,
            setup_us: None,
            guest_faults: 0,
            vcpu_exits: 0,
            vmm_rss_kib: None,
            setup_marks_us: Vec::new(),
            guest_resident_kib: None,
            nets: Vec::new(),
        };
        assert_eq!(st.exit_code(), 0);
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["reason"], "guest_halt");
    }
}
