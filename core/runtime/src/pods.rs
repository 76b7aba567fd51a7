//! Pods: one VM each, running one container, from launch to cleanup.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_hypervisor::{DiskSpec, Hypervisor, ProbeReport, Vm, VmSpec};
use hyper_protocol::{AgentErrorKind, ContainerSpec, PodSpec, ProcessSpec, Request, RootfsSpec};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::agent::{AgentCallError, AgentClient, StreamChunk};
use crate::config::{Config, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::payload::Payload;
use crate::plugins::{self, Backend, PluginFailure};
use crate::rootfs::{self, RootfsStore};

/// Docker's exit code for "the runtime failed, not the container".
pub const RUNTIME_FAILURE_EXIT: i32 = 125;
const ROOTFS_DISK_ID: &str = "hyper-rootfs0";
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub rootfs: PathBuf,
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
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
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
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Output of the container, in order per stream.
#[derive(Debug)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How the caller of [`Runtime::run`] feeds stdin and takes output. The
/// output channel is bounded: a slow reader slows the container, through
/// the guest's flow control, instead of filling memory.
pub struct RunIo {
    pub output: mpsc::Sender<Output>,
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
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
    pub state: PodState,
    pub backend: String,
    pub args: Vec<String>,
    pub rootfs_image: PathBuf,
    pub created_unix: u64,
    pub exit_code: Option<i32>,
    /// The VM's host process and its start time (from /proc), so a restarted
    /// hyperd never kills a recycled pid.
    pub vm_pid: Option<u32>,
    pub vm_pid_start: Option<u64>,
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
    pods: Mutex<BTreeMap<String, PodRecord>>,
    /// VMs running now, so a stopping hyperd can take them down with it.
    live: Mutex<BTreeMap<String, Arc<dyn Vm>>>,
    /// Set once hyperd stops: no new pods, and launches in flight are undone.
    stopping: AtomicBool,
    launches_in_flight: AtomicUsize,
}

impl Runtime {
    /// Loads the plugins and picks the hypervisor. An unknown backend name or
    /// a refused backend table is a configuration error; a backend that
    /// cannot run here is reported by `info` and by every `run`.
    pub async fn new(config: Config) -> Result<Self, plugins::SelectError> {
        let (backends, plugin_failures) = plugins::discover(&config.runtime.plugin_dir, &config);
        for failure in &plugin_failures {
            tracing::warn!("plugin {}: {}", failure.path.display(), failure.error);
        }
        let hypervisor = match plugins::select(&backends, &config).await {
            Ok((hv, _)) => Ok(hv),
            Err(e @ plugins::SelectError::NoneUsable { .. }) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        match &hypervisor {
            Ok(hv) => tracing::info!("hypervisor: {}", hv.name()),
            Err(e) => tracing::warn!("{e}"),
        }
        let rootfs = RootfsStore::new(&config.runtime.state_dir);
        Ok(Self {
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
        })
    }

    fn live_vms(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<dyn Vm>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops every VM this hyperd runs: pods are tied to the client that
    /// started them, so none may outlive the daemon. Their `run` calls then
    /// finish and clean up as for any VM that died.
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
        let vms: Vec<(String, Arc<dyn Vm>)> = self
            .live_vms()
            .iter()
            .map(|(id, vm)| (id.clone(), vm.clone()))
            .collect();
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

    /// Kills and removes what a previous hyperd left behind: VM processes of
    /// pods it was running and their sockets and run directories.
    pub fn clean_leftovers(&self) -> std::io::Result<usize> {
        let dir = self.pods_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut cleaned = 0;
        for entry in entries.flatten() {
            let pod_dir = entry.path();
            let record = std::fs::read(pod_dir.join("pod.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).ok());
            let Some(mut record) = record else {
                // Not even a record: a launch that died half-way.
                let _ = std::fs::remove_dir_all(&pod_dir);
                cleaned += 1;
                continue;
            };
            if record.state != PodState::Exited {
                if let (Some(pid), Some(start)) = (record.vm_pid, record.vm_pid_start) {
                    if process_start_time(pid) == Some(start) {
                        tracing::info!(pod = %record.id, pid, "killing the VM of a pod left by a previous hyperd");
                        // SAFETY: plain kill(2) on a pid whose start time
                        // matches the one recorded at launch, so it is still
                        // that VM's process.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
                record.state = PodState::Exited;
                cleaned += 1;
            }
            let _ = std::fs::remove_dir_all(pod_dir.join("vm"));
            let _ = write_record(&pod_dir, &record);
            self.pods().insert(record.id.clone(), record);
        }
        Ok(cleaned)
    }

    /// Runs one container in a new VM and returns its exit status. The VM is
    /// always shut down and its files removed before this returns.
    pub async fn run(&self, req: RunRequest, io: RunIo) -> Result<RunOutcome, RunError> {
        if req.args.is_empty() {
            return Err(RunError::Invalid("no command given".into()));
        }
        let vcpus = req.cpus.unwrap_or(self.config.vm.vcpus);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(RunError::Invalid(format!(
                "--cpus {vcpus}: use 1 to {MAX_VCPUS}"
            )));
        }
        let memory_mib = req.memory_mib.unwrap_or(self.config.vm.memory_mib);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(RunError::Invalid(format!(
                "--memory {memory_mib}: use at least {MIN_MEMORY_MIB} MiB"
            )));
        }
        if let Some(bad) = req
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(RunError::Invalid(format!("-e {bad}: expected KEY=VALUE")));
        }
        if let Some(w) = &req.workdir {
            if !w.starts_with('/') {
                return Err(RunError::Invalid(format!(
                    "-w {w}: the working directory must be an absolute path"
                )));
            }
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RunError::Stopping);
        }
        let hypervisor = self.hypervisor.clone().map_err(RunError::NoHypervisor)?;
        self.payload.check(&self.config)?;
        let store = self.rootfs.clone();
        let source = req.rootfs.clone();
        let (image, built) = tokio::task::spawn_blocking(move || store.image_for_dir(&source))
            .await
            .map_err(|e| RunError::Invalid(format!("rootfs build did not complete: {e}")))??;
        tracing::debug!(image = %image.display(), built, "rootfs image");

        let id = new_id();
        let pod_dir = self.pods_dir().join(&id);
        let run_dir = pod_dir.join("vm");
        let state_err = |source| RunError::State {
            path: pod_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&run_dir).map_err(state_err)?;
        let mut record = PodRecord {
            id: id.clone(),
            state: PodState::Created,
            backend: hypervisor.name().to_string(),
            args: req.args.clone(),
            rootfs_image: image.clone(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            exit_code: None,
            vm_pid: None,
            vm_pid_start: None,
        };
        write_record(&pod_dir, &record).map_err(state_err)?;
        self.pods().insert(id.clone(), record.clone());

        let spec = VmSpec {
            id: id.clone(),
            kernel: self.payload.kernel.clone(),
            initrd: self.payload.initrd.clone(),
            cmdline: self.payload.cmdline.clone(),
            vcpus,
            memory_mib,
            disks: vec![DiskSpec {
                path: image,
                read_only: true,
                id: ROOTFS_DISK_ID.into(),
            }],
            console_log: pod_dir.join("console.log"),
            run_dir: run_dir.clone(),
        };
        self.launches_in_flight.fetch_add(1, Ordering::SeqCst);
        let launched = hypervisor.launch(spec).await.map(Arc::<dyn Vm>::from);
        if let Ok(vm) = &launched {
            self.live_vms().insert(id.clone(), vm.clone());
        }
        self.launches_in_flight.fetch_sub(1, Ordering::SeqCst);
        let result = match launched {
            Ok(vm) if self.stopping.load(Ordering::SeqCst) => {
                let _ = vm.kill().await;
                let _ = vm.wait().await;
                self.live_vms().remove(&id);
                Err(RunError::Stopping)
            }
            Ok(vm) => {
                record.state = PodState::Running;
                record.vm_pid = vm.info().pid;
                record.vm_pid_start = record.vm_pid.and_then(process_start_time);
                let _ = write_record(&pod_dir, &record);
                self.pods().insert(id.clone(), record.clone());
                let result = self.drive(&id, &req, vm.clone(), &pod_dir, io).await;
                // Nothing in the guest outlives the pod: the rootfs is read-only
                // and the container's writes live in a tmpfs. A hard stop loses
                // nothing and skips a DestroyPod round trip and the guest's
                // power-off path, both slow under emulation.
                if let Err(e) = vm.kill().await {
                    tracing::warn!(pod = %id, "kill: {e}; asking for a shutdown");
                    let _ = vm.shutdown(SHUTDOWN_GRACE).await;
                }
                let _ = vm.wait().await;
                self.live_vms().remove(&id);
                result
            }
            Err(e) => Err(RunError::Hypervisor(e)),
        };
        record.state = PodState::Exited;
        record.exit_code = Some(
            result
                .as_ref()
                .map_or(RUNTIME_FAILURE_EXIT, |o| o.exit_code),
        );
        let _ = std::fs::remove_dir_all(&run_dir);
        if req.remove {
            let _ = std::fs::remove_dir_all(&pod_dir);
            self.pods().remove(&id);
        } else {
            let _ = write_record(&pod_dir, &record);
            self.pods().insert(id.clone(), record);
        }
        result
    }

    /// From a launched VM to the container's exit status.
    async fn drive(
        &self,
        id: &str,
        req: &RunRequest,
        vm: Arc<dyn Vm>,
        pod_dir: &Path,
        io: RunIo,
    ) -> Result<RunOutcome, RunError> {
        // Learn at once when the VM dies, whatever we are waiting for.
        let (vm_exited_tx, mut vm_exited) = watch::channel(false);
        let waiter = vm.clone();
        tokio::spawn(async move {
            let _ = waiter.wait().await;
            let _ = vm_exited_tx.send(true);
        });
        let console = pod_dir.join("console.log");
        let boot_failed = |reason: String| RunError::Boot {
            reason,
            console: console_tail(&console),
        };

        let channel = match vm.info().agent_channel {
            hyper_hypervisor::AgentChannel::UnixSocket(p)
            | hyper_hypervisor::AgentChannel::Pty(p) => p,
        };
        let timeout = Duration::from_secs(self.config.vm.boot_timeout_secs);
        let connect = AgentClient::connect(&channel, timeout);
        let (agent, ready) = tokio::select! {
            r = connect => r.map_err(|e| boot_failed(e.to_string()))?,
            _ = vm_exited.wait_for(|e| *e) => return Err(boot_failed("the VM exited during boot".into())),
        };
        tracing::debug!(pod = %id, agent = %ready.agent, version = ready.version, "hyperstart ready");

        let mut streams = agent.new_process("init");
        let mut env = req.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={id}"));
        }
        let process = ProcessSpec {
            id: "init".into(),
            args: req.args.clone(),
            env,
            workdir: req.workdir.clone().unwrap_or_else(|| "/".into()),
            user: req.user.clone().unwrap_or_default(),
            terminal: false,
            stdio: streams.stdio,
            stderr: streams.stderr,
        };
        let container = ContainerSpec {
            id: id.to_string(),
            rootfs: RootfsSpec {
                disk_id: ROOTFS_DISK_ID.into(),
                fstype: rootfs::FSTYPE.into(),
            },
            hostname: id.to_string(),
            process,
        };
        // Pipelined: both requests go out back to back (the writer is taken in
        // call order) and hyperstart serves them in order, saving a round trip
        // that costs tens of milliseconds under emulation.
        let (pod_started, container_started) = tokio::join!(
            agent.request(Request::StartPod(PodSpec {
                hostname: id.to_string()
            })),
            agent.request(Request::NewContainer(container)),
        );
        pod_started?;
        match container_started {
            Ok(reply) => tracing::debug!(pod = %id, ?reply, "container started"),
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => {
                return Ok(RunOutcome {
                    pod: id.to_string(),
                    exit_code: e.exit_code().unwrap_or(RUNTIME_FAILURE_EXIT),
                    message: Some(e.message),
                });
            }
            Err(AgentCallError::Agent(e)) if e.kind == AgentErrorKind::NotFound => {
                return Err(boot_failed(format!(
                    "the rootfs disk was not found in the guest: {}",
                    e.message
                )));
            }
            Err(e) => return Err(e.into()),
        }

        let stdin_task = {
            let agent = agent.clone();
            let stream = streams.stdio;
            let stdin = if req.interactive { io.stdin } else { None };
            tokio::spawn(async move {
                if let Some(mut rx) = stdin {
                    while let Some(data) = rx.recv().await {
                        if agent.send_stdin(stream, &data).await.is_err() {
                            return;
                        }
                    }
                }
                let _ = agent.close_stdin(stream).await;
            })
        };
        let out = pump(
            &agent,
            streams.stdio,
            &mut streams.stdout_rx,
            io.output.clone(),
            Output::Stdout,
        );
        let err = pump(
            &agent,
            streams.stderr,
            &mut streams.stderr_rx,
            io.output,
            Output::Stderr,
        );
        let finished = async {
            tokio::join!(out, err);
            (&mut streams.exit_rx).await
        };
        let status = tokio::select! {
            s = finished => s,
            _ = vm_exited.wait_for(|e| *e) => {
                stdin_task.abort();
                return Err(boot_failed("the VM stopped before the container exited".into()));
            }
        };
        stdin_task.abort();
        tracing::debug!(pod = %id, ?status, "container exited");
        let status = status.map_err(|_| {
            AgentCallError::Disconnected(
                agent
                    .dead_reason()
                    .unwrap_or_else(|| "no exit status from the guest".into()),
            )
        })?;
        Ok(RunOutcome {
            pod: id.to_string(),
            exit_code: status,
            message: None,
        })
    }
}

/// Forwards one guest stream to the caller, granting the guest more credit
/// only for what the caller has taken.
async fn pump(
    agent: &AgentClient,
    stream: u32,
    rx: &mut mpsc::UnboundedReceiver<StreamChunk>,
    out: mpsc::Sender<Output>,
    wrap: fn(Vec<u8>) -> Output,
) {
    let mut caller_gone = false;
    while let Some(chunk) = rx.recv().await {
        let StreamChunk::Data(data) = chunk else {
            break;
        };
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        if !caller_gone && out.send(wrap(data)).await.is_err() {
            // Keep draining so the process is not blocked forever.
            caller_gone = true;
        }
        if agent.grant(stream, n).await.is_err() {
            break;
        }
    }
}

fn write_record(pod_dir: &Path, record: &PodRecord) -> std::io::Result<()> {
    let tmp = pod_dir.join("pod.json.tmp");
    let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, pod_dir.join("pod.json"))
}

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
    fn ids_are_short_hex() {
        let id = new_id();
        assert_eq!(id.len(), 12);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, new_id());
    }
}
