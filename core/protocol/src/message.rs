use serde::{Deserialize, Serialize};

/// Everything the host sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct HostMessage {
    /// Echoed in the guest's [`GuestMessage::Response`].
    pub id: u64,
    pub request: Request,
}

// A request is built once and serialised at once, never kept in bulk: the
// size of its largest variant (a container with its limits) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Answers [`GuestMessage::Ready`]: the version the host picked and the
    /// capabilities it will use.
    Hello {
        version: u32,
        capabilities: Vec<String>,
    },
    Ping,
    StartPod(PodSpec),
    NewContainer(ContainerSpec),
    Exec {
        container: String,
        process: ProcessSpec,
    },
    Signal {
        container: String,
        process: String,
        signal: i32,
    },
    WindowSize {
        container: String,
        process: String,
        rows: u16,
        cols: u16,
    },
    RemoveContainer {
        container: String,
    },
    /// Kill every process, unmount, and power the VM off.
    DestroyPod,
    /// A new host session on a running guest (hyperd restarted). `nonce`
    /// (hex, at most 64 chars) follows [`crate::RESYNC_MAGIC`] in the raw
    /// bytes hyperstart writes before its answer, [`Reply::Reattached`].
    /// Output credit starts over at [`crate::INITIAL_WINDOW`] per stream.
    Reattach {
        nonce: String,
    },
    /// The VM was restored from a template (capability
    /// [`capability::RESUME`]); sent once, after [`Request::Reattach`] and
    /// before anything else. hyperstart makes the clone its own before any
    /// container runs: it mixes `entropy` into the kernel's pool and forces
    /// a reseed (clones of one template share the RNG state they were saved
    /// with), sets the wall clock, re-probes its block and network devices
    /// so they read the clone's disk sizes and MACs (no page cache or
    /// address of the template survives), and gives NIC N the MAC
    /// `nic_macs[N]`.
    Resume(ResumeSpec),
}

/// What makes a restored clone its own ([`Request::Resume`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeSpec {
    /// Fresh host entropy, hex: [`ResumeSpec::MIN_ENTROPY`]..=
    /// [`ResumeSpec::MAX_ENTROPY`] bytes once decoded.
    pub entropy_hex: String,
    /// The host's wall clock when it sent this, in nanoseconds since the
    /// Unix epoch.
    pub realtime_ns: u64,
    /// The clone's NIC MACs in guest device order (`aa:bb:cc:dd:ee:ff`),
    /// at most [`NetworkSpec::MAX_INTERFACES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nic_macs: Vec<String>,
}

impl ResumeSpec {
    /// 256 bits: enough to reseed a ChaCha20 CRNG.
    pub const MIN_ENTROPY: usize = 32;
    pub const MAX_ENTROPY: usize = 512;
}

/// Everything the guest sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestMessage {
    /// Sent once hyperstart has its channel open.
    Ready {
        min_version: u32,
        max_version: u32,
        capabilities: Vec<String>,
        agent: String,
    },
    Response {
        id: u64,
        result: Result<Reply, AgentError>,
    },
    /// A process ended; sent after its output streams reached end of stream.
    ProcessExit {
        container: String,
        process: String,
        status: i32,
        /// A container's init killed by the guest kernel's OOM killer
        /// (SIGKILL, status 137, while its cgroup counted an `oom_kill`):
        /// Docker's `OOMKilled`. Guests before capability
        /// [`capability::OOM_KILLED`] never send it: false.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oom_killed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok,
    Pong,
    /// A process was started; `pid` is its pid as hyperstart sees it.
    Started {
        pid: i32,
    },
    Reattached {
        /// Every process hyperstart still tracks, running or not yet reported.
        processes: Vec<ProcessState>,
    },
}

/// A process as hyperstart knows it, for a host that lost track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    pub container: String,
    pub process: String,
    pub stdio: u32,
    pub stderr: u32,
    /// Set once it has exited (128+N for a signal).
    pub exit_status: Option<i32>,
    /// Whether its output streams are still open.
    pub output_open: bool,
    /// As [`GuestMessage::ProcessExit`]'s, once it has exited.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub kind: AgentErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentErrorKind {
    /// The command does not exist in the container (Docker's exit code 127).
    CommandNotFound,
    /// The command exists but cannot be executed (Docker's exit code 126).
    CommandNotExecutable,
    NotFound,
    AlreadyExists,
    InvalidRequest,
    Failed,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The exit code Docker gives a container whose process could not start.
    pub fn exit_code(&self) -> Option<i32> {
        match self.kind {
            AgentErrorKind::CommandNotFound => Some(127),
            AgentErrorKind::CommandNotExecutable => Some(126),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub hostname: String,
    /// Volumes the pod's containers share, created before any container.
    /// Left out of the JSON when empty so a single-container pod's request
    /// reads the same as before volumes existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// The pod's network (protocol version 3, capability
    /// [`capability::NETWORK`]). `None`: hyperstart leaves the guest's
    /// network alone (only a host older than version 3 sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
}

/// Everything hyperstart configures so the pod's containers share one
/// network, as in a Kubernetes pod: the guest's NICs (matched by MAC),
/// routes, and the files every container gets (`/etc/resolv.conf`,
/// `/etc/hosts`, `/etc/hostname`). The host builds it from the CNI result
/// of the pod's network namespace; the guest validates every field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// At most [`NetworkSpec::MAX_INTERFACES`]. Empty for `--network none`:
    /// only `lo` comes up.
    pub interfaces: Vec<InterfaceSpec>,
    /// At most [`NetworkSpec::MAX_ROUTES`], added after every interface is up.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// The contents of every container's `/etc/resolv.conf`.
    #[serde(default)]
    pub dns: DnsSpec,
    /// Extra `/etc/hosts` lines (`--add-host`), after `localhost` and the
    /// pod's own hostname and addresses. At most [`NetworkSpec::MAX_HOSTS`].
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
}

impl NetworkSpec {
    pub const MAX_INTERFACES: usize = 8;
    pub const MAX_ROUTES: usize = 64;
    pub const MAX_HOSTS: usize = 256;
}

/// One guest NIC: the device whose MAC is `mac` is renamed `name` and gets
/// `mtu` and `addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceSpec {
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    /// The name inside the guest (`eth0`); at most 15 bytes of
    /// `[A-Za-z0-9_.-]`.
    pub name: String,
    /// 68..=65535.
    pub mtu: u32,
    /// CIDR addresses, IPv4 or IPv6 (`10.88.0.5/16`, `fd00::5/64`).
    pub addresses: Vec<String>,
}

/// A route: `destination` (CIDR, `0.0.0.0/0` for the default route) through
/// `gateway` when set, else directly on `interface`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The guest-side interface name (an [`InterfaceSpec::name`]).
    pub interface: String,
}

/// `/etc/resolv.conf`: `nameserver`, `search` and `options` lines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// One `/etc/hosts` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub address: String,
    pub names: Vec<String>,
}

/// A pod-level volume, mounted once per pod by hyperstart (before any
/// container) and bound into the containers that name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Same alphabet as container ids; it becomes a path component.
    pub name: String,
    /// The tmpfs size limit in MiB; 0 leaves the kernel's default (half
    /// of the guest's memory). Only for [`VolumeSource::Tmpfs`].
    #[serde(default)]
    pub size_mib: u32,
    /// Where the volume's contents come from; a tmpfs when left out, so a
    /// request from before host volumes reads the same. Anything but
    /// `Tmpfs` needs capability [`capability::HOST_VOLUMES`].
    #[serde(default, skip_serializing_if = "VolumeSource::is_tmpfs")]
    pub source: VolumeSource,
    /// Mount the pod-level mount read-only, so no container can write it
    /// whatever its own [`MountSpec::readonly`] says (the host enforces the
    /// same on its side of a share).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

/// What backs a pod volume in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeSource {
    /// A tmpfs, alive as long as the VM.
    #[default]
    Tmpfs,
    /// A host directory the backend shares under `tag` (at most 36 bytes of
    /// `[A-Za-z0-9_-]`).
    Share {
        tag: String,
        transport: ShareTransport,
    },
    /// A read-write disk found by its stable id (virtio-blk serial or Xen
    /// vbd id), like [`RootfsSpec::disk_id`], holding a filesystem of
    /// `fstype` (`ext4`).
    Block { disk_id: String, fstype: String },
}

impl VolumeSource {
    pub fn is_tmpfs(&self) -> bool {
        matches!(self, VolumeSource::Tmpfs)
    }
}

/// How a [`VolumeSource::Share`] reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareTransport {
    /// `mount -t virtiofs <tag>` (QEMU, hyper-vmm).
    VirtioFs,
    /// `mount -t 9p -o trans=xen <tag>` (Xen).
    Xen9p,
}

/// A pod volume bound into a container before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    pub volume: String,
    /// Absolute path inside the container, without `..`; created if missing.
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub id: String,
    pub rootfs: RootfsSpec,
    pub hostname: String,
    /// The container's first process; it becomes PID 1 of the container's
    /// PID namespace.
    pub process: ProcessSpec,
    /// Pod volumes bound into the container's root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// The container's cgroup limits (capability
    /// [`capability::CONTAINER_LIMITS`]), written before its first process
    /// joins the group. Left out when there are none, so a request without
    /// limits reads the same to a guest from before them.
    #[serde(default, skip_serializing_if = "ResourceLimits::is_unlimited")]
    pub resources: ResourceLimits,
}

/// A container's cgroup v2 limits in the guest, as Docker and Kata give
/// them (`--memory`, `--pids-limit`, `--cpus`, `--cpu-shares`). `None` is
/// no limit. Both ends check them with [`ResourceLimits::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceLimits {
    /// `memory.max`, bytes: [`ResourceLimits::MIN_MEMORY`]..=
    /// [`ResourceLimits::MAX_MEMORY`]. The guest has no swap, so this
    /// bounds memory and swap together (Docker's `--memory-swap` equal to
    /// `--memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `pids.max`: 1..=[`ResourceLimits::MAX_PIDS`] tasks (processes and
    /// threads) at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
    /// `cpu.max`: at most `quota_us` of CPU time every `period_us`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<CpuMax>,
    /// `cpu.weight`: 1..=10000 (100 is the default share).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
}

/// `cpu.max` (CFS bandwidth): `quota_us` of CPU time per `period_us`; a
/// quota of twice the period is two CPUs' worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuMax {
    /// [`CpuMax::MIN_QUOTA_US`]..=[`CpuMax::MAX_QUOTA_US`].
    pub quota_us: u64,
    /// [`CpuMax::MIN_PERIOD_US`]..=[`CpuMax::MAX_PERIOD_US`].
    pub period_us: u64,
}

impl CpuMax {
    /// The kernel's bounds (`kernel/sched/core.c`): a period of 1 ms to
    /// 1 s, a quota of at least 1 ms.
    pub const MIN_PERIOD_US: u64 = 1_000;
    pub const MAX_PERIOD_US: u64 = 1_000_000;
    pub const MIN_QUOTA_US: u64 = 1_000;
    /// 1024 CPUs' worth of the longest period: more than any guest has.
    pub const MAX_QUOTA_US: u64 = 1024 * Self::MAX_PERIOD_US;
    /// Docker's period for `--cpus`.
    pub const DEFAULT_PERIOD_US: u64 = 100_000;
}

impl ResourceLimits {
    /// Docker's smallest `--memory`: less cannot start a process.
    pub const MIN_MEMORY: u64 = 6 << 20;
    /// 1 TiB: far above any guest, far below overflow.
    pub const MAX_MEMORY: u64 = 1 << 40;
    /// The kernel's `PID_MAX_LIMIT` on 64-bit.
    pub const MAX_PIDS: u64 = 4 << 20;
    pub const MIN_CPU_WEIGHT: u64 = 1;
    pub const MAX_CPU_WEIGHT: u64 = 10_000;

    /// No limit at all (what a guest without the capability gets).
    pub fn is_unlimited(&self) -> bool {
        *self == Self::default()
    }

    /// Every value within the kernel's bounds; the error names the field
    /// and its range.
    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, v: u64, min: u64, max: u64| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v}: must be {min}..={max}"))
            }
        };
        if let Some(m) = self.memory_max {
            range("memory_max", m, Self::MIN_MEMORY, Self::MAX_MEMORY)?;
        }
        if let Some(p) = self.pids_max {
            range("pids_max", p, 1, Self::MAX_PIDS)?;
        }
        if let Some(c) = self.cpu_max {
            range(
                "cpu_max.period_us",
                c.period_us,
                CpuMax::MIN_PERIOD_US,
                CpuMax::MAX_PERIOD_US,
            )?;
            range(
                "cpu_max.quota_us",
                c.quota_us,
                CpuMax::MIN_QUOTA_US,
                CpuMax::MAX_QUOTA_US,
            )?;
        }
        if let Some(w) = self.cpu_weight {
            range("cpu_weight", w, Self::MIN_CPU_WEIGHT, Self::MAX_CPU_WEIGHT)?;
        }
        Ok(())
    }

    /// Docker's `--cpu-shares` (2..=262144, 1024 the default) as a cgroup
    /// v2 weight, by runc's formula.
    pub fn weight_of_shares(shares: u64) -> u64 {
        let shares = shares.clamp(2, 262_144);
        1 + (shares - 2) * 9999 / 262_142
    }
}

/// A read-only disk the guest finds by its stable id (the virtio-blk serial,
/// or the Xen vbd id), mounted under a tmpfs-backed overlay. Or, with
/// `share` set (capability [`capability::SHARED_ROOTFS`]), a directory of a
/// pod volume shared from the host: how a container joins a running pod's
/// VM, which cannot take a new disk on every backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Ignored (empty) when `share` is set.
    pub disk_id: String,
    /// `erofs` or `ext4`; ignored (empty) when `share` is set.
    pub fstype: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<SharedRootfs>,
}

/// A container root read from a directory of a pod volume
/// ([`VolumeSource::Share`]), under the same tmpfs-backed overlay as a
/// disk's: the guest never writes the host's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedRootfs {
    /// A pod volume of [`PodSpec::volumes`] whose source is a share.
    pub volume: String,
    /// One path component inside it (container-id alphabet).
    pub dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    pub id: String,
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Absolute path inside the container; created if missing.
    pub workdir: String,
    /// `uid`, `uid:gid`, `name` or `name:group`, resolved in the container.
    pub user: String,
    /// Run on a pseudo-terminal: its slave is the process's stdin, stdout,
    /// stderr and controlling terminal, and all output arrives on `stdio`
    /// (`stderr` ends at once).
    pub terminal: bool,
    /// The terminal's size at start, so the process never sees a default
    /// size first; 24x80 when absent. Ignored without `terminal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_size: Option<TerminalSize>,
    /// Stream id of stdin (host→guest) and stdout (guest→host).
    pub stdio: u32,
    /// Stream id of stderr (guest→host).
    pub stderr: u32,
    /// What the process may do inside the guest (capabilities, seccomp,
    /// no_new_privs); protocol version 2 and later.
    pub confinement: Confinement,
    /// Resource limits set before exec (Docker's `--ulimit`, the OCI
    /// spec's `process.rlimits`); capability [`capability::RLIMITS`]. Left
    /// out when empty, so a process without them reads the same to a guest
    /// from before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
}

/// One `setrlimit(2)` of a process: `resource` by Docker's `--ulimit`
/// name (`nofile`, `nproc`, `core`, … see [`Rlimit::NAMES`]), `soft` at
/// most `hard`; [`Rlimit::UNLIMITED`] is `RLIM_INFINITY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

impl Rlimit {
    /// `RLIM_INFINITY` on Linux.
    pub const UNLIMITED: u64 = u64::MAX;
    /// At most one per resource.
    pub const MAX_PER_PROCESS: usize = Self::NAMES.len();
    /// Docker's names (`docker run --ulimit`), Linux's `RLIMIT_*` without
    /// the prefix, lower case.
    pub const NAMES: [&'static str; 16] = [
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];

    /// A list both ends accept: known names, each once, soft ≤ hard.
    pub fn validate_all(limits: &[Rlimit]) -> Result<(), String> {
        for (i, l) in limits.iter().enumerate() {
            if !Self::NAMES.contains(&l.resource.as_str()) {
                return Err(format!(
                    "ulimit {:?}: not a resource limit (one of {})",
                    l.resource.chars().take(32).collect::<String>(),
                    Self::NAMES.join(", ")
                ));
            }
            if l.soft > l.hard {
                return Err(format!(
                    "ulimit {}: the soft limit {} is above the hard limit {}",
                    l.resource, l.soft, l.hard
                ));
            }
            if limits[..i].iter().any(|e| e.resource == l.resource) {
                return Err(format!("ulimit {}: given twice", l.resource));
            }
        }
        Ok(())
    }
}

/// The confinement of one process, decided by the host (see
/// docs/security/confine.md). The guest applies exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confinement {
    /// Capability bits (bit N = capability number N) kept in the bounding,
    /// permitted and effective sets of a process running as uid 0; a process
    /// of another user keeps them only in its bounding set. Inheritable and
    /// ambient are always empty.
    pub capabilities: u64,
    /// Set PR_SET_NO_NEW_PRIVS before exec.
    pub no_new_privileges: bool,
    /// The seccomp filter; `None` is unconfined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<SeccompSpec>,
    /// Only for a container's first process: no masked or read-only /proc
    /// paths, /sys writable, and real device nodes (no `nodev` mounts).
    #[serde(default)]
    pub privileged: bool,
}

impl Confinement {
    /// Every capability the guest kernel knows of (6.1: 0..=40), no seccomp.
    pub const ALL_CAPABILITIES: u64 = (1 << 41) - 1;

    /// What a process gets with no confinement at all (what every process
    /// got before protocol version 2).
    pub fn unconfined() -> Self {
        Self {
            capabilities: Self::ALL_CAPABILITIES,
            no_new_privileges: false,
            seccomp: None,
            privileged: true,
        }
    }
}

/// A seccomp filter: `default_action` for every syscall no rule names.
/// Syscall numbers are x86_64's (the host resolves names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompSpec {
    pub default_action: SeccompAction,
    pub rules: Vec<SeccompRuleSpec>,
}

/// `action` for `syscall`, when every condition in `args` holds (none:
/// always). Rules for the same syscall are alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompRuleSpec {
    pub syscall: i64,
    pub action: SeccompAction,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

/// A condition on a syscall argument, as in Docker's profiles: `arg OP
/// value`, or for `masked_eq`, `arg & value == value_two`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeccompArg {
    /// 0..=5.
    pub index: u8,
    pub op: SeccompOp,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompAction {
    Allow,
    /// Fail with this errno.
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSize {
    pub rows: u16,
    pub cols: u16,
}

impl TerminalSize {
    /// What a terminal gets until someone says otherwise (as in Docker).
    pub const DEFAULT: TerminalSize = TerminalSize { rows: 24, cols: 80 };
}

/// Capability names hyperstart may advertise in [`GuestMessage::Ready`].
pub mod capability {
    pub const FLOW_CONTROL: &str = "flow-control";
    pub const EROFS: &str = "rootfs-erofs";
    pub const EXT4: &str = "rootfs-ext4";
    pub const PID_NAMESPACE: &str = "pid-namespace";
    /// Pod volumes (`PodSpec::volumes`, `ContainerSpec::mounts`).
    pub const VOLUMES: &str = "volumes";
    /// `ProcessSpec.terminal` and `Request::WindowSize` are served.
    pub const TERMINAL: &str = "terminal";
    /// `ProcessSpec.confinement` is applied (capabilities, no_new_privs,
    /// seccomp, masked /proc paths, device restriction).
    pub const CONFINEMENT: &str = "confinement";
    /// `PodSpec::network` is applied (NICs by MAC, routes, resolv.conf,
    /// hosts, hostname); protocol version 3 and later.
    pub const NETWORK: &str = "network";
    /// [`VolumeSource::Share`] and [`VolumeSource::Block`] volumes, and
    /// [`VolumeSpec::readonly`].
    pub const HOST_VOLUMES: &str = "host-volumes";
    /// [`super::Request::Resume`] is served: a template clone can be made
    /// its own (RNG reseed, clock, device re-probe).
    pub const RESUME: &str = "resume";
    /// Each container runs in its own cgroup in the guest, and
    /// [`super::GuestMessage::ProcessExit`] says `oom_killed` when the
    /// guest's OOM killer ended a container's init.
    pub const OOM_KILLED: &str = "oom-killed";
    /// [`super::RootfsSpec::share`]: a container's root from a directory of
    /// a shared pod volume (a container joining a running pod).
    pub const SHARED_ROOTFS: &str = "shared-rootfs";
    /// [`super::ContainerSpec::resources`]: a container's memory, pids and
    /// CPU limits are written to its cgroup before it starts.
    pub const CONTAINER_LIMITS: &str = "container-limits";
    /// [`super::ProcessSpec::rlimits`] are set before exec.
    pub const RLIMITS: &str = "rlimits";

    /// Everything this build's hyperstart serves, as it advertises it (the
    /// hostile test init advertises the same, so the host takes it for one).
    pub const ALL: [&str; 14] = [
        FLOW_CONTROL,
        EROFS,
        EXT4,
        PID_NAMESPACE,
        VOLUMES,
        TERMINAL,
        CONFINEMENT,
        NETWORK,
        HOST_VOLUMES,
        RESUME,
        OOM_KILLED,
        SHARED_ROOTFS,
        CONTAINER_LIMITS,
        RLIMITS,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_are_known_names_once_each_soft_at_most_hard() {
        let l = |r: &str, soft, hard| Rlimit {
            resource: r.into(),
            soft,
            hard,
        };
        assert_eq!(
            Rlimit::validate_all(&[l("nofile", 10, 20), l("core", 0, 0)]),
            Ok(())
        );
        for (bad, word) in [
            (vec![l("NOFILE", 1, 1)], "not a resource limit"),
            (vec![l("nofile", 2, 1)], "above the hard limit"),
            (vec![l("nproc", 1, 1), l("nproc", 2, 2)], "twice"),
        ] {
            let e = Rlimit::validate_all(&bad).unwrap_err();
            assert!(e.contains(word), "{bad:?}: {e}");
        }
    }

    #[test]
    fn messages_roundtrip_through_json() {
        let msg = HostMessage {
            id: 7,
            request: Request::Exec {
                container: "c".into(),
                process: ProcessSpec {
                    id: "p".into(),
                    args: vec!["sh".into()],
                    env: vec!["A=1".into()],
                    workdir: "/".into(),
                    user: "0:0".into(),
                    terminal: true,
                    terminal_size: Some(TerminalSize {
                        rows: 50,
                        cols: 132,
                    }),
                    stdio: 1,
                    stderr: 2,
                    confinement: Confinement {
                        capabilities: 0xa80425fb,
                        no_new_privileges: true,
                        seccomp: Some(SeccompSpec {
                            default_action: SeccompAction::Allow,
                            rules: vec![SeccompRuleSpec {
                                syscall: 165,
                                action: SeccompAction::Errno(1),
                                args: vec![SeccompArg {
                                    index: 0,
                                    op: SeccompOp::MaskedEq,
                                    value: 0x1000_0000,
                                    value_two: 0x1000_0000,
                                }],
                            }],
                        }),
                        privileged: false,
                    },
                    rlimits: vec![Rlimit {
                        resource: "nofile".into(),
                        soft: 1024,
                        hard: Rlimit::UNLIMITED,
                    }],
                },
            },
        };
        let json = serde_json::to_vec(&msg).unwrap();
        assert_eq!(serde_json::from_slice::<HostMessage>(&json).unwrap(), msg);

        let reply = GuestMessage::Response {
            id: 7,
            result: Err(AgentError::new(AgentErrorKind::CommandNotFound, "nope")),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<GuestMessage>(&json).unwrap(), reply);
    }

    #[test]
    fn a_volume_from_before_host_volumes_is_a_tmpfs_and_sources_round_trip() {
        let old: VolumeSpec = serde_json::from_str(r#"{"name":"v","size_mib":8}"#).unwrap();
        assert_eq!(old.source, VolumeSource::Tmpfs);
        assert!(!old.readonly);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"name":"v","size_mib":8}"#
        );
        let share = VolumeSpec {
            name: "data".into(),
            size_mib: 0,
            source: VolumeSource::Share {
                tag: "hyper-vol0".into(),
                transport: ShareTransport::VirtioFs,
            },
            readonly: true,
        };
        let json = serde_json::to_string(&share).unwrap();
        assert!(json.contains(r#""kind":"share""#), "{json}");
        assert!(json.contains(r#""transport":"virtio_fs""#), "{json}");
        assert_eq!(serde_json::from_str::<VolumeSpec>(&json).unwrap(), share);
        let bad = r#"{"name":"v","source":{"kind":"block","disk_id":"d","fstype":"ext4","x":1}}"#;
        assert!(serde_json::from_str::<VolumeSpec>(bad).is_err());
    }

    #[test]
    fn empty_volumes_and_mounts_are_left_out() {
        let json = serde_json::to_string(&PodSpec {
            hostname: "h".into(),
            volumes: Vec::new(),
            network: None,
        })
        .unwrap();
        assert_eq!(json, r#"{"hostname":"h"}"#);
        let spec: PodSpec =
            serde_json::from_str(r#"{"hostname":"h","volumes":[{"name":"v"}]}"#).unwrap();
        assert_eq!(spec.volumes[0].size_mib, 0);
    }

    #[test]
    fn oom_killed_is_optional_both_ways() {
        // What a guest before capability `oom-killed` sends.
        let old = r#"{"process_exit":{"container":"c","process":"p","status":137}}"#;
        let GuestMessage::ProcessExit { oom_killed, .. } = serde_json::from_str(old).unwrap()
        else {
            panic!("not an exit");
        };
        assert!(!oom_killed);
        let exit = GuestMessage::ProcessExit {
            container: "c".into(),
            process: "p".into(),
            status: 137,
            oom_killed: true,
        };
        let json = serde_json::to_string(&exit).unwrap();
        assert!(json.contains(r#""oom_killed":true"#), "{json}");
        assert_eq!(serde_json::from_str::<GuestMessage>(&json).unwrap(), exit);
        // Not OOM-killed reads as before, for an older host.
        let plain = GuestMessage::ProcessExit {
            container: "c".into(),
            process: "p".into(),
            status: 137,
            oom_killed: false,
        };
        assert_eq!(serde_json::to_string(&plain).unwrap(), old);
        let state: ProcessState = serde_json::from_str(
            r#"{"container":"c","process":"p","stdio":1,"stderr":2,"exit_status":137,"output_open":false}"#,
        )
        .unwrap();
        assert!(!state.oom_killed);
    }

    #[test]
    fn limits_are_left_out_when_unset_and_validated_when_set() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"id":"c","rootfs":{"disk_id":"d","fstype":"erofs"},"hostname":"h",
            "process":{"id":"p","args":["sh"],"env":[],"workdir":"/","user":"",
            "terminal":false,"stdio":1,"stderr":2,"confinement":{"capabilities":0,
            "no_new_privileges":true}}}"#,
        )
        .unwrap();
        assert!(spec.resources.is_unlimited());
        let json = serde_json::to_string(&spec).unwrap();
        assert!(!json.contains("resources"), "{json}");

        let limits = ResourceLimits {
            memory_max: Some(32 << 20),
            pids_max: Some(20),
            cpu_max: Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            cpu_weight: Some(100),
        };
        limits.validate().unwrap();
        let with = ContainerSpec {
            resources: limits,
            ..spec
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.contains(r#""pids_max":20"#), "{json}");
        assert_eq!(serde_json::from_str::<ContainerSpec>(&json).unwrap(), with);

        for bad in [
            ResourceLimits {
                memory_max: Some(1 << 20),
                ..Default::default()
            },
            ResourceLimits {
                memory_max: Some(u64::MAX),
                ..Default::default()
            },
            ResourceLimits {
                pids_max: Some(0),
                ..Default::default()
            },
            ResourceLimits {
                cpu_max: Some(CpuMax {
                    quota_us: 10,
                    period_us: 100_000,
                }),
                ..Default::default()
            },
            ResourceLimits {
                cpu_max: Some(CpuMax {
                    quota_us: 10_000,
                    period_us: 0,
                }),
                ..Default::default()
            },
            ResourceLimits {
                cpu_weight: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert_eq!(ResourceLimits::weight_of_shares(1024), 39);
        assert_eq!(ResourceLimits::weight_of_shares(2), 1);
        assert_eq!(ResourceLimits::weight_of_shares(262_144), 10_000);
        assert_eq!(ResourceLimits::weight_of_shares(0), 1);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json = r#"{"id":1,"request":"ping","extra":1}"#;
        assert!(serde_json::from_str::<HostMessage>(json).is_err());
    }
}
