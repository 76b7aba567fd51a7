//! Pods: one VM each, running one container, from launch to cleanup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_hypervisor::adopt::process_start_time;
use hyper_hypervisor::{DiskSpec, Hypervisor, ProbeReport, Vm, VmInfo, VmSpec};
use hyper_protocol::{
    AgentErrorKind, ContainerSpec, PodSpec, ProcessSpec, Request, RootfsSpec, TerminalSize,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};

use crate::agent::{AgentCallError, AgentClient, ProcessStreams, StreamChunk, StreamReceiver};
use crate::config::{Config, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::logs::{LogWriter, Rotation, Stream as LogStream};
use crate::payload::Payload;
use crate::plugins::{self, Backend, PluginFailure};
use crate::process::{self, Overrides};
use crate::rootfs::{self, RootfsStore};
use hyper_images::{Image, ImageStore, PullOptions};

mod attach;
mod multi;
pub use attach::Stdin;
use attach::StdinSource;
pub use multi::{container_log_dir, ContainerRecord};

/// Docker's exit code for "the runtime failed, not the container".
pub const RUNTIME_FAILURE_EXIT: i32 = 125;
const ROOTFS_DISK_ID: &str = "hyper-rootfs0";
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connecting to a running guest and its answer to the resync. Xen's PV
/// console moves the 64 KiB resync pad in 1 KiB ring turns: ≈14 s under TCG.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A directory to run as the root filesystem; or else `image`.
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// An image in hyperd's store (name, `name:tag`, or id).
    #[serde(default)]
    pub image: Option<String>,
    /// `--entrypoint`: replaces the image's; `Some(vec![])` clears it.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The command, or with an image the arguments replacing its Cmd.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub remove: bool,
    /// Whether the client sends stdin; without it stdin is empty.
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `-t`: the process runs on a terminal (all output on stdout).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (24x80 without it).
    #[serde(default)]
    pub tty_size: Option<TerminalSize>,
    /// Capabilities, seccomp, `--privileged` (see crate::security).
    #[serde(default, skip_serializing_if = "crate::security::Security::is_default")]
    pub security: crate::security::Security,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Image(#[from] hyper_images::ImageError),
    #[error(
        "no such image: {0}; pull it first with `hyper pull {0}` (`hyper run` does that for you)"
    )]
    NoSuchImage(String),
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

/// The process id of a container's first process.
const INIT_PROCESS: &str = "init";

/// A pod whose VM runs now.
struct LivePod {
    vm: Arc<dyn Vm>,
    /// hyperstart's session, once it is up.
    agent: Mutex<Option<AgentClient>>,
    /// What outlives this VM if the pod's policy restarts it.
    links: PodLinks,
    outcome: watch::Receiver<Option<Result<RunOutcome, String>>>,
    next_exec: AtomicU64,
    /// The container's env, workdir and user: `exec` starts from them.
    container: RunRequest,
    /// Set by stop/kill before they take the VM down: its death is then the
    /// expected end, not a failure.
    stop_requested: AtomicBool,
}

/// What outlives each VM of a pod restarted by its policy: how it ends, the
/// output attached clients follow, and where their terminal sizes go.
#[derive(Clone)]
struct PodLinks {
    outcome_tx: Arc<watch::Sender<Option<Result<RunOutcome, String>>>>,
    /// The main container's output as it comes, for `hyper attach`.
    attach: broadcast::Sender<Output>,
    terminal: TerminalLink,
    /// The main process's stdin, kept open with `-i`.
    stdin: attach::StdinHub,
}

impl PodLinks {
    fn new() -> Self {
        Self {
            outcome_tx: Arc::new(watch::channel(None).0),
            attach: broadcast::channel(attach::BACKLOG_CHUNKS).0,
            terminal: TerminalLink::default(),
            stdin: attach::StdinHub::new(),
        }
    }

    fn fail(&self, err: &RunError) {
        self.outcome_tx.send_replace(Some(Err(err.to_string())));
    }
}

impl LivePod {
    fn new(vm: Arc<dyn Vm>, links: &PodLinks, container: RunRequest, next_exec: u64) -> Self {
        Self {
            vm,
            agent: Mutex::new(None),
            outcome: links.outcome_tx.subscribe(),
            links: links.clone(),
            next_exec: AtomicU64::new(next_exec),
            container,
            stop_requested: AtomicBool::new(false),
        }
    }

    /// Records hyperstart's session once it is up; terminal sizes go to it
    /// from now on.
    fn set_agent(&self, agent: &AgentClient) {
        *lock(&self.agent) = Some(agent.clone());
        *lock(&self.links.terminal.session) = Some(agent.clone());
    }
}

/// Where the terminal sizes of a pod's clients go: the session of its
/// current VM, and the last size, which a process restarted by the policy
/// starts with.
#[derive(Clone, Default)]
struct TerminalLink {
    session: Arc<Mutex<Option<AgentClient>>>,
    last_size: Arc<Mutex<Option<TerminalSize>>>,
}

impl TerminalLink {
    fn to(agent: &AgentClient) -> Self {
        let link = Self::default();
        *lock(&link.session) = Some(agent.clone());
        link
    }
}

/// A started pod: its id, and how it ends.
pub struct Started {
    pub id: String,
    /// Set when the container could not start at all (e.g. 127).
    pub early: Option<RunOutcome>,
    pub outcome: watch::Receiver<Option<Result<RunOutcome, String>>>,
}

enum VmStart {
    Running(Box<RunningVm>),
    Exited(RunOutcome),
}

struct RunningVm {
    live: Arc<LivePod>,
    record: PodRecord,
    agent: AgentClient,
    streams: ProcessStreams,
}

/// Docker's back-off between restarts: 100 ms, doubling, at most 10 s.
fn restart_delay(restarts: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << restarts.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(10_000))
}

/// When a pod's container is started again after it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum RestartPolicy {
    #[default]
    No,
    OnFailure {
        /// Restarts allowed; unlimited when absent.
        max_retries: Option<u32>,
    },
    Always,
}

impl RestartPolicy {
    /// `no`, `always`, `on-failure` or `on-failure:N`, as Docker spells them.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "no" => Ok(Self::No),
            None if text == "always" => Ok(Self::Always),
            None if text == "on-failure" => Ok(Self::OnFailure { max_retries: None }),
            Some(("on-failure", n)) => n
                .parse()
                .map(|n| Self::OnFailure {
                    max_retries: Some(n),
                })
                .map_err(|_| format!("--restart {text}: N in on-failure:N must be a number")),
            _ => Err(format!(
                "--restart {text}: use no, always, on-failure or on-failure:N"
            )),
        }
    }

    pub fn should_restart(self, exit_code: i32, restarts_so_far: u32) -> bool {
        match self {
            Self::No => false,
            Self::Always => true,
            Self::OnFailure { max_retries } => {
                exit_code != 0 && max_retries.is_none_or(|max| restarts_so_far < max)
            }
        }
    }
}

enum Booted {
    Running {
        agent: AgentClient,
        streams: ProcessStreams,
    },
    Exited(RunOutcome),
}

/// Why hyperd cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Select(#[from] plugins::SelectError),
    #[error("image store: {0}")]
    Images(hyper_images::ImageError),
}

/// A process to run in a running container (`hyper exec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub interactive: bool,
    /// A container of a several-container pod, by name; else the main one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `-t`: the process runs on a terminal (all output on stdout).
    #[serde(default)]
    pub tty: bool,
    /// The terminal's size at start (24x80 without it).
    #[serde(default)]
    pub tty_size: Option<TerminalSize>,
    /// `--privileged`: every capability and no seccomp filter for this
    /// process.
    #[serde(default)]
    pub privileged: bool,
}

/// Output of the container, in order per stream.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How the caller of [`Runtime::run`] feeds stdin and takes output. The
/// output channel is bounded: a slow reader slows the container, through
/// the guest's flow control, instead of filling memory.
pub struct RunIo {
    pub output: mpsc::Sender<Output>,
    pub stdin: Option<mpsc::Receiver<Stdin>>,
    /// New terminal sizes from the client (only used with `tty`).
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    pub pod: String,
    pub exit_code: i32,
    /// Why the process did not run, when it did not (e.g. command not found).
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    Created,
    Running,
    Exited,
}

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
    pub pod_file: Option<crate::podfile::PodFile>,
}

/// A running VM as its backend described it at launch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedVm {
    pub spec: VmSpec,
    pub info: VmInfo,
    pub pid_start: Option<u64>,
}

/// What a starting hyperd found of an earlier one's pods.
/// Takeovers under way (from [`Runtime::begin_restore`]).
pub struct Takeovers {
    restored: Restored,
    tasks: tokio::task::JoinSet<bool>,
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
}

pub struct Runtime {
    config: Config,
    payload: Payload,
    backends: Vec<Backend>,
    plugin_failures: Vec<PluginFailure>,
    hypervisor: Result<Arc<dyn Hypervisor>, String>,
    rootfs: RootfsStore,
    images: ImageStore,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    /// Pods whose VMs run now.
    live: Mutex<BTreeMap<String, Arc<LivePod>>>,
    /// Set once hyperd stops: no new pods, and launches in flight are undone.
    stopping: AtomicBool,
    launches_in_flight: AtomicUsize,
    /// Pods being taken over after a restart: listed, not yet usable.
    recovering: Mutex<std::collections::BTreeSet<String>>,
}

impl Runtime {
    /// Loads the plugins and picks the hypervisor. An unknown backend name or
    /// a refused backend table is a configuration error; a backend that
    /// cannot run here is reported by `info` and by every `run`.
    pub async fn new(config: Config) -> Result<Self, StartError> {
        let (backends, plugin_failures) = plugins::discover(&config.runtime.plugin_dir, &config);
        for failure in &plugin_failures {
            tracing::warn!("plugin {}: {}", failure.path.display(), failure.error);
        }
        let hypervisor = match plugins::select(&backends, &config).await {
            Ok((hv, _)) => Ok(hv),
            Err(e @ plugins::SelectError::NoneUsable { .. }) => Err(e.to_string()),
            Err(e) => return Err(StartError::Select(e)),
        };
        match &hypervisor {
            Ok(hv) => tracing::info!("hypervisor: {}", hv.name()),
            Err(e) => tracing::warn!("{e}"),
        }
        let rootfs = RootfsStore::new(&config.runtime.state_dir);
        let images = ImageStore::open(&config.runtime.state_dir.join("images"))
            .map_err(StartError::Images)?
            .with_limits(config.images.limits());
        Ok(Self {
            images,
            payload: Payload::from_config(&config),
            config,
            backends,
            plugin_failures,
            hypervisor,
            rootfs,
            pods: Mutex::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            launches_in_flight: AtomicUsize::new(0),
            recovering: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    fn live_pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<LivePod>>> {
        lock(&self.live)
    }

    /// Stops taking work. Running pods keep running for the next hyperd to
    /// take over, unless `[runtime] stop_pods_on_exit` is set or the backend
    /// cannot take a VM over: then their VMs are stopped, and their `run`
    /// calls finish and clean up as for any VM that died.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // A VM being launched is not in `live` yet: wait for those launches
        // to land (each is bounded by the backend's own timeouts).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.launches_in_flight.load(Ordering::SeqCst) > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let can_recover = self
            .hypervisor
            .as_ref()
            .is_ok_and(|hv| hv.capabilities().recover);
        let keep_running = can_recover && !self.config.runtime.stop_pods_on_exit;
        // A pod still booting has no session to take over: it goes either
        // way.
        let vms: Vec<(String, Arc<dyn Vm>)> = self
            .live_pods()
            .iter()
            .filter(|(_, pod)| !keep_running || lock(&pod.agent).is_none())
            .map(|(id, pod)| (id.clone(), pod.vm.clone()))
            .collect();
        if keep_running {
            let n = self.live_pods().len().saturating_sub(vms.len());
            if n > 0 {
                tracing::info!("leaving {n} pod(s) running for the next hyperd");
            }
        }
        for (id, vm) in vms {
            tracing::info!(pod = %id, "stopping the pod's VM");
            if let Err(e) = vm.kill().await {
                tracing::warn!(pod = %id, "kill: {e}");
            }
            let _ = vm.wait().await;
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PodRecord>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists a new pod, unless another pod holds its name already (checked
    /// and listed under one lock); on a conflict its fresh directory goes.
    pub(super) fn claim_new(&self, record: &PodRecord, pod_dir: &Path) -> Result<(), RunError> {
        let mut pods = self.pods();
        if let Some(name) = &record.name {
            if pods.values().any(|p| p.name.as_deref() == Some(name)) {
                drop(pods);
                let _ = std::fs::remove_dir_all(pod_dir);
                return Err(RunError::Conflict(format!(
                    "the name {name} is already used by a pod; remove it first (`hyper rm {name}`) or pick another --name"
                )));
            }
        }
        pods.insert(record.id.clone(), record.clone());
        Ok(())
    }

    fn pods_dir(&self) -> PathBuf {
        self.config.runtime.state_dir.join("pods")
    }

    pub fn list(&self) -> Vec<PodRecord> {
        self.pods().values().cloned().collect()
    }

    /// Plugins, their probe verdicts, and the payload in use.
    pub async fn info(&self) -> Info {
        let mut plugins = Vec::new();
        for b in &self.backends {
            let (config_error, probe) = match &b.hypervisor {
                Ok(hv) => (None, Some(hv.probe().await)),
                Err(e) => (Some(e.clone()), None),
            };
            plugins.push(PluginInfo {
                name: b.name.clone(),
                path: b.path.clone(),
                build_id: b.build_id.clone(),
                config_error,
                probe,
            });
        }
        Info {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config: self.config.source_name(),
            hypervisor_setting: self.config.runtime.hypervisor.clone(),
            hypervisor: self.hypervisor.as_ref().ok().map(|h| h.name().to_string()),
            hypervisor_error: self.hypervisor.as_ref().err().cloned(),
            plugin_dir: self.config.runtime.plugin_dir.clone(),
            plugins,
            plugin_failures: self.plugin_failures.clone(),
            payload: self.payload.clone(),
            payload_error: self
                .payload
                .check(&self.config)
                .err()
                .map(|e| e.to_string()),
            state_dir: self.config.runtime.state_dir.clone(),
            pods: self.pods().len(),
        }
    }

    /// Takes over the pods an earlier hyperd left running (VM and
    /// hyperstart session), and marks the rest exited, stopping their VMs
    /// and removing their sockets and run directories.
    pub async fn restore(self: &Arc<Self>) -> std::io::Result<Restored> {
        Ok(self.begin_restore()?.finish().await)
    }

    /// Whether pod `id` is being taken over after a restart (listed as
    /// `recovering`; verbs other than reads wait for the takeover).
    pub fn is_recovering(&self, id: &str) -> bool {
        lock(&self.recovering).contains(id)
    }

    /// The first, quick half of [`Runtime::restore`]: reads the records,
    /// lists the pods to take over as `recovering`, and starts their
    /// takeovers. hyperd serves its API while they run.
    pub fn begin_restore(self: &Arc<Self>) -> std::io::Result<Takeovers> {
        let dir = self.pods_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Takeovers {
                    restored: Restored::default(),
                    tasks: tokio::task::JoinSet::new(),
                })
            }
            Err(e) => return Err(e),
        };
        let mut restored = Restored::default();
        let mut running = Vec::new();
        for entry in entries.flatten() {
            let pod_dir = entry.path();
            // A corrupt record is set aside, never a reason to delete.
            let record = match crate::quarantine::read_record::<PodRecord>(&pod_dir) {
                crate::quarantine::Found::Record(r) => r,
                crate::quarantine::Found::Removed => {
                    restored.cleaned += 1;
                    continue;
                }
                crate::quarantine::Found::Kept { .. } => continue,
            };
            if record.state == PodState::Exited {
                let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
                self.pods().insert(record.id.clone(), record);
                continue;
            }
            running.push(record);
        }
        // Taken over side by side: a guest slow to answer its resync (tens
        // of seconds on an emulated console) does not hold the others up.
        let mut takeovers = tokio::task::JoinSet::new();
        for record in running {
            lock(&self.recovering).insert(record.id.clone());
            self.pods().insert(record.id.clone(), record.clone());
            let rt = self.clone();
            takeovers.spawn(async move {
                let id = record.id.clone();
                let ok = match rt.reattach(record.clone()).await {
                    Ok(()) => true,
                    Err(reason) => {
                        tracing::info!(pod = %record.id, "cannot take the pod over: {reason}");
                        rt.give_up(record);
                        false
                    }
                };
                lock(&rt.recovering).remove(&id);
                ok
            });
        }
        Ok(Takeovers {
            restored,
            tasks: takeovers,
        })
    }

    /// Marks a pod left running by an earlier hyperd exited, and kills its
    /// VM process if it still runs.
    fn give_up(&self, mut record: PodRecord) {
        let pod_dir = self.pods_dir().join(&record.id);
        if let (Some(pid), Some(start)) = (record.vm_pid, record.vm_pid_start) {
            if process_start_time(pid) == Some(start) {
                tracing::info!(pod = %record.id, pid, "killing the VM of a pod left by a previous hyperd");
                // SAFETY: plain kill(2) on a pid whose start time matches
                // the one recorded at launch, so it is still that VM's
                // process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        record.state = PodState::Exited;
        record.vm = None;
        multi::containers_end_with_the_pod(&mut record);
        let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
        let _ = write_record(&pod_dir, &record);
        self.pods().insert(record.id.clone(), record);
    }

    /// Takes one running pod over: its VM through the backend, its
    /// hyperstart session through a resync, then supervises it as if this
    /// hyperd had started it. On failure nothing is left tracked.
    async fn reattach(self: &Arc<Self>, record: PodRecord) -> Result<(), String> {
        let hypervisor = self.hypervisor.clone()?;
        let (Some(saved), Some(container)) = (record.vm.clone(), record.container.clone()) else {
            return Err("it was saved without what a takeover needs".into());
        };
        if hypervisor.name() != record.backend {
            return Err(format!(
                "it runs on {}, this hyperd on {}",
                record.backend,
                hypervisor.name()
            ));
        }
        let vm: Arc<dyn Vm> = hypervisor
            .recover(saved.spec.clone(), saved.info.clone(), saved.pid_start)
            .await
            .map_err(|e| e.to_string())?
            .into();
        let hyper_hypervisor::AgentChannel::UnixSocket(channel) = vm.info().agent_channel;
        let (agent, processes) = match AgentClient::reattach(&channel, REATTACH_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                let _ = vm.kill().await;
                let _ = vm.wait().await;
                return Err(format!("hyperstart: {e}"));
            }
        };
        let next_exec = processes
            .iter()
            .filter_map(|p| p.process.strip_prefix("exec-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let live = LivePod::new(vm.clone(), &PodLinks::new(), container.clone(), next_exec);
        live.set_agent(&agent);
        let live = Arc::new(live);
        self.live_pods().insert(record.id.clone(), live.clone());
        self.pods().insert(record.id.clone(), record.clone());
        // The first process of each container, by its index in the record
        // (a pod of one container: index 0, the pod itself).
        let firsts: Vec<(String, String)> = if record.containers.is_empty() {
            vec![(record.id.clone(), INIT_PROCESS.to_string())]
        } else {
            record
                .containers
                .iter()
                .map(|c| (c.guest_id.clone(), c.init_process.clone()))
                .collect()
        };
        let mut inits = Vec::new();
        for p in &processes {
            let streams = agent.adopt_process(p);
            let first = firsts
                .iter()
                .position(|(c, process)| *c == p.container && *process == p.process);
            if let Some(index) = first {
                inits.push((index, streams));
                continue;
            }
            // An exec whose client is gone: drain it so its output never
            // stalls the guest, until it exits.
            let (agent, vm) = (agent.clone(), vm.clone());
            tokio::spawn(async move {
                let _ = drive_process(&agent, vm, streams, ProcessIo::default()).await;
            });
        }
        tracing::info!(pod = %record.id, processes = processes.len(), "took the pod over");
        if !record.containers.is_empty() {
            let mut record = record;
            for (i, c) in record.containers.iter_mut().enumerate() {
                if c.state == PodState::Running && !inits.iter().any(|(j, _)| *j == i) {
                    // It ended while no hyperd listened and hyperstart no
                    // longer remembers how.
                    c.state = PodState::Exited;
                    c.exit_code = Some(RUNTIME_FAILURE_EXIT);
                }
            }
            let rt = self.clone();
            tokio::spawn(async move { rt.supervise_pod(live, record, agent, inits).await });
            return Ok(());
        }
        match inits.pop() {
            Some((_, streams)) => {
                let rt = self.clone();
                tokio::spawn(async move {
                    rt.supervise(live, record, agent, streams, None, container, saved.spec)
                        .await
                });
            }
            None => {
                self.teardown(
                    &live,
                    record,
                    Err("the container's exit status was lost while hyperd was down".into()),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Runs one container in a new VM, attached to `io`, and returns its
    /// exit status. The VM is shut down and its files removed before this
    /// returns.
    pub async fn run(self: &Arc<Self>, req: RunRequest, io: RunIo) -> Result<RunOutcome, RunError> {
        let mut started = self.create(req, Some(io)).await?;
        if let Some(outcome) = started.early {
            return Ok(outcome);
        }
        let outcome = started
            .outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RunError::Failed("the pod's supervisor ended without a status".into()))?
            .clone();
        outcome
            .unwrap_or_else(|| Err("no status".into()))
            .map_err(RunError::Failed)
    }

    /// Starts a pod: boots its VM and starts its container, then leaves a
    /// supervisor task to carry its output to the log (and to `io`) and to
    /// clean up when it exits. Returns once the container runs, or with
    /// `early` set when it could not start (command not found: 127).
    pub async fn create(
        self: &Arc<Self>,
        req: RunRequest,
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        let size = self.vm_size(&req)?;
        check_env_and_workdir(&req.env, req.workdir.as_deref())?;
        crate::security::check(&req.security)?;
        let hypervisor = self.ready_to_launch()?;
        let (image, process, image_id) = self.resolve_source(&req).await?;
        let req = RunRequest {
            args: process.args,
            env: process.env,
            workdir: process.workdir,
            user: process.user,
            ..req
        };
        crate::agent::check_c_strings(
            &req.args,
            &req.env,
            req.workdir.as_deref(),
            req.user.as_deref(),
        )
        .map_err(RunError::Invalid)?;
        if let Some(w) = &req.workdir {
            if !w.starts_with('/') {
                return Err(RunError::Invalid(format!(
                    "the image's working directory {w} is not an absolute path; pass -w"
                )));
            }
        }

        if req.remove && req.restart != RestartPolicy::No {
            return Err(RunError::Invalid(
                "--rm and --restart do not go together: a pod removed when it exits cannot be restarted"
                    .into(),
            ));
        }
        if let Some(name) = &req.name {
            check_name(name)?;
            if self
                .pods()
                .values()
                .any(|p| p.name.as_deref() == Some(name))
            {
                return Err(RunError::Conflict(format!(
                    "the name {name} is already used by a pod; remove it first (`hyper rm {name}`) or pick another --name"
                )));
            }
        }

        let id = new_id();
        let pod_dir = self.pods_dir().join(&id);
        let run_dir = pod_dir.join("vm");
        let state_err = |source| RunError::State {
            path: pod_dir.clone(),
            source,
        };
        crate::private::create_private_dir(&run_dir).map_err(state_err)?;
        let record = PodRecord {
            id: id.clone(),
            name: req.name.clone(),
            labels: req.labels.clone(),
            state: PodState::Created,
            backend: hypervisor.name().to_string(),
            args: req.args.clone(),
            image: image_id,
            image_name: req.image.clone(),
            rootfs_image: image.clone(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            exit_code: None,
            finished_unix: None,
            vm_pid: None,
            vm_pid_start: None,
            vm: None,
            container: Some(req.clone()),
            pod_file: None,
            remove: req.remove,
            restart: req.restart,
            restart_count: 0,
            containers: Vec::new(),
        };
        // The name is claimed and the pod listed under one lock: of two
        // concurrent runs of one --name, the second gets the conflict.
        self.claim_new(&record, &pod_dir)?;
        if let Err(e) = write_record(&pod_dir, &record) {
            self.pods().remove(&id);
            return Err(state_err(e));
        }
        let spec = self.vm_spec(&id, Self::rootfs_disk(image), size);
        self.launch(hypervisor, spec, req, record, io).await
    }

    /// The hypervisor to launch a VM with, once hyperd takes work and the
    /// payload is in place.
    fn ready_to_launch(&self) -> Result<Arc<dyn Hypervisor>, RunError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RunError::Stopping);
        }
        let hypervisor = self.hypervisor.clone().map_err(RunError::NoHypervisor)?;
        self.payload.check(&self.config)?;
        Ok(hypervisor)
    }

    /// The vCPUs and memory a pod of one container asks for, or the
    /// configured defaults.
    fn vm_size(&self, req: &RunRequest) -> Result<(u32, u32), RunError> {
        self.checked_vm_size((req.cpus, "--cpus"), (req.memory_mib, "--memory"))
    }

    /// vCPUs and memory in MiB, each asked for (under the name the user
    /// gave it) or the configured default, within what a VM may have.
    fn checked_vm_size(
        &self,
        (vcpus, vcpus_key): (Option<u32>, &str),
        (memory_mib, memory_key): (Option<u32>, &str),
    ) -> Result<(u32, u32), RunError> {
        let vcpus = vcpus.unwrap_or(self.config.vm.vcpus);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(RunError::Invalid(format!(
                "{vcpus_key} {vcpus}: use 1 to {MAX_VCPUS}"
            )));
        }
        let memory_mib = memory_mib.unwrap_or(self.config.vm.memory_mib);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(RunError::Invalid(format!(
                "{memory_key} {memory_mib}: use at least {MIN_MEMORY_MIB} MiB"
            )));
        }
        Ok((vcpus, memory_mib))
    }

    /// The VM of a pod: the payload, `disks`, and its files in the pod's
    /// directory.
    fn vm_spec(&self, id: &str, disks: Vec<DiskSpec>, (vcpus, memory_mib): (u32, u32)) -> VmSpec {
        let pod_dir = self.pods_dir().join(id);
        VmSpec {
            id: id.to_string(),
            kernel: self.payload.kernel.clone(),
            initrd: self.payload.initrd.clone(),
            cmdline: self.payload.cmdline.clone(),
            vcpus,
            memory_mib,
            disks,
            console_log: pod_dir.join("console.log"),
            run_dir: pod_dir.join("vm"),
        }
    }

    /// The rootfs disk of a pod of one container.
    fn rootfs_disk(image: PathBuf) -> Vec<DiskSpec> {
        vec![DiskSpec {
            path: image,
            read_only: true,
            id: ROOTFS_DISK_ID.into(),
        }]
    }

    /// Boots a recorded pod of one container and leaves it supervised.
    async fn launch(
        self: &Arc<Self>,
        hypervisor: Arc<dyn Hypervisor>,
        spec: VmSpec,
        req: RunRequest,
        record: PodRecord,
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        let id = record.id.clone();
        let links = PodLinks::new();
        let outcome = links.outcome_tx.subscribe();
        match self
            .start_vm(hypervisor, spec.clone(), &req, record, links)
            .await?
        {
            VmStart::Running(running) => {
                let RunningVm {
                    live,
                    record,
                    agent,
                    streams,
                } = *running;
                let rt = self.clone();
                tokio::spawn(async move {
                    rt.supervise(live, record, agent, streams, io, req, spec)
                        .await
                });
                Ok(Started {
                    id,
                    early: None,
                    outcome,
                })
            }
            VmStart::Exited(outcome_now) => Ok(Started {
                id,
                early: Some(outcome_now),
                outcome,
            }),
        }
    }

    /// Launches the pod's VM, connects to hyperstart and starts the
    /// container. On any failure the VM is gone and the record says so
    /// before this returns.
    async fn start_vm(
        self: &Arc<Self>,
        hypervisor: Arc<dyn Hypervisor>,
        spec: VmSpec,
        req: &RunRequest,
        record: PodRecord,
        links: PodLinks,
    ) -> Result<VmStart, RunError> {
        let id = record.id.clone();
        let pod_dir = self.pods_dir().join(&id);
        let (vm, live, record) = self
            .launch_vm(hypervisor, spec, req.clone(), record, links)
            .await?;
        match self.boot(&id, req, vm.clone(), &pod_dir).await {
            Ok(Booted::Running { agent, streams }) => {
                live.set_agent(&agent);
                Ok(VmStart::Running(Box::new(RunningVm {
                    live,
                    record,
                    agent,
                    streams,
                })))
            }
            Ok(Booted::Exited(outcome)) => {
                self.teardown(&live, record, Ok(outcome.clone())).await;
                Ok(VmStart::Exited(outcome))
            }
            Err(err) => {
                self.teardown(&live, record, Err(err.to_string())).await;
                Err(err)
            }
        }
    }

    /// Launches a pod's VM and tracks it as live, its record saying how to
    /// take it over. On failure the record says so and nothing runs.
    /// `container` is the one `exec` starts from.
    async fn launch_vm(
        &self,
        hypervisor: Arc<dyn Hypervisor>,
        spec: VmSpec,
        container: RunRequest,
        mut record: PodRecord,
        links: PodLinks,
    ) -> Result<(Arc<dyn Vm>, Arc<LivePod>, PodRecord), RunError> {
        let id = record.id.clone();
        let pod_dir = self.pods_dir().join(&id);
        if let Err(source) = crate::private::create_private_dir(&spec.run_dir) {
            let err = RunError::State {
                path: spec.run_dir.clone(),
                source,
            };
            self.finish_record(record, &Err(err.to_string()));
            links.fail(&err);
            return Err(err);
        }
        self.launches_in_flight.fetch_add(1, Ordering::SeqCst);
        let saved_spec = spec.clone();
        let launched = hypervisor.launch(spec).await.map(Arc::<dyn Vm>::from);
        let live = launched.as_ref().ok().map(|vm| {
            let live = Arc::new(LivePod::new(vm.clone(), &links, container, 1));
            self.live_pods().insert(id.clone(), live.clone());
            live
        });
        self.launches_in_flight.fetch_sub(1, Ordering::SeqCst);
        let (vm, live) = match (launched, live) {
            (Ok(vm), Some(live)) => (vm, live),
            (Err(e), _) => {
                let err = RunError::Hypervisor(e);
                self.finish_record(record, &Err(err.to_string()));
                links.fail(&err);
                return Err(err);
            }
            (Ok(vm), None) => {
                // Unreachable by construction; never leave the VM behind.
                let _ = vm.kill().await;
                return Err(RunError::Failed("internal error: pod not tracked".into()));
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            let err = RunError::Stopping;
            self.teardown(&live, record, Err(err.to_string())).await;
            return Err(err);
        }
        record.state = PodState::Running;
        record.vm_pid = vm.info().pid;
        record.vm_pid_start = record.vm_pid.and_then(process_start_time);
        record.vm = Some(SavedVm {
            spec: saved_spec,
            info: vm.info(),
            pid_start: record.vm_pid_start,
        });
        let _ = write_record(&pod_dir, &record);
        self.pods().insert(id.clone(), record.clone());
        Ok((vm, live, record))
    }

    /// Marks a pod exited with `result` and removes what only a running pod
    /// needs (or the whole pod, for `--rm`).
    fn finish_record(&self, mut record: PodRecord, result: &Result<RunOutcome, String>) {
        let pod_dir = self.pods_dir().join(&record.id);
        record.state = PodState::Exited;
        record.vm = None;
        multi::containers_end_with_the_pod(&mut record);
        record.exit_code = Some(
            result
                .as_ref()
                .map_or(RUNTIME_FAILURE_EXIT, |o| o.exit_code),
        );
        record.finished_unix = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
        if record.remove {
            let _ = std::fs::remove_dir_all(&pod_dir);
            self.pods().remove(&record.id);
        } else {
            let _ = write_record(&pod_dir, &record);
            self.pods().insert(record.id.clone(), record);
        }
    }

    /// Takes a pod's VM down and records how it ended.
    async fn teardown(
        &self,
        live: &LivePod,
        record: PodRecord,
        result: Result<RunOutcome, String>,
    ) {
        // Nothing in the guest outlives the pod: the rootfs is read-only and
        // the container's writes live in a tmpfs. A hard stop loses nothing
        // and skips a DestroyPod round trip and the guest's power-off path,
        // both slow under emulation.
        if let Err(e) = live.vm.kill().await {
            tracing::warn!(pod = %record.id, "kill: {e}; asking for a shutdown");
            let _ = live.vm.shutdown(SHUTDOWN_GRACE).await;
        }
        let _ = live.vm.wait().await;
        let id = record.id.clone();
        self.finish_record(record, &result);
        self.live_pods().remove(&id);
        live.links.outcome_tx.send_replace(Some(result));
    }

    /// Connects to hyperstart and starts the pod and its container.
    async fn boot(
        &self,
        id: &str,
        req: &RunRequest,
        vm: Arc<dyn Vm>,
        pod_dir: &Path,
    ) -> Result<Booted, RunError> {
        let console = pod_dir.join("console.log");
        let boot_failed = |reason: String| RunError::Boot {
            reason,
            console: console_tail(&console),
        };
        let hyper_hypervisor::AgentChannel::UnixSocket(channel) = vm.info().agent_channel;
        let timeout = Duration::from_secs(self.config.vm.boot_timeout_secs);
        let connect = AgentClient::connect(&channel, timeout);
        let (agent, ready) = tokio::select! {
            r = connect => r.map_err(|e| boot_failed(e.to_string()))?,
            _ = vm.wait() => return Err(boot_failed("the VM exited during boot".into())),
        };
        tracing::debug!(pod = %id, agent = %ready.agent, version = ready.version, "hyperstart ready");

        let streams = agent
            .new_process(INIT_PROCESS)
            .map_err(|e| boot_failed(e.to_string()))?;
        let mut env = req.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={id}"));
        }
        let process = ProcessSpec {
            id: INIT_PROCESS.into(),
            args: req.args.clone(),
            env,
            workdir: req.workdir.clone().unwrap_or_else(|| "/".into()),
            user: req.user.clone().unwrap_or_default(),
            terminal: req.tty,
            terminal_size: req.tty_size,
            stdio: streams.stdio,
            stderr: streams.stderr,
            confinement: crate::security::check(&req.security)?,
        };
        let container = ContainerSpec {
            id: id.to_string(),
            rootfs: RootfsSpec {
                disk_id: ROOTFS_DISK_ID.into(),
                fstype: rootfs::FSTYPE.into(),
            },
            hostname: id.to_string(),
            process,
            mounts: Vec::new(),
        };
        // Pipelined: both requests go out back to back (the writer is taken in
        // call order) and hyperstart serves them in order, saving a round trip
        // that costs tens of milliseconds under emulation.
        let (pod_started, container_started) = tokio::join!(
            agent.request(Request::StartPod(PodSpec {
                hostname: id.to_string(),
                volumes: Vec::new(),
            })),
            agent.request(Request::NewContainer(container)),
        );
        pod_started?;
        match container_started {
            Ok(reply) => {
                tracing::debug!(pod = %id, ?reply, "container started");
                Ok(Booted::Running { agent, streams })
            }
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => {
                Ok(Booted::Exited(RunOutcome {
                    pod: id.to_string(),
                    exit_code: e.exit_code().unwrap_or(RUNTIME_FAILURE_EXIT),
                    message: Some(e.message),
                }))
            }
            Err(AgentCallError::Agent(e)) if e.kind == AgentErrorKind::NotFound => {
                Err(boot_failed(format!(
                    "the rootfs disk was not found in the guest: {}",
                    e.message
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Carries a running container's output to its log and to the attached
    /// client, restarts it as its policy says, and cleans up once it is done
    /// or its VM dies.
    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        self: Arc<Self>,
        mut live: Arc<LivePod>,
        mut record: PodRecord,
        mut agent: AgentClient,
        mut streams: ProcessStreams,
        io: Option<RunIo>,
        req: RunRequest,
        spec: VmSpec,
    ) {
        let id = record.id.clone();
        let log = Arc::new(Mutex::new(LogWriter::new(
            &self.pods_dir().join(&id),
            self.log_rotation(),
        )));
        let (output, mut client_stdin, resize) = match io {
            Some(io) => (Some(io.output), io.stdin, io.resize),
            None => (None, None, None),
        };
        // Sizes follow the pod across restarts by its policy.
        let resizer = forward_resizes(
            live.links.terminal.clone(),
            &id,
            INIT_PROCESS,
            req.tty,
            resize,
        );
        loop {
            let stdin = attach::open_stdin(&live, req.interactive, client_stdin.take());
            let io = ProcessIo {
                output: output.clone(),
                stdin,
                log: Some(log.clone()),
                attach: Some(live.links.attach.clone()),
            };
            let result = drive_process(&agent, live.vm.clone(), streams, io).await;
            lock(&log).flush();
            let stopped = live.stop_requested.load(Ordering::SeqCst);
            let result = match result {
                Ok(code) => Ok(RunOutcome {
                    pod: id.clone(),
                    exit_code: code,
                    message: None,
                }),
                // `hyper stop`/`kill` ended it by taking the VM down.
                Err(_) if stopped => Ok(RunOutcome {
                    pod: id.clone(),
                    exit_code: 128 + libc::SIGKILL,
                    message: None,
                }),
                Err(reason) => Err(RunError::Boot {
                    reason,
                    console: console_tail(&self.pods_dir().join(&id).join("console.log")),
                }
                .to_string()),
            };
            let code = result
                .as_ref()
                .map_or(RUNTIME_FAILURE_EXIT, |o| o.exit_code);
            let restart = !stopped
                && !self.stopping.load(Ordering::SeqCst)
                && req.restart.should_restart(code, record.restart_count);
            let hypervisor = match self.hypervisor.clone() {
                Ok(hv) if restart => hv,
                _ => {
                    if let Some(task) = &resizer {
                        task.abort();
                    }
                    self.teardown(&live, record, result).await;
                    return;
                }
            };
            // A fresh VM for each restart: nothing of the old one survives.
            let _ = live.vm.kill().await;
            let _ = live.vm.wait().await;
            record.restart_count += 1;
            record.exit_code = Some(code);
            tracing::info!(pod = %id, code, restarts = record.restart_count, "restarting by policy");
            tokio::time::sleep(restart_delay(record.restart_count)).await;
            let links = live.links.clone();
            // Each VM gets its own id: the old one may still be named
            // somewhere until its last handle is dropped.
            let mut next_spec = spec.clone();
            next_spec.id = format!("{id}-{}", record.restart_count);
            let mut next_req = req.clone();
            if let Some(size) = *lock(&links.terminal.last_size) {
                next_req.tty_size = Some(size);
            }
            let started = self
                .start_vm(hypervisor, next_spec, &next_req, record.clone(), links)
                .await;
            match started {
                Ok(VmStart::Running(running)) => {
                    let next = *running;
                    (live, record, agent, streams) =
                        (next.live, next.record, next.agent, next.streams);
                }
                // Already torn down and recorded.
                Ok(VmStart::Exited(_)) | Err(_) => {
                    if let Some(task) = &resizer {
                        task.abort();
                    }
                    return;
                }
            }
        }
    }

    /// The full id of the pod `name_or_id` names: a full id, a name, or a
    /// unique prefix of an id.
    pub fn resolve(&self, name_or_id: &str) -> Result<String, RunError> {
        let pods = self.pods();
        if pods.contains_key(name_or_id) {
            return Ok(name_or_id.to_string());
        }
        if let Some(p) = pods
            .values()
            .find(|p| p.name.as_deref() == Some(name_or_id))
        {
            return Ok(p.id.clone());
        }
        let matches: Vec<&String> = if name_or_id.is_empty() {
            Vec::new()
        } else {
            pods.keys()
                .filter(|id| id.starts_with(name_or_id))
                .collect()
        };
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RunError::NotFound(format!(
                "no such pod: {name_or_id}; `hyper ps -a` lists them"
            ))),
            many => Err(RunError::Invalid(format!(
                "{name_or_id} is ambiguous: it starts {} pod ids ({}); give more of the id",
                many.len(),
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    pub fn record(&self, id: &str) -> Option<PodRecord> {
        self.pods().get(id).cloned()
    }

    fn live_pod(&self, id: &str) -> Result<Arc<LivePod>, RunError> {
        self.live_pods().get(id).cloned().ok_or_else(|| {
            RunError::Conflict(format!(
                "pod {id} is not running; start it again with `hyper start {id}`"
            ))
        })
    }

    /// The pod's directory, where its log lives.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.pods_dir().join(id)
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.live_pods().contains_key(id)
    }

    /// Waits for the pod to exit and returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i32, RunError> {
        let live = self.live_pods().get(id).cloned();
        if let Some(live) = live {
            let mut rx = live.outcome.clone();
            drop(live);
            let outcome = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| RunError::Failed("the pod's supervisor is gone".into()))?
                .clone();
            return Ok(match outcome {
                Some(Ok(o)) => o.exit_code,
                _ => RUNTIME_FAILURE_EXIT,
            });
        }
        self.record(id)
            .and_then(|r| r.exit_code)
            .ok_or_else(|| RunError::NotFound(format!("no such pod: {id}")))
    }

    /// Sends `signal` to the container's first process.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), RunError> {
        if !(1..=64).contains(&signal) {
            return Err(RunError::Invalid(format!(
                "signal {signal}: use 1 to 64 or a name such as TERM or KILL"
            )));
        }
        let live = self.live_pod(id)?;
        if signal == libc::SIGKILL {
            // PID 1 of the container may not die of a signal sent inside its
            // namespace; SIGKILL always ends the pod.
            live.stop_requested.store(true, Ordering::SeqCst);
            live.vm.kill().await?;
            return Ok(());
        }
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        if self.signal_containers(id, &agent, signal).await? {
            return Ok(());
        }
        agent
            .request(Request::Signal {
                container: id.to_string(),
                process: INIT_PROCESS.into(),
                signal,
            })
            .await?;
        Ok(())
    }

    /// SIGTERM, then after `grace` the VM is taken down. Returns the exit code.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<i32, RunError> {
        let live = match self.live_pod(id) {
            Ok(l) => l,
            // Stopping a stopped pod is not an error (as in Docker).
            Err(_) => return self.wait(id).await,
        };
        // The grace period starts now, not once a guest that no longer
        // answers has let the SIGTERM request time out.
        let mut rx = live.outcome.clone();
        let timed_out = tokio::time::timeout(grace, async {
            let _ = self.kill(id, libc::SIGTERM).await;
            rx.wait_for(Option::is_some).await.map(|_| ())
        })
        .await
        .is_err();
        if timed_out {
            live.stop_requested.store(true, Ordering::SeqCst);
            if let Err(e) = live.vm.kill().await {
                tracing::warn!(pod = %id, "kill: {e}");
            }
        }
        drop(live);
        self.wait(id).await
    }

    /// Removes an exited pod's record, log and files; `force` stops a
    /// running one first.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), RunError> {
        if self.is_running(id) {
            if !force {
                return Err(RunError::Conflict(format!(
                    "pod {id} is running; stop it first (`hyper stop {id}`) or use `hyper rm -f`"
                )));
            }
            self.stop(id, Duration::ZERO).await?;
        }
        let dir = self.pod_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RunError::State { path: dir, source }),
        }
        self.pods().remove(id);
        Ok(())
    }

    /// Starts an exited pod again in a fresh VM with the container it was
    /// created with; its log goes on. A running pod is left as it is (as in
    /// Docker).
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<Started, RunError> {
        if let Some(live) = self.live_pods().get(id) {
            return Ok(Started {
                id: id.to_string(),
                early: None,
                outcome: live.outcome.clone(),
            });
        }
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NotFound(format!("no such pod: {id}")))?;
        if !record.containers.is_empty() {
            return self.start_again_pod(id, record).await;
        }
        let Some(req) = record.container.clone() else {
            return Err(RunError::Conflict(format!(
                "pod {id} was created by an older hyperd that did not keep its container; run it anew"
            )));
        };
        let hypervisor = self.ready_to_launch()?;
        let size = self.vm_size(&req)?;
        let image = self
            .rootfs_again(
                &record.rootfs_image,
                record.image.as_deref(),
                req.rootfs.as_ref(),
            )
            .await?;
        let record = self.claim_for_start(id, |r| r.rootfs_image = image.clone())?;
        let spec = self.vm_spec(id, Self::rootfs_disk(image), size);
        self.launch(hypervisor, spec, req, record, None).await
    }

    /// Marks an exited pod as starting, under the lock, so that a second
    /// `start` racing this one finds it not exited; `update` adjusts the
    /// record on the way. The record is saved.
    pub(super) fn claim_for_start(
        &self,
        id: &str,
        update: impl FnOnce(&mut PodRecord),
    ) -> Result<PodRecord, RunError> {
        let record = {
            let mut pods = self.pods();
            let Some(record) = pods.get_mut(id) else {
                return Err(RunError::NotFound(format!("no such pod: {id}")));
            };
            if record.state != PodState::Exited {
                return Err(RunError::Conflict(format!("pod {id} is starting already")));
            }
            record.state = PodState::Created;
            record.exit_code = None;
            record.finished_unix = None;
            record.vm_pid = None;
            record.vm_pid_start = None;
            update(record);
            record.clone()
        };
        let pod_dir = self.pods_dir().join(id);
        if let Err(source) = write_record(&pod_dir, &record) {
            let err = RunError::State {
                path: pod_dir,
                source,
            };
            self.finish_record(record, &Err(err.to_string()));
            return Err(err);
        }
        Ok(record)
    }

    /// Stops a pod (as [`Runtime::stop`]) and starts it again.
    pub async fn restart(self: &Arc<Self>, id: &str, grace: Duration) -> Result<Started, RunError> {
        self.stop(id, grace).await?;
        self.start(id).await
    }

    /// The rootfs image to boot an exited container from: the one it ran
    /// (`built`), or the same one built again from its image or directory
    /// if it was removed since.
    pub(super) async fn rootfs_again(
        &self,
        built: &Path,
        image_id: Option<&str>,
        dir: Option<&PathBuf>,
    ) -> Result<PathBuf, RunError> {
        if built.is_file() {
            return Ok(built.to_path_buf());
        }
        match (image_id, dir) {
            (Some(image_id), _) => {
                let image = self
                    .find_image(image_id)?
                    .ok_or_else(|| RunError::NoSuchImage(image_id.to_string()))?;
                self.image_rootfs(image).await
            }
            (None, Some(dir)) => self.dir_rootfs(dir.clone()).await,
            (None, None) => Err(RunError::Failed(format!(
                "{}: gone, and the record names no image and no rootfs to build it from",
                built.display()
            ))),
        }
    }

    /// The rootfs image of a directory (built once per content).
    async fn dir_rootfs(&self, dir: PathBuf) -> Result<PathBuf, RunError> {
        let store = self.rootfs.clone();
        let (image, built) = tokio::task::spawn_blocking(move || store.image_for_dir(&dir))
            .await
            .map_err(|e| RunError::Invalid(format!("rootfs build did not complete: {e}")))??;
        tracing::debug!(image = %image.display(), built, "rootfs image");
        Ok(image)
    }

    /// The rootfs image of an image in the store (built once per image).
    async fn image_rootfs(&self, image: Image) -> Result<PathBuf, RunError> {
        let store = self.images.clone();
        let path = tokio::task::spawn_blocking(move || {
            store.rootfs(&image, &|src: &Path, dest: &Path| {
                rootfs::build_erofs(src, dest).map_err(|e| e.to_string())
            })
        })
        .await
        .map_err(|e| RunError::Invalid(format!("rootfs build did not complete: {e}")))??;
        Ok(path)
    }

    /// Host-side figures of a running pod's VM.
    pub async fn stats(&self, id: &str) -> Result<hyper_hypervisor::VmStats, RunError> {
        let live = self.live_pod(id)?;
        Ok(live.vm.stats().await?)
    }

    /// Runs another process in a running pod's container, attached to `io`.
    pub async fn exec(
        &self,
        id: &str,
        req: ExecRequest,
        io: RunIo,
    ) -> Result<RunOutcome, RunError> {
        if req.args.is_empty() {
            return Err(RunError::Invalid(
                "no command given: `hyper exec POD CMD…`".into(),
            ));
        }
        check_env_and_workdir(&req.env, req.workdir.as_deref())?;
        crate::agent::check_c_strings(
            &req.args,
            &req.env,
            req.workdir.as_deref(),
            req.user.as_deref(),
        )
        .map_err(RunError::Invalid)?;
        let live = self.live_pod(id)?;
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        // The container's own env, workdir and user are where exec starts.
        let (guest_id, base, security) = match self.container_of(id, req.container.as_deref())? {
            Some((_, c)) => (c.guest_id, (c.env, c.workdir, c.user), c.security),
            None => (
                id.to_string(),
                (
                    live.container.env.clone(),
                    live.container.workdir.clone(),
                    live.container.user.clone(),
                ),
                live.container.security.clone(),
            ),
        };
        let confinement =
            crate::security::exec_confinement(&crate::security::check(&security)?, req.privileged);
        let n = live.next_exec.fetch_add(1, Ordering::Relaxed);
        let process_id = format!("exec-{n}");
        let streams = agent.new_process(&process_id)?;
        let process = ProcessSpec {
            id: process_id.clone(),
            args: req.args.clone(),
            env: process::merge_env(&base.0, &req.env),
            workdir: req.workdir.clone().or(base.1).unwrap_or_else(|| "/".into()),
            user: req.user.clone().or(base.2).unwrap_or_default(),
            terminal: req.tty,
            terminal_size: req.tty_size,
            stdio: streams.stdio,
            stderr: streams.stderr,
            confinement,
        };
        match agent
            .request(Request::Exec {
                container: guest_id,
                process,
            })
            .await
        {
            Ok(_) => {}
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => {
                return Ok(RunOutcome {
                    pod: id.to_string(),
                    exit_code: e.exit_code().unwrap_or(RUNTIME_FAILURE_EXIT),
                    message: Some(e.message),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let resizer = forward_resizes(
            TerminalLink::to(&agent),
            id,
            &process_id,
            req.tty,
            io.resize,
        );
        let io = ProcessIo {
            output: Some(io.output),
            stdin: io
                .stdin
                .filter(|_| req.interactive)
                .map(StdinSource::Client),
            log: None,
            attach: None,
        };
        let code = drive_process(&agent, live.vm.clone(), streams, io).await;
        if let Some(task) = resizer {
            task.abort();
        }
        let code = code.map_err(RunError::Failed)?;
        Ok(RunOutcome {
            pod: id.to_string(),
            exit_code: code,
            message: None,
        })
    }

    fn log_rotation(&self) -> Rotation {
        Rotation::default()
    }

    /// The rootfs image to boot and the process to run, from `--rootfs` or
    /// from an image in the store.
    async fn resolve_source(
        &self,
        req: &RunRequest,
    ) -> Result<(PathBuf, process::Process, Option<String>), RunError> {
        let overrides = Overrides {
            entrypoint: req.entrypoint.as_deref(),
            args: &req.args,
            env: &req.env,
            workdir: req.workdir.as_deref(),
            user: req.user.as_deref(),
        };
        match (&req.rootfs, &req.image) {
            (Some(dir), None) => {
                let defaults = hyper_images::ImageConfig::default();
                let process = process::resolve(&defaults, &overrides)
                    .ok_or_else(|| RunError::Invalid("no command given".into()))?;
                Ok((self.dir_rootfs(dir.clone()).await?, process, None))
            }
            (None, Some(name)) => {
                let image = self
                    .find_image(name)?
                    .ok_or_else(|| RunError::NoSuchImage(name.clone()))?;
                let process = process::resolve(&image.config, &overrides).ok_or_else(|| {
                    RunError::Invalid(format!(
                        "image {name} has no Entrypoint or Cmd: give a command after the image name"
                    ))
                })?;
                let id = image.id.clone();
                Ok((self.image_rootfs(image).await?, process, Some(id)))
            }
            (Some(_), Some(_)) => Err(RunError::Invalid(
                "give either an image or --rootfs, not both".into(),
            )),
            (None, None) => Err(RunError::Invalid(
                "no image given: `hyper run IMAGE [CMD…]` or `hyper run --rootfs DIR CMD…`".into(),
            )),
        }
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    pub fn find_image(&self, name: &str) -> Result<Option<Image>, hyper_images::ImageError> {
        self.images.find(name)
    }

    pub fn pull_options(&self) -> PullOptions {
        PullOptions {
            insecure_registries: self.config.images.insecure_registries.clone(),
            auth_file: Some(self.config.auth_file()),
            max_concurrent_downloads: self.config.images.max_concurrent_downloads,
            ..PullOptions::default()
        }
    }

    /// Whether a pod that has not exited runs `image`.
    pub fn image_in_use(&self, image: &Image) -> bool {
        self.pods()
            .values()
            .any(|p| p.state != PodState::Exited && p.image.as_deref() == Some(image.id.as_str()))
    }
}

/// Turns the client's new terminal sizes into WindowSize requests for a
/// terminal process (the guest sends SIGWINCH); nothing without a terminal.
fn forward_resizes(
    link: TerminalLink,
    container: &str,
    process: &str,
    tty: bool,
    resize: Option<mpsc::Receiver<TerminalSize>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut rx = resize.filter(|_| tty)?;
    let (container, process) = (container.to_string(), process.to_string());
    Some(tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            if size.rows == 0 || size.cols == 0 {
                continue;
            }
            *lock(&link.last_size) = Some(size);
            // Between two VMs of a restarted pod: the next one starts at
            // this size.
            let Some(agent) = lock(&link.session).clone() else {
                continue;
            };
            let request = Request::WindowSize {
                container: container.clone(),
                process: process.clone(),
                rows: size.rows,
                cols: size.cols,
            };
            if let Err(e) = agent.request(request).await {
                tracing::debug!(%container, %process, "resize refused: {e}");
            }
        }
    }))
}

/// Where a guest process's stdio goes; all optional.
#[derive(Default)]
struct ProcessIo {
    /// The client that started it; it slows the process down when it reads
    /// slowly (the guest's credit follows what it took).
    output: Option<mpsc::Sender<Output>>,
    /// Closed at once without it.
    stdin: Option<StdinSource>,
    log: Option<Arc<Mutex<LogWriter>>>,
    /// Clients attached later (`hyper attach`); they never slow it down.
    attach: Option<broadcast::Sender<Output>>,
}

/// Feeds a guest process's stdin and carries its output to the client,
/// the log and attached clients until it exits; its exit status, or why it
/// has none.
async fn drive_process(
    agent: &AgentClient,
    vm: Arc<dyn Vm>,
    mut streams: ProcessStreams,
    io: ProcessIo,
) -> Result<i32, String> {
    let stdin_task = {
        let agent = agent.clone();
        let stream = streams.stdio;
        let stdin = io.stdin;
        tokio::spawn(async move {
            match stdin {
                Some(StdinSource::Client(mut rx)) => feed_stdin(&agent, stream, &mut rx).await,
                Some(StdinSource::Hub(hub)) => {
                    // Held until this process's end: a restarted one reads
                    // the same hub next.
                    let mut rx = hub.lock().await;
                    feed_stdin(&agent, stream, &mut rx).await
                }
                None => {
                    let _ = agent.close_stdin(stream).await;
                }
            }
        })
    };
    let out = pump(
        agent,
        streams.stdio,
        &mut streams.stdout_rx,
        &io.output,
        &io.log,
        &io.attach,
        LogStream::Stdout,
    );
    let err = pump(
        agent,
        streams.stderr,
        &mut streams.stderr_rx,
        &io.output,
        &io.log,
        &io.attach,
        LogStream::Stderr,
    );
    let finished = async {
        tokio::join!(out, err);
        (&mut streams.exit_rx).await
    };
    let status = tokio::select! {
        s = finished => s,
        _ = vm.wait() => {
            stdin_task.abort();
            return Err("the VM stopped before the process exited".into());
        }
    };
    stdin_task.abort();
    status.map_err(|_| {
        agent
            .dead_reason()
            .unwrap_or_else(|| "no exit status from the guest".into())
    })
}

/// Sends a process what its client types until the client's input ends.
async fn feed_stdin(agent: &AgentClient, stream: u32, rx: &mut mpsc::Receiver<Stdin>) {
    while let Some(Stdin::Data(data)) = rx.recv().await {
        if agent.send_stdin(stream, &data).await.is_err() {
            return;
        }
    }
    let _ = agent.close_stdin(stream).await;
}

/// Forwards one guest stream to the caller, the log and attached clients,
/// granting the guest more credit only for what the caller has taken.
async fn pump(
    agent: &AgentClient,
    stream: u32,
    rx: &mut StreamReceiver,
    out: &Option<mpsc::Sender<Output>>,
    log: &Option<Arc<Mutex<LogWriter>>>,
    attach: &Option<broadcast::Sender<Output>>,
    which: LogStream,
) {
    let mut out = out.clone();
    while let Some(chunk) = rx.recv().await {
        let StreamChunk::Data(data) = chunk else {
            break;
        };
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if let Some(log) = log {
            lock(log).write(which, &data);
        }
        let wrapped = match which {
            LogStream::Stdout => Output::Stdout(data),
            LogStream::Stderr => Output::Stderr(data),
        };
        if let Some(attached) = attach.as_ref().filter(|a| a.receiver_count() > 0) {
            // A client too slow for the backlog loses output, and is told.
            let _ = attached.send(wrapped.clone());
        }
        if let Some(tx) = &out {
            if tx.send(wrapped).await.is_err() {
                // The client left: keep draining so the process is not
                // blocked forever; the log still gets everything.
                out = None;
            }
        }
        if agent.grant(stream, n).await.is_err() {
            break;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent even if a
    // panic interrupts it, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `-e` entries are `KEY=VALUE` and `-w` is absolute, for run and exec alike.
fn check_env_and_workdir(env: &[String], workdir: Option<&str>) -> Result<(), RunError> {
    if let Some(bad) = env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        return Err(RunError::Invalid(format!("-e {bad}: expected KEY=VALUE")));
    }
    if let Some(w) = workdir {
        if !w.starts_with('/') {
            return Err(RunError::Invalid(format!(
                "-w {w}: the working directory must be an absolute path"
            )));
        }
    }
    Ok(())
}

/// Pod names follow Docker's rule.
fn check_name(name: &str) -> Result<(), RunError> {
    let ok = name.len() <= 128
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(RunError::Invalid(format!(
            "--name {name}: use letters, digits, `_`, `.` and `-`, starting with a letter or digit"
        )))
    }
}

fn write_record(pod_dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    let tmp = pod_dir.join("pod.json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let written = crate::private::write_private(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, pod_dir.join("pod.json")));
    if written.is_err() {
        // A full disk leaves a partial copy; pod.json itself is intact.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn new_id() -> String {
    let mut bytes = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&(nanos as u64 ^ u64::from(std::process::id())).to_le_bytes()[..6]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last lines of the guest console, to explain a failed boot.
fn console_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(2048);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("\n--- guest console ({}) ---\n{text}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_read() {
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX).is_none());
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
    fn ids_are_short_hex() {
        let id = new_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_id());
    }
}

#[cfg(test)]
mod send_checks {
    use super::*;

    /// The API serves these from multi-threaded tasks.
    #[allow(dead_code)]
    fn futures_are_send(rt: Arc<Runtime>, io: RunIo, exec: ExecRequest) {
        fn is_send<T: Send>(_: T) {}
        let r = rt.clone();
        is_send(async move { r.stop("x", Duration::ZERO).await });
        let r = rt.clone();
        is_send(async move { r.remove("x", true).await });
        let r = rt.clone();
        is_send(async move { r.restart("x", Duration::ZERO).await });
        let r = rt.clone();
        is_send(async move { r.attach("x", io).await });
        let (output, _) = mpsc::channel(1);
        let io = RunIo {
            output,
            stdin: None,
            resize: None,
        };
        is_send(async move { rt.exec("x", exec, io).await });
    }
}
