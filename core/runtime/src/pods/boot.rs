//! Booting a recorded pod: launch its VM, connect to hyperstart, start the
//! pod and each of its containers, then hand it to its supervisor. On any
//! failure the VM is gone and the record says why before this returns.
//! Also the teardown every ending goes through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_hypervisor::adopt::process_start_time;
use hyper_hypervisor::{AgentChannel, DiskSpec, Hypervisor, Vm, VmSpec};
use hyper_network::timing::step_done;
use hyper_protocol::{
    capability, AgentErrorKind, ContainerSpec, MountSpec, PodSpec, ProcessSpec, Request,
    RootfsSpec, TerminalSize, VolumeSpec,
};
use tokio::sync::{broadcast, watch};

use super::attach::{self, StdinHub};
use super::model::{
    disk_id, Ending, Member, Output, PodRecord, PodState, RunError, RunIo, RunOutcome, SavedVm,
    Started,
};
use super::template::{Connected, StartPlan};
use super::{console_tail, lock, Runtime, SHUTDOWN_GRACE};
use crate::agent::{AgentCallError, AgentClient, ProcessStreams};
use crate::rootfs;

/// A pod whose VM runs now.
pub(super) struct LivePod {
    pub(super) vm: Arc<dyn Vm>,
    /// hyperstart's session, once it is up.
    pub(super) agent: Mutex<Option<AgentClient>>,
    /// What outlives this VM if the pod's policy restarts it.
    pub(super) links: PodLinks,
    pub(super) outcome: watch::Receiver<Ending>,
    pub(super) next_exec: AtomicU64,
    /// The main container: `exec` starts from its env, workdir and user,
    /// `attach` follows its terminal.
    pub(super) main: Member,
    /// Whether the main process keeps stdin open (`-i`).
    pub(super) interactive: bool,
    /// Set by stop/kill before they take the VM down: its death is then the
    /// expected end, not a failure.
    pub(super) stop_requested: AtomicBool,
    /// The pod's block volume files, locked while this VM runs.
    pub(super) block_locks: Mutex<Vec<hyper_volumes::BlockLock>>,
    /// How each running joined container ends, by name.
    pub(super) joined: Mutex<std::collections::BTreeMap<String, watch::Receiver<Ending>>>,
}

/// What outlives each VM of a pod restarted by its policy: how it ends, the
/// output attached clients follow, and where their terminal sizes go.
#[derive(Clone)]
pub(super) struct PodLinks {
    pub(super) outcome_tx: Arc<watch::Sender<Ending>>,
    /// The main container's output as it comes, for `hyper attach`.
    pub(super) attach: broadcast::Sender<Output>,
    pub(super) terminal: TerminalLink,
    /// The main process's stdin, kept open with `-i`.
    pub(super) stdin: StdinHub,
    /// Set by `stop`: the pod ends however its containers exit, whatever
    /// its restart policy says (as in Docker).
    pub(super) stopped: Arc<AtomicBool>,
}

impl PodLinks {
    pub(super) fn new() -> Self {
        Self {
            outcome_tx: Arc::new(watch::channel(None).0),
            attach: broadcast::channel(attach::BACKLOG_CHUNKS).0,
            terminal: TerminalLink::default(),
            stdin: StdinHub::new(),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    fn fail(&self, err: &RunError) {
        self.outcome_tx.send_replace(Some(Err(err.to_string())));
    }
}

impl LivePod {
    pub(super) fn new(
        vm: Arc<dyn Vm>,
        links: &PodLinks,
        main: Member,
        interactive: bool,
        next_exec: u64,
    ) -> Self {
        Self {
            vm,
            agent: Mutex::new(None),
            outcome: links.outcome_tx.subscribe(),
            links: links.clone(),
            next_exec: AtomicU64::new(next_exec),
            main,
            interactive,
            stop_requested: AtomicBool::new(false),
            block_locks: Mutex::new(Vec::new()),
            joined: Mutex::new(Default::default()),
        }
    }

    /// Lets go of the pod's block volumes once its VM is gone.
    pub(super) fn release_volumes(&self) {
        lock(&self.block_locks).clear();
    }

    /// Records hyperstart's session once it is up; terminal sizes go to it
    /// from now on.
    pub(super) fn set_agent(&self, agent: &AgentClient) {
        *lock(&self.agent) = Some(agent.clone());
        *lock(&self.links.terminal.session) = Some(agent.clone());
    }
}

/// Where the terminal sizes of a pod's clients go: the session of its
/// current VM, and the last size, which a process restarted by the policy
/// starts with.
#[derive(Clone, Default)]
pub(super) struct TerminalLink {
    pub(super) session: Arc<Mutex<Option<AgentClient>>>,
    pub(super) last_size: Arc<Mutex<Option<TerminalSize>>>,
}

impl TerminalLink {
    pub(super) fn to(agent: &AgentClient) -> Self {
        let link = Self::default();
        *lock(&link.session) = Some(agent.clone());
        link
    }
}

/// A pod whose containers run: what its supervisor takes.
pub(super) struct Running {
    pub(super) live: Arc<LivePod>,
    pub(super) record: PodRecord,
    pub(super) agent: AgentClient,
    /// Each running container's first process, by its index in the pod.
    pub(super) inits: Vec<(usize, ProcessStreams)>,
}

pub(super) enum VmStart {
    Running(Box<Running>),
    /// The container of a pod of one could not start (e.g. 127).
    Exited(RunOutcome),
}

enum Booted {
    Running {
        agent: AgentClient,
        inits: Vec<(usize, ProcessStreams)>,
    },
    Exited(RunOutcome),
}

/// The socket hyperstart answers on.
pub(super) fn agent_channel(vm: &dyn Vm) -> std::path::PathBuf {
    let AgentChannel::UnixSocket(path) = vm.info().agent_channel;
    path
}

impl Runtime {
    /// The one path that boots a recorded pod, of one container or of
    /// several: `run`, `create`, `pod create` and `start` all end here.
    /// Leaves the pod supervised (output to `io`); returns once its
    /// containers run, or with `early` set when a pod of one's container
    /// could not start.
    pub(super) async fn launch(
        self: &Arc<Self>,
        hypervisor: Arc<dyn Hypervisor>,
        record: PodRecord,
        size: (u32, u32),
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        let id = record.id.clone();
        let Some(members) = record.members() else {
            let err = RunError::Failed(format!("pod {id}: its record names no container"));
            self.finish_record(record, &Err(err.to_string()));
            return Err(err);
        };
        let mut spec = self.vm_spec(&id, &members, size);
        match super::volumes::plan(&record.mounts, self.share_transport(), hypervisor.name()) {
            Ok(plan) => {
                spec.shares = plan.shares;
                spec.disks.extend(plan.disks);
            }
            Err(err) => {
                self.finish_record(record, &Err(err.to_string()));
                return Err(err);
            }
        }
        if let Err(err) = self.join_up(&record, &mut spec) {
            self.finish_record(record, &Err(err.to_string()));
            return Err(err);
        }
        let links = PodLinks::new();
        let outcome = links.outcome_tx.subscribe();
        match self
            .start_vm(hypervisor, spec.clone(), record, members, links)
            .await?
        {
            VmStart::Running(running) => {
                let rt = self.clone();
                tokio::spawn(async move { rt.supervise(*running, io, spec).await });
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

    /// The VM of a pod: the payload, one read-only rootfs disk per
    /// container, and its files in the pod's directory.
    pub(super) fn vm_spec(
        &self,
        id: &str,
        members: &[Member],
        (vcpus, memory_mib): (u32, u32),
    ) -> VmSpec {
        let pod_dir = self.pod_dir(id);
        VmSpec {
            id: id.to_string(),
            kernel: self.payload.kernel.clone(),
            initrd: self.payload.initrd.clone(),
            cmdline: self.payload.cmdline.clone(),
            vcpus,
            memory_mib,
            disks: members
                .iter()
                .enumerate()
                .map(|(i, m)| DiskSpec {
                    path: m.rootfs_image.clone(),
                    read_only: true,
                    id: disk_id(i),
                })
                .collect(),
            console_log: pod_dir.join("console.log"),
            run_dir: pod_dir.join("vm"),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        }
    }

    /// Launches the pod's VM, connects to hyperstart and starts the
    /// containers. On any failure the VM is gone and the record says so
    /// before this returns.
    pub(super) async fn start_vm(
        self: &Arc<Self>,
        hypervisor: Arc<dyn Hypervisor>,
        mut spec: VmSpec,
        mut record: PodRecord,
        members: Vec<Member>,
        links: PodLinks,
    ) -> Result<VmStart, RunError> {
        let booting = std::time::Instant::now();
        let interactive = record.container.as_ref().is_some_and(|c| c.interactive);
        let main = members
            .first()
            .cloned()
            .ok_or_else(|| RunError::Invalid("the pod has no containers".into()))?;
        // Its block volumes are its own while it runs.
        let block_locks = match self.lock_block_volumes(&record) {
            Ok(locks) => locks,
            Err(err) => {
                self.finish_record(record, &Err(err.to_string()));
                links.fail(&err);
                return Err(err);
            }
        };
        // The VM's network first: its NIC joins the namespace CNI set up.
        let step = Instant::now();
        let network_up = self.network_up(&mut record).await;
        step_done(&record.id, "network up", step);
        if let Err(err) = network_up {
            self.finish_record(record, &Err(err.to_string()));
            links.fail(&err);
            return Err(err);
        }
        spec.nics = record
            .network
            .as_ref()
            .and_then(|a| a.nic.clone())
            .into_iter()
            .collect();
        // Then its host cgroup, which the backend puts its processes in.
        let step = Instant::now();
        let cgroup_up = self.cgroup_up(&record.id, &mut spec).await;
        step_done(&record.id, "cgroup up", step);
        if let Err(err) = cgroup_up {
            self.network_down(&mut record).await;
            self.finish_record(record, &Err(err.to_string()));
            links.fail(&err);
            return Err(err);
        }
        // From a template, if it gets one (built first when missing).
        let plan = match self.start_plan(&hypervisor, &spec, &record).await {
            Ok(plan) => plan,
            Err(err) => {
                self.network_down(&mut record).await;
                self.cgroup_down(&record.id).await;
                self.finish_record(record, &Err(err.to_string()));
                links.fail(&err);
                return Err(err);
            }
        };
        let step = Instant::now();
        let id = record.id.clone();
        let (live, mut record, connected) = self
            .launch_vm(hypervisor, spec, plan, record, links, main, interactive)
            .await?;
        step_done(&id, "vm launch", step);
        *lock(&live.block_locks) = block_locks;
        match self
            .boot(&mut record, &members, live.vm.clone(), connected)
            .await
        {
            Ok(Booted::Running { agent, inits }) => {
                live.set_agent(&agent);
                self.save(&record);
                self.observe_started(&record, booting);
                Ok(VmStart::Running(Box::new(Running {
                    live,
                    record,
                    agent,
                    inits,
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

    /// Launches (or restores, as `plan` says) a pod's VM and tracks it as
    /// live, its record saying how to take it over. On failure the record
    /// says so and nothing runs.
    #[allow(clippy::too_many_arguments)]
    async fn launch_vm(
        &self,
        hypervisor: Arc<dyn Hypervisor>,
        spec: VmSpec,
        plan: StartPlan,
        mut record: PodRecord,
        links: PodLinks,
        main: Member,
        interactive: bool,
    ) -> Result<(Arc<LivePod>, PodRecord, Option<Connected>), RunError> {
        let id = record.id.clone();
        if let Err(source) = crate::private::create_private_dir(&spec.run_dir) {
            let err = RunError::State {
                path: spec.run_dir.clone(),
                source,
            };
            self.network_down(&mut record).await;
            self.cgroup_down(&id).await;
            self.finish_record(record, &Err(err.to_string()));
            links.fail(&err);
            return Err(err);
        }
        self.launches_in_flight.fetch_add(1, Ordering::SeqCst);
        let saved_spec = spec.clone();
        let launched = self
            .launch_or_restore(&hypervisor, spec, plan, &id)
            .await
            .map(|s| (Arc::<dyn Vm>::from(s.vm), s.connected, s.from));
        let live = launched.as_ref().ok().map(|(vm, _, _)| {
            let live = Arc::new(LivePod::new(vm.clone(), &links, main, interactive, 1));
            self.live_pods().insert(id.clone(), live.clone());
            live
        });
        self.launches_in_flight.fetch_sub(1, Ordering::SeqCst);
        let (live, connected) = match (launched, live) {
            (Ok((_, connected, from)), Some(live)) => {
                record.started = Some(from);
                (live, connected)
            }
            (Err(err), _) => {
                self.network_down(&mut record).await;
                self.cgroup_down(&id).await;
                self.finish_record(record, &Err(err.to_string()));
                links.fail(&err);
                return Err(err);
            }
            (Ok((vm, _, _)), None) => {
                // Unreachable by construction; never leave the VM behind.
                let _ = vm.kill().await;
                let _ = vm.wait().await;
                self.network_down(&mut record).await;
                self.cgroup_down(&id).await;
                return Err(RunError::Failed("internal error: pod not tracked".into()));
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            let err = RunError::Stopping;
            self.teardown(&live, record, Err(err.to_string())).await;
            return Err(err);
        }
        let info = live.vm.info();
        record.state = PodState::Running;
        // As Docker's: an OOM kill is about the run that ended.
        record.oom_killed = false;
        record.vm_pid = info.pid;
        record.vm_pid_start = record.vm_pid.and_then(process_start_time);
        record.vm = Some(SavedVm {
            spec: saved_spec,
            info,
            pid_start: record.vm_pid_start,
        });
        self.save(&record);
        Ok((live, record, connected))
    }

    /// Connects to hyperstart (a restored clone's session is `connected`
    /// already), starts the pod (its hostname and volumes) and then its
    /// containers in order.
    async fn boot(
        &self,
        record: &mut PodRecord,
        members: &[Member],
        vm: Arc<dyn Vm>,
        connected: Option<Connected>,
    ) -> Result<Booted, RunError> {
        let id = record.id.clone();
        let console = self.pod_dir(&id).join("console.log");
        let boot_failed = |reason: String| RunError::Boot {
            reason,
            console: console_tail(&console),
        };
        let (agent, ready) = match connected {
            Some(c) => (c.agent, c.ready),
            None => {
                let channel = agent_channel(vm.as_ref());
                let timeout = Duration::from_secs(self.config.vm.boot_timeout_secs);
                let connect = AgentClient::connect(&channel, timeout);
                let step = Instant::now();
                let ready = tokio::select! {
                    r = connect => r.map_err(|e| boot_failed(e.to_string()))?,
                    _ = vm.wait() => return Err(boot_failed("the VM exited during boot".into())),
                };
                step_done(&id, "guest ready", step);
                ready
            }
        };
        tracing::debug!(pod = %id, agent = %ready.agent, version = ready.version, "hyperstart ready");
        let volumes: Vec<crate::podfile::PodVolume> =
            record.tmpfs_volumes().into_iter().cloned().collect();
        let backend = record.backend.clone();
        let plan = super::volumes::plan(&record.mounts, self.share_transport(), &backend)?;
        // Kept for requests into the running pod; a guest's unknown words
        // are not (they would only grow pod.json).
        record.guest_capabilities = capability::ALL
            .iter()
            .filter(|known| ready.capabilities.iter().any(|c| c == *known))
            .map(|c| c.to_string())
            .collect();
        let has = |cap: &str| ready.capabilities.iter().any(|c| c == cap);
        if (!volumes.is_empty() || !plan.volumes.is_empty()) && !has(capability::VOLUMES) {
            return Err(RunError::Failed(format!(
                "the guest agent ({}) does not support volumes; install a payload built from this version",
                ready.agent
            )));
        }
        if plan.needs_host_volumes() && !has(capability::HOST_VOLUMES) {
            return Err(RunError::Failed(format!(
                "the guest agent ({}) cannot mount host, named or block volumes (no capability {}); install a payload built from this version",
                ready.agent,
                capability::HOST_VOLUMES
            )));
        }
        if members.iter().any(|m| !m.security.ulimits.is_empty()) && !has(capability::RLIMITS) {
            return Err(RunError::Failed(format!(
                "the guest agent ({}) cannot set ulimits (no capability {}): install a payload built from this version, or leave out the ulimits",
                ready.agent,
                capability::RLIMITS
            )));
        }
        if members.iter().any(|m| !m.limits.is_unlimited()) && !has(capability::CONTAINER_LIMITS) {
            return Err(RunError::Failed(format!(
                "the guest agent ({}) cannot set container limits (no capability {}): install a payload built from this version, or leave out memory, pids_limit, cpus and cpu_shares (--pids-limit)",
                ready.agent,
                capability::CONTAINER_LIMITS
            )));
        }
        let network = match &record.network {
            Some(att) if ready.capabilities.iter().any(|c| c == capability::NETWORK) => {
                Some(att.guest.clone())
            }
            Some(att) if att.nic.is_some() && record.network_request().explicit() => {
                return Err(RunError::GuestWithoutNetwork(ready.agent.clone()));
            }
            Some(att) => {
                if att.nic.is_some() {
                    tracing::warn!(pod = %id, agent = %ready.agent, "the guest agent does not support networks: the pod runs without one");
                }
                None
            }
            None => None,
        };
        let join_volume = match (record.joinable, self.share_transport()) {
            (false, _) => None,
            (true, Some(t)) if has(capability::HOST_VOLUMES) && has(capability::SHARED_ROOTFS) => {
                Some(super::join::join_volume(t))
            }
            (true, Some(_)) => {
                return Err(RunError::Failed(format!(
                    "the guest agent ({}) cannot take containers into a running pod (no capability {}); install a payload built from this version",
                    ready.agent,
                    capability::SHARED_ROOTFS
                )))
            }
            (true, None) => {
                return Err(RunError::Failed(format!(
                    "the {backend} backend cannot share host directories: pod {id} cannot take joining containers"
                )))
            }
        };
        let pod = PodSpec {
            hostname: record.hostname(),
            volumes: volumes
                .iter()
                .map(|v| VolumeSpec {
                    name: v.name.clone(),
                    size_mib: v.size_mib.unwrap_or(0),
                    source: Default::default(),
                    readonly: false,
                })
                .chain(plan.volumes.iter().cloned())
                .chain(join_volume)
                .collect(),
            network,
        };
        let hostname = pod.hostname.clone();
        let mut pod = Some(pod);
        let mut inits = Vec::with_capacity(members.len());
        for (i, member) in members.iter().enumerate() {
            let streams = agent
                .new_process(&member.init_process)
                .map_err(|e| boot_failed(e.to_string()))?;
            let confinement = crate::security::check(&member.security)?;
            let rlimits = crate::security::rlimits(&member.security)?;
            let mut spec = container_spec(&hostname, i, member, &streams, confinement, rlimits);
            // A pod file's host and named volumes are mounted from the
            // plan, not as the tmpfs volumes of its file.
            spec.mounts
                .retain(|m| volumes.iter().any(|v| v.name == m.volume));
            spec.mounts
                .extend(plan.mounts.get(&member.name).cloned().unwrap_or_default());
            spec.mounts = super::volumes::in_mount_order(spec.mounts);
            let container = Request::NewContainer(spec);
            let step = Instant::now();
            let first = pod.is_some();
            let started = match pod.take() {
                // Pipelined: StartPod and the first container go out back
                // to back and hyperstart serves them in order, saving a
                // round trip that costs tens of milliseconds under
                // emulation.
                Some(pod) => {
                    let (pod_started, started) = tokio::join!(
                        agent.request(Request::StartPod(pod)),
                        agent.request(container),
                    );
                    pod_started?;
                    started
                }
                None => agent.request(container).await,
            };
            step_done(
                &id,
                if first {
                    "start pod and container"
                } else {
                    "start container"
                },
                step,
            );
            match started {
                Ok(reply) => {
                    tracing::debug!(pod = %id, container = %member.guest_id, ?reply, "container started");
                    if let Some(c) = record.containers.get_mut(i) {
                        c.state = PodState::Running;
                        c.oom_killed = false;
                    }
                    inits.push((i, streams));
                }
                Err(e) => return refused(record, i, e, boot_failed),
            }
        }
        Ok(Booted::Running { agent, inits })
    }

    /// Takes a pod's VM down and records how it ended.
    pub(super) async fn teardown(
        &self,
        live: &LivePod,
        record: PodRecord,
        result: Result<RunOutcome, String>,
    ) {
        // Nothing in the guest outlives the pod: the rootfs is read-only and
        // the container's writes live in a tmpfs. A hard stop loses nothing
        // and skips a DestroyPod round trip and the guest's power-off path,
        // both slow under emulation.
        let step = Instant::now();
        if let Err(e) = live.vm.kill().await {
            tracing::warn!(pod = %record.id, "kill: {e}; asking for a shutdown");
            let _ = live.vm.shutdown(SHUTDOWN_GRACE).await;
        }
        let exit = live.vm.wait().await;
        step_done(&record.id, "vm kill", step);
        live.release_volumes();
        // A share's server died: the backend stopped the VM (Kata's rule),
        // and the pod failed whatever its processes said.
        let result = match exit {
            Ok(exit)
                if exit.helper_died.is_some() && !live.stop_requested.load(Ordering::SeqCst) =>
            {
                Err(helper_died_message(exit.helper_died))
            }
            _ => result,
        };
        let mut record = record;
        let step = Instant::now();
        self.network_down(&mut record).await;
        step_done(&record.id, "network down", step);
        let result = self.host_oom_verdict(&mut record, result);
        let id = record.id.clone();
        let step = Instant::now();
        self.cgroup_down(&id).await;
        step_done(&id, "cgroup down", step);
        let step = Instant::now();
        self.finish_record(record, &result);
        step_done(&id, "record finished", step);
        self.live_pods().remove(&id);
        live.links.outcome_tx.send_replace(Some(result));
    }
}

/// What a pod's record and `hyper inspect` say when a helper of its VM
/// ended first.
pub(super) fn helper_died_message(helper: Option<hyper_hypervisor::VmHelper>) -> String {
    match helper {
        Some(hyper_hypervisor::VmHelper::Virtiofsd) | None => {
            "virtiofsd ended; the VM was stopped".to_string()
        }
        Some(hyper_hypervisor::VmHelper::DeviceModel) => {
            "the Xen device model serving its shares ended; the VM was stopped".to_string()
        }
    }
}

/// What hyperstart is asked to start for container `index` of a pod whose
/// hostname is `hostname`.
fn container_spec(
    hostname: &str,
    index: usize,
    m: &Member,
    streams: &ProcessStreams,
    confinement: hyper_protocol::Confinement,
    rlimits: Vec<hyper_protocol::Rlimit>,
) -> ContainerSpec {
    let mut env = m.env.clone();
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={hostname}"));
    }
    ContainerSpec {
        id: m.guest_id.clone(),
        rootfs: RootfsSpec {
            disk_id: disk_id(index),
            fstype: rootfs::FSTYPE.into(),
            share: None,
        },
        // Containers of a pod share its hostname, as in Kubernetes.
        hostname: hostname.to_string(),
        process: ProcessSpec {
            id: m.init_process.clone(),
            args: m.args.clone(),
            env,
            workdir: m.workdir.clone().unwrap_or_else(|| "/".into()),
            user: m.user.clone().unwrap_or_default(),
            terminal: m.tty,
            terminal_size: m.tty_size,
            stdio: streams.stdio,
            stderr: streams.stderr,
            confinement,
            rlimits,
        },
        mounts: m
            .mounts
            .iter()
            .map(|mount| MountSpec {
                volume: mount.volume.clone(),
                path: mount.path.clone(),
                readonly: mount.readonly,
            })
            .collect(),
        resources: m.limits,
    }
}

/// hyperstart would not start container `index`. A pod of one reports a
/// process that could not run (command not found: 127) as its exit; a pod
/// file's pod fails, naming the container.
fn refused(
    record: &mut PodRecord,
    index: usize,
    err: AgentCallError,
    boot_failed: impl Fn(String) -> RunError,
) -> Result<Booted, RunError> {
    let AgentCallError::Agent(e) = err else {
        return Err(err.into());
    };
    if let Some(c) = record.containers.get_mut(index) {
        if let Some(code) = e.exit_code() {
            c.state = PodState::Exited;
            c.exit_code = Some(code);
        }
        return Err(RunError::Failed(format!(
            "container {}: {}",
            c.name, e.message
        )));
    }
    if let Some(code) = e.exit_code() {
        return Ok(Booted::Exited(RunOutcome {
            pod: record.id.clone(),
            exit_code: code,
            message: Some(e.message),
            oom_killed: false,
        }));
    }
    if e.kind == AgentErrorKind::NotFound {
        return Err(boot_failed(format!(
            "the rootfs disk was not found in the guest: {}",
            e.message
        )));
    }
    Err(AgentCallError::Agent(e).into())
}
