use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// What a backend can do beyond launching, waiting and stopping a VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Can take over a running VM launched by an earlier hyperd
    /// ([`Hypervisor::recover`]).
    #[serde(default)]
    pub recover: bool,
    /// How this backend hands [`VmSpec::shares`] to the guest; `None`: it
    /// cannot share host directories, and the core refuses such volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_transport: Option<ShareTransport>,
    /// Can save a booted VM as a template ([`Vm::save_template`]) and start
    /// clones from it ([`Hypervisor::restore`]).
    #[serde(default)]
    pub templates: bool,
}

/// The guest-side filesystem a backend's directory shares arrive as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareTransport {
    /// virtio-fs served by a `virtiofsd` (QEMU, hyper-vmm): the guest mounts
    /// `-t virtiofs <tag>`.
    VirtioFs,
    /// Xen's 9pfs (a `p9` entry in xl.cfg): the guest mounts
    /// `-t 9p -o trans=xen <tag>`.
    Xen9p,
}

/// A backend's answer to "can you boot a guest on this host?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub usable: bool,
    /// One line a person can act on: why it is usable or not.
    pub reason: String,
    /// Facts the probe found (binary version, accelerator chosen and why …).
    pub details: BTreeMap<String, String>,
}

/// One VM to launch. The core composes it; the backend only adds its own
/// device bits (e.g. console and channel arguments) to the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Unique per host; used in socket, log and process names.
    pub id: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disks: Vec<DiskSpec>,
    /// Where the guest's serial console goes.
    pub console_log: PathBuf,
    /// A private directory for the backend's sockets and files; the core
    /// removes it after the VM has ended.
    pub run_dir: PathBuf,
    /// The VM's network interfaces, in guest order; empty: no NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicSpec>,
    /// Host directories the guest mounts by tag, over the backend's
    /// [`Capabilities::share_transport`]; empty: none. Block volumes are
    /// plain read-write entries of `disks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ShareSpec>,
    /// The host cgroup the core made for this VM; the backend places every
    /// process it starts for the VM (the VMM and its helpers, such as
    /// `virtiofsd`) in it before that process runs guest-reachable code.
    /// `None`: processes stay in hyperd's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupPlacement>,
    /// This VM will be saved as a template ([`Vm::save_template`]) once it
    /// has booted: a backend that needs to (QEMU) keeps the guest's memory
    /// in a file the save can hand over instead of copying it. Its disks
    /// are placeholders and it runs no container.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub save_as_template: bool,
}

/// Where a VM's host processes go: the `cgroup.procs` file of the pod's
/// cgroup in every hierarchy that limits it (one file on cgroup v2; one per
/// controller hierarchy, e.g. memory, cpu and pids, on v1 and hybrid hosts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupPlacement {
    pub procs_files: Vec<PathBuf>,
}

/// One host directory shared with the guest. The backend serves it (a
/// sandboxed `virtiofsd` per share on QEMU and hyper-vmm, a `p9` entry on
/// Xen), starts and stops whatever serves it with the VM, and makes sure the
/// guest can reach nothing outside `source` (no `..`, symlink or hard-link
/// way out) and cannot write when `read_only`. If what serves a share dies
/// while the VM runs, the backend stops the VM and [`Vm::wait`] reports it
/// in [`VmExit::helper_died`] (Kata's rule: a pod whose volumes are gone is
/// failed, never left half-working).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// The mount tag the guest names it by: 1..=[`ShareSpec::MAX_TAG`] bytes
    /// of `[A-Za-z0-9_-]`, unique in the VM.
    pub tag: String,
    /// An absolute path of an existing host directory; the root the guest
    /// sees.
    pub source: PathBuf,
    pub read_only: bool,
}

impl ShareSpec {
    /// virtio-fs's tag field is 36 bytes.
    pub const MAX_TAG: usize = 36;
}

/// One guest NIC, joined to a network namespace the core prepared (Kata's
/// model: the pod's netns is the contract). The backend creates its own
/// device (a tap, a Xen vif) *inside* `netns`, named `device`, and joins it
/// to `peer` with tc mirred redirect both ways, using the backend kit's
/// `nic` module; it never touches anything else in the namespace. The core
/// removes the namespace (and with it the device) after the VM has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    /// A network namespace file (`/run/netns/hyper-<id>`, or one a caller
    /// such as the containerd shim made).
    pub netns: PathBuf,
    /// The interface CNI configured in `netns` (`eth0`).
    pub peer: String,
    /// The name the backend gives its device in `netns` (at most 15 bytes).
    pub device: String,
    /// The guest NIC's MAC: `peer`'s, so the frames CNI's network expects
    /// for the pod are the guest's own (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// `peer`'s MTU; the backend's device gets the same.
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// A stable id the guest finds the disk by (virtio-blk serial, at most
    /// 20 bytes of `[A-Za-z0-9_-]`).
    pub id: String,
}

/// Where the core reaches hyperstart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentChannel {
    UnixSocket(PathBuf),
}

/// Handed back by [`Hypervisor::launch`]: enough to find the VM again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub agent_channel: AgentChannel,
    /// The host process running the VM, where there is one.
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmExit {
    /// Exit code of the VM process, when it exited normally.
    pub code: Option<i32>,
    /// Signal that killed the VM process.
    pub signal: Option<i32>,
    /// Set when the backend stopped the VM because a helper it needs (the
    /// `virtiofsd` of a share, Xen's device model) ended first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_died: Option<VmHelper>,
}

/// A host process a VM depends on besides the VMM itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmHelper {
    Virtiofsd,
    /// Xen: the domain's QEMU device model in dom0, which serves its 9pfs
    /// shares.
    DeviceModel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// Resident memory of the VM's host process(es), in bytes.
    pub rss_bytes: u64,
    /// Proportional set size, where the host can tell it.
    pub pss_bytes: Option<u64>,
    /// CPU time the VM has used on the host.
    pub cpu_time_ms: u64,
}

/// Errors cross the plugin boundary as JSON, so they are plain data. Every
/// message says what the operator should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum HypervisorError {
    #[error("{backend} cannot run guests on this host: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("VM failed to start: {0}")]
    LaunchFailed(String),
    #[error("no VM with id {0}")]
    NotFound(String),
    #[error("{0} is not supported by this backend")]
    Unsupported(String),
    #[error("backend plugin failed: {0}")]
    Plugin(String),
    /// The process hosting the plugin died (a crash in the plugin, or a
    /// kill) while this call was in flight. hyperd restarts the host and
    /// takes its VMs back; the call can be retried.
    #[error("backend plugin {plugin} died during the call ({reason}); hyperd restarts it, retry the call")]
    PluginDied { plugin: String, reason: String },
    /// A template the backend cannot use: written by another version or
    /// build, truncated, altered, or for another device layout. Nothing of
    /// it was applied; the core cold-starts the pod (or fails it when the
    /// config says template only) and rebuilds the template.
    #[error("template refused: {0}")]
    TemplateRejected(String),
    #[error("{0}")]
    Io(String),
}

/// A problem in a backend's `[hypervisor.<name>]` table, found by the
/// backend itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("key `{key}`: {message}; {fix}")]
pub struct ConfigProblem {
    /// The key inside the backend's table (`binary`, `machine` …); empty for
    /// the whole table.
    pub key: String,
    pub message: String,
    pub fix: String,
}

/// One hypervisor on this host, configured from its TOML table.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn name(&self) -> &str;
    fn capabilities(&self) -> Capabilities;
    /// Never hangs: a backend bounds every check it makes.
    async fn probe(&self) -> ProbeReport;
    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError>;
    /// Takes over a VM that an earlier hyperd launched from `spec` and was
    /// told `info` about, with `pid_start` the start time of `info.pid` (so a
    /// recycled pid is never adopted). Fails with `NotFound` when the VM is
    /// gone.
    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let _ = (spec, info, pid_start);
        Err(HypervisorError::Unsupported(
            "taking over a running VM".into(),
        ))
    }
    /// Starts a clone of the template that [`Vm::save_template`] wrote into
    /// `template`. `spec` is the clone's own: its disks (the same count,
    /// ids and read-only flags as the template's, in the same order, but the
    /// clone's own paths), NICs (the same count, the clone's own netns,
    /// peer, device and MAC), console log, run dir and cgroup; `kernel`,
    /// `initrd`, `cmdline`, `vcpus`, `memory_mib` and the share tags equal
    /// the template's. The guest's memory is mapped privately from the
    /// template (copy-on-write: clones share its clean pages), never copied
    /// into the template. The backend validates everything it reads (a
    /// version, sizes, a checksum of its state) and answers
    /// [`HypervisorError::TemplateRejected`] before starting anything when
    /// the template is not one it wrote for this layout. The clone's guest
    /// resumes where the template was saved: hyperstart idle after READY,
    /// waiting for a host session (the protocol's `Reattach`, then
    /// `Resume`).
    async fn restore(&self, spec: VmSpec, template: &Path) -> Result<Box<dyn Vm>, HypervisorError> {
        let _ = (spec, template);
        Err(HypervisorError::Unsupported(
            "starting from a template".into(),
        ))
    }
}

/// One running VM.
#[async_trait]
pub trait Vm: Send + Sync {
    fn info(&self) -> VmInfo;
    /// Resolves when the VM has ended (for any reason) and the backend has
    /// cleaned up after it. Any number of callers may wait; dropping a
    /// waiting future must cost nothing (no thread, no task left behind).
    async fn wait(&self) -> Result<VmExit, HypervisorError>;
    /// Asks the VM to stop, and stops it hard after `grace`.
    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError>;
    async fn kill(&self) -> Result<(), HypervisorError>;
    async fn stats(&self) -> Result<VmStats, HypervisorError>;
    /// Saves this VM as a template into `dir`, an empty private directory
    /// the core made (the core publishes it by renaming it into place once
    /// this returns `Ok`, so a crash never leaves a half-written template
    /// where the next hyperd looks). The VM was launched from a spec whose
    /// disks are placeholders, has booted to hyperstart's READY, has had its
    /// host session's `Hello`, and is idle. The backend pauses it, writes
    /// what its [`Hypervisor::restore`] needs (guest memory, vCPU and
    /// device state, its own versioned metadata) and then stops it: `wait`
    /// resolves as for any VM that ended.
    async fn save_template(&self, dir: &Path) -> Result<(), HypervisorError> {
        let _ = dir;
        Err(HypervisorError::Unsupported("saving a template".into()))
    }
}
