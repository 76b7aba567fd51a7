//! The Task service containerd drives over ttrpc. A shim serves one task
//! (one pod of one container, one VM: `ctr run` without CRI annotations),
//! or a CRI sandbox and its containers: the sandbox (pause) task boots the
//! pod's VM, running the pause process, in the sandbox's network namespace
//! (CNI configured it through containerd's CRI plugin, so the pod's IP is
//! the one CRI reports); each container of the pod then joins that VM
//! (`Runtime::join`: its rootfs reaches the guest over the VM's join
//! share), is removed on its own, and the sandbox's end ends the VM.
//! The pid containerd sees for a task is the shim's own (the container's
//! processes live in the guest; the VM is the shim's child's child).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{self, Empty, Status};
use containerd_shim::asynchronous::{publisher::RemotePublisher, ExitSignal};
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::ttrpc::{self, r#async::TtrpcContext};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{Context, Task};
use hyper_core::config::Config;
use hyper_core::plugins::Plugins;
use hyper_core::pods::{ExecRequest, JoinRequest, RunIo, RunOutcome, RunRequest, Runtime, Started};
use hyper_protocol::TerminalSize;
use tokio::sync::{mpsc, watch, Mutex};

use crate::bundle;
use crate::cleanup;
use crate::metrics;
use crate::mounts;
use crate::stdio;

/// How long the output may take to drain into the fifos once the process
/// ended (the core closes the channel right after it).
const OUTPUT_DRAIN: Duration = Duration::from_secs(30);

fn status(code: ttrpc::Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn unimplemented(what: &str) -> ttrpc::Error {
    status(
        ttrpc::Code::UNIMPLEMENTED,
        format!("{what}: not implemented by containerd-shim-hyper-v2 yet"),
    )
}

type Tasks = HashMap<String, TaskState>;

/// The shim's task `id`.
fn the_task<'a>(tasks: &'a Tasks, id: &str) -> ttrpc::Result<&'a TaskState> {
    tasks.get(id).ok_or_else(|| not_found(id))
}

fn the_task_mut<'a>(tasks: &'a mut Tasks, id: &str) -> ttrpc::Result<&'a mut TaskState> {
    tasks.get_mut(id).ok_or_else(|| not_found(id))
}

fn not_found(id: &str) -> ttrpc::Error {
    status(ttrpc::Code::NOT_FOUND, format!("task {id}: not found"))
}

/// How the task ended: exit status and when.
#[derive(Clone)]
struct Exit {
    code: u32,
    at: Timestamp,
}

/// A process of the task (its init, or an exec): its stdio and its end.
struct Proc {
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    started: bool,
    resize: Option<mpsc::Sender<TerminalSize>>,
    /// How CloseIO tells the pump feeding the process's stdin.
    stdin_close: Option<tokio::sync::oneshot::Sender<()>>,
    exit: watch::Receiver<Option<Exit>>,
    exit_tx: Arc<watch::Sender<Option<Exit>>>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        Proc {
            stdin: stdin.to_string(),
            stdout: stdout.to_string(),
            stderr: stderr.to_string(),
            terminal,
            started: false,
            resize: None,
            stdin_close: None,
            exit,
            exit_tx: Arc::new(exit_tx),
        }
    }

    fn status(&self) -> Status {
        match (&*self.exit.borrow(), self.started) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        }
    }

    /// Starts the pumps between containerd's fifos and the core: returns
    /// the core's side of them, and the output pump (done once all output
    /// is in the fifos).
    fn wire(&mut self) -> (RunIo, tokio::task::JoinHandle<()>) {
        let (out_tx, out_rx) = mpsc::channel(stdio::OUTPUT_CHUNKS);
        let stderr = if self.terminal {
            self.stdout.clone()
        } else {
            self.stderr.clone()
        };
        let pump = tokio::spawn(stdio::pump_output(out_rx, self.stdout.clone(), stderr));
        let stdin = if self.stdin.is_empty() {
            None
        } else {
            let (tx, rx) = mpsc::channel(16);
            let (close_tx, close) = tokio::sync::oneshot::channel();
            self.stdin_close = Some(close_tx);
            tokio::spawn(stdio::pump_stdin(PathBuf::from(&self.stdin), tx, close));
            Some(rx)
        };
        let resize = if self.terminal {
            let (tx, rx) = mpsc::channel(8);
            self.resize = Some(tx);
            Some(rx)
        } else {
            None
        };
        self.started = true;
        let io = RunIo {
            output: out_tx,
            stdin,
            resize,
        };
        (io, pump)
    }

    /// The client's input ended: the process reads what is left in the
    /// fifo, then end of file (the pump sends it).
    fn close_stdin(&mut self) {
        if let Some(close) = self.stdin_close.take() {
            let _ = close.send(());
        }
    }
}

struct TaskState {
    id: String,
    bundle: PathBuf,
    init: Proc,
    /// Exec processes by exec id, with what to run until Start takes it.
    execs: HashMap<String, (Proc, Option<ExecRequest>)>,
    /// The core for this task (a CRI container's is its sandbox's).
    runtime: Option<Arc<Runtime>>,
    role: bundle::Role,
    /// What to run, until Start takes it.
    request: Option<RunRequest>,
    /// A CRI container: what joins its sandbox's VM, until Start takes it.
    join: Option<JoinRequest>,
    /// The core's pod, once started (a CRI container's: its sandbox's).
    pod: Option<String>,
    /// Where the shim's rootfs mount is, if it made one.
    rootfs_mount: Option<PathBuf>,
    /// The core's state directory for this task.
    state_dir: PathBuf,
}

impl TaskState {
    fn status(&self) -> Status {
        self.init.status()
    }

    /// A CRI container joining its sandbox's VM.
    fn is_member(&self) -> bool {
        matches!(self.role, bundle::Role::Member { .. })
    }

    /// The init process (`exec_id` empty) or an exec.
    fn proc_mut(&mut self, exec_id: &str) -> ttrpc::Result<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .map(|(p, _)| p)
            .ok_or_else(|| not_found(exec_id))
    }

    fn proc(&self, exec_id: &str) -> ttrpc::Result<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .map(|(p, _)| p)
            .ok_or_else(|| not_found(exec_id))
    }
}

pub struct TaskService {
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Arc<RemotePublisher>,
    tasks: Mutex<Tasks>,
}

impl TaskService {
    pub fn new(namespace: String, exit: Arc<ExitSignal>, publisher: RemotePublisher) -> Self {
        TaskService {
            namespace,
            exit,
            publisher: Arc::new(publisher),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, event: impl Event + 'static) {
        publish(&self.publisher, &self.namespace, event).await;
    }

    /// Tells containerd task `id` started; Start's answer.
    async fn started(&self, id: &str) -> api::StartResponse {
        self.publish(TaskStart {
            container_id: id.to_string(),
            pid: shim_pid(),
            ..Default::default()
        })
        .await;
        api::StartResponse {
            pid: shim_pid(),
            ..Default::default()
        }
    }
}

async fn publish(publisher: &RemotePublisher, namespace: &str, event: impl Event + 'static) {
    let topic = event.topic();
    if let Err(e) = publisher
        .publish(Context::default(), &topic, namespace, Box::new(event))
        .await
    {
        tracing::warn!("publishing {topic}: {e}");
    }
}

fn shim_pid() -> u32 {
    std::process::id()
}

/// Builds the core for one task from the hypercontainer config at
/// `config_path`, its state under the config's state_dir (see
/// [`cleanup::task_state_dir`]).
async fn load_runtime(
    config_path: &Path,
    namespace: &str,
    id: &str,
) -> Result<(Arc<Runtime>, PathBuf), String> {
    let mut config = Config::load(Some(config_path))
        .map_err(|e| format!("hypercontainer config (runtime option ConfigPath): {e}"))?;
    let state_dir = cleanup::task_state_dir(&config.runtime.state_dir, namespace, id);
    hyper_core::private::create_private_dir(&state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    config.runtime.state_dir = state_dir.clone();
    let plugins = Plugins::load(&config)
        .await
        .map_err(|e| format!("{}: {e}", config.source_name()))?;
    let runtime = Runtime::new(config, plugins).map_err(|e| e.to_string())?;
    Ok((Arc::new(runtime), state_dir))
}

impl TaskService {
    async fn create_task(
        &self,
        req: &api::CreateTaskRequest,
        tasks: &Tasks,
    ) -> Result<TaskState, String> {
        let bundle_dir = PathBuf::from(&req.bundle);
        let (spec, process) = bundle::read_spec(&bundle_dir).map_err(|e| e.to_string())?;
        let role = spec.role();
        // Kubernetes' resources.limits, applied in the guest to this
        // container's cgroup.
        let limits = spec.limits()?;
        let config_path = bundle::config_path(req.options.as_ref()).map_err(|e| e.to_string())?;
        cleanup::remember_config(&bundle_dir, &config_path).map_err(|e| e.to_string())?;
        // A CRI container joins its sandbox's VM: its network and hostname
        // are the pod's (its spec names the sandbox's namespace through the
        // sandbox task's pid, the shim's own here).
        let mut sandbox_pod = None;
        if let bundle::Role::Member { sandbox } = &role {
            let sb = tasks
                .get(sandbox)
                .filter(|t| t.role == bundle::Role::Sandbox)
                .ok_or_else(|| {
                    format!(
                        "CRI sandbox {sandbox} of container {} is not served by this shim",
                        req.id
                    )
                })?;
            match (&sb.runtime, &sb.pod, sb.status()) {
                (Some(runtime), Some(pod), Status::RUNNING) => {
                    sandbox_pod = Some((runtime.clone(), pod.clone()));
                }
                _ => {
                    return Err(format!(
                        "CRI sandbox {sandbox} of container {}: its VM does not run",
                        req.id
                    ))
                }
            }
        }
        let mapped = mounts::map(&spec.mounts).map_err(|e| e.to_string())?;
        if !mapped.skipped.is_empty() {
            tracing::debug!(task = %req.id, skipped = ?mapped.skipped, "spec mounts the guest makes itself");
        }
        let security =
            crate::confine::security(&process, spec.linux.as_ref()).map_err(|e| e.to_string())?;
        if sandbox_pod.is_some() && !mapped.volumes.is_empty() {
            tracing::warn!(task = %req.id, "volumes of a container joining a running pod are not mounted (not supported yet)");
        }
        let netns = match sandbox_pod {
            Some(_) => None,
            None => spec.netns(),
        };
        if let Some(ns) = &netns {
            check_netns(ns)?;
        }
        let rootfs = bundle_dir.join("rootfs");
        let rootfs_mount = match req.rootfs.as_slice() {
            [] => None,
            [m] => {
                std::fs::create_dir_all(&rootfs)
                    .map_err(|e| format!("cannot create {}: {e}", rootfs.display()))?;
                containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                    .await
                    .map_err(|e| format!("mounting the rootfs at {}: {e}", rootfs.display()))?;
                Some(rootfs.clone())
            }
            more => {
                return Err(format!(
                    "{} rootfs mounts: this shim takes one (an overlay or a bind)",
                    more.len()
                ))
            }
        };
        let undo = |e: String| {
            if let Some(m) = &rootfs_mount {
                cleanup::unmount(m);
            }
            e
        };
        if !rootfs.is_dir() {
            return Err(undo(format!(
                "the bundle's rootfs {} is missing: containerd gave no rootfs mount and the bundle has none",
                rootfs.display()
            )));
        }
        if let Some((runtime, pod)) = sandbox_pod {
            let join = JoinRequest {
                name: req.id.clone(),
                rootfs,
                args: process.args.clone(),
                env: process.env.clone(),
                workdir: Some(process.cwd.clone()).filter(|c| !c.is_empty()),
                user: Some(process.user_spec()),
                interactive: !req.stdin.is_empty(),
                tty: req.terminal,
                tty_size: process.terminal_size(),
                limits,
                security,
            };
            return Ok(TaskState {
                id: req.id.clone(),
                bundle: bundle_dir,
                init: Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                execs: HashMap::new(),
                runtime: Some(runtime),
                role,
                request: None,
                join: Some(join),
                pod: Some(pod),
                rootfs_mount,
                state_dir: PathBuf::new(),
            });
        }
        let (runtime, state_dir) = load_runtime(&config_path, &self.namespace, &req.id)
            .await
            .map_err(undo)?;
        let dns = mapped.dns.unwrap_or_default();
        let network = hyper_network::NetworkRequest {
            // Without a namespace path (`ctr run`) the pod has only lo.
            network: if netns.is_some() {
                None
            } else {
                Some(hyper_network::NONE.into())
            },
            dns: dns.servers,
            dns_search: dns.search,
            dns_options: dns.options,
            netns_configured: netns.is_some(),
            netns,
            ..Default::default()
        };
        let request = RunRequest {
            rootfs: Some(rootfs),
            image: None,
            entrypoint: Some(Vec::new()),
            args: process.args.clone(),
            env: process.env.clone(),
            workdir: Some(process.cwd.clone()).filter(|c| !c.is_empty()),
            user: Some(process.user_spec()),
            cpus: None,
            memory_mib: None,
            // The task's own state dir goes at Delete; the pod's VM and
            // files go as soon as its process ends.
            remove: true,
            interactive: !req.stdin.is_empty(),
            name: None,
            labels: Default::default(),
            restart: Default::default(),
            tty: req.terminal,
            tty_size: process.terminal_size(),
            security,
            network,
            hostname: spec.hostname.filter(|h| !h.is_empty()),
            volumes: mapped.volumes,
            start: None,
            limits,
        };
        Ok(TaskState {
            id: req.id.clone(),
            bundle: bundle_dir,
            init: Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            execs: HashMap::new(),
            runtime: Some(runtime),
            role,
            request: Some(request),
            join: None,
            pod: None,
            rootfs_mount,
            state_dir,
        })
    }
}

/// A namespace to take over as the pod's network: it must exist and must
/// not be the shim's own (the host's: its `eth0` would be redirected into
/// the VM).
fn check_netns(ns: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(ns)
        .map_err(|e| format!("the spec's network namespace {}: {e}", ns.display()))?;
    let own =
        std::fs::metadata("/proc/self/ns/net").map_err(|e| format!("/proc/self/ns/net: {e}"))?;
    if (meta.dev(), meta.ino()) == (own.dev(), own.ino()) {
        return Err(format!(
            "the spec's network namespace {} is the host's: a VM pod takes a namespace of its own (host networking is not supported)",
            ns.display()
        ));
    }
    Ok(())
}

/// How a process ended, as the core tells it.
#[derive(Clone, Copy)]
struct Ending {
    code: i32,
    /// An OOM killer ended it (the guest's, or the host's of the VM).
    oom_killed: bool,
}

impl Ending {
    fn failed() -> Self {
        Ending {
            code: hyper_core::pods::RUNTIME_FAILURE_EXIT,
            oom_killed: false,
        }
    }
}

/// Ends the task with `ending` once its output has drained, and tells
/// containerd: `/tasks/oom` first when an OOM killer ended it (as runc's
/// and Kata's shims do, so containerd's CRI reports `OOMKilled`), then
/// `/tasks/exit`.
async fn finish(
    publisher: Arc<RemotePublisher>,
    namespace: String,
    id: String,
    exec_id: String,
    exit_tx: Arc<watch::Sender<Option<Exit>>>,
    ending: Ending,
    pump: tokio::task::JoinHandle<()>,
) {
    if tokio::time::timeout(OUTPUT_DRAIN, pump).await.is_err() {
        tracing::warn!(task = %id, "output still draining after {OUTPUT_DRAIN:?}; ending the task");
    }
    let code = ending.code;
    // Before the exit is visible: containerd's CRI marks the container
    // OOM-killed only if the event comes before it handles the exit.
    if ending.oom_killed {
        tracing::warn!(task = %id, "an OOM killer ended the task's process");
        publish(
            &publisher,
            &namespace,
            TaskOOM {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await;
    }
    let exit = Exit {
        code: u32::try_from(code).unwrap_or(255),
        at: Timestamp::now(),
    };
    exit_tx.send_replace(Some(exit.clone()));
    publish(
        &publisher,
        &namespace,
        TaskExit {
            container_id: id.clone(),
            id: if exec_id.is_empty() { id } else { exec_id },
            pid: shim_pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        },
    )
    .await;
}

fn outcome_ending(o: Option<&Result<RunOutcome, String>>) -> Ending {
    match o {
        Some(Ok(o)) => Ending {
            code: o.exit_code,
            oom_killed: o.oom_killed,
        },
        _ => Ending::failed(),
    }
}

impl TaskService {
    /// Starts exec `req.exec_id`: the core runs it in the task's container
    /// until it ends; its end is published like the init's.
    async fn start_exec(&self, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let mut slot = self.tasks.lock().await;
        let task = the_task_mut(&mut slot, &req.id)?;
        let member = task.is_member().then(|| task.id.clone());
        let (runtime, pod) = match (&task.pod, &task.runtime) {
            (Some(pod), Some(runtime)) if task.init.status() == Status::RUNNING => {
                (runtime.clone(), pod.clone())
            }
            _ => {
                return Err(status(
                    ttrpc::Code::FAILED_PRECONDITION,
                    format!("task {}: not running", req.id),
                ))
            }
        };
        let (p, exec) = task
            .execs
            .get_mut(&req.exec_id)
            .ok_or_else(|| not_found(&req.exec_id))?;
        let mut exec = exec.take().ok_or_else(|| {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("exec {}: already started", req.exec_id),
            )
        })?;
        // A CRI container's exec runs in it, not in the pod's pause.
        exec.container = member;
        let (io, pump) = p.wire();
        let exit_tx = p.exit_tx.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        tokio::spawn(async move {
            let ending = match runtime.exec(&pod, exec, io).await {
                Ok(o) => {
                    if let Some(m) = &o.message {
                        tracing::warn!(task = %id, exec = %exec_id, "{m}");
                    }
                    Ending {
                        code: o.exit_code,
                        oom_killed: o.oom_killed,
                    }
                }
                Err(e) => {
                    tracing::warn!(task = %id, exec = %exec_id, "exec: {e}");
                    Ending::failed()
                }
            };
            finish(publisher, namespace, id, exec_id, exit_tx, ending, pump).await;
        });
        drop(slot);
        self.publish(TaskExecStarted {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            pid: shim_pid(),
            ..Default::default()
        })
        .await;
        Ok(api::StartResponse {
            pid: shim_pid(),
            ..Default::default()
        })
    }
}

/// Forgets an exec that ended (or never started).
fn delete_exec(slot: &mut Tasks, req: &api::DeleteRequest) -> ttrpc::Result<api::DeleteResponse> {
    let task = the_task_mut(slot, &req.id)?;
    let p = task.proc(&req.exec_id)?;
    if p.status() == Status::RUNNING {
        return Err(status(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("exec {}: still running", req.exec_id),
        ));
    }
    let exit = p.exit.borrow().clone().unwrap_or(Exit {
        code: 0,
        at: Timestamp::now(),
    });
    task.execs.remove(&req.exec_id);
    Ok(api::DeleteResponse {
        pid: shim_pid(),
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let mut slot = self.tasks.lock().await;
        if slot.contains_key(&req.id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("task {}: already exists", req.id),
            ));
        }
        let task = self.create_task(&req, &slot).await.map_err(|e| {
            tracing::warn!(task = %req.id, "create: {e}");
            status(ttrpc::Code::FAILED_PRECONDITION, e)
        })?;
        slot.insert(req.id.clone(), task);
        drop(slot);
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(containerd_shim::protos::events::task::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: shim_pid(),
            ..Default::default()
        })
        .await;
        Ok(api::CreateTaskResponse {
            pid: shim_pid(),
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        if !req.exec_id.is_empty() {
            return self.start_exec(req).await;
        }
        let mut slot = self.tasks.lock().await;
        let task = the_task_mut(&mut slot, &req.id)?;
        let already = || {
            status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {}: already started", req.id),
            )
        };
        let runtime = task.runtime.clone().ok_or_else(already)?;
        let what = match (task.request.take(), task.join.take(), &task.pod) {
            (Some(run), _, _) => Ok(run),
            (None, Some(join), Some(pod)) => Err((join, pod.clone())),
            _ => return Err(already()),
        };
        let sandbox = task.role == bundle::Role::Sandbox;
        let (io, pump) = task.init.wire();
        let exit_tx = task.init.exit_tx.clone();
        // The VM boots without the lock: the shim's other tasks (a CRI
        // sandbox's) keep answering meanwhile.
        drop(slot);
        let started: Result<Started, _> = match what {
            // The sandbox's VM takes its containers later.
            Ok(run) if sandbox => runtime.create_joinable(run, Some(io)).await,
            Ok(run) => runtime.create(run, Some(io)).await,
            Err((join, pod)) => runtime.join(&pod, join, io).await,
        };
        let started = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task = %req.id, "start: {e}");
                pump.abort();
                exit_tx.send_replace(Some(Exit {
                    code: u32::try_from(hyper_core::pods::RUNTIME_FAILURE_EXIT).unwrap_or(255),
                    at: Timestamp::now(),
                }));
                return Err(status(ttrpc::Code::UNKNOWN, e.to_string()));
            }
        };
        let mut slot = self.tasks.lock().await;
        if let Some(task) = slot.get_mut(&req.id) {
            task.pod = Some(started.id.clone());
        }
        // A CRI container that could not start is gone from its pod.
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let id = req.id.clone();
        match started.early {
            Some(early) => {
                if let Some(m) = &early.message {
                    tracing::warn!(task = %id, "the process did not start: {m}");
                }
                tokio::spawn(finish(
                    publisher,
                    namespace,
                    id,
                    String::new(),
                    exit_tx,
                    Ending {
                        code: early.exit_code,
                        oom_killed: early.oom_killed,
                    },
                    pump,
                ));
            }
            None => {
                let mut outcome = started.outcome;
                tokio::spawn(async move {
                    let ending = match outcome.wait_for(Option::is_some).await {
                        Ok(o) => outcome_ending(o.as_ref()),
                        Err(_) => Ending::failed(),
                    };
                    finish(
                        publisher,
                        namespace,
                        id,
                        String::new(),
                        exit_tx,
                        ending,
                        pump,
                    )
                    .await;
                });
            }
        }
        drop(slot);
        Ok(self.started(&req.id).await)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let slot = self.tasks.lock().await;
        let task = the_task(&slot, &req.id)?;
        let p = task.proc(&req.exec_id)?;
        let exit = p.exit.borrow().clone();
        Ok(api::StateResponse {
            id: task.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: task.bundle.display().to_string(),
            pid: shim_pid(),
            status: EnumOrUnknown::new(p.status()),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: exit.as_ref().map_or(0, |e| e.code),
            exited_at: exit.map(|e| e.at).into(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut exit = {
            let slot = self.tasks.lock().await;
            let task = the_task(&slot, &req.id)?;
            task.proc(&req.exec_id)?.exit.clone()
        };
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| status(ttrpc::Code::UNKNOWN, "the task's supervisor is gone"))?
            .clone();
        let exit = exit.ok_or_else(|| status(ttrpc::Code::UNKNOWN, "no exit status"))?;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        if !req.exec_id.is_empty() {
            return Err(status(
                ttrpc::Code::UNIMPLEMENTED,
                "kill of an exec: the core signals a container's first process only (yet)",
            ));
        }
        let slot = self.tasks.lock().await;
        let task = the_task(&slot, &req.id)?;
        let signal = i32::try_from(req.signal)
            .map_err(|_| status(ttrpc::Code::INVALID_ARGUMENT, "signal out of range"))?;
        // A CRI container's pod is its sandbox's from Create on; it runs
        // once started.
        let pod = task.pod.as_ref().filter(|_| task.init.started);
        match (task.status(), pod) {
            (Status::STOPPED, _) => Err(status(
                ttrpc::Code::NOT_FOUND,
                format!("task {}: process already finished", req.id),
            )),
            (_, Some(pod)) => match &task.runtime {
                Some(runtime) => {
                    let killed = if task.is_member() {
                        runtime.kill_joined(pod, &task.id, signal).await
                    } else {
                        runtime.kill(pod, signal).await
                    };
                    killed
                        .map(|()| Empty::default())
                        .map_err(|e| status(ttrpc::Code::UNKNOWN, e.to_string()))
                }
                None => Err(not_found(&req.id)),
            },
            (_, None) => {
                // Never started: it ends as killed by the signal.
                let exit = Exit {
                    code: 128 + req.signal,
                    at: Timestamp::now(),
                };
                task.init.exit_tx.send_replace(Some(exit.clone()));
                drop(slot);
                Ok(Empty::default())
            }
        }
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let mut slot = self.tasks.lock().await;
        if !req.exec_id.is_empty() {
            return delete_exec(&mut slot, &req);
        }
        let task = the_task(&slot, &req.id)?;
        if task.status() == Status::RUNNING {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {}: still running; kill it first", req.id),
            ));
        }
        let Some(task) = slot.remove(&req.id) else {
            return Err(not_found(&req.id));
        };
        drop(slot);
        let exit = task.init.exit.borrow().clone().unwrap_or(Exit {
            code: 0,
            at: Timestamp::now(),
        });
        match (&task.runtime, &task.pod) {
            // A CRI container leaves its pod; the pod goes on.
            (Some(runtime), Some(pod)) if task.is_member() => {
                if let Err(e) = runtime.remove_joined(pod, &task.id).await {
                    tracing::debug!(task = %task.id, "leaving pod {pod}: {e}");
                }
            }
            (Some(runtime), _) => runtime.shutdown().await,
            (None, _) => {}
        }
        if let Some(m) = &task.rootfs_mount {
            cleanup::unmount(m);
        }
        if !task.state_dir.as_os_str().is_empty() {
            cleanup::remove_state(&task.state_dir);
        }
        self.publish(TaskDelete {
            container_id: task.id.clone(),
            pid: shim_pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        })
        .await;
        Ok(api::DeleteResponse {
            pid: shim_pid(),
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let slot = self.tasks.lock().await;
        the_task(&slot, &req.id)?;
        Ok(api::PidsResponse {
            processes: vec![ProcessInfo {
                pid: shim_pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<Empty> {
        let slot = self.tasks.lock().await;
        let task = the_task(&slot, &req.id)?;
        if let Some(tx) = &task.proc(&req.exec_id)?.resize {
            let size = TerminalSize {
                rows: u16::try_from(req.height).unwrap_or(u16::MAX),
                cols: u16::try_from(req.width).unwrap_or(u16::MAX),
            };
            // A full queue drops this size: a newer one follows.
            let _ = tx.try_send(size);
        }
        Ok(Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<Empty> {
        // The client's input ended (ctr calls it when its stdin reaches end
        // of file): the container reads end of file.
        let mut slot = self.tasks.lock().await;
        let task = the_task_mut(&mut slot, &req.id)?;
        if req.stdin {
            task.proc_mut(&req.exec_id)?.close_stdin();
        }
        Ok(Empty::default())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let slot = self.tasks.lock().await;
        the_task(&slot, &req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: shim_pid(),
            task_pid: shim_pid(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<Empty> {
        if !self.tasks.lock().await.is_empty() {
            // containerd asks after each task's Delete; the server ends
            // with its last task (a CRI sandbox's shim serves several).
            return Ok(Empty::default());
        }
        self.exit.signal();
        Ok(Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        let process = bundle::exec_process(req.spec.as_ref())
            .map_err(|e| status(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let mut slot = self.tasks.lock().await;
        let task = the_task_mut(&mut slot, &req.id)?;
        if task.status() != Status::RUNNING {
            return Err(status(
                ttrpc::Code::FAILED_PRECONDITION,
                format!("task {}: not running", req.id),
            ));
        }
        if req.exec_id.is_empty() || task.execs.contains_key(&req.exec_id) {
            return Err(status(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {:?}: empty or already in use", req.exec_id),
            ));
        }
        let exec = ExecRequest {
            args: process.args.clone(),
            env: process.env.clone(),
            workdir: Some(process.cwd.clone()).filter(|c| !c.is_empty()),
            user: Some(process.user_spec()),
            interactive: !req.stdin.is_empty(),
            container: None,
            tty: req.terminal,
            tty_size: process.terminal_size(),
            privileged: false,
        };
        let p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        task.execs.insert(req.exec_id.clone(), (p, Some(exec)));
        drop(slot);
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let (runtime, pod) = {
            let slot = self.tasks.lock().await;
            let task = the_task(&slot, &req.id)?;
            match (&task.runtime, &task.pod) {
                (Some(r), Some(p)) if task.status() == Status::RUNNING => (r.clone(), p.clone()),
                _ => {
                    return Err(status(
                        ttrpc::Code::FAILED_PRECONDITION,
                        format!("task {}: not running", req.id),
                    ))
                }
            }
        };
        let vm = runtime
            .stats(&pod)
            .await
            .map_err(|e| status(ttrpc::Code::UNKNOWN, e.to_string()))?;
        let any = containerd_shim::util::convert_to_any(Box::new(metrics::of_vm(&vm)))
            .map_err(|e| status(ttrpc::Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> ttrpc::Result<Empty> {
        Err(unimplemented("pause"))
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        Err(unimplemented("resume"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<Empty> {
        Err(status(
            ttrpc::Code::UNIMPLEMENTED,
            "checkpoint: a VM's container cannot be checkpointed by containerd-shim-hyper-v2",
        ))
    }
}
