//! hyper-vmm's seccomp allow-lists: one per kind of thread, as Firecracker
//! does it.
//!
//! * [`ThreadKind::Vmm`]: the main thread once the VM is built (the event
//!   loop: agent socket, signals, taps, virtiofsd sockets; then the exit
//!   status);
//! * [`ThreadKind::Vcpu`]: each vCPU thread, from before its first
//!   `KVM_RUN` (it also runs the device models of the registers the guest
//!   touches: virtio queues over disks, taps, the console socket and the
//!   vhost-user socket of a share);
//! * [`ThreadKind::Device`]: the helper threads devices start (the
//!   vhost-user watchdog), from their first instruction.
//!
//! Every syscall outside a thread's list traps: a `SIGSYS` handler writes
//! `hyper-vmm: killed by seccomp: syscall N on thread T` to stderr (the
//! VM's `vmm.log`) and the process then dies by `SIGSYS`, so the plugin
//! reports it. The trapped call itself never runs. The lists were taken
//! from `strace -f` of hyper-vmm booting the test guest (disk, initrd,
//! console, NIC, virtio-fs share) and the real payload to READY, and are
//! checked by the tests that boot them under the filters
//! (docs/security/jail2.md).
//!
//! ioctls are allowed by request number only: KVM's `KVM_RUN` and the
//! state reads the halt probe makes, the tap's offload settings and
//! `FIONBIO`.
//!
//! A VM launched to become a template (`VmmConfig.save_request`, see
//! `snapshot`) gets a few more, and only it: the vCPU threads read
//! their whole state (`KVM_GET_*`) when paused, and the main thread reads
//! the irqchip/PIT/clock state, opens the request file, checks the
//! directory it names and creates, writes and syncs the `memory` and
//! `state` files in it. A restored clone needs nothing more than a cold
//! VM: its snapshot is read and every `KVM_SET_*` done while it is built,
//! before any filter is installed.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The kinds of thread hyper-vmm runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
    Device,
}

impl ThreadKind {
    fn name(self) -> &'static [u8] {
        match self {
            Self::Vmm => b"vmm",
            Self::Vcpu => b"vcpu",
            Self::Device => b"device",
        }
    }
    fn code(self) -> u8 {
        match self {
            Self::Vmm => 1,
            Self::Vcpu => 2,
            Self::Device => 3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {kind:?} seccomp filter: {why}")]
    Build { kind: ThreadKind, why: String },
    #[error("installing the {kind:?} seccomp filter: {why}")]
    Install { kind: ThreadKind, why: String },
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

// KVM ioctls (linux/kvm.h): _IO(0xae, 0x80), _IOR(0xae, 0x81, kvm_regs),
// _IOR(0xae, 0x98, kvm_mp_state).
const KVM_RUN: u64 = 0xae80;
const KVM_GET_REGS: u64 = 0x8090_ae81;
const KVM_GET_MP_STATE: u64 = 0x8004_ae98;
// The tap's (linux/if_tun.h), set when the driver negotiates offloads.
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const TUNGETIFF: u64 = 0x8004_54d2;

// The state reads of a snapshot (linux/kvm.h): _IOR/_IOWR(0xae, nr, T).
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
const fn kvm_iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (0xae << 8) | nr
}
use std::mem::size_of;
const KVM_GET_MSRS: u64 = kvm_iowr(0x88, size_of::<kvm_bindings::kvm_msrs>());
const KVM_GET_SREGS: u64 = kvm_ior(0x83, size_of::<kvm_bindings::kvm_sregs>());
const KVM_GET_FPU: u64 = kvm_ior(0x8c, size_of::<kvm_bindings::kvm_fpu>());
const KVM_GET_LAPIC: u64 = kvm_ior(0x8e, size_of::<kvm_bindings::kvm_lapic_state>());
const KVM_GET_VCPU_EVENTS: u64 = kvm_ior(0x9f, size_of::<kvm_bindings::kvm_vcpu_events>());
const KVM_GET_DEBUGREGS: u64 = kvm_ior(0xa1, size_of::<kvm_bindings::kvm_debugregs>());
const KVM_GET_XSAVE: u64 = kvm_ior(0xa4, size_of::<kvm_bindings::kvm_xsave>());
const KVM_GET_XCRS: u64 = kvm_ior(0xa6, size_of::<kvm_bindings::kvm_xcrs>());
const KVM_GET_IRQCHIP: u64 = kvm_iowr(0x62, size_of::<kvm_bindings::kvm_irqchip>());
const KVM_GET_PIT2: u64 = kvm_ior(0x9f, size_of::<kvm_bindings::kvm_pit_state2>());
const KVM_GET_CLOCK: u64 = kvm_ior(0x7c, size_of::<kvm_bindings::kvm_clock_data>());

/// The compiled programs, built once before any filter is installed.
struct Filters {
    vmm: Vec<BpfProgram>,
    vcpu: Vec<BpfProgram>,
    device: Vec<BpfProgram>,
}

/// `None` inside: seccomp is switched off (`VmmConfig.seccomp = false`).
static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

thread_local! {
    /// The kind of filter this thread runs under, for the SIGSYS report
    /// (0: none yet). Const-initialised: safe to read in a signal handler.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, Len::Qword, op, value).map_err(|e| e.to_string())
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conds).map_err(|e| e.to_string())
}

/// One rule per value: `arg` must equal one of `values`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, String> {
    values
        .iter()
        .map(|&v| rule(vec![cond(arg, Op::Eq, v)?]))
        .collect()
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What every thread may do: memory management by the allocator, locks,
/// time, writing logs, signals to itself (the SIGSYS report), ending.
fn common(pid: u64) -> Result<Rules, String> {
    let mut r = Rules::new();
    for nr in [
        libc::SYS_brk,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_close,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_futex,
        libc::SYS_getpid,
        libc::SYS_getrandom,
        libc::SYS_gettid,
        libc::SYS_madvise,
        libc::SYS_mmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_munmap,
        libc::SYS_nanosleep,
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sched_yield,
        libc::SYS_sigaltstack,
        libc::SYS_write,
        libc::SYS_writev,
    ] {
        r.insert(nr, Vec::new());
    }
    // Only SIGSYS's own disposition (the report puts the default back
    // before it re-raises it).
    r.insert(libc::SYS_rt_sigaction, one_of(0, &[libc::SIGSYS as u64])?);
    // Signals only to threads of this process.
    r.insert(libc::SYS_tgkill, vec![rule(vec![cond(0, Op::Eq, pid)?])?]);
    Ok(r)
}

/// Starting a thread (a device's watchdog): `clone` with `CLONE_THREAD`
/// only (no new process), the new thread's own set-up, and installing the
/// [`ThreadKind::Device`] filter in it.
fn threads(r: &mut Rules) -> Result<(), String> {
    let thread = libc::CLONE_THREAD as u64;
    r.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(0, Op::MaskedEq(thread), thread)?])?],
    );
    for nr in [
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sched_getaffinity,
    ] {
        r.insert(nr, Vec::new());
    }
    r.insert(
        libc::SYS_prctl,
        one_of(
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )?,
    );
    r.insert(
        libc::SYS_seccomp,
        one_of(0, &[libc::SECCOMP_SET_MODE_FILTER as u64])?,
    );
    // glibc asks for clone3 first: it gets ENOSYS from the second filter
    // (see `compile`) and falls back to clone, whose flags are checked.
    r.insert(libc::SYS_clone3, Vec::new());
    Ok(())
}

/// Device models: virtio queues over disk files, taps, the agent socket,
/// eventfds (interrupts, kicks) and a share's vhost-user socket.
fn devices(r: &mut Rules) -> Result<(), String> {
    for nr in [
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_pwrite64,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_lseek,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
    ] {
        r.insert(nr, Vec::new());
    }
    r.insert(
        libc::SYS_fcntl,
        one_of(
            1,
            &[
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        )?,
    );
    Ok(())
}

fn ioctls(r: &mut Rules, requests: &[u64]) -> Result<(), String> {
    r.insert(libc::SYS_ioctl, one_of(1, requests)?);
    Ok(())
}

/// What the allow-lists are built for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// Snapshot saving is armed (`VmmConfig.save_request`).
    pub save: bool,
}

fn rules(kind: ThreadKind, pid: u64, profile: Profile) -> Result<Rules, String> {
    let mut r = common(pid)?;
    match kind {
        ThreadKind::Vmm => {
            devices(&mut r)?;
            threads(&mut r)?;
            for nr in [
                libc::SYS_poll,
                libc::SYS_ppoll,
                libc::SYS_accept4,
                // The exit status: mincore counts resident guest pages
                // (/proc/self/status and the status file were opened
                // before: no thread opens anything once running).
                libc::SYS_mincore,
            ] {
                r.insert(nr, Vec::new());
            }
            let mut io = vec![libc::FIONBIO, TUNSETOFFLOAD, TUNSETVNETHDRSZ, TUNGETIFF];
            if profile.save {
                // The save (run.rs `try_save`, `snapshot::save`): the
                // request file and the directory it names are opened by
                // path; the files are created (no O_PATH tricks, no
                // unlink/rename: the core renames the directory).
                for nr in [
                    libc::SYS_openat,
                    libc::SYS_statx,
                    libc::SYS_newfstatat,
                    libc::SYS_fstat,
                ] {
                    r.insert(nr, Vec::new());
                }
                io.extend([KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK]);
            }
            ioctls(&mut r, &io)?;
        }
        ThreadKind::Vcpu => {
            devices(&mut r)?;
            threads(&mut r)?;
            let mut io = vec![
                KVM_RUN,
                KVM_GET_REGS,
                KVM_GET_MP_STATE,
                libc::FIONBIO,
                TUNSETOFFLOAD,
                TUNSETVNETHDRSZ,
                TUNGETIFF,
            ];
            if profile.save {
                // A paused vCPU reads its own state (snapshot/vcpu.rs).
                io.extend([
                    KVM_GET_MSRS,
                    KVM_GET_SREGS,
                    KVM_GET_FPU,
                    KVM_GET_LAPIC,
                    KVM_GET_VCPU_EVENTS,
                    KVM_GET_DEBUGREGS,
                    KVM_GET_XSAVE,
                    KVM_GET_XCRS,
                ]);
            }
            ioctls(&mut r, &io)?;
        }
        ThreadKind::Device => {
            // The watchdog waits on a channel and shuts a socket down
            // (std's debug builds check an fd is open with F_GETFD).
            r.insert(libc::SYS_shutdown, Vec::new());
            r.insert(libc::SYS_fcntl, one_of(1, &[libc::F_GETFD as u64])?);
        }
    }
    Ok(r)
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())
}

/// The programs for one kind: the allow-list (anything else traps) and,
/// where threads are started, a second one that answers `clone3` with
/// ENOSYS (a filter has one action for all its matches; the stricter of
/// the two answers wins).
fn compile(kind: ThreadKind, pid: u64, profile: Profile) -> Result<Vec<BpfProgram>, SeccompError> {
    let err = |why: String| SeccompError::Build { kind, why };
    let arch = arch().map_err(err)?;
    let allow = SeccompFilter::new(
        rules(kind, pid, profile).map_err(err)?,
        SeccompAction::Trap,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| err(e.to_string()))?;
    let mut out = vec![BpfProgram::try_from(allow).map_err(|e| err(e.to_string()))?];
    if kind != ThreadKind::Device {
        let no_clone3 = SeccompFilter::new(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(|e| err(e.to_string()))?;
        out.push(BpfProgram::try_from(no_clone3).map_err(|e| err(e.to_string()))?);
    }
    Ok(out)
}

/// Compiles every kind's filter and installs the SIGSYS handler; call once,
/// on the main thread, before any thread runs guest-reachable code.
/// `enabled = false` (debugging) makes [`install`] a no-op; `save` adds
/// what saving a snapshot needs (only for a VM with a save_request).
pub fn prepare(enabled: bool, save: bool) -> Result<(), SeccompError> {
    let profile = Profile { save };
    let filters = if enabled {
        // SAFETY: getpid(2) cannot fail.
        let pid = unsafe { libc::getpid() } as u64;
        install_sigsys_handler()?;
        Some(Filters {
            vmm: compile(ThreadKind::Vmm, pid, profile)?,
            vcpu: compile(ThreadKind::Vcpu, pid, profile)?,
            device: compile(ThreadKind::Device, pid, profile)?,
        })
    } else {
        None
    };
    let _ = FILTERS.set(filters);
    Ok(())
}

/// Installs `kind`'s filter on the calling thread (it stacks on any filter
/// the thread inherited: a thread can only narrow what it may do). A no-op
/// when seccomp is off or [`prepare`] was not called.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(Some(f)) = FILTERS.get() else {
        return Ok(());
    };
    let progs = match kind {
        ThreadKind::Vmm => &f.vmm,
        ThreadKind::Vcpu => &f.vcpu,
        ThreadKind::Device => &f.device,
    };
    install_programs(kind, progs)
}

fn install_programs(kind: ThreadKind, progs: &[BpfProgram]) -> Result<(), SeccompError> {
    KIND.with(|k| k.set(kind.code()));
    // The last one installed runs first; all of them run on each call.
    for p in progs {
        seccompiler::apply_filter(p).map_err(|e| SeccompError::Install {
            kind,
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// siginfo_t's SIGSYS fields on Linux (asm-generic/siginfo.h).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: usize,
    syscall: i32,
    arch: u32,
}

/// si_code of a SIGSYS sent by seccomp.
const SYS_SECCOMP: i32 = 1;

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain data; the handler only calls
    // async-signal-safe functions (write, sigaction, tgkill).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Writes `n` in decimal into `buf`, returning the used tail.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The message the SIGSYS report writes (no allocation: it runs in a
/// signal handler).
fn report(syscall: i32, kind: u8, out: &mut [u8; 160]) -> usize {
    let kind = match kind {
        1 => ThreadKind::Vmm.name(),
        2 => ThreadKind::Vcpu.name(),
        3 => ThreadKind::Device.name(),
        // A thread started under its parent's filter, before its own.
        _ => b"new",
    };
    let mut num = [0u8; 20];
    let parts: [&[u8]; 5] = [
        b"hyper-vmm: killed by seccomp: syscall ",
        decimal(syscall.max(0) as u64, &mut num),
        b" on a ",
        kind,
        b" thread (not in its allow-list; [hypervisor.kvm] seccomp = false turns the filters off to debug)\n",
    ];
    let mut at = 0;
    for p in parts {
        let n = p.len().min(out.len() - at);
        out[at..at + n].copy_from_slice(&p[..n]);
        at += n;
    }
    at
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler;
    // for SIGSYS its union holds the sigsys fields laid out as SigsysInfo.
    let (code, syscall) = unsafe {
        let s = &*(info as *const SigsysInfo);
        (s.code, s.syscall)
    };
    if code == SYS_SECCOMP {
        let mut msg = [0u8; 160];
        let n = report(syscall, KIND.with(|k| k.get()), &mut msg);
        // SAFETY: write(2) of a stack buffer to stderr.
        unsafe { libc::write(2, msg.as_ptr().cast(), n) };
    }
    // Die by SIGSYS: the default action back, then the signal again; it is
    // blocked while this handler runs and arrives as it returns.
    // SAFETY: async-signal-safe calls on plain data.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut());
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a child that installs `kind`'s filter and runs `then`; the
    /// child's wait status.
    fn in_child(kind: ThreadKind, then: fn() -> i32) -> i32 {
        let progs = compile(kind, 0, Profile::default()).unwrap();
        // SAFETY: the child only makes raw syscalls (no allocation, no
        // locks): install the compiled programs, run `then`, _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // In the child the pid in the tgkill rule must be its own:
            // compile(…, 0) allowed tgkill only to pid 0, so the SIGSYS
            // re-raise falls to the kernel's force-kill instead — same end.
            let _ = install_sigsys_handler();
            if install_programs(kind, &progs).is_err() {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(100) };
            }
            let code = then();
            // SAFETY: as above.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        status
    }

    fn signalled_by(status: i32) -> Option<i32> {
        libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
    }

    #[test]
    fn every_kind_compiles() {
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device] {
            for save in [false, true] {
                assert!(!compile(kind, 1, Profile { save }).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn a_syscall_outside_the_list_kills_by_sigsys() {
        // socket(2) is in no list; execve neither.
        for kind in [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device] {
            let st = in_child(kind, || {
                // SAFETY: a plain syscall; the filter stops it.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                0
            });
            assert_eq!(signalled_by(st), Some(libc::SIGSYS), "{kind:?}: {st:#x}");
        }
        let st = in_child(ThreadKind::Vcpu, || {
            // SAFETY: a plain syscall; the filter stops it.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/etc/passwd".as_ptr(), 0) };
            0
        });
        assert_eq!(
            signalled_by(st),
            Some(libc::SIGSYS),
            "openat on a vCPU thread"
        );
    }

    #[test]
    fn allowed_calls_pass_and_a_forbidden_ioctl_is_caught() {
        // Allowed: the child gets to exit normally.
        let st = in_child(ThreadKind::Vcpu, || {
            // SAFETY: plain syscalls.
            unsafe {
                libc::write(2, b"".as_ptr().cast(), 0);
                libc::syscall(libc::SYS_gettid);
            }
            7
        });
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
        // An ioctl the vCPU list does not name (KVM_CREATE_VCPU).
        let st = in_child(ThreadKind::Vcpu, || {
            // SAFETY: the filter stops it before it runs.
            unsafe { libc::ioctl(0, 0xae41 as _, 0) };
            0
        });
        assert_eq!(signalled_by(st), Some(libc::SIGSYS), "{st:#x}");
        // clone3 is answered ENOSYS (glibc then uses clone).
        let st = in_child(ThreadKind::Vmm, || {
            // SAFETY: clone3 with no arguments; the filter answers first.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            let e = std::io::Error::last_os_error().raw_os_error();
            if r == -1 && e == Some(libc::ENOSYS) {
                0
            } else {
                1
            }
        });
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0, "{st:#x}");
    }

    #[test]
    fn the_report_names_the_syscall_and_the_thread() {
        let mut out = [0u8; 160];
        let n = report(41, 2, &mut out);
        let s = std::str::from_utf8(&out[..n]).unwrap();
        assert!(
            s.starts_with("hyper-vmm: killed by seccomp: syscall 41 on a vcpu thread"),
            "{s}"
        );
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(u64::MAX, &mut b), b"18446744073709551615");
    }
}
