//! What a container's processes may do inside the guest (issue 13, C1):
//! Docker's default capability set, no_new_privs and a default seccomp
//! profile, and the knobs Docker has to change them (`--privileged`,
//! `--cap-add`/`--cap-drop`, `--security-opt seccomp=…|no-new-privileges`).
//!
//! The host decides; hyperstart applies the resulting [`Confinement`]
//! (hyperstart/src/confine.rs). See docs/security/confine.md.

use std::str::FromStr;

use hyper_protocol::{
    Confinement, Rlimit, SeccompAction, SeccompArg, SeccompOp, SeccompRuleSpec, SeccompSpec,
};
use serde::{Deserialize, Serialize};
use syscalls::x86_64::Sysno;

/// Capability names by number (Linux 6.1: 0..=40), without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default set (moby's `caps.DefaultCapabilities`).
pub const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The largest seccomp profile accepted (Docker's default is ~20 KiB).
pub const MAX_PROFILE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecurityError(pub String);

fn error(message: impl Into<String>) -> SecurityError {
    SecurityError(message.into())
}

/// The bit of a capability named as Docker accepts it: `CAP_SYS_ADMIN`,
/// `SYS_ADMIN` or `sys_admin`.
pub fn capability_bit(name: &str) -> Result<u64, SecurityError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES
        .iter()
        .position(|c| *c == bare)
        .map(|i| 1u64 << i)
        .ok_or_else(|| {
            error(format!(
                "unknown capability {name:?}; valid names are ALL and {}",
                CAPABILITIES
                    .iter()
                    .map(|c| format!("CAP_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

fn has(caps: u64, name: &str) -> bool {
    capability_bit(name).is_ok_and(|bit| caps & bit != 0)
}

pub fn docker_default_capabilities() -> u64 {
    DOCKER_DEFAULT
        .iter()
        .map(|c| capability_bit(c).unwrap_or(0))
        .fold(0, |a, b| a | b)
}

fn is_all(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL")
}

fn mask(names: &[String]) -> Result<u64, SecurityError> {
    names
        .iter()
        .filter(|n| !is_all(n))
        .map(|n| capability_bit(n))
        .try_fold(0, |a, b| b.map(|b| a | b))
}

/// Docker's rules (moby's `TweakCapabilities`): with `ALL` added, every
/// capability but the dropped ones; with `ALL` dropped, only the added
/// ones; else the default set minus the dropped plus the added.
pub fn capabilities(cap_add: &[String], cap_drop: &[String]) -> Result<u64, SecurityError> {
    let add = mask(cap_add)?;
    let drop = mask(cap_drop)?;
    let all = Confinement::ALL_CAPABILITIES;
    Ok(if cap_add.iter().any(|n| is_all(n)) {
        if cap_drop.iter().any(|n| is_all(n)) {
            return Err(error(
                "--cap-add ALL and --cap-drop ALL contradict each other",
            ));
        }
        all & !drop
    } else if cap_drop.iter().any(|n| is_all(n)) {
        add
    } else {
        (docker_default_capabilities() & !drop) | add
    })
}

/// A container's security options, as the CLI, the REST API (`security`
/// in a run request) and pod files give them; all empty is the default
/// confinement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `--privileged`: every capability, no seccomp filter, no masked
    /// paths, a writable /sys and every device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capability names (`SYS_ADMIN`, `CAP_SYS_ADMIN`, `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `seccomp=unconfined`, `seccomp=<profile JSON>` (the CLI reads a
    /// profile file and sends its content, as Docker's does),
    /// `no-new-privileges[=true|false]`; `:` works in place of `=`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Docker's `--ulimit`: `NAME=SOFT[:HARD]` (`nofile=1024:2048`; `-1` or
    /// `unlimited` for no limit), set for the container's processes and
    /// its execs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<String>,
}

impl Security {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    pub fn confinement(&self) -> Result<Confinement, SecurityError> {
        confinement(self)
    }

    /// [`Security::ulimits`] as the guest takes them, checked.
    pub fn rlimits(&self) -> Result<Vec<Rlimit>, SecurityError> {
        let limits = self
            .ulimits
            .iter()
            .map(|u| parse_ulimit(u))
            .collect::<Result<Vec<_>, _>>()?;
        Rlimit::validate_all(&limits).map_err(error)?;
        Ok(limits)
    }

    /// Checks everything but the content of a profile file the client has
    /// not read yet (`seccomp=PATH` in a pod file, see
    /// [`read_profile_files`]).
    pub fn validate(&self) -> Result<(), SecurityError> {
        let mut resolved = self.clone();
        for opt in &mut resolved.security_opt {
            if let Some((_, v)) = seccomp_value(opt) {
                if v != "unconfined" && !v.starts_with('{') {
                    *opt = "seccomp=unconfined".into();
                }
            }
        }
        self.rlimits()?;
        confinement(&resolved).map(drop)
    }
}

/// One of Docker's `--ulimit NAME=SOFT[:HARD]`: the hard limit is the soft
/// one when not given; `-1` or `unlimited` is no limit.
pub fn parse_ulimit(value: &str) -> Result<Rlimit, SecurityError> {
    let bad = |why: &str| {
        error(format!(
            "--ulimit {value}: {why} (give NAME=SOFT[:HARD], e.g. nofile=1024:2048)"
        ))
    };
    let (name, limits) = value.split_once('=').ok_or_else(|| bad("no '='"))?;
    let name = name.trim().to_ascii_lowercase();
    if !Rlimit::NAMES.contains(&name.as_str()) {
        return Err(bad(&format!(
            "{name:?} is not a limit; the limits are {}",
            Rlimit::NAMES.join(", ")
        )));
    }
    let number = |v: &str| match v.trim() {
        "-1" | "unlimited" => Ok(Rlimit::UNLIMITED),
        v => v
            .parse::<u64>()
            .map_err(|_| bad(&format!("{v:?} is not a number"))),
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => {
            let v = number(limits)?;
            (v, v)
        }
    };
    if soft > hard {
        return Err(bad("the soft limit is above the hard limit"));
    }
    Ok(Rlimit {
        resource: name,
        soft,
        hard,
    })
}

/// `Some(("seccomp", value))` for a `seccomp=VALUE` option.
fn seccomp_value(opt: &str) -> Option<(&str, &str)> {
    opt.split_once(['=', ':'])
        .filter(|(k, _)| k.trim() == "seccomp")
        .map(|(k, v)| (k, v.trim()))
}

/// For clients: replaces `seccomp=PATH` by `seccomp=<the file's JSON>`
/// (a relative PATH is relative to `base`), as Docker's CLI does; hyperd
/// never opens a client-named profile.
pub fn read_profile_files(
    security_opt: &mut [String],
    base: &std::path::Path,
) -> Result<(), SecurityError> {
    for opt in security_opt {
        let Some((_, value)) = seccomp_value(opt) else {
            continue;
        };
        if value == "unconfined" || value.starts_with('{') {
            continue;
        }
        let path = base.join(value);
        let too_big = |n: u64| n > MAX_PROFILE_BYTES as u64;
        let text = std::fs::metadata(&path)
            .and_then(|m| {
                if too_big(m.len()) {
                    Err(std::io::Error::other(format!(
                        "larger than {MAX_PROFILE_BYTES} bytes"
                    )))
                } else {
                    std::fs::read_to_string(&path)
                }
            })
            .map_err(|e| {
                error(format!(
                    "--security-opt seccomp={value}: cannot read {}: {e}",
                    path.display()
                ))
            })?;
        *opt = format!("seccomp={}", text.trim());
    }
    Ok(())
}

/// Validates the options and builds the confinement of the container's
/// first process.
pub fn confinement(opts: &Security) -> Result<Confinement, SecurityError> {
    let mut seccomp_opt: Option<&str> = None;
    let mut no_new_privileges = !opts.privileged;
    for opt in &opts.security_opt {
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (opt.trim(), None),
        };
        match (key, value) {
            ("no-new-privileges", None) => no_new_privileges = true,
            ("no-new-privileges", Some(v)) => {
                no_new_privileges = match v.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(error(format!(
                            "--security-opt no-new-privileges={other}: use true or false"
                        )))
                    }
                }
            }
            ("seccomp", Some(v)) => seccomp_opt = Some(v),
            ("seccomp", None) => return Err(error(
                "--security-opt seccomp needs a value: seccomp=unconfined or seccomp=PROFILE.json",
            )),
            _ => {
                return Err(error(format!(
                    "--security-opt {opt:?} is not supported; supported: seccomp=unconfined, \
                     seccomp=PROFILE.json, no-new-privileges[=true|false]"
                )))
            }
        }
    }
    if opts.privileged {
        // As Docker: --privileged overrides the capability flags and the
        // default profile; an explicit profile still applies.
        let seccomp = match seccomp_opt {
            Some(v) if v.trim() != "unconfined" => {
                Some(parse_docker_profile(v, Confinement::ALL_CAPABILITIES)?)
            }
            _ => None,
        };
        return Ok(Confinement {
            capabilities: Confinement::ALL_CAPABILITIES,
            no_new_privileges,
            seccomp,
            privileged: true,
        });
    }
    let caps = capabilities(&opts.cap_add, &opts.cap_drop)?;
    let seccomp = match seccomp_opt.map(str::trim) {
        None => Some(default_profile(caps)),
        Some("unconfined") => None,
        Some(json) if json.starts_with('{') => Some(parse_docker_profile(json, caps)?),
        Some(other) => {
            return Err(error(format!(
                "--security-opt seccomp={other}: the profile's JSON is expected here (the hyper \
                 CLI reads a profile file for you); or use seccomp=unconfined"
            )))
        }
    };
    Ok(Confinement {
        capabilities: caps,
        no_new_privileges,
        seccomp,
        privileged: false,
    })
}

/// An exec gets its container's confinement; `--privileged` on the exec
/// gives it every capability and no seccomp filter (the mounts, masked
/// paths and `nodev` included, stay the container's).
pub fn exec_confinement(container: &Confinement, privileged: bool) -> Confinement {
    if privileged {
        Confinement {
            capabilities: Confinement::ALL_CAPABILITIES,
            no_new_privileges: false,
            seccomp: None,
            privileged: container.privileged,
        }
    } else {
        container.clone()
    }
}

// ----- the default profile ----------------------------------------------------

const EPERM: u32 = libc::EPERM as u32;
const ENOSYS: u32 = libc::ENOSYS as u32;

/// Syscalls the default profile refuses (EPERM), and the capability that
/// lifts the refusal (as in Docker's profile), if any.
const DENIED: &[(&[&str], Option<&[&str]>)] = &[
    (
        &[
            "add_key",
            "keyctl",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "swapon",
            "swapoff",
            "uselib",
            "userfaultfd",
            "_sysctl",
            "sysfs",
            "ustat",
            "nfsservctl",
            "get_kernel_syms",
            "query_module",
            "create_module",
            "afs_syscall",
            "tuxcall",
            "security",
            "vserver",
            "putpmsg",
            "getpmsg",
        ],
        None,
    ),
    (
        &[
            "mount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "name_to_handle_at",
            "quotactl",
            "quotactl_fd",
            "sethostname",
            "setdomainname",
            "syslog",
            "fanotify_init",
            "lookup_dcookie",
        ],
        Some(&["SYS_ADMIN"]),
    ),
    (&["bpf"], Some(&["SYS_ADMIN", "BPF"])),
    (&["perf_event_open"], Some(&["SYS_ADMIN", "PERFMON"])),
    (&["open_by_handle_at"], Some(&["DAC_READ_SEARCH"])),
    (
        &["init_module", "finit_module", "delete_module"],
        Some(&["SYS_MODULE"]),
    ),
    (&["reboot"], Some(&["SYS_BOOT"])),
    (&["acct"], Some(&["SYS_PACCT"])),
    (
        &["settimeofday", "clock_settime", "clock_adjtime"],
        Some(&["SYS_TIME"]),
    ),
    (&["iopl", "ioperm"], Some(&["SYS_RAWIO"])),
    (&["vhangup"], Some(&["SYS_TTY_CONFIG"])),
    (
        &["process_vm_readv", "process_vm_writev", "kcmp"],
        Some(&["SYS_PTRACE"]),
    ),
    (
        &["mbind", "set_mempolicy", "migrate_pages", "move_pages"],
        Some(&["SYS_NICE"]),
    ),
];

/// The namespace flags `clone` may not have without CAP_SYS_ADMIN.
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn nr(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|s| i64::from(s.id()))
}

/// The default profile for a container with capabilities `caps`: a
/// denylist after Docker's default profile (which is an allowlist; see
/// docs/security/confine.md for the difference). Everything it refuses
/// fails with EPERM; `clone3` fails with ENOSYS so that libcs fall back to
/// `clone`, whose namespace flags are checked.
pub fn default_profile(caps: u64) -> SeccompSpec {
    let mut rules = Vec::new();
    for (names, lifted_by) in DENIED {
        if lifted_by.is_some_and(|caps_needed| caps_needed.iter().any(|c| has(caps, c))) {
            continue;
        }
        for name in *names {
            if let Some(syscall) = nr(name) {
                rules.push(SeccompRuleSpec {
                    syscall,
                    action: SeccompAction::Errno(EPERM),
                    args: Vec::new(),
                });
            }
        }
    }
    if !has(caps, "SYS_ADMIN") {
        for flag in CLONE_NAMESPACES {
            rules.push(SeccompRuleSpec {
                syscall: libc::SYS_clone,
                action: SeccompAction::Errno(EPERM),
                args: vec![SeccompArg {
                    index: 0,
                    op: SeccompOp::MaskedEq,
                    value: flag,
                    value_two: flag,
                }],
            });
        }
        rules.push(SeccompRuleSpec {
            syscall: libc::SYS_clone3,
            action: SeccompAction::Errno(ENOSYS),
            args: Vec::new(),
        });
    }
    SeccompSpec {
        default_action: SeccompAction::Allow,
        rules,
    }
}

// ----- Docker's profile format --------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerProfile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<DockerSyscall>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerSyscall {
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<DockerArg>>,
    #[serde(default)]
    includes: DockerFilter,
    #[serde(default)]
    excludes: DockerFilter,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerArg {
    index: u8,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerFilter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
    /// The guest kernel (6.1) is newer than any minKernel Docker uses.
    #[serde(default)]
    #[allow(dead_code)]
    min_kernel: Option<String>,
}

fn docker_action(action: &str, errno: Option<u32>) -> Result<SeccompAction, SecurityError> {
    Ok(match action {
        "SCMP_ACT_ALLOW" => SeccompAction::Allow,
        "SCMP_ACT_ERRNO" => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompAction::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompAction::KillProcess,
        "SCMP_ACT_TRAP" => SeccompAction::Trap,
        "SCMP_ACT_LOG" => SeccompAction::Log,
        other => {
            return Err(error(format!(
                "seccomp profile: action {other} is not supported (supported: SCMP_ACT_ALLOW, \
                 SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, \
                 SCMP_ACT_TRAP, SCMP_ACT_LOG)"
            )))
        }
    })
}

fn docker_op(op: &str) -> Result<SeccompOp, SecurityError> {
    Ok(match op {
        "SCMP_CMP_EQ" => SeccompOp::Eq,
        "SCMP_CMP_NE" => SeccompOp::Ne,
        "SCMP_CMP_LT" => SeccompOp::Lt,
        "SCMP_CMP_LE" => SeccompOp::Le,
        "SCMP_CMP_GT" => SeccompOp::Gt,
        "SCMP_CMP_GE" => SeccompOp::Ge,
        "SCMP_CMP_MASKED_EQ" => SeccompOp::MaskedEq,
        other => return Err(error(format!("seccomp profile: unknown operator {other}"))),
    })
}

fn applies(filter: &DockerFilter, caps: u64, include: bool) -> bool {
    let arch_match = filter.arches.is_empty()
        || filter
            .arches
            .iter()
            .any(|a| matches!(a.as_str(), "amd64" | "x86_64" | "SCMP_ARCH_X86_64"));
    let caps_match = if include {
        filter.caps.iter().all(|c| has(caps, c))
    } else {
        !filter.caps.is_empty() && filter.caps.iter().any(|c| has(caps, c))
    };
    if include {
        arch_match && caps_match
    } else {
        (!filter.arches.is_empty() && arch_match) || caps_match
    }
}

/// A profile in Docker's JSON format (`defaultAction`, `defaultErrnoRet`,
/// `syscalls[]` with `names`, `action`, `errnoRet`, `args`, `includes` and
/// `excludes` by `caps`/`arches`), for x86_64 and a container with `caps`.
/// Names the x86_64 table does not have are skipped, as Docker does.
pub fn parse_docker_profile(json: &str, caps: u64) -> Result<SeccompSpec, SecurityError> {
    if json.len() > MAX_PROFILE_BYTES {
        return Err(error(format!(
            "the seccomp profile is {} bytes; at most {MAX_PROFILE_BYTES} are accepted",
            json.len()
        )));
    }
    let profile: DockerProfile = serde_json::from_str(json)
        .map_err(|e| error(format!("the seccomp profile is not valid: {e}")))?;
    if profile.listener_path.is_some_and(|p| !p.is_empty()) {
        return Err(error(
            "seccomp profile: listenerPath (SCMP_ACT_NOTIFY) is not supported",
        ));
    }
    let default_action = docker_action(&profile.default_action, profile.default_errno_ret)?;
    let mut rules = Vec::new();
    for s in &profile.syscalls {
        let action = docker_action(&s.action, s.errno_ret.or(profile.default_errno_ret))?;
        if !applies(&s.includes, caps, true) || applies(&s.excludes, caps, false) {
            continue;
        }
        let args = s
            .args
            .iter()
            .flatten()
            .map(|a| {
                if a.index > 5 {
                    return Err(error(format!(
                        "seccomp profile: argument index {} (0..=5)",
                        a.index
                    )));
                }
                Ok(SeccompArg {
                    index: a.index,
                    op: docker_op(&a.op)?,
                    value: a.value,
                    value_two: a.value_two,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for name in s.names.iter().chain(s.name.iter()) {
            if let Some(syscall) = nr(name) {
                rules.push(SeccompRuleSpec {
                    syscall,
                    action,
                    args: args.clone(),
                });
            }
        }
    }
    Ok(SeccompSpec {
        default_action,
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn denied(spec: &SeccompSpec, name: &str) -> bool {
        let n = nr(name).unwrap();
        spec.rules
            .iter()
            .any(|r| r.syscall == n && r.args.is_empty() && r.action != SeccompAction::Allow)
    }

    #[test]
    fn the_default_set_is_dockers() {
        assert_eq!(docker_default_capabilities(), 0xa80425fb);
        assert_eq!(capabilities(&[], &[]).unwrap(), 0xa80425fb);
        assert_eq!(Confinement::ALL_CAPABILITIES, 0x1ffffffffff);
    }

    #[test]
    fn cap_add_and_drop_follow_docker() {
        let sys_admin = 1 << 21;
        assert_eq!(
            capabilities(&names(&["SYS_ADMIN"]), &[]).unwrap(),
            0xa80425fb | sys_admin
        );
        assert_eq!(
            capabilities(&names(&["cap_sys_admin"]), &[]).unwrap(),
            0xa80425fb | sys_admin
        );
        assert_eq!(capabilities(&[], &names(&["ALL"])).unwrap(), 0);
        assert_eq!(
            capabilities(&names(&["NET_ADMIN"]), &names(&["all"])).unwrap(),
            1 << 12
        );
        assert_eq!(
            capabilities(&names(&["ALL"]), &names(&["MKNOD"])).unwrap(),
            0x1ffffffffff & !(1 << 27)
        );
        assert_eq!(
            capabilities(&[], &names(&["CAP_CHOWN"])).unwrap(),
            0xa80425fb & !1
        );
    }

    #[test]
    fn unknown_capabilities_are_named_with_the_valid_ones() {
        let e = capabilities(&names(&["SYS_GOD"]), &[]).unwrap_err().0;
        assert!(e.contains("\"SYS_GOD\""), "{e}");
        assert!(e.contains("CAP_SYS_ADMIN") && e.contains("ALL"), "{e}");
    }

    #[test]
    fn the_default_confinement_has_nnp_seccomp_and_dockers_caps() {
        let c = confinement(&Security::default()).unwrap();
        assert_eq!(c.capabilities, 0xa80425fb);
        assert!(c.no_new_privileges);
        assert!(!c.privileged);
        let profile = c.seccomp.unwrap();
        assert_eq!(profile.default_action, SeccompAction::Allow);
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "kexec_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "reboot",
            "swapon",
            "acct",
            "settimeofday",
            "clock_settime",
            "open_by_handle_at",
            "userfaultfd",
        ] {
            assert!(denied(&profile, name), "{name}");
        }
        // Allowed as in Docker on kernels >= 4.8.
        assert!(!denied(&profile, "ptrace"));
        // clone with a namespace flag, and clone3 (ENOSYS) are refused.
        let clone_rules: Vec<_> = profile
            .rules
            .iter()
            .filter(|r| r.syscall == libc::SYS_clone)
            .collect();
        assert_eq!(clone_rules.len(), 7);
        assert!(clone_rules
            .iter()
            .any(|r| r.args[0].value == libc::CLONE_NEWUSER as u64));
        assert!(profile
            .rules
            .iter()
            .any(|r| r.syscall == libc::SYS_clone3 && r.action == SeccompAction::Errno(ENOSYS)));
    }

    #[test]
    fn capabilities_lift_their_syscalls_from_the_default_profile() {
        let admin = default_profile(capabilities(&names(&["SYS_ADMIN"]), &[]).unwrap());
        assert!(!denied(&admin, "mount"));
        assert!(!denied(&admin, "unshare"));
        assert!(!admin.rules.iter().any(|r| r.syscall == libc::SYS_clone));
        assert!(denied(&admin, "kexec_load"));
        let time = default_profile(capabilities(&names(&["SYS_TIME"]), &[]).unwrap());
        assert!(!denied(&time, "settimeofday"));
        assert!(denied(&time, "mount"));
    }

    #[test]
    fn privileged_has_everything_and_no_filter() {
        let opts = Security {
            privileged: true,
            cap_drop: names(&["ALL"]),
            ..Default::default()
        };
        let c = confinement(&opts).unwrap();
        assert_eq!(c.capabilities, Confinement::ALL_CAPABILITIES);
        assert!(c.seccomp.is_none() && c.privileged && !c.no_new_privileges);
    }

    #[test]
    fn ulimits_are_dockers_form() {
        let u = |v: &str| parse_ulimit(v).map(|l| (l.resource, l.soft, l.hard));
        assert_eq!(u("nofile=1024:2048"), Ok(("nofile".into(), 1024, 2048)));
        assert_eq!(u("NOFILE=100"), Ok(("nofile".into(), 100, 100)));
        assert_eq!(
            u("memlock=-1:unlimited"),
            Ok(("memlock".into(), Rlimit::UNLIMITED, Rlimit::UNLIMITED))
        );
        for (bad, word) in [
            ("nofile", "no '='"),
            ("files=1", "not a limit"),
            ("nofile=x", "not a number"),
            ("nofile=2:1", "above the hard limit"),
            ("nofile=-2", "not a number"),
        ] {
            let e = parse_ulimit(bad).unwrap_err().0;
            assert!(e.contains(word) && e.contains("--ulimit"), "{bad}: {e}");
        }
        let twice = Security {
            ulimits: names(&["nproc=1", "nproc=2"]),
            ..Default::default()
        };
        assert!(twice.validate().unwrap_err().0.contains("twice"));
    }

    #[test]
    fn security_opts_are_parsed_and_bad_ones_refused() {
        let opt = |v: &[&str]| {
            confinement(&Security {
                security_opt: names(v),
                ..Default::default()
            })
        };
        assert!(opt(&["seccomp=unconfined"]).unwrap().seccomp.is_none());
        assert!(opt(&["seccomp:unconfined"]).unwrap().seccomp.is_none());
        assert!(!opt(&["no-new-privileges=false"]).unwrap().no_new_privileges);
        assert!(opt(&["no-new-privileges"]).unwrap().no_new_privileges);
        assert!(opt(&["no-new-privileges=maybe"]).is_err());
        let e = opt(&["apparmor=unconfined"]).unwrap_err().0;
        assert!(e.contains("not supported"), "{e}");
        let e = opt(&["seccomp=/etc/profile.json"]).unwrap_err().0;
        assert!(e.contains("JSON"), "{e}");
    }

    #[test]
    fn docker_profiles_are_translated() {
        let json = r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW",
                 "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                 "comment": "anything"}
            ]
        }"#;
        let p = parse_docker_profile(json, 0xa80425fb).unwrap();
        assert_eq!(p.default_action, SeccompAction::Errno(1));
        let calls: Vec<i64> = p.rules.iter().map(|r| r.syscall).collect();
        assert_eq!(
            calls,
            vec![
                libc::SYS_read,
                libc::SYS_write,
                libc::SYS_personality,
                libc::SYS_clone,
                libc::SYS_uname
            ]
        );
        assert_eq!(p.rules[2].args[0].op, SeccompOp::Eq);
        assert_eq!(p.rules[4].action, SeccompAction::Errno(38));
        let admin = parse_docker_profile(json, Confinement::ALL_CAPABILITIES).unwrap();
        assert!(admin.rules.iter().any(|r| r.syscall == libc::SYS_mount));
        assert!(!admin.rules.iter().any(|r| r.syscall == libc::SYS_clone));

        for (bad, why) in [
            (r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, "not supported"),
            (r#"{"syscalls": []}"#, "not valid"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x"}"#,
                "listenerPath",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
                "index",
            ),
        ] {
            let e = parse_docker_profile(bad, 0).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_privileged_exec_gets_every_capability() {
        let c = confinement(&Security::default()).unwrap();
        assert_eq!(exec_confinement(&c, false), c);
        let p = exec_confinement(&c, true);
        assert_eq!(p.capabilities, Confinement::ALL_CAPABILITIES);
        assert!(p.seccomp.is_none() && !p.privileged);
    }
}
