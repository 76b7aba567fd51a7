//! What a pod is: its record (`pod.json`), the requests that make one, and
//! the containers the one pod path runs — one for `hyper run`, N for a pod
//! file ([`Member`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_api::errors::ErrorKind;
use hyper_hypervisor::{ProbeReport, VmInfo, VmSpec};
use hyper_protocol::TerminalSize;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

pub use hyper_api::pods::{ExecRequest, RestartPolicy, RunOutcome, RunRequest};

use super::attach::Stdin;
use super::INIT_PROCESS;
use crate::agent::AgentCallError;
use crate::payload::Payload;
use crate::plugins::PluginFailure;
use crate::podfile::{PodFile, PodMount, PodVolume};
use crate::rootfs;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Image(#[from] hyper_images::ImageError),
    #[error("no such image: {0}; pull it first")]
    NoSuchImage(String),
    #[error("no such pod: {0}")]
    NoSuchPod(String),
    #[error("pod {0} is not running")]
    NotRunning(String),
    #[error("pod {0} is running; stop it first")]
    Running(String),
    #[error("the name {0} is already used by a pod")]
    NameInUse(String),
    #[error(
        "pod name {0}: use letters, digits, `_`, `.` and `-`, starting with a letter or digit"
    )]
    BadName(String),
    #[error("invalid request: a pod removed when it exits cannot be restarted: `remove` does not go with a restart policy")]
    RemoveWithRestart,
    #[error("invalid request: give either an image or a rootfs, not both")]
    ImageAndRootfs,
    #[error("invalid request: no image and no rootfs given")]
    NoImage,
    #[error("invalid request: no command given")]
    NoExecCommand,
    #[error("cannot start the pod from a template: {0}")]
    NoTemplate(String),
    #[error("invalid request: {0}")]
    Size(#[from] crate::resources::SizeRefusal),
    #[error("network: no CNI network is configured in {}; install one (`make install` puts the default `hyper` network there) or start the pod without a network", .0.display())]
    NoNetworks(PathBuf),
    #[error("the guest agent ({0}) does not support networks; install a payload built from this version or start the pod without a network")]
    GuestWithoutNetwork(String),
    #[error("volume {name} is in use by pod(s) {}; remove them first", pods.join(", "))]
    VolumeInUse { name: String, pods: Vec<String> },
    #[error(transparent)]
    Payload(#[from] crate::payload::PayloadError),
    #[error("no hypervisor is available: {0}")]
    NoHypervisor(String),
    #[error("{0}")]
    Hypervisor(#[from] hyper_hypervisor::HypervisorError),
    #[error("the guest did not come up: {reason}{console}")]
    Boot { reason: String, console: String },
    #[error("the pod failed: {0}")]
    Agent(#[from] AgentCallError),
    #[error("network: {0}")]
    Network(String),
    #[error("hyperd is stopping; the pod was not started")]
    Stopping,
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunError {
    /// The stable kind of this error and its data, for clients that word
    /// it themselves (`hyper` names its flags); `None` for the rest.
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            Self::NoSuchImage(image) => ErrorKind::NoSuchImage {
                image: image.clone(),
            },
            Self::NoSuchPod(pod) => ErrorKind::NoSuchPod { pod: pod.clone() },
            Self::NotRunning(pod) => ErrorKind::PodNotRunning { pod: pod.clone() },
            Self::Running(pod) => ErrorKind::PodRunning { pod: pod.clone() },
            Self::NameInUse(name) => ErrorKind::NameInUse { name: name.clone() },
            Self::BadName(name) => ErrorKind::BadPodName { name: name.clone() },
            Self::RemoveWithRestart => ErrorKind::RemoveWithRestart,
            Self::ImageAndRootfs => ErrorKind::ImageAndRootfs,
            Self::NoImage => ErrorKind::NoImage,
            Self::NoExecCommand => ErrorKind::NoExecCommand,
            Self::NoTemplate(reason) => ErrorKind::NoTemplate {
                reason: reason.clone(),
            },
            Self::NoNetworks(dir) => ErrorKind::NoNetworks {
                dir: dir.display().to_string(),
            },
            Self::GuestWithoutNetwork(agent) => ErrorKind::GuestWithoutNetwork {
                agent: agent.clone(),
            },
            Self::VolumeInUse { name, pods } => ErrorKind::VolumeInUse {
                name: name.clone(),
                pods: pods.clone(),
            },
            Self::Size(refusal) => ErrorKind::SizeRefused {
                key: refusal.key.clone(),
                value: refusal.value.clone(),
                reason: refusal.reason.clone(),
            },
            _ => return None,
        })
    }
}

/// Why a [`super::Runtime`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("image store: {0}")]
    Images(hyper_images::ImageError),
}

/// Output of the container, in order per stream.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How the caller of [`super::Runtime::run`] feeds stdin and takes output.
/// The output channel is bounded: a slow reader slows the container, through
/// the guest's flow control, instead of filling memory.
pub struct RunIo {
    pub output: mpsc::Sender<Output>,
    pub stdin: Option<mpsc::Receiver<Stdin>>,
    /// New terminal sizes from the client (only used with `tty`).
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// How a pod ends: set once, by its supervisor or by a failed boot.
pub(super) type Ending = Option<Result<RunOutcome, String>>;

/// A started pod: its id, and how it ends.
pub struct Started {
    pub id: String,
    /// Set when the container could not start at all (e.g. 127).
    pub early: Option<RunOutcome>,
    pub outcome: watch::Receiver<Option<Result<RunOutcome, String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Created,
    Running,
    Exited,
}

/// A pod as `pod.json` keeps it. Two kinds share it: a pod of one container
/// (`hyper run`: `container` says what runs, `containers` is empty and not
/// written) and a pod made from a pod file (`containers` lists them, the
/// first being the main one, and `pod_file` is kept for `hyper start`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub state: PodState,
    pub backend: String,
    pub args: Vec<String>,
    /// The image's id, when the pod runs an image.
    #[serde(default)]
    pub image: Option<String>,
    /// The image as the user named it.
    #[serde(default)]
    pub image_name: Option<String>,
    pub rootfs_image: PathBuf,
    pub created_unix: u64,
    pub exit_code: Option<i32>,
    /// Its last run ended because the guest's OOM killer killed a
    /// container's init (Docker's `State.OOMKilled`); cleared when it
    /// starts again.
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(default)]
    pub finished_unix: Option<u64>,
    /// Remove the pod once it exits (`--rm`).
    #[serde(default)]
    pub remove: bool,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub restart_count: u32,
    /// The VM's host process and its start time (from /proc), so a restarted
    /// hyperd never kills a recycled pid.
    pub vm_pid: Option<u32>,
    pub vm_pid_start: Option<u64>,
    /// What a restarted hyperd needs to take the running VM over.
    #[serde(default)]
    pub vm: Option<SavedVm>,
    /// The container as resolved at create (image defaults applied): exec
    /// defaults and restarts after a takeover start from it.
    #[serde(default)]
    pub container: Option<RunRequest>,
    /// The containers of a pod created from a pod file; empty for a pod of
    /// one container (`hyper run`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRecord>,
    /// The pod file such a pod was created from (`hyper start` boots it
    /// again from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_file: Option<PodFile>,
    /// The network of its current VM, as CNI set it up: its addresses, MAC
    /// and ports, and what CNI DEL needs to take it down (also after a
    /// restart of hyperd). `None` once it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<hyper_network::Attachment>,
    /// Its containers' host, named, block and tmpfs mounts, resolved at
    /// create (Docker's `Mounts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<super::volumes::MountRecord>,
    /// Why its last run failed, when it did (Docker's `State.Error`): e.g.
    /// "virtiofsd ended; the VM was stopped".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How its current VM started: from which template, or cold and why
    /// when a template was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<StartedFrom>,
    /// Created to take more containers while it runs (a CRI sandbox): its
    /// VM has the join share (see `pods::join`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joinable: bool,
    /// The containers that joined it, in join order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<super::join::JoinedContainer>,
    /// How many containers ever joined it (numbers their guest ids).
    #[serde(default, skip_serializing_if = "hyper_api::pods::is_default")]
    pub joins: u32,
    /// The capabilities its current VM's hyperstart announced, those this
    /// host knows only: a request joining the running pod (or one after a
    /// takeover, whose reattach announces none) is checked against them.
    /// Empty when unknown (a record from before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_capabilities: Vec<String>,
}

/// How a pod's VM started (`hyper inspect`'s `started`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedFrom {
    /// `cold` or `template`.
    pub mode: crate::config::StartMode,
    /// The template's key, when restored from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Why it was cold-started though `auto` or `template` was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One container of a pod, as `hyper inspect` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    /// Its id inside the VM; the main container's is the pod id.
    pub guest_id: String,
    /// Its first process's id inside the VM.
    pub init_process: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub image_name: Option<String>,
    pub rootfs_image: PathBuf,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub mounts: Vec<PodMount>,
    #[serde(default, skip_serializing_if = "crate::security::Security::is_default")]
    pub security: crate::security::Security,
    pub state: PodState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Its init was killed by the guest's OOM killer.
    #[serde(default)]
    pub oom_killed: bool,
    /// Its cgroup limits in the guest (a pod file's `memory`,
    /// `pids_limit`, `cpus`, `cpu_shares`).
    #[serde(
        default,
        skip_serializing_if = "hyper_protocol::ResourceLimits::is_unlimited"
    )]
    pub limits: hyper_protocol::ResourceLimits,
}

/// A running VM as its backend described it at launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedVm {
    pub spec: VmSpec,
    pub info: VmInfo,
    pub pid_start: Option<u64>,
}

/// Takeovers under way (from [`super::Runtime::begin_restore`]).
pub struct Takeovers {
    pub(super) restored: Restored,
    pub(super) tasks: tokio::task::JoinSet<bool>,
}

impl Takeovers {
    /// Waits for every takeover; what was taken over and what given up.
    pub async fn finish(mut self) -> Restored {
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(true) => self.restored.reattached += 1,
                _ => self.restored.cleaned += 1,
            }
        }
        self.restored
    }
}

/// What a starting hyperd found of an earlier one's pods.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restored {
    /// Running pods taken over, VM and session.
    pub reattached: usize,
    /// Pods marked exited, their VMs stopped and files removed.
    pub cleaned: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub path: PathBuf,
    pub build_id: String,
    pub config_error: Option<String>,
    pub probe: Option<ProbeReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub version: String,
    pub config: String,
    pub hypervisor_setting: String,
    pub hypervisor: Option<String>,
    pub hypervisor_error: Option<String>,
    pub plugin_dir: PathBuf,
    pub plugins: Vec<PluginInfo>,
    pub plugin_failures: Vec<PluginFailure>,
    pub payload: Payload,
    pub payload_error: Option<String>,
    pub state_dir: PathBuf,
    pub pods: usize,
    /// `[vm] start`.
    #[serde(default)]
    pub start: String,
    /// Why pods cannot start from templates on this hyperd, whatever their
    /// layout (`auto` then starts them cold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates_unavailable: Option<String>,
    /// Templates in the store.
    #[serde(default)]
    pub templates: usize,
}

/// Docker's back-off between restarts: 100 ms, doubling, at most 10 s.
pub(super) fn restart_delay(restarts: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << restarts.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(10_000))
}

/// One container as the pod path boots and supervises it, whichever kind of
/// record it comes from. Index 0 is the pod's main container: its guest id
/// is the pod id, its log the pod's log, and `hyper attach` follows it.
#[derive(Debug, Clone)]
pub(super) struct Member {
    pub name: String,
    pub guest_id: String,
    pub init_process: String,
    pub rootfs_image: PathBuf,
    /// The image it runs, by id, to build its rootfs again.
    pub image: Option<String>,
    /// Or the directory it runs.
    pub rootfs_dir: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub mounts: Vec<PodMount>,
    /// Capabilities, seccomp, `--privileged`.
    pub security: crate::security::Security,
    pub tty: bool,
    pub tty_size: Option<TerminalSize>,
    /// Its cgroup limits in the guest.
    pub limits: hyper_protocol::ResourceLimits,
}

/// The vCPUs and memory a pod asks for, each with the name the user gave it.
pub(super) type SizeRequest = ((Option<u32>, &'static str), (Option<u32>, &'static str));

impl PodRecord {
    /// Made from a pod file, rather than a pod of one (`hyper run`).
    pub(super) fn is_pod_file_pod(&self) -> bool {
        !self.containers.is_empty()
    }

    /// The containers to boot, in order; `None` when the record was written
    /// by an older hyperd that did not keep the container of a pod of one.
    pub(super) fn members(&self) -> Option<Vec<Member>> {
        if !self.is_pod_file_pod() {
            let req = self.container.as_ref()?;
            return Some(vec![Member {
                name: String::new(),
                guest_id: self.id.clone(),
                init_process: INIT_PROCESS.into(),
                rootfs_image: self.rootfs_image.clone(),
                image: self.image.clone(),
                rootfs_dir: req.rootfs.clone(),
                args: req.args.clone(),
                env: req.env.clone(),
                workdir: req.workdir.clone(),
                user: req.user.clone(),
                mounts: Vec::new(),
                security: req.security.clone(),
                tty: req.tty,
                tty_size: req.tty_size,
                limits: req.limits,
            }]);
        }
        let from_file = |i: usize| {
            self.pod_file
                .as_ref()
                .and_then(|p| p.containers.get(i))
                .and_then(|c| c.rootfs.clone())
        };
        Some(
            self.containers
                .iter()
                .enumerate()
                .map(|(i, c)| Member {
                    name: c.name.clone(),
                    guest_id: c.guest_id.clone(),
                    init_process: c.init_process.clone(),
                    rootfs_image: c.rootfs_image.clone(),
                    image: c.image.clone(),
                    rootfs_dir: from_file(i),
                    args: c.args.clone(),
                    env: c.env.clone(),
                    workdir: c.workdir.clone(),
                    user: c.user.clone(),
                    mounts: c.mounts.clone(),
                    security: c.security.clone(),
                    tty: false,
                    tty_size: None,
                    limits: c.limits,
                })
                .collect(),
        )
    }

    /// The pod's volumes (only a pod file declares any).
    pub(super) fn volumes(&self) -> &[PodVolume] {
        self.pod_file.as_ref().map_or(&[], |p| p.volumes.as_slice())
    }

    /// The pod file's tmpfs volumes (its host and named ones are in
    /// `mounts`).
    pub(super) fn tmpfs_volumes(&self) -> Vec<&PodVolume> {
        self.volumes().iter().filter(|v| v.is_tmpfs()).collect()
    }

    /// What the pod asks for in vCPUs and memory, under the names the user
    /// gave them.
    pub(super) fn size_request(&self) -> SizeRequest {
        match (&self.pod_file, &self.container) {
            (Some(pod), _) if self.is_pod_file_pod() => {
                ((pod.vcpus, "vcpus ="), (pod.memory_mib, "memory_mib ="))
            }
            (_, Some(req)) => ((req.cpus, "cpus"), (req.memory_mib, "memory_mib")),
            _ => ((None, "cpus"), (None, "memory_mib")),
        }
    }
}

/// Where a container's log lives: the pod's own log for the main container,
/// `containers/NAME` beside it for the others.
pub fn container_log_dir(pod_dir: &Path, index: usize, name: &str) -> PathBuf {
    if index == 0 {
        pod_dir.to_path_buf()
    } else {
        pod_dir.join("containers").join(name)
    }
}

/// The id the guest finds a container's rootfs disk by.
pub(super) fn disk_id(index: usize) -> String {
    format!("hyper-rootfs{index}")
}

/// The pod's exit code: the first non-zero exit code in container order,
/// else 0.
pub(super) fn pod_exit_code(codes: impl IntoIterator<Item = Option<i32>>) -> i32 {
    codes.into_iter().flatten().find(|&c| c != 0).unwrap_or(0)
}

/// Containers that had not exited when their pod ended (a failed start, a
/// VM that died) are exited too, without an exit code of their own.
pub(super) fn containers_end_with_the_pod(record: &mut PodRecord) {
    for c in &mut record.containers {
        c.state = PodState::Exited;
    }
    for c in &mut record.joined {
        c.state = PodState::Exited;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::pods) fn container(name: &str, exit_code: Option<i32>) -> ContainerRecord {
        ContainerRecord {
            name: name.into(),
            guest_id: name.into(),
            init_process: INIT_PROCESS.into(),
            image: None,
            image_name: None,
            rootfs_image: PathBuf::new(),
            args: vec![],
            env: vec![],
            workdir: None,
            user: None,
            mounts: vec![],
            security: Default::default(),
            state: PodState::Exited,
            exit_code,
            oom_killed: false,
            limits: Default::default(),
        }
    }

    #[test]
    fn restart_policies_parse_and_decide_like_docker() {
        assert_eq!(RestartPolicy::parse("no"), Ok(RestartPolicy::No));
        assert_eq!(RestartPolicy::parse("always"), Ok(RestartPolicy::Always));
        let two = RestartPolicy::parse("on-failure:2").unwrap();
        assert_eq!(
            two,
            RestartPolicy::OnFailure {
                max_retries: Some(2)
            }
        );
        assert!(RestartPolicy::parse("on-failure:x").is_err());
        assert!(RestartPolicy::parse("sometimes").is_err());
        assert!(two.should_restart(1, 0) && two.should_restart(1, 1));
        assert!(!two.should_restart(1, 2));
        assert!(!two.should_restart(0, 0));
        assert!(RestartPolicy::Always.should_restart(0, 100));
        assert!(!RestartPolicy::No.should_restart(1, 0));
        assert_eq!(restart_delay(1), Duration::from_millis(100));
        assert_eq!(restart_delay(2), Duration::from_millis(200));
        assert_eq!(restart_delay(30), Duration::from_secs(10));
    }

    #[test]
    fn the_pod_exit_code_is_the_first_failure_in_file_order() {
        assert_eq!(pod_exit_code([Some(0), Some(0)]), 0);
        assert_eq!(pod_exit_code([Some(0), None, Some(3), Some(4)]), 3);
        assert_eq!(pod_exit_code([Some(137)]), 137);
    }

    #[test]
    fn containers_end_with_their_pod() {
        let json = r#"{"id":"abc","state":"running","backend":"qemu","args":["sh"],
            "rootfs_image":"/x","created_unix":1,"exit_code":null,"vm_pid":null,"vm_pid_start":null}"#;
        let mut r: PodRecord = serde_json::from_str(json).unwrap();
        r.containers = vec![container("a", Some(0)), container("b", None)];
        r.containers[1].state = PodState::Running;
        containers_end_with_the_pod(&mut r);
        assert!(r.containers.iter().all(|c| c.state == PodState::Exited));
        assert_eq!(r.containers[0].exit_code, Some(0));
        assert_eq!(r.containers[1].exit_code, None);
    }

    #[test]
    fn the_main_container_logs_to_the_pod_log() {
        let dir = Path::new("/s/pods/p");
        assert_eq!(container_log_dir(dir, 0, "a"), dir);
        assert_eq!(container_log_dir(dir, 1, "b"), dir.join("containers/b"));
        assert_eq!(disk_id(0), "hyper-rootfs0");
    }

    #[test]
    fn old_records_without_containers_still_load() {
        let json = r#"{"id":"abc","state":"exited","backend":"qemu","args":["sh"],
            "rootfs_image":"/x","created_unix":1,"exit_code":0,"vm_pid":null,"vm_pid_start":null}"#;
        let r: PodRecord = serde_json::from_str(json).unwrap();
        assert!(r.containers.is_empty());
        // No container kept: it cannot be booted again.
        assert!(r.members().is_none());
        let out = serde_json::to_string(&r).unwrap();
        assert!(!out.contains("containers"));
    }

    /// `pod.json` of a running pod of one container, as the hyperd before
    /// the one pod model wrote it: a takeover after an upgrade reads it.
    pub(in crate::pods) const OLD_POD_OF_ONE: &str = r#"{
  "id": "0a1b2c3d4e5f",
  "name": "web",
  "labels": {"tier": "front"},
  "state": "running",
  "backend": "fake",
  "args": ["sleep", "600"],
  "image": null,
  "image_name": null,
  "rootfs_image": "/state/rootfs/abc.erofs",
  "created_unix": 1765000000,
  "exit_code": null,
  "finished_unix": null,
  "remove": false,
  "restart": {"policy": "on_failure", "max_retries": 2},
  "restart_count": 1,
  "vm_pid": 4242,
  "vm_pid_start": 99,
  "vm": {
    "spec": {"id": "0a1b2c3d4e5f-1", "kernel": "/k", "initrd": "/i", "cmdline": "quiet",
             "vcpus": 1, "memory_mib": 256,
             "disks": [{"path": "/state/rootfs/abc.erofs", "read_only": true, "id": "hyper-rootfs0"}],
             "console_log": "/state/pods/0a1b2c3d4e5f/console.log",
             "run_dir": "/state/pods/0a1b2c3d4e5f/vm"},
    "info": {"id": "0a1b2c3d4e5f-1", "agent_channel": {"unix_socket": "/state/pods/0a1b2c3d4e5f/vm/agent.sock"}, "pid": 4242},
    "pid_start": 99
  },
  "container": {"rootfs": "/srv/rootfs", "image": null, "entrypoint": null, "args": ["sleep", "600"],
                "env": ["PATH=/bin"], "workdir": "/", "user": null, "cpus": 2, "memory_mib": null,
                "remove": false, "interactive": true, "name": "web", "labels": {},
                "restart": {"policy": "on_failure", "max_retries": 2}, "tty": true,
                "tty_size": {"rows": 30, "cols": 100}}
}"#;

    /// `pod.json` of a pod made from a pod file, as the hyperd before the
    /// one pod model wrote it.
    pub(in crate::pods) const OLD_POD_FILE_POD: &str = r#"{
  "id": "aa11bb22cc33",
  "name": "pair",
  "labels": {},
  "state": "running",
  "backend": "fake",
  "args": ["sleep", "600"],
  "image": null,
  "image_name": null,
  "rootfs_image": "/state/rootfs/a.erofs",
  "created_unix": 1765000000,
  "exit_code": null,
  "finished_unix": null,
  "remove": false,
  "restart": {"policy": "no"},
  "restart_count": 0,
  "vm_pid": null,
  "vm_pid_start": null,
  "vm": null,
  "container": {"rootfs": "/srv/a", "image": null, "entrypoint": null, "args": ["sleep", "600"],
                "env": [], "workdir": null, "user": null, "cpus": null, "memory_mib": null,
                "remove": false, "interactive": false, "name": null, "labels": {},
                "restart": {"policy": "no"}, "tty": false, "tty_size": null},
  "containers": [
    {"name": "a", "guest_id": "aa11bb22cc33", "init_process": "init", "image": null, "image_name": null,
     "rootfs_image": "/state/rootfs/a.erofs", "args": ["sleep", "600"], "env": [], "workdir": null,
     "user": null, "mounts": [{"volume": "shared", "path": "/data", "readonly": false}],
     "state": "running", "exit_code": null},
    {"name": "b", "guest_id": "aa11bb22cc33-b", "init_process": "init-b", "image": null, "image_name": null,
     "rootfs_image": "/state/rootfs/b.erofs", "args": ["true"], "env": [], "workdir": null,
     "user": null, "mounts": [], "state": "exited", "exit_code": 0}
  ],
  "pod_file": {"name": "pair", "vcpus": 2, "memory_mib": 512, "labels": {},
               "volume": [{"name": "shared", "size_mib": 16}],
               "container": [
                 {"name": "a", "image": null, "rootfs": "/srv/a", "entrypoint": null, "command": ["sleep", "600"],
                  "env": [], "workdir": null, "user": null, "mounts": [{"volume": "shared", "path": "/data", "readonly": false}]},
                 {"name": "b", "image": null, "rootfs": "/srv/b", "entrypoint": null, "command": ["true"],
                  "env": [], "workdir": null, "user": null, "mounts": []}
               ]}
}"#;

    #[test]
    fn both_kinds_of_old_records_load_and_give_their_containers() {
        let one: PodRecord = serde_json::from_str(OLD_POD_OF_ONE).unwrap();
        assert!(!one.is_pod_file_pod());
        let members = one.members().unwrap();
        assert_eq!(members.len(), 1);
        let main = &members[0];
        assert_eq!(
            (main.guest_id.as_str(), main.init_process.as_str()),
            ("0a1b2c3d4e5f", "init")
        );
        assert!(main.tty);
        assert_eq!(main.rootfs_dir.as_deref(), Some(Path::new("/srv/rootfs")));
        assert_eq!(
            one.size_request(),
            ((Some(2), "cpus"), (None, "memory_mib"))
        );
        assert!(one.volumes().is_empty());

        let pod: PodRecord = serde_json::from_str(OLD_POD_FILE_POD).unwrap();
        assert!(pod.is_pod_file_pod());
        let members = pod.members().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[1].guest_id, "aa11bb22cc33-b");
        assert_eq!(members[1].rootfs_dir.as_deref(), Some(Path::new("/srv/b")));
        assert_eq!(members[0].mounts.len(), 1);
        assert_eq!(pod.volumes().len(), 1);
        assert_eq!(
            pod.size_request(),
            ((Some(2), "vcpus ="), (Some(512), "memory_mib ="))
        );
        // Written back, each keeps its shape.
        let again = serde_json::to_value(&one).unwrap();
        assert!(again.get("containers").is_none() && again.get("pod_file").is_none());
        let again = serde_json::to_value(&pod).unwrap();
        assert_eq!(again["containers"].as_array().map(Vec::len), Some(2));
    }
}
