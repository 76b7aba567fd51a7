//! Confining a container's processes inside the guest, as runc does:
//! capabilities, no_new_privs, a seccomp filter (built here with
//! `seccompiler` from the host's [`SeccompSpec`]) and masked or read-only
//! /proc paths. Devices are restricted by `nodev` mounts (rootfs.rs).
//!
//! The host decides the policy (core/runtime/src/security.rs); the guest
//! applies exactly what it is sent. See docs/security/confine.md.

use std::collections::BTreeMap;
use std::path::Path;

use hyper_protocol::{Rlimit, SeccompAction, SeccompArg, SeccompOp, SeccompSpec};
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::resource::{setrlimit, Resource};
use seccompiler::{
    BpfProgram, SeccompAction as Action, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::sys::{Sys, SysResult};

/// Capability numbers are 0..=63 in the kernel's ABI (64-bit sets).
const CAP_WORDS: usize = 2;

/// Drops every capability not in `keep` from the bounding set and clears
/// the ambient set. Runs as root, before the uid changes.
pub fn drop_bounding(keep: u64) -> Result<(), Errno> {
    for cap in 0..64u32 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP) takes the capability by value.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        match Errno::result(r) {
            Ok(_) => {}
            // Past the kernel's last capability.
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: prctl(PR_CAP_AMBIENT_CLEAR_ALL) takes no pointers.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// The (effective = permitted, inheritable) sets a process gets after its
/// uid changed: `caps` for uid 0, nothing for any other user (as runc gives
/// a non-root user), and never an inheritable set (Docker since 20.10.14).
pub fn process_sets(caps: u64, uid: u32) -> (u64, u64) {
    if uid == 0 {
        (caps, 0)
    } else {
        (0, 0)
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// capset(2) of this process's effective, permitted and inheritable sets,
/// limited to what it has (bits past the kernel's last capability, as in
/// "all", would make capset fail).
pub fn set_process_caps(effective_permitted: u64, inheritable: u64) -> Result<(), Errno> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); CAP_WORDS];
    // SAFETY: as below; capget writes two CapData words into `data`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    let have = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
    let effective_permitted = effective_permitted & have;
    let inheritable = inheritable & have;
    for (i, d) in data.iter_mut().enumerate() {
        let shift = 32 * i;
        d.effective = (effective_permitted >> shift) as u32;
        d.permitted = (effective_permitted >> shift) as u32;
        d.inheritable = (inheritable >> shift) as u32;
    }
    // SAFETY: the header and the two data words are valid, correctly laid
    // out (repr(C)) and live for the call; capset only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    Errno::result(r).map(drop)
}

pub fn set_no_new_privs() -> Result<(), Errno> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Errno::result(r).map(drop)
}

fn action(a: SeccompAction) -> Action {
    match a {
        SeccompAction::Allow => Action::Allow,
        SeccompAction::Errno(e) => Action::Errno(e),
        SeccompAction::KillThread => Action::KillThread,
        SeccompAction::KillProcess => Action::KillProcess,
        SeccompAction::Trap => Action::Trap,
        SeccompAction::Log => Action::Log,
    }
}

fn condition(arg: &SeccompArg) -> Result<SeccompCondition, String> {
    let op = match arg.op {
        SeccompOp::Eq => SeccompCmpOp::Eq,
        SeccompOp::Ne => SeccompCmpOp::Ne,
        SeccompOp::Lt => SeccompCmpOp::Lt,
        SeccompOp::Le => SeccompCmpOp::Le,
        SeccompOp::Gt => SeccompCmpOp::Gt,
        SeccompOp::Ge => SeccompCmpOp::Ge,
        SeccompOp::MaskedEq => SeccompCmpOp::MaskedEq(arg.value),
    };
    let value = if arg.op == SeccompOp::MaskedEq {
        arg.value_two
    } else {
        arg.value
    };
    SeccompCondition::new(arg.index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("seccomp argument {}: {e}", arg.index))
}

/// Compiles `spec` into the filters to install, in order.
///
/// seccompiler's filter has one action on a match and one otherwise, so a
/// profile with several actions becomes a stack (the kernel runs every
/// filter and keeps the most severe result): the first filter gives the
/// default action to every syscall no rule matches and allows the others;
/// then one filter per non-allow action gives that action to its rules'
/// syscalls and allows everything else.
pub fn build_seccomp(spec: &SeccompSpec) -> Result<Vec<BpfProgram>, String> {
    let mut any = Rules::default();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for r in &spec.rules {
        if !(0..4096).contains(&r.syscall) {
            return Err(format!("invalid syscall number {}", r.syscall));
        }
        let conditions = r
            .args
            .iter()
            .map(condition)
            .collect::<Result<Vec<_>, _>>()?;
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conditions).map_err(|e| e.to_string())?)
        };
        any.add(r.syscall, rule.clone());
        if r.action != SeccompAction::Allow {
            let i = match by_action.iter().position(|(a, _)| *a == r.action) {
                Some(i) => i,
                None => {
                    by_action.push((r.action, Rules::default()));
                    by_action.len() - 1
                }
            };
            by_action[i].1.add(r.syscall, rule);
        }
    }
    let arch = TargetArch::x86_64;
    let mut filters = Vec::new();
    if spec.default_action != SeccompAction::Allow {
        filters.push(SeccompFilter::new(
            any.into_map(),
            action(spec.default_action),
            Action::Allow,
            arch,
        ));
    }
    for (a, rules) in by_action {
        filters.push(SeccompFilter::new(
            rules.into_map(),
            Action::Allow,
            action(a),
            arch,
        ));
    }
    filters
        .into_iter()
        .map(|f| {
            f.and_then(BpfProgram::try_from)
                .map_err(|e| format!("building the seccomp filter: {e}"))
        })
        .collect()
}

/// Rules per syscall; the alternatives of a syscall are ORed, and one
/// without conditions matches every call (seccompiler's empty chain).
#[derive(Default)]
struct Rules {
    conditional: BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: std::collections::BTreeSet<i64>,
}

impl Rules {
    fn add(&mut self, syscall: i64, rule: Option<SeccompRule>) {
        match rule {
            None => {
                self.unconditional.insert(syscall);
            }
            Some(rule) => self.conditional.entry(syscall).or_default().push(rule),
        }
    }

    fn into_map(mut self) -> BTreeMap<i64, Vec<SeccompRule>> {
        for syscall in self.unconditional {
            self.conditional.insert(syscall, Vec::new());
        }
        self.conditional
    }
}

/// Installs the filters `build_seccomp` made.
/// Installs `filters` on the calling thread with seccomp(2) itself:
/// seccompiler's `apply_filter` sets no_new_privs first, which a process
/// whose spec leaves it off (`no-new-privileges=false`, as Docker and
/// runc do by default) must not get. Without no_new_privs the kernel
/// takes the filter only from a process with CAP_SYS_ADMIN, which is why
/// [`crate::spawn`] installs it before dropping capabilities in that case.
pub fn install_seccomp(filters: &[BpfProgram]) -> Result<(), String> {
    for f in filters {
        let len = u16::try_from(f.len())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!(
                    "installing the seccomp filter: {} instructions (1 to 65535)",
                    f.len()
                )
            })?;
        let program = libc::sock_fprog {
            len,
            // seccompiler's sock_filter is #[repr(C)] with the kernel's
            // layout (u16 code, u8 jt, u8 jf, u32 k), as libc's is.
            filter: f.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `program` points at `len` instructions of `f`, which
        // outlives the call; the kernel copies the program before it
        // returns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &program as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(format!(
                "installing the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

// ----- masked and read-only /proc paths --------------------------------------

/// Paths under the container's root hidden from it (runc's default
/// masked paths): a file gets /dev/null bound over it, a directory an
/// empty read-only tmpfs.
pub const MASKED_PATHS: [&str; 11] = [
    "proc/acpi",
    "proc/asound",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Paths made read-only (runc's default read-only paths).
pub const READONLY_PATHS: [&str; 6] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
    "sys/fs/cgroup",
];

/// Masks and write-protects the paths above under `root`, after /proc and
/// /sys are mounted there and while hyperstart's `/dev/null` is still
/// reachable. Paths the kernel does not have are skipped.
pub fn protect_paths(sys: &mut dyn Sys, root: &Path) -> SysResult {
    for rel in MASKED_PATHS {
        let path = root.join(rel);
        match sys.kind(&path) {
            None => {}
            Some(true) => sys.mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=0555"),
            )?,
            Some(false) => sys.mount(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)?,
        }
    }
    for rel in READONLY_PATHS {
        let path = root.join(rel);
        if sys.kind(&path).is_none() {
            continue;
        }
        let source = path.to_string_lossy().into_owned();
        sys.mount(
            Some(&source),
            &path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        sys.mount(
            None,
            &path,
            None,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

/// [`Rlimit`]s as the kernel's resources, checked ([`Rlimit::validate_all`]):
/// done before the fork, so a bad list fails the request, not the child.
pub fn resolve_rlimits(limits: &[Rlimit]) -> Result<Vec<(Resource, u64, u64)>, String> {
    Rlimit::validate_all(limits)?;
    limits
        .iter()
        .map(|l| {
            let r = match l.resource.as_str() {
                "as" => Resource::RLIMIT_AS,
                "core" => Resource::RLIMIT_CORE,
                "cpu" => Resource::RLIMIT_CPU,
                "data" => Resource::RLIMIT_DATA,
                "fsize" => Resource::RLIMIT_FSIZE,
                "locks" => Resource::RLIMIT_LOCKS,
                "memlock" => Resource::RLIMIT_MEMLOCK,
                "msgqueue" => Resource::RLIMIT_MSGQUEUE,
                "nice" => Resource::RLIMIT_NICE,
                "nofile" => Resource::RLIMIT_NOFILE,
                "nproc" => Resource::RLIMIT_NPROC,
                "rss" => Resource::RLIMIT_RSS,
                "rtprio" => Resource::RLIMIT_RTPRIO,
                "rttime" => Resource::RLIMIT_RTTIME,
                "sigpending" => Resource::RLIMIT_SIGPENDING,
                "stack" => Resource::RLIMIT_STACK,
                other => return Err(format!("ulimit {other}: not known to this guest")),
            };
            Ok((r, l.soft, l.hard))
        })
        .collect()
}

/// Sets each limit, in the child before it drops its capabilities (a hard
/// limit above the current one needs `CAP_SYS_RESOURCE`, as in runc).
pub fn set_rlimits(limits: &[(Resource, u64, u64)]) -> Result<(), (Resource, Errno)> {
    for &(resource, soft, hard) in limits {
        setrlimit(resource, soft, hard).map_err(|e| (resource, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::RecordingSys;
    use hyper_protocol::SeccompRuleSpec;

    const DOCKER_DEFAULT: u64 = 0xa80425fb;

    #[test]
    fn root_keeps_its_set_and_other_users_get_none() {
        assert_eq!(process_sets(DOCKER_DEFAULT, 0), (DOCKER_DEFAULT, 0));
        assert_eq!(process_sets(DOCKER_DEFAULT, 1000), (0, 0));
    }

    fn rule(syscall: i64, action: SeccompAction, args: Vec<SeccompArg>) -> SeccompRuleSpec {
        SeccompRuleSpec {
            syscall,
            action,
            args,
        }
    }

    #[test]
    fn a_denylist_is_one_filter_and_an_allowlist_with_exceptions_a_stack() {
        let deny = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![
                rule(libc::SYS_mount, SeccompAction::Errno(1), vec![]),
                rule(libc::SYS_kexec_load, SeccompAction::Errno(1), vec![]),
            ],
        };
        assert_eq!(build_seccomp(&deny).unwrap().len(), 1);
        let allow = SeccompSpec {
            default_action: SeccompAction::Errno(1),
            rules: vec![
                rule(libc::SYS_read, SeccompAction::Allow, vec![]),
                rule(libc::SYS_clone3, SeccompAction::Errno(38), vec![]),
            ],
        };
        assert_eq!(build_seccomp(&allow).unwrap().len(), 2);
        let unconfined = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![],
        };
        assert!(build_seccomp(&unconfined).unwrap().is_empty());
    }

    #[test]
    fn argument_conditions_compile_and_bad_numbers_are_refused() {
        let spec = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![
                rule(
                    libc::SYS_clone,
                    SeccompAction::Errno(1),
                    vec![SeccompArg {
                        index: 0,
                        op: SeccompOp::MaskedEq,
                        value: libc::CLONE_NEWUSER as u64,
                        value_two: libc::CLONE_NEWUSER as u64,
                    }],
                ),
                rule(libc::SYS_unshare, SeccompAction::Errno(1), vec![]),
            ],
        };
        let filters = build_seccomp(&spec).unwrap();
        assert_eq!(filters.len(), 1);
        assert!(filters[0].len() > 10);
        let bad = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![rule(-1, SeccompAction::Errno(1), vec![])],
        };
        assert!(build_seccomp(&bad).unwrap_err().contains("-1"));
        let bad_arg = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![rule(
                0,
                SeccompAction::Errno(1),
                vec![SeccompArg {
                    index: 6,
                    op: SeccompOp::Eq,
                    value: 0,
                    value_two: 0,
                }],
            )],
        };
        assert!(build_seccomp(&bad_arg).is_err());
    }

    /// The filter really denies: installed in a forked child, mount(2) and
    /// unshare(2) fail with EPERM while getpid still works.
    #[test]
    fn the_default_style_filter_denies_in_a_child() {
        let spec = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![
                rule(
                    libc::SYS_unshare,
                    SeccompAction::Errno(libc::EPERM as u32),
                    vec![],
                ),
                rule(
                    libc::SYS_mount,
                    SeccompAction::Errno(libc::EPERM as u32),
                    vec![],
                ),
            ],
        };
        let filters = build_seccomp(&spec).unwrap();
        // SAFETY: the child only makes raw syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = set_no_new_privs().is_ok()
                    && install_seccomp(&filters).is_ok()
                    // SAFETY: unshare with no flags touches no memory.
                    && unsafe { libc::unshare(0) } == -1
                    && Errno::last() == Errno::EPERM
                    // SAFETY: getpid has no preconditions.
                    && unsafe { libc::getpid() } > 0;
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn a_filter_installed_with_cap_sys_admin_leaves_no_new_privs_off() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // needs CAP_SYS_ADMIN, as hyperstart has
        }
        let spec = SeccompSpec {
            default_action: SeccompAction::Allow,
            rules: vec![rule(
                libc::SYS_unshare,
                SeccompAction::Errno(libc::EPERM as u32),
                vec![],
            )],
        };
        let filters = build_seccomp(&spec).unwrap();
        // SAFETY: the child only makes raw syscalls and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let ok = install_seccomp(&filters).is_ok()
                    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers.
                    && unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 0
                    // SAFETY: unshare with no flags touches no memory.
                    && unsafe { libc::unshare(0) } == -1
                    && Errno::last() == Errno::EPERM;
                // SAFETY: ends the forked child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn masked_paths_get_dev_null_or_a_tmpfs_and_readonly_paths_a_ro_bind() {
        let mut sys = RecordingSys::new();
        sys.kinds.push(("/c/proc/kcore".into(), false));
        sys.kinds.push(("/c/proc/scsi".into(), true));
        sys.kinds.push(("/c/proc/sys".into(), true));
        sys.kinds.push(("/c/proc/sysrq-trigger".into(), false));
        protect_paths(&mut sys, Path::new("/c")).unwrap();
        let mounts: Vec<_> = sys
            .calls
            .iter()
            .filter(|c| c.starts_with("mount"))
            .cloned()
            .collect();
        assert_eq!(
            mounts,
            vec![
                "mount /dev/null /c/proc/kcore - MsFlags(MS_BIND) -",
                "mount tmpfs /c/proc/scsi tmpfs \
                 MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC) size=0,mode=0555",
                "mount /c/proc/sys /c/proc/sys - MsFlags(MS_BIND | MS_REC) -",
                "mount - /c/proc/sys - MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC \
                 | MS_REMOUNT | MS_BIND) -",
                "mount /c/proc/sysrq-trigger /c/proc/sysrq-trigger - MsFlags(MS_BIND | MS_REC) -",
                "mount - /c/proc/sysrq-trigger - MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV \
                 | MS_NOEXEC | MS_REMOUNT | MS_BIND) -",
            ]
        );
    }
}
