//! The pod path against an in-memory hypervisor whose VMs run the fake
//! hyperstart: boot failures, the restart policy, stop during boot, and the
//! decisions of a takeover. Nothing here boots a real VM.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::{
    AgentChannel, Capabilities, Hypervisor, HypervisorError, ProbeReport, Vm, VmExit, VmInfo,
    VmSpec, VmStats,
};
use hyper_protocol::{
    AgentError, AgentErrorKind, Frame, FrameDecoder, GuestMessage, ProcessState, Reply, Request,
    PROTOCOL_VERSION, RESYNC_MAGIC,
};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::model::tests::{OLD_POD_FILE_POD, OLD_POD_OF_ONE};
use super::*;
use crate::agent::fake_guest::FakeGuest;
use crate::config::Config;
use crate::plugins::Plugins;

/// How the hyperstart of a fake VM behaves.
#[derive(Clone, Debug)]
enum Guest {
    /// Comes up and starts every container; each first process exits with
    /// `exit` once started (never, with `None`), and with `on_term` when
    /// sent SIGTERM (ignores it, with `None`).
    Runs {
        exit: Option<i32>,
        on_term: Option<i32>,
    },
    /// Starts every container, whose first process the guest's OOM killer
    /// ends at once (137, `oom_killed`).
    OomKilled,
    /// Accepts the connection and never says READY.
    Silent,
    /// Refuses to start the container: its command does not exist.
    CommandNotFound,
    /// A guest a restarted hyperd finds: it answers the resync with
    /// `processes`, then ends those still running with `exit`.
    Reattach {
        processes: Vec<ProcessState>,
        exit: i32,
    },
    /// A clone restored from a template: answers the resync with no
    /// process, records the `Resume` it gets, then runs as `Runs`.
    Clone {
        exit: Option<i32>,
        resumes: Arc<Mutex<Vec<hyper_protocol::ResumeSpec>>>,
    },
    /// Advertises `container-limits`, records each container's limits and
    /// ends its first process at once with 0.
    Limits {
        seen: Arc<Mutex<Vec<(String, hyper_protocol::ResourceLimits)>>>,
    },
}

/// What the next `launch` does.
enum Launch {
    Fails,
    Boots(Guest),
}

/// An in-memory backend: each VM is a watch flag and a task serving the
/// fake hyperstart on the VM's agent socket.
struct FakeHypervisor {
    launches: Mutex<VecDeque<Launch>>,
    /// When the script is used up.
    default_guest: Guest,
    /// What `recover` finds, by VM id: a guest; none for a VM gone.
    recoveries: Mutex<HashMap<String, Guest>>,
    /// Every VM launched or recovered, by whether it has ended.
    vms: Mutex<Vec<watch::Receiver<bool>>>,
    launched: Mutex<usize>,
    /// Whether it saves and restores templates.
    templates: bool,
    /// VMs launched to be saved as templates, and clones restored.
    template_launches: Mutex<usize>,
    restores: Mutex<usize>,
    /// The `Resume` each clone's guest got.
    resumes: Arc<Mutex<Vec<hyper_protocol::ResumeSpec>>>,
    /// Whether it shares host directories (virtio-fs).
    shares: bool,
    /// The shares of each VM launched.
    launched_shares: Mutex<Vec<Vec<hyper_hypervisor::ShareSpec>>>,
}

impl FakeHypervisor {
    fn new(default_guest: Guest) -> Arc<Self> {
        Arc::new(Self {
            launches: Mutex::new(VecDeque::new()),
            default_guest,
            recoveries: Mutex::new(HashMap::new()),
            vms: Mutex::new(Vec::new()),
            launched: Mutex::new(0),
            templates: false,
            template_launches: Mutex::new(0),
            restores: Mutex::new(0),
            resumes: Arc::new(Mutex::new(Vec::new())),
            shares: false,
            launched_shares: Mutex::new(Vec::new()),
        })
    }

    /// A backend that shares host directories (containers can join its
    /// pods).
    fn sharing(default_guest: Guest) -> Arc<Self> {
        let mut hv = Arc::into_inner(Self::new(default_guest)).unwrap();
        hv.shares = true;
        Arc::new(hv)
    }

    /// A backend that saves and restores templates; its clones' guests
    /// exit with `exit`.
    fn with_templates(exit: Option<i32>) -> Arc<Self> {
        let mut hv = Arc::into_inner(Self::new(Guest::Runs {
            exit,
            on_term: None,
        }))
        .unwrap();
        hv.templates = true;
        Arc::new(hv)
    }

    fn then(self: &Arc<Self>, launch: Launch) -> Arc<Self> {
        lock(&self.launches).push_back(launch);
        self.clone()
    }

    fn launched(&self) -> usize {
        *lock(&self.launched)
    }

    fn all_vms_ended(&self) -> bool {
        lock(&self.vms).iter().all(|rx| *rx.borrow())
    }

    fn start_vm(
        &self,
        id: String,
        socket: PathBuf,
        guest: Guest,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .map_err(|e| HypervisorError::LaunchFailed(e.to_string()))?;
        let (ended, mut ended_rx) = watch::channel(false);
        lock(&self.vms).push(ended.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = serve(listener, guest) => {}
                _ = ended_rx.wait_for(|e| *e) => {}
            }
        });
        Ok(Box::new(FakeVm {
            info: VmInfo {
                id,
                agent_channel: AgentChannel::UnixSocket(socket),
                pid: None,
            },
            ended,
        }))
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recover: true,
            share_transport: self
                .shares
                .then_some(hyper_hypervisor::ShareTransport::VirtioFs),
            templates: self.templates,
        }
    }

    async fn probe(&self) -> ProbeReport {
        ProbeReport {
            usable: true,
            reason: "in memory".into(),
            details: Default::default(),
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        *lock(&self.launched) += 1;
        lock(&self.launched_shares).push(spec.shares.clone());
        if spec.save_as_template {
            *lock(&self.template_launches) += 1;
        }
        let next = lock(&self.launches).pop_front();
        let guest = match next {
            Some(Launch::Fails) => {
                return Err(HypervisorError::LaunchFailed("no such machine".into()))
            }
            Some(Launch::Boots(guest)) => guest,
            None => self.default_guest.clone(),
        };
        self.start_vm(spec.id, spec.run_dir.join("agent.sock"), guest)
    }

    async fn recover(
        &self,
        _spec: VmSpec,
        info: VmInfo,
        _pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let found = lock(&self.recoveries).remove(&info.id);
        let Some(guest) = found else {
            return Err(HypervisorError::NotFound(info.id));
        };
        let AgentChannel::UnixSocket(socket) = info.agent_channel;
        self.start_vm(info.id, socket, guest)
    }

    async fn restore(
        &self,
        spec: VmSpec,
        template: &std::path::Path,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        let state = std::fs::read(template.join("state")).unwrap_or_default();
        if state != b"saved" {
            return Err(HypervisorError::TemplateRejected(
                "its state's checksum does not match".into(),
            ));
        }
        *lock(&self.restores) += 1;
        let exit = match &self.default_guest {
            Guest::Runs { exit, .. } => *exit,
            _ => None,
        };
        let guest = Guest::Clone {
            exit,
            resumes: self.resumes.clone(),
        };
        self.start_vm(spec.id, spec.run_dir.join("agent.sock"), guest)
    }
}

struct FakeVm {
    info: VmInfo,
    ended: watch::Sender<bool>,
}

#[async_trait]
impl Vm for FakeVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut rx = self.ended.subscribe();
        let _ = rx.wait_for(|e| *e).await;
        Ok(VmExit {
            code: None,
            signal: Some(libc::SIGKILL),
            helper_died: None,
        })
    }

    async fn shutdown(&self, _grace: Duration) -> Result<(), HypervisorError> {
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        self.ended.send_replace(true);
        Ok(())
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        Ok(VmStats::default())
    }

    async fn save_template(&self, dir: &std::path::Path) -> Result<(), HypervisorError> {
        std::fs::write(dir.join("state"), b"saved")
            .map_err(|e| HypervisorError::Io(e.to_string()))?;
        self.ended.send_replace(true);
        Ok(())
    }
}

/// Ends a process as hyperstart does: its output, then its exit.
async fn finish(g: &mut FakeGuest, container: &str, process: &str, streams: (u32, u32), code: i32) {
    finish_as(g, container, process, streams, code, false).await;
}

/// As [`finish`], saying whether the OOM killer ended it.
async fn finish_as(
    g: &mut FakeGuest,
    container: &str,
    process: &str,
    streams: (u32, u32),
    code: i32,
    oom_killed: bool,
) {
    g.send_raw(&Frame::data(streams.0, b"out\n".to_vec()).encode())
        .await;
    g.send_raw(&Frame::eof(streams.0).encode()).await;
    g.send_raw(&Frame::eof(streams.1).encode()).await;
    g.send(&GuestMessage::ProcessExit {
        container: container.into(),
        process: process.into(),
        status: code,
        oom_killed,
    })
    .await;
}

/// The fake hyperstart on one VM's agent socket.
async fn serve(listener: UnixListener, guest: Guest) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    if let Guest::Silent = guest {
        let _held = stream;
        return std::future::pending::<()>().await;
    }
    let resync = matches!(guest, Guest::Reattach { .. } | Guest::Clone { .. });
    let mut g = FakeGuest {
        stream,
        decoder: if resync {
            FrameDecoder::resynchronising()
        } else {
            FrameDecoder::new()
        },
    };
    // Running first processes: (container, process, stdio, stderr).
    let mut running: Vec<(String, String, u32, u32)> = Vec::new();
    if !resync {
        let mut capabilities: Vec<String> = vec![
            "flow-control".into(),
            "volumes".into(),
            "host-volumes".into(),
            "resume".into(),
            "shared-rootfs".into(),
        ];
        if matches!(guest, Guest::Limits { .. }) {
            capabilities.push(hyper_protocol::capability::CONTAINER_LIMITS.into());
        }
        g.send(&GuestMessage::Ready {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities,
            agent: "fake".into(),
        })
        .await;
    }
    while let Some(msg) = g.next_request().await {
        match (msg.request, &guest) {
            (Request::Reattach { nonce }, Guest::Reattach { processes, exit }) => {
                let mut marker = RESYNC_MAGIC.to_vec();
                marker.extend_from_slice(nonce.as_bytes());
                g.send_raw(&marker).await;
                let processes = processes.clone();
                g.reply(
                    msg.id,
                    Ok(Reply::Reattached {
                        processes: processes.clone(),
                    }),
                )
                .await;
                for p in processes.iter().filter(|p| p.exit_status.is_none()) {
                    finish(&mut g, &p.container, &p.process, (p.stdio, p.stderr), *exit).await;
                }
            }
            (Request::Reattach { nonce }, Guest::Clone { .. }) => {
                let mut marker = RESYNC_MAGIC.to_vec();
                marker.extend_from_slice(nonce.as_bytes());
                g.send_raw(&marker).await;
                g.reply(msg.id, Ok(Reply::Reattached { processes: vec![] }))
                    .await;
            }
            (Request::Resume(spec), Guest::Clone { resumes, .. }) => {
                lock(resumes).push(spec);
                g.reply(msg.id, Ok(Reply::Ok)).await;
            }
            (Request::NewContainer(spec), Guest::OomKilled) => {
                g.reply(msg.id, Ok(Reply::Started { pid: 2 })).await;
                let p = &spec.process;
                finish_as(&mut g, &spec.id, &p.id, (p.stdio, p.stderr), 137, true).await;
            }
            (Request::NewContainer(spec), Guest::Limits { seen }) => {
                lock(seen).push((spec.id.clone(), spec.resources));
                g.reply(msg.id, Ok(Reply::Started { pid: 2 })).await;
                let p = &spec.process;
                finish(&mut g, &spec.id, &p.id, (p.stdio, p.stderr), 0).await;
            }
            (Request::NewContainer(_), Guest::CommandNotFound) => {
                let refusal = AgentError::new(AgentErrorKind::CommandNotFound, "no such command");
                g.reply(msg.id, Err(refusal)).await;
            }
            (Request::NewContainer(spec), Guest::Runs { exit, .. } | Guest::Clone { exit, .. }) => {
                g.reply(msg.id, Ok(Reply::Started { pid: 2 })).await;
                let p = &spec.process;
                match exit {
                    Some(code) => finish(&mut g, &spec.id, &p.id, (p.stdio, p.stderr), *code).await,
                    None => running.push((spec.id.clone(), p.id.clone(), p.stdio, p.stderr)),
                }
            }
            (
                Request::Signal {
                    container, signal, ..
                },
                Guest::Runs {
                    on_term: Some(code),
                    ..
                },
            ) if signal == libc::SIGTERM => {
                g.reply(msg.id, Ok(Reply::Ok)).await;
                if let Some(i) = running.iter().position(|p| p.0 == container) {
                    let (c, p, o, e) = running.remove(i);
                    finish(&mut g, &c, &p, (o, e), *code).await;
                }
            }
            (
                Request::Signal {
                    container, signal, ..
                },
                Guest::Runs { .. },
            ) if signal == libc::SIGKILL => {
                g.reply(msg.id, Ok(Reply::Ok)).await;
                if let Some(i) = running.iter().position(|p| p.0 == container) {
                    let (c, p, o, e) = running.remove(i);
                    finish(&mut g, &c, &p, (o, e), 128 + libc::SIGKILL).await;
                }
            }
            _ => g.reply(msg.id, Ok(Reply::Ok)).await,
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    hv: Arc<FakeHypervisor>,
    rt: Arc<Runtime>,
}

impl Setup {
    fn new(hv: Arc<FakeHypervisor>) -> Self {
        Self::with_boot_timeout(hv, 60)
    }

    fn with_boot_timeout(hv: Arc<FakeHypervisor>, secs: u64) -> Self {
        Self::with_config(hv, |c| c.vm.boot_timeout_secs = secs)
    }

    fn with_config(hv: Arc<FakeHypervisor>, edit: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.runtime.state_dir = dir.path().join("state");
        config.payload.kernel = dir.path().join("kernel");
        config.payload.initrd = dir.path().join("initrd");
        config.vm.boot_timeout_secs = 60;
        // No CNI network: the fake VMs have no NIC, whatever the host has
        // installed in /etc/hyper/cni/net.d.
        config.network.cni_conf_dir = dir.path().join("no-networks");
        // The fake VMs run no host process to confine (the real cgroups
        // are tested in crate::cgroups and end to end).
        config.runtime.cgroups = false;
        std::fs::write(&config.payload.kernel, b"k").unwrap();
        std::fs::write(&config.payload.initrd, b"i").unwrap();
        std::fs::create_dir_all(&config.runtime.state_dir).unwrap();
        edit(&mut config);
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/true"), b"").unwrap();
        let rt = Arc::new(Runtime::new(config, Plugins::only(hv.clone())).unwrap());
        rt.host_mounts
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Self { dir, hv, rt }
    }

    /// A request for a pod of one running `args` from the test rootfs,
    /// with `extra` keys (as the API takes them).
    fn request(&self, args: &[&str], extra: serde_json::Value) -> RunRequest {
        let mut req = serde_json::json!({
            "rootfs": self.dir.path().join("rootfs"),
            "args": args,
        });
        if let (Some(req), Some(extra)) = (req.as_object_mut(), extra.as_object()) {
            req.extend(extra.clone());
        }
        serde_json::from_value(req).unwrap()
    }

    fn pods_dir(&self) -> PathBuf {
        self.dir.path().join("state/pods")
    }

    fn only_pod(&self) -> PodRecord {
        let pods = self.rt.list();
        assert_eq!(pods.len(), 1, "{pods:?}");
        pods[0].clone()
    }

    /// A pod that has exited: nothing runs, no VM is left, its record says
    /// `code` on disk as in memory, and only the record and logs remain.
    fn assert_exited(&self, id: &str, code: i32) {
        assert!(!self.rt.is_running(id));
        assert!(self.hv.all_vms_ended(), "a VM was left running");
        let record = self.rt.record(id).unwrap();
        assert_eq!(record.state, PodState::Exited);
        assert_eq!(record.exit_code, Some(code));
        assert!(record.vm.is_none());
        let on_disk = store::read_record(&self.pods_dir().join(id)).unwrap();
        assert_eq!(on_disk.exit_code, Some(code));
        assert!(
            !self.pods_dir().join(id).join("vm").exists(),
            "the run directory is left"
        );
        assert!(!self.pods_dir().join(id).join("pod.json.tmp").exists());
    }
}

fn client_io() -> (RunIo, mpsc::Receiver<Output>) {
    let (output, rx) = mpsc::channel(64);
    let io = RunIo {
        output,
        stdin: None,
        resize: None,
    };
    (io, rx)
}

/// Polls `cond` until it holds (bounded, so a broken runtime fails the
/// test rather than hanging it).
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_pod_of_one_runs_to_its_exit_code_and_leaves_its_record_and_log() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(3),
        on_term: None,
    }));
    let (io, mut out) = client_io();
    let outcome =
        s.rt.run(s.request(&["true"], serde_json::json!({})), io)
            .await
            .unwrap();
    assert_eq!(outcome.exit_code, 3);
    assert!(matches!(out.recv().await, Some(Output::Stdout(d)) if d == b"out\n"));
    s.assert_exited(&outcome.pod, 3);
    assert_eq!(s.hv.launched(), 1);
    let log = std::fs::read_dir(s.pods_dir().join(&outcome.pod))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .any(|e| std::fs::read(e.path()).is_ok_and(|b| b.windows(3).any(|w| w == b"out")));
    assert!(log, "the output reached the pod's log");
}

#[tokio::test]
async fn a_launch_error_fails_the_pod_and_leaves_nothing_running() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent).then(Launch::Fails));
    let err =
        s.rt.create(s.request(&["true"], serde_json::json!({})), None)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::Hypervisor(_)), "{err}");
    let pod = s.only_pod();
    s.assert_exited(&pod.id, RUNTIME_FAILURE_EXIT);

    // With --rm, not even the record stays.
    s.hv.then(Launch::Fails);
    let err =
        s.rt.create(
            s.request(&["true"], serde_json::json!({"remove": true})),
            None,
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RunError::Hypervisor(_)), "{err}");
    assert_eq!(s.rt.list().len(), 1);
    assert_eq!(std::fs::read_dir(s.pods_dir()).unwrap().count(), 1);
}

#[tokio::test]
async fn a_guest_that_never_says_ready_fails_the_boot_and_its_vm_goes() {
    let s = Setup::with_boot_timeout(FakeHypervisor::new(Guest::Silent), 1);
    let err =
        s.rt.create(s.request(&["true"], serde_json::json!({})), None)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::Boot { .. }), "{err}");
    let pod = s.only_pod();
    s.assert_exited(&pod.id, RUNTIME_FAILURE_EXIT);
    // `hyper wait` on it answers at once.
    assert_eq!(s.rt.wait(&pod.id).await.unwrap(), RUNTIME_FAILURE_EXIT);
}

#[tokio::test]
async fn a_command_the_guest_cannot_find_exits_127() {
    let s = Setup::new(FakeHypervisor::new(Guest::CommandNotFound));
    let started =
        s.rt.create(s.request(&["nope"], serde_json::json!({})), None)
            .await
            .unwrap();
    let early = started.early.expect("an early exit");
    assert_eq!(early.exit_code, 127);
    assert_eq!(early.message.as_deref(), Some("no such command"));
    s.assert_exited(&started.id, 127);
}

#[tokio::test]
async fn on_failure_n_restarts_n_times_in_fresh_vms() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(1),
        on_term: None,
    }));
    let req = s.request(
        &["false"],
        serde_json::json!({"restart": {"policy": "on_failure", "max_retries": 2}}),
    );
    let (io, _out) = client_io();
    let outcome = s.rt.run(req, io).await.unwrap();
    assert_eq!(outcome.exit_code, 1);
    assert_eq!(s.hv.launched(), 3, "the first run and two restarts");
    assert_eq!(s.rt.record(&outcome.pod).unwrap().restart_count, 2);
    s.assert_exited(&outcome.pod, 1);
    let run = ["start", "die:1"];
    let restart = ["restart:1", "restart:2"];
    let mut expected = vec!["create"];
    expected.extend(run);
    for r in restart {
        expected.push(r);
        expected.extend(run);
    }
    assert_eq!(events_of(&s, &outcome.pod), expected);
    let text = s.rt.metrics_text().await;
    for line in [
        "hyper_restarts_total{backend=\"fake\"} 2",
        "hyper_boot_duration_seconds_count{backend=\"fake\"} 3",
        "hyper_pods{state=\"exited\"} 1",
        "hyper_pods{state=\"running\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

/// The events of pod `id` so far: `action`, or `action:N` with the exit
/// code or restart count.
fn events_of(s: &Setup, id: &str) -> Vec<String> {
    s.rt.events()
        .subscribe()
        .past
        .iter()
        .filter(|e| e.id == id)
        .map(|e| {
            let n = e
                .attributes
                .get("exitCode")
                .or_else(|| e.attributes.get("restartCount"));
            match n {
                Some(n) => format!("{}:{n}", e.action.as_str()),
                None => e.action.as_str().to_string(),
            }
        })
        .collect()
}

#[tokio::test]
async fn on_failure_does_not_restart_a_success_and_no_never_restarts() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(0),
        on_term: None,
    }));
    let req = s.request(
        &["true"],
        serde_json::json!({"restart": {"policy": "on_failure", "max_retries": null}}),
    );
    let (io, _out) = client_io();
    assert_eq!(s.rt.run(req, io).await.unwrap().exit_code, 0);
    assert_eq!(s.hv.launched(), 1);

    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(1),
        on_term: None,
    }));
    let (io, _out) = client_io();
    let req = s.request(&["false"], serde_json::json!({"restart": {"policy": "no"}}));
    let outcome = s.rt.run(req, io).await.unwrap();
    assert_eq!(outcome.exit_code, 1);
    assert_eq!(s.hv.launched(), 1);
    assert_eq!(s.rt.record(&outcome.pod).unwrap().restart_count, 0);
}

#[tokio::test]
async fn always_restarts_even_a_success_until_stopped() {
    let success = Guest::Runs {
        exit: Some(0),
        on_term: None,
    };
    let hv = FakeHypervisor::new(Guest::Runs {
        exit: None,
        on_term: None,
    })
    .then(Launch::Boots(success.clone()))
    .then(Launch::Boots(success));
    let s = Setup::new(hv);
    let req = s.request(
        &["sh"],
        serde_json::json!({"restart": {"policy": "always"}}),
    );
    let started = s.rt.create(req, None).await.unwrap();
    let id = started.id.clone();
    until("the third VM runs the container", || {
        s.rt.record(&id)
            .is_some_and(|r| r.restart_count == 2 && r.state == PodState::Running)
            && s.rt.live_pod(&id).is_ok_and(|l| lock(&l.agent).is_some())
    })
    .await;
    // It ignores SIGTERM: the stop takes its VM down, and that is no
    // reason to restart it.
    let code = s.rt.stop(&id, Duration::ZERO).await.unwrap();
    assert_eq!(code, 128 + libc::SIGKILL);
    assert_eq!(s.hv.launched(), 3);
    s.assert_exited(&id, 128 + libc::SIGKILL);
}

#[tokio::test]
async fn a_stop_during_boot_takes_the_vm_down_and_fails_the_create() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent));
    let rt = s.rt.clone();
    let req = s.request(&["true"], serde_json::json!({}));
    let create = tokio::spawn(async move { rt.create(req, None).await.map(|s| s.id) });
    until("the pod is booting", || {
        s.rt.list().first().is_some_and(|p| s.rt.is_running(&p.id))
    })
    .await;
    let id = s.only_pod().id;
    let code = s.rt.stop(&id, Duration::ZERO).await.unwrap();
    assert_eq!(code, RUNTIME_FAILURE_EXIT);
    let err = create.await.unwrap().err().unwrap();
    assert!(
        err.to_string().contains("the VM exited during boot"),
        "{err}"
    );
    s.assert_exited(&id, RUNTIME_FAILURE_EXIT);
}

#[tokio::test]
async fn a_pod_file_pod_boots_each_container_and_exits_with_the_first_failure() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: None,
        on_term: Some(0),
    }));
    let rootfs = s.dir.path().join("rootfs");
    let text = format!(
        "[[volume]]\nname = \"shared\"\n\n\
         [[container]]\nname = \"a\"\nrootfs = \"{r}\"\ncommand = [\"sleep\", \"9\"]\n\
         mounts = [{{ volume = \"shared\", path = \"/data\" }}]\n\n\
         [[container]]\nname = \"b\"\nrootfs = \"{r}\"\ncommand = [\"sleep\", \"9\"]\n",
        r = rootfs.display()
    );
    let pod = crate::podfile::parse("pod.toml", &text).unwrap();
    let id = s.rt.create_pod(pod, Some("pair".into())).await.unwrap();
    let record = s.rt.record(&id).unwrap();
    assert_eq!(record.state, PodState::Running);
    assert!(record
        .containers
        .iter()
        .all(|c| c.state == PodState::Running));
    assert_eq!(record.containers[1].guest_id, format!("{id}-b"));
    assert!(s.pods_dir().join(&id).join("containers/b").is_dir());
    // SIGTERM reaches both: each exits 0.
    assert_eq!(s.rt.stop(&id, Duration::from_secs(60)).await.unwrap(), 0);
    s.assert_exited(&id, 0);
    let record = s.rt.record(&id).unwrap();
    assert!(record.containers.iter().all(|c| c.exit_code == Some(0)));
}

#[tokio::test]
async fn a_guest_oom_kill_is_recorded_emitted_and_counted() {
    let s = Setup::new(FakeHypervisor::new(Guest::OomKilled));
    let (io, _out) = client_io();
    let outcome =
        s.rt.run(s.request(&["hog"], serde_json::json!({})), io)
            .await
            .unwrap();
    assert_eq!(outcome.exit_code, 137);
    // What the containerd shim publishes `/tasks/oom` from.
    assert!(outcome.oom_killed);
    s.assert_exited(&outcome.pod, 137);
    let record = s.rt.record(&outcome.pod).unwrap();
    assert!(record.oom_killed);
    assert_eq!(
        events_of(&s, &outcome.pod),
        ["create", "start", "oom", "die:137"]
    );
    let oom =
        s.rt.events()
            .subscribe()
            .past
            .into_iter()
            .find(|e| e.action == crate::events::Action::Oom)
            .unwrap();
    assert_eq!(oom.attributes["scope"], "guest");
    assert_eq!(oom.attributes["container"], outcome.pod);
    let text = s.rt.metrics_text().await;
    let line = "hyper_oom_kills_total{backend=\"fake\",scope=\"guest\"} 1";
    assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");

    // A pod file's containers: each one's record, and an event naming it.
    let rootfs = s.dir.path().join("rootfs");
    let text = format!(
        "[[container]]\nname = \"a\"\nrootfs = \"{r}\"\ncommand = [\"hog\"]\n\n\
         [[container]]\nname = \"b\"\nrootfs = \"{r}\"\ncommand = [\"hog\"]\n",
        r = rootfs.display()
    );
    let pod = crate::podfile::parse("pod.toml", &text).unwrap();
    let id = s.rt.create_pod(pod, Some("hogs".into())).await.unwrap();
    assert_eq!(s.rt.wait(&id).await.unwrap(), 137);
    let record = s.rt.record(&id).unwrap();
    assert!(record.oom_killed);
    assert!(record.containers.iter().all(|c| c.oom_killed));
    let mut named: Vec<String> =
        s.rt.events()
            .subscribe()
            .past
            .into_iter()
            .filter(|e| e.id == id && e.action == crate::events::Action::Oom)
            .map(|e| e.attributes["container"].clone())
            .collect();
    named.sort();
    assert_eq!(named, ["a", "b"]);
}

/// Writes `json` (a `pod.json` of the hyperd before the one pod model) as
/// the record of pod `id` in `s`, its paths moved into the test's state
/// directory, as a crashed hyperd left it.
fn left_behind(s: &Setup, json: &str, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let pod_dir = s.pods_dir().join(id);
    std::fs::create_dir_all(pod_dir.join("vm")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["id"] = id.into();
    v["vm_pid"] = serde_json::Value::Null;
    if v["vm"].is_object() {
        let socket = pod_dir.join("vm/agent.sock");
        v["vm"]["info"]["agent_channel"] = serde_json::json!({ "unix_socket": socket });
        v["vm"]["spec"]["run_dir"] = pod_dir.join("vm").to_string_lossy().into();
    }
    edit(&mut v);
    std::fs::write(pod_dir.join("pod.json"), v.to_string()).unwrap();
}

fn tracked(container: &str, process: &str, stdio: u32) -> ProcessState {
    ProcessState {
        container: container.into(),
        process: process.into(),
        stdio,
        stderr: stdio + 1,
        exit_status: None,
        output_open: true,
        oom_killed: false,
    }
}

#[tokio::test]
async fn restore_adopts_live_vms_of_both_kinds_and_follows_them_to_their_exit() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent));
    let (one, pair) = ("0a1b2c3d4e5f", "aa11bb22cc33");
    left_behind(&s, OLD_POD_OF_ONE, one, |v| {
        v["restart"] = serde_json::json!({"policy": "no"});
    });
    left_behind(&s, OLD_POD_FILE_POD, pair, |v| {
        // Saved with its VM this time.
        let mut one: serde_json::Value = serde_json::from_str(OLD_POD_OF_ONE).unwrap();
        let socket = s.pods_dir().join(pair).join("vm/agent.sock");
        one["vm"]["info"]["agent_channel"] = serde_json::json!({ "unix_socket": socket });
        one["vm"]["info"]["id"] = pair.into();
        v["vm"] = one["vm"].clone();
    });
    // Each guest ends the first processes it tracks with 7; the second
    // container of the pair had exited before.
    for (vm, processes) in [
        ("0a1b2c3d4e5f-1", vec![tracked(one, "init", 1)]),
        (pair, vec![tracked(pair, "init", 1)]),
    ] {
        lock(&s.hv.recoveries).insert(vm.to_string(), Guest::Reattach { processes, exit: 7 });
    }
    let restored = s.rt.restore().await.unwrap();
    assert_eq!((restored.reattached, restored.cleaned), (2, 0));
    assert_eq!(s.rt.wait(one).await.unwrap(), 7);
    assert_eq!(s.rt.wait(pair).await.unwrap(), 7);
    s.assert_exited(one, 7);
    s.assert_exited(pair, 7);
    let pair = s.rt.record(pair).unwrap();
    assert_eq!(pair.containers[0].exit_code, Some(7));
    // b had exited 0 before the takeover; that stays.
    assert_eq!(pair.containers[1].exit_code, Some(0));
    assert_eq!(s.hv.launched(), 0, "taken over, not booted again");
    assert_eq!(events_of(&s, one), ["takeover", "die:7"]);
    assert_eq!(events_of(&s, &pair.id), ["takeover", "die:7"]);
}

#[tokio::test]
async fn restore_marks_a_pod_whose_vm_died_exited() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent));
    let id = "0a1b2c3d4e5f";
    // The backend finds no VM to recover.
    left_behind(&s, OLD_POD_OF_ONE, id, |_| {});
    let restored = s.rt.restore().await.unwrap();
    assert_eq!((restored.reattached, restored.cleaned), (0, 1));
    s.assert_exited(id, RUNTIME_FAILURE_EXIT);
}

#[tokio::test]
async fn restore_cleans_records_without_a_vm_and_dirs_without_a_record() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent));
    let id = "aa11bb22cc33";
    // A pod file's pod saved before its VM was (`vm: null`).
    left_behind(&s, OLD_POD_FILE_POD, id, |_| {});
    let half = s.pods_dir().join("deadbeef0000");
    std::fs::create_dir_all(half.join("vm")).unwrap();
    let restored = s.rt.restore().await.unwrap();
    assert_eq!((restored.reattached, restored.cleaned), (0, 2));
    assert!(!half.exists());
    s.assert_exited(id, RUNTIME_FAILURE_EXIT);
    let record = s.rt.record(id).unwrap();
    assert!(record
        .containers
        .iter()
        .all(|c| c.state == PodState::Exited));
    assert_eq!(s.rt.list().len(), 1);
}

#[tokio::test]
async fn a_restored_exited_pod_starts_again_from_its_record() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(4),
        on_term: None,
    }));
    let id = "0a1b2c3d4e5f";
    let image = s.dir.path().join("built.erofs");
    std::fs::write(&image, b"erofs").unwrap();
    left_behind(&s, OLD_POD_OF_ONE, id, |v| {
        v["state"] = "exited".into();
        v["exit_code"] = 0.into();
        v["vm"] = serde_json::Value::Null;
        v["rootfs_image"] = image.to_string_lossy().into();
        v["restart"] = serde_json::json!({"policy": "no"});
    });
    s.rt.restore().await.unwrap();
    let mut started = s.rt.start(id).await.unwrap();
    let ended = started
        .outcome
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone();
    assert_eq!(ended.unwrap().unwrap().exit_code, 4);
    s.assert_exited(id, 4);
}

#[tokio::test]
async fn restore_ends_a_pod_whose_exit_was_lost_and_gives_up_on_another_backend() {
    let s = Setup::new(FakeHypervisor::new(Guest::Silent));
    let (lost, elsewhere) = ("0a1b2c3d4e5f", "0a1b2c3d4e60");
    left_behind(&s, OLD_POD_OF_ONE, lost, |_| {});
    left_behind(&s, OLD_POD_OF_ONE, elsewhere, |v| {
        v["backend"] = "xen".into();
        v["vm"]["info"]["id"] = "other".into();
    });
    // The guest answers the resync but no longer knows the container's
    // first process.
    lock(&s.hv.recoveries).insert(
        "0a1b2c3d4e5f-1".into(),
        Guest::Reattach {
            processes: Vec::new(),
            exit: 0,
        },
    );
    let restored = s.rt.restore().await.unwrap();
    assert_eq!((restored.reattached, restored.cleaned), (1, 1));
    s.assert_exited(lost, RUNTIME_FAILURE_EXIT);
    s.assert_exited(elsewhere, RUNTIME_FAILURE_EXIT);
    assert_eq!(s.hv.launched(), 0, "nothing is booted again");
}

#[tokio::test]
async fn a_stopped_pod_is_not_restarted_by_its_policy() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: None,
        on_term: Some(128 + libc::SIGTERM),
    }));
    let req = s.request(
        &["sh"],
        serde_json::json!({"restart": {"policy": "always"}}),
    );
    let started = s.rt.create(req, None).await.unwrap();
    // The container exits on SIGTERM, within the grace time.
    let code =
        s.rt.stop(&started.id, Duration::from_secs(60))
            .await
            .unwrap();
    assert_eq!(code, 128 + libc::SIGTERM);
    assert_eq!(s.hv.launched(), 1, "stopped, not restarted");
    s.assert_exited(&started.id, 128 + libc::SIGTERM);
    // `start` brings it back under its policy.
    s.rt.start(&started.id).await.unwrap();
    assert!(s.rt.is_running(&started.id));
    assert_eq!(
        s.rt.stop(&started.id, Duration::from_secs(60))
            .await
            .unwrap(),
        128 + libc::SIGTERM
    );
    assert_eq!(s.hv.launched(), 2);
}

#[tokio::test]
async fn sizes_beyond_the_host_are_refused_before_anything_is_recorded_or_launched() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(0),
        on_term: None,
    }));
    let host = crate::resources::HostResources::read();
    if host.cpus >= crate::config::MAX_VCPUS {
        return;
    }
    let (io, _out) = client_io();
    let req = s.request(&["true"], serde_json::json!({"cpus": host.cpus + 1}));
    let err = s.rt.run(req, io).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "cpus {}: range of CPUs is from 1 to {}",
            host.cpus + 1,
            host.cpus
        )),
        "{err}"
    );
    let (io, _out) = client_io();
    let req = s.request(&["true"], serde_json::json!({"memory_mib": u32::MAX}));
    let err = s.rt.run(req, io).await.unwrap_err().to_string();
    assert!(err.contains("MiB of memory (MemTotal)"), "{err}");
    assert_eq!(s.hv.launched(), 0);
    assert!(s.rt.list().is_empty());
    assert!(s.rt.events().subscribe().past.is_empty());
}

#[tokio::test]
async fn container_limits_reach_the_guest_or_are_refused_by_name() {
    // Out of range: refused naming the flag, before any VM.
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(0),
        on_term: None,
    }));
    let (io, _out) = client_io();
    let req = s.request(&["true"], serde_json::json!({"limits": {"pids_max": 0}}));
    let err = s.rt.run(req, io).await.unwrap_err().to_string();
    assert!(err.contains("--pids-limit"), "{err}");
    assert_eq!(s.hv.launched(), 0);
    // A guest without the capability: the start fails saying so; the
    // container never runs unlimited.
    let (io, _out) = client_io();
    let req = s.request(&["true"], serde_json::json!({"limits": {"pids_max": 20}}));
    let err = s.rt.run(req, io).await.unwrap_err().to_string();
    assert!(err.contains("container-limits"), "{err}");
    assert!(err.contains("pids_limit"), "{err}");

    // A guest with it gets them in the container's spec; a pod file's
    // containers each get their own, and one without limits none.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Setup::new(FakeHypervisor::new(Guest::Limits { seen: seen.clone() }));
    let (io, _out) = client_io();
    let req = s.request(&["true"], serde_json::json!({"limits": {"pids_max": 20}}));
    let outcome = s.rt.run(req, io).await.unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(lock(&seen)[0].1.pids_max, Some(20));
    let rootfs = s.dir.path().join("rootfs");
    let pod: crate::podfile::PodFile = crate::podfile::parse(
        "pod.toml",
        &format!(
            "[[container]]\nname = \"a\"\nrootfs = {rootfs:?}\ncommand = [\"true\"]\n\
             [[container]]\nname = \"b\"\nrootfs = {rootfs:?}\ncommand = [\"true\"]\n\
             memory = \"32m\"\ncpus = 0.5\ncpu_shares = 512\npids_limit = 7\n"
        ),
    )
    .unwrap();
    let id = s.rt.create_pod(pod, None).await.unwrap();
    let code = s.rt.wait(&id).await.unwrap();
    assert_eq!(code, 0);
    let seen = lock(&seen).clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[1].1.is_unlimited(), "{seen:?}");
    let b = seen[2].1;
    assert_eq!(b.memory_max, Some(32 << 20));
    assert_eq!(b.pids_max, Some(7));
    assert_eq!(
        b.cpu_max.map(|c| (c.quota_us, c.period_us)),
        Some((50_000, 100_000))
    );
    assert_eq!(
        b.cpu_weight,
        Some(hyper_protocol::ResourceLimits::weight_of_shares(512))
    );
    // Kept in the record, so a restart applies them again.
    let json = serde_json::to_value(s.rt.record(&id).unwrap()).unwrap();
    assert_eq!(json["containers"][1]["limits"]["pids_max"], 7, "{json}");
    assert!(json["containers"][0].get("limits").is_none(), "{json}");
}

#[tokio::test]
async fn a_block_volume_serves_one_running_pod_and_a_used_volume_is_not_removed() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let block = serde_json::json!({"volumes": [
        {"type": "block", "source": "db1", "target": "/db", "size_bytes": 1048576}
    ]});
    let first =
        s.rt.create(s.request(&["true"], block.clone()), None)
            .await
            .unwrap();
    let record = s.rt.record(&first.id).unwrap();
    assert_eq!(record.mounts.len(), 1);
    assert_eq!(record.mounts[0].name.as_deref(), Some("db1"));
    let disk = record.mounts[0].source.clone().unwrap();
    assert!(disk.ends_with("volumes/db1/disk.img"), "{}", disk.display());
    let spec = &record.vm.as_ref().unwrap().spec;
    assert!(spec
        .disks
        .iter()
        .any(|d| d.id == "hyper-blk0" && d.path == disk && !d.read_only));
    // A second writer is refused before its VM starts.
    let launched = s.hv.launched();
    let err =
        s.rt.create(s.request(&["true"], block.clone()), None)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::Conflict(_)), "{err}");
    assert!(err.to_string().contains(&first.id), "{err}");
    assert_eq!(s.hv.launched(), launched);
    // The volume is in use (by both records: the refused pod is kept, exited).
    let err = s.rt.volume_remove("db1").unwrap_err();
    assert!(
        matches!(&err, RunError::VolumeInUse { name, pods } if name == "db1" && pods.len() == 2),
        "{err}"
    );
    assert!(s
        .rt
        .volume_inspect("db1")
        .unwrap()
        .used_by
        .contains(&first.id));
    // Once the first pod is gone, another may have the disk.
    for p in s.rt.list() {
        s.rt.remove(&p.id, true, false).await.unwrap();
    }
    let again =
        s.rt.create(s.request(&["true"], block), None)
            .await
            .unwrap();
    s.rt.remove(&again.id, true, false).await.unwrap();
    s.rt.volume_remove("db1").unwrap();
    assert!(matches!(
        s.rt.volume_inspect("db1"),
        Err(RunError::NotFound(_))
    ));
    assert!(s.hv.all_vms_ended());
}

#[tokio::test]
async fn a_backend_without_shares_refuses_host_dirs_by_name_and_runs_nothing() {
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: Some(0),
        on_term: None,
    }));
    let dir = s.dir.path().join("share");
    let req = s.request(
        &["true"],
        serde_json::json!({"volumes": [{"type": "bind", "source": dir, "target": "/d", "create_host_dir": true}]}),
    );
    let err = s.rt.create(req, None).await.err().unwrap();
    assert!(
        err.to_string()
            .contains("fake backend cannot share host directories"),
        "{err}"
    );
    assert_eq!(s.hv.launched(), 0);
    let bad = s.request(
        &["true"],
        serde_json::json!({"volumes": [{"type": "bind", "source": "/x", "target": "/"}]}),
    );
    let err = s.rt.create(bad, None).await.err().unwrap();
    assert!(matches!(err, RunError::Invalid(_)), "{err}");
    assert_eq!(s.rt.list().len(), 1, "the refused request left no pod");
}

// Templates (issue 16).

impl Setup {
    fn with_start(hv: Arc<FakeHypervisor>, start: &str) -> Self {
        Self::with_config(hv, |c| c.vm.start = start.into())
    }

    fn templates_dir(&self) -> PathBuf {
        self.dir.path().join("state/templates")
    }

    /// The published templates' keys, and whether a partial build is left.
    fn templates(&self) -> (Vec<String>, bool) {
        let mut keys = Vec::new();
        let mut partial = false;
        for e in std::fs::read_dir(self.templates_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".building-") {
                partial = true;
            } else {
                keys.push(name);
            }
        }
        keys.sort();
        (keys, partial)
    }

    async fn run_one(&self, extra: serde_json::Value) -> Result<RunOutcome, RunError> {
        let (io, _out) = client_io();
        self.rt.run(self.request(&["true"], extra), io).await
    }
}

#[tokio::test]
async fn a_template_is_built_once_and_each_clone_gets_fresh_entropy_clock_and_its_own_session() {
    let s = Setup::with_start(FakeHypervisor::with_templates(Some(0)), "template");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let first = s.run_one(serde_json::json!({})).await.unwrap();
    assert_eq!(first.exit_code, 0);
    let second = s.run_one(serde_json::json!({})).await.unwrap();
    assert_eq!(second.exit_code, 0);
    assert_eq!(*lock(&s.hv.template_launches), 1, "one build");
    assert_eq!(*lock(&s.hv.restores), 2);
    assert_eq!(s.hv.launched(), 1, "no cold launch");
    let (keys, partial) = s.templates();
    assert_eq!(keys.len(), 1);
    assert!(!partial, "a partial build is left");
    assert!(s.templates_dir().join(&keys[0]).join("meta.json").is_file());
    let resumes = lock(&s.hv.resumes).clone();
    assert_eq!(resumes.len(), 2);
    assert_ne!(resumes[0].entropy_hex, resumes[1].entropy_hex);
    for r in &resumes {
        assert_eq!(r.entropy_hex.len(), 128);
        assert!(r.realtime_ns >= before);
    }
    for id in [&first.pod, &second.pod] {
        let rec = s.rt.record(id).unwrap();
        let started = rec.started.expect("how it started");
        assert_eq!(started.mode, crate::config::StartMode::Template);
        assert_eq!(started.template.as_deref(), Some(keys[0].as_str()));
        s.assert_exited(id, 0);
    }
    assert!(events_of(&s, &first.pod).contains(&"start".to_string()));
    let text = s.rt.metrics_text().await;
    for line in [
        "hyper_template_events_total{event=\"built\"} 1",
        "hyper_template_events_total{event=\"restored\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    let listed = s.rt.templates();
    assert_eq!(listed.len(), 1);
    s.rt.remove_template(&keys[0]).unwrap();
    assert!(s.templates().0.is_empty());
}

#[tokio::test]
async fn pods_needing_the_same_template_wait_for_one_build() {
    let s = Arc::new(Setup::with_start(
        FakeHypervisor::with_templates(Some(0)),
        "auto",
    ));
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let s = s.clone();
        runs.spawn(async move { s.run_one(serde_json::json!({})).await.unwrap().exit_code });
    }
    while let Some(code) = runs.join_next().await {
        assert_eq!(code.unwrap(), 0);
    }
    assert_eq!(*lock(&s.hv.template_launches), 1);
    assert_eq!(*lock(&s.hv.restores), 4);
}

#[tokio::test]
async fn auto_on_a_backend_without_templates_starts_cold_saying_why_and_template_fails() {
    let hv = FakeHypervisor::new(Guest::Runs {
        exit: Some(0),
        on_term: None,
    });
    let s = Setup::with_start(hv, "auto");
    let out = s.run_one(serde_json::json!({})).await.unwrap();
    assert_eq!(out.exit_code, 0);
    let started = s.rt.record(&out.pod).unwrap().started.unwrap();
    assert_eq!(started.mode, crate::config::StartMode::Cold);
    let reason = started.reason.unwrap();
    assert!(
        reason.contains("cannot save or restore templates"),
        "{reason}"
    );
    assert!(s.rt.templates_unavailable().is_some());

    // --start template on the same backend: a clean failure.
    let err = s
        .run_one(serde_json::json!({"start": "template"}))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cannot start the pod from a template"),
        "{err}"
    );
    assert!(!err.contains("--start"), "the runtime names no flag: {err}");
    assert!(s.hv.all_vms_ended());
    // A pod asking cold gets no reason.
    let out = s
        .run_one(serde_json::json!({"start": "cold"}))
        .await
        .unwrap();
    let started = s.rt.record(&out.pod).unwrap().started.unwrap();
    assert_eq!(started.reason, None);
}

#[tokio::test]
async fn an_altered_template_is_removed_and_the_pod_cold_starts_in_auto_or_fails_in_template() {
    let s = Setup::with_start(FakeHypervisor::with_templates(Some(0)), "auto");
    s.run_one(serde_json::json!({})).await.unwrap();
    let key = s.templates().0.remove(0);
    std::fs::write(s.templates_dir().join(&key).join("state"), b"altered").unwrap();
    let out = s.run_one(serde_json::json!({})).await.unwrap();
    assert_eq!(out.exit_code, 0);
    let started = s.rt.record(&out.pod).unwrap().started.unwrap();
    assert_eq!(started.mode, crate::config::StartMode::Cold);
    let reason = started.reason.unwrap();
    assert!(reason.contains("checksum"), "{reason}");
    assert!(
        s.templates().0.is_empty(),
        "the refused template is removed"
    );
    s.assert_exited(&out.pod, 0);

    // The next pod rebuilds it; altered again, template-only fails.
    s.run_one(serde_json::json!({})).await.unwrap();
    assert_eq!(*lock(&s.hv.template_launches), 2);
    let key = s.templates().0.remove(0);
    std::fs::write(s.templates_dir().join(&key).join("state"), b"").unwrap();
    let err = s
        .run_one(serde_json::json!({"start": "template"}))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("refused by the backend"), "{err}");
    assert!(s.hv.all_vms_ended(), "a VM was left running");
    let failed =
        s.rt.list()
            .into_iter()
            .find(|p| p.exit_code != Some(0))
            .unwrap();
    assert!(!s.pods_dir().join(&failed.id).join("vm").exists());
}

#[tokio::test]
async fn a_payload_change_makes_a_new_template() {
    let s = Setup::with_start(FakeHypervisor::with_templates(Some(0)), "auto");
    s.run_one(serde_json::json!({})).await.unwrap();
    let old = s.templates().0;
    std::fs::write(s.dir.path().join("initrd"), b"a rebuilt initrd").unwrap();
    let out = s.run_one(serde_json::json!({})).await.unwrap();
    let keys = s.templates().0;
    assert_eq!(keys.len(), 2);
    let new =
        s.rt.record(&out.pod)
            .unwrap()
            .started
            .unwrap()
            .template
            .unwrap();
    assert!(!old.contains(&new), "the old template was used");
    assert_eq!(*lock(&s.hv.template_launches), 2);
}

#[tokio::test]
async fn a_partial_template_build_left_by_a_crash_is_removed_at_startup() {
    let s = Setup::with_start(FakeHypervisor::with_templates(Some(0)), "auto");
    let partial = s.templates_dir().join(".building-0123-1-0");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("state"), b"saved").unwrap();
    s.rt.restore().await.unwrap();
    assert!(!partial.exists());
}

/// A container for `s`'s pod to take in, read from the test rootfs.
fn join_request(s: &Setup, name: &str) -> JoinRequest {
    JoinRequest {
        name: name.into(),
        rootfs: s.dir.path().join("rootfs"),
        args: vec!["sleep".into(), "1d".into()],
        ..Default::default()
    }
}

/// A running joinable pod (its main container runs until killed).
async fn joinable_pod(s: &Setup) -> String {
    let started =
        s.rt.create_joinable(
            s.request(&["pause"], serde_json::json!({"remove": true})),
            None,
        )
        .await
        .unwrap();
    assert!(started.early.is_none());
    started.id
}

#[tokio::test]
async fn containers_join_a_running_pod_in_its_vm_and_leave_it_one_by_one() {
    let s = Setup::new(FakeHypervisor::sharing(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let id = joinable_pod(&s).await;
    // The VM has the join share; its directory is on the host.
    let shares = lock(&s.hv.launched_shares).clone();
    assert_eq!(shares.len(), 1);
    assert!(shares[0]
        .iter()
        .any(|sh| sh.tag == "hyper-join" && sh.read_only));
    let join_dir = s.pods_dir().join(&id).join("join");
    assert!(join_dir.is_dir());

    let (io1, _out1) = client_io();
    let a = s.rt.join(&id, join_request(&s, "a"), io1).await.unwrap();
    let (io2, _out2) = client_io();
    let b = s.rt.join(&id, join_request(&s, "b"), io2).await.unwrap();
    assert!(a.early.is_none() && b.early.is_none());
    // One VM for all.
    assert_eq!(s.hv.launched(), 1);
    // The record lists both, on disk too (a takeover keeps them).
    let on_disk = store::read_record(&s.pods_dir().join(&id)).unwrap();
    let names: Vec<_> = on_disk.joined.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(on_disk.joined.iter().all(|c| c.state == PodState::Running));
    assert_ne!(on_disk.joined[0].guest_id, on_disk.joined[1].guest_id);
    assert!(join_dir.join(&on_disk.joined[0].guest_id).is_dir());
    // A second container of one name is refused.
    let (io, _out) = client_io();
    let err =
        s.rt.join(&id, join_request(&s, "a"), io)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::Conflict(_)), "{err}");

    // Removing one kills it and leaves the pod and the other running.
    let a_dir = join_dir.join(&on_disk.joined[0].guest_id);
    s.rt.remove_joined(&id, "a").await.unwrap();
    let mut a_end = a.outcome.clone();
    let ended = a_end.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(ended.unwrap().unwrap().exit_code, 128 + libc::SIGKILL);
    assert!(!a_dir.exists(), "its root stays bound");
    assert!(s.rt.is_running(&id));
    let record = s.rt.record(&id).unwrap();
    assert_eq!(record.joined.len(), 1);
    assert_eq!(record.joined[0].state, PodState::Running);
    let on_disk = store::read_record(&s.pods_dir().join(&id)).unwrap();
    assert_eq!(on_disk.joined.len(), 1);

    // The pod's end takes the other one down, and nothing is left.
    s.rt.kill(&id, libc::SIGKILL).await.unwrap();
    let mut b_end = b.outcome.clone();
    let ended = b_end.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(ended.unwrap().unwrap().exit_code, 128 + libc::SIGKILL);
    until("the pod is removed", || s.rt.record(&id).is_none()).await;
    assert!(s.hv.all_vms_ended());
    assert!(!s.pods_dir().join(&id).exists(), "the pod's files are left");
}

#[tokio::test]
async fn a_join_with_limits_into_a_guest_without_them_is_refused_up_front() {
    // This guest announces no container-limits.
    let s = Setup::new(FakeHypervisor::sharing(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let id = joinable_pod(&s).await;
    let on_disk = store::read_record(&s.pods_dir().join(&id)).unwrap();
    assert!(on_disk
        .guest_capabilities
        .iter()
        .any(|c| c == hyper_protocol::capability::SHARED_ROOTFS));
    let (io, _out) = client_io();
    let req = JoinRequest {
        limits: hyper_protocol::ResourceLimits {
            pids_max: Some(10),
            ..Default::default()
        },
        ..join_request(&s, "limited")
    };
    let err = s.rt.join(&id, req, io).await.err().unwrap();
    assert!(err.to_string().contains("container-limits"), "{err}");
    // Nothing of it is left, and a join without limits still goes in.
    assert!(s.rt.record(&id).unwrap().joined.is_empty());
    let join_dir = s.pods_dir().join(&id).join("join");
    assert_eq!(std::fs::read_dir(&join_dir).unwrap().count(), 0);
    let (io, _out) = client_io();
    let c = s.rt.join(&id, join_request(&s, "plain"), io).await.unwrap();
    assert!(c.early.is_none());
    s.rt.kill(&id, libc::SIGKILL).await.unwrap();
    until("the pod is removed", || s.rt.record(&id).is_none()).await;
}

#[tokio::test]
async fn a_joined_container_ends_on_its_own_and_the_pod_goes_on() {
    let s = Setup::new(FakeHypervisor::sharing(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let id = joinable_pod(&s).await;
    let (io, _out) = client_io();
    let narrow = crate::security::Security {
        cap_drop: vec!["ALL".into()],
        cap_add: vec!["NET_ADMIN".into()],
        ..Default::default()
    };
    let req = JoinRequest {
        security: narrow.clone(),
        ..join_request(&s, "c")
    };
    let c = s.rt.join(&id, req, io).await.unwrap();
    // Its confinement is kept for its execs.
    assert_eq!(s.rt.joined(&id, "c").unwrap().security, narrow);
    s.rt.kill_joined(&id, "c", libc::SIGKILL).await.unwrap();
    let mut end = c.outcome.clone();
    let ended = end.wait_for(Option::is_some).await.unwrap().clone();
    let ended = ended.unwrap().unwrap();
    assert_eq!(ended.exit_code, 128 + libc::SIGKILL);
    // A SIGKILL that is not the OOM killer's.
    assert!(!ended.oom_killed);
    until("its exit is recorded", || {
        s.rt.joined(&id, "c")
            .is_ok_and(|c| c.exit_code == Some(128 + libc::SIGKILL))
    })
    .await;
    assert_eq!(s.rt.joined(&id, "c").unwrap().state, PodState::Exited);
    assert!(s.rt.is_running(&id));
    s.rt.remove_joined(&id, "c").await.unwrap();
    assert!(s.rt.joined(&id, "c").is_err());
    s.rt.kill(&id, libc::SIGKILL).await.unwrap();
    until("the pod is removed", || s.rt.record(&id).is_none()).await;
}

#[tokio::test]
async fn joining_is_refused_where_it_cannot_work() {
    // A backend without directory shares cannot make a joinable pod.
    let s = Setup::new(FakeHypervisor::new(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let err =
        s.rt.create_joinable(s.request(&["pause"], serde_json::json!({})), None)
            .await
            .err()
            .unwrap();
    assert!(
        matches!(&err, RunError::Invalid(m) if m.contains("cannot share host directories")),
        "{err}"
    );
    assert_eq!(s.hv.launched(), 0);

    // A pod not made to take containers refuses them.
    let s = Setup::new(FakeHypervisor::sharing(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let started =
        s.rt.create(
            s.request(&["pause"], serde_json::json!({"remove": true})),
            None,
        )
        .await
        .unwrap();
    let (io, _out) = client_io();
    let err =
        s.rt.join(&started.id, join_request(&s, "x"), io)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::Conflict(_)), "{err}");
    assert!(s.rt.record(&started.id).unwrap().joined.is_empty());

    // Bad requests: no command, a relative or missing root, no such pod.
    let id = joinable_pod(&s).await;
    for bad in [
        JoinRequest {
            args: vec![],
            ..join_request(&s, "x")
        },
        JoinRequest {
            rootfs: "rootfs".into(),
            ..join_request(&s, "x")
        },
        JoinRequest {
            rootfs: s.dir.path().join("missing"),
            ..join_request(&s, "x")
        },
        join_request(&s, "a/b"),
    ] {
        let (io, _out) = client_io();
        let err = s.rt.join(&id, bad, io).await.err().unwrap();
        assert!(matches!(err, RunError::Invalid(_)), "{err}");
    }
    let (io, _out) = client_io();
    let err =
        s.rt.join("nope", join_request(&s, "x"), io)
            .await
            .err()
            .unwrap();
    assert!(
        matches!(
            err,
            RunError::NoSuchPod(_) | RunError::NotRunning(_) | RunError::Conflict(_)
        ),
        "{err}"
    );
    assert!(s.rt.record(&id).unwrap().joined.is_empty());
    assert_eq!(
        std::fs::read_dir(s.pods_dir().join(&id).join("join"))
            .unwrap()
            .count(),
        0,
        "a refused container left its directory"
    );
    s.rt.kill(&id, libc::SIGKILL).await.unwrap();
    s.rt.kill(&started.id, libc::SIGKILL).await.unwrap();
}

#[tokio::test]
async fn anonymous_volumes_go_with_rm_v_and_stay_on_plain_rm() {
    let s = Setup::new(FakeHypervisor::sharing(Guest::Runs {
        exit: None,
        on_term: None,
    }));
    let anon = serde_json::json!({"volumes": [{"type": "volume", "target": "/anon"}]});
    let anonymous = |s: &Setup| -> Vec<String> {
        s.rt.volume_list()
            .unwrap()
            .into_iter()
            .filter(|v| v.volume.anonymous)
            .map(|v| v.volume.name)
            .collect()
    };
    let first =
        s.rt.create(s.request(&["true"], anon.clone()), None)
            .await
            .unwrap();
    let record = s.rt.record(&first.id).unwrap();
    assert!(record.mounts[0].anonymous);
    let name = record.mounts[0].name.clone().unwrap();
    assert_eq!(anonymous(&s), std::slice::from_ref(&name));
    // Plain rm: kept, used by nobody.
    s.rt.remove(&first.id, true, false).await.unwrap();
    assert_eq!(anonymous(&s), std::slice::from_ref(&name));
    assert!(s.rt.volume_inspect(&name).unwrap().used_by.is_empty());
    // rm -v: the pod's own goes, the other stays.
    let second =
        s.rt.create(s.request(&["true"], anon.clone()), None)
            .await
            .unwrap();
    assert_eq!(anonymous(&s).len(), 2);
    s.rt.remove(&second.id, true, true).await.unwrap();
    assert_eq!(anonymous(&s), std::slice::from_ref(&name));
    // A create refused (its name in use) leaves no anonymous volume.
    let named = serde_json::json!({
        "name": "taken",
        "volumes": [{"type": "volume", "target": "/anon"}]
    });
    let third =
        s.rt.create(s.request(&["true"], named.clone()), None)
            .await
            .unwrap();
    assert_eq!(anonymous(&s).len(), 2);
    let err =
        s.rt.create(s.request(&["true"], named), None)
            .await
            .err()
            .unwrap();
    assert!(matches!(err, RunError::NameInUse(_)), "{err}");
    assert_eq!(anonymous(&s).len(), 2);
    s.rt.remove(&third.id, true, true).await.unwrap();
    s.rt.volume_remove(&name).unwrap();
    assert!(anonymous(&s).is_empty());
}
