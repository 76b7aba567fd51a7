//! Containers joining a running pod's VM. Under CRI a Kubernetes pod is a
//! sandbox and N containers created one after another, each with its own
//! rootfs (a directory containerd's snapshotter mounted on the host), long
//! after the VM booted.
//!
//! How a new root reaches a running VM: not as a new disk. Hot-plugging a
//! disk needs the guest kernel to take a PCI hot-plug event (hyperkernel has
//! neither PCIe nor ACPI hot-plug support built in, and q35's root bus
//! refuses hot-plug), hyper-vmm's virtio-mmio devices are fixed at boot, and
//! only Xen (`xl block-attach`) could do it as things stand. Instead a pod
//! created to take more containers ([`Runtime::create_joinable`]) boots with
//! one more read-only directory share, `<pod>/join`, over the backend's
//! [`hyper_hypervisor::Capabilities::share_transport`] (virtio-fs on QEMU
//! and hyper-vmm, 9pfs on Xen: all three backends have one). That directory
//! is a shared mount point on the host (`mount --make-shared`) made before
//! the share's server starts: a container's root bound below it later
//! propagates into the server's (virtiofsd's) mount namespace. The guest
//! mounts the share once, as a pod volume, and takes each joining
//! container's root from its directory there, under the same tmpfs-backed
//! overlay as a disk's ([`hyper_protocol::RootfsSpec::share`]): the host's
//! directory is never written.
//!
//! A joined container is followed like the pod's own containers (its output
//! to the caller, its exit recorded) but does not end the pod when it exits;
//! it is removed on its own ([`Runtime::remove_joined`]). The pod record
//! lists the joined containers (`joined`), so a takeover keeps them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_hypervisor::{ShareSpec, ShareTransport};
use hyper_protocol::{
    capability, ContainerSpec, ProcessSpec, Request, RootfsSpec, SharedRootfs, TerminalSize,
    VolumeSource, VolumeSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::exec::{client_process_io, drive_process};
use super::model::{PodRecord, PodState, RunError, RunIo, RunOutcome, Started};
use super::store::{check_env_and_workdir, write_record};
use super::{lock, Runtime, RUNTIME_FAILURE_EXIT};
use crate::agent::AgentCallError;

/// The pod volume, and the share tag, a joinable pod's guest reads joined
/// containers' roots from.
pub(super) const JOIN_VOLUME: &str = "hyper-join";

/// How long a removed container's first process may take to die of its
/// SIGKILL before its root is taken away anyway.
const REMOVE_GRACE: Duration = Duration::from_secs(30);

/// The most joined containers a pod's record lists at once.
pub const MAX_JOINED: usize = 64;

/// A container that joined a running pod, as `pod.json` keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinedContainer {
    /// The caller's name for it (the containerd shim: the task id).
    pub name: String,
    /// Its id inside the VM (`<pod>-j<N>`); also its directory in the
    /// join share.
    pub guest_id: String,
    /// Its first process's id inside the VM.
    pub init_process: String,
    /// The host directory its root is read from.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    pub state: PodState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The guest's OOM killer ended its first process.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
    /// Its confinement (capabilities, no_new_privs, seccomp), which its
    /// execs start from.
    #[serde(default, skip_serializing_if = "crate::security::Security::is_default")]
    pub security: crate::security::Security,
}

/// A container to add to a running pod ([`Runtime::join`]).
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Unique among the pod's joined containers: 1 to 128 bytes, no `/`,
    /// no NUL.
    pub name: String,
    /// An absolute path of a host directory: the container's root, read
    /// only (its writes go to a tmpfs in the guest).
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// Whether the caller sends stdin; without it stdin is empty.
    pub interactive: bool,
    pub tty: bool,
    pub tty_size: Option<TerminalSize>,
    /// Its cgroup limits in the guest (the OCI spec's `linux.resources`).
    pub limits: hyper_protocol::ResourceLimits,
    /// Its confinement, checked as a run's (`hyper run --cap-add …`).
    pub security: crate::security::Security,
}

/// Where a pod's joined containers' roots are bound on the host.
pub(super) fn join_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("join")
}

/// The VM's share of [`join_dir`].
pub(super) fn join_share(pod_dir: &Path) -> ShareSpec {
    ShareSpec {
        tag: JOIN_VOLUME.into(),
        source: join_dir(pod_dir),
        read_only: true,
    }
}

/// The guest's pod volume of that share.
pub(super) fn join_volume(transport: ShareTransport) -> VolumeSpec {
    VolumeSpec {
        name: JOIN_VOLUME.into(),
        size_mib: 0,
        source: VolumeSource::Share {
            tag: JOIN_VOLUME.into(),
            transport: super::volumes::guest_transport(transport),
        },
        readonly: true,
    }
}

fn c_path(path: &Path) -> Result<CString, RunError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RunError::Invalid(format!("{}: a path with a NUL byte", path.display())))
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> Result<(), std::io::Error> {
    let target_c = c_path(target).map_err(|e| std::io::Error::other(e.to_string()))?;
    let source_c = match source {
        Some(s) => Some(c_path(s).map_err(|e| std::io::Error::other(e.to_string()))?),
        None => None,
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it (no fstype, no data for bind
    // and propagation changes).
    let rc = unsafe {
        libc::mount(
            source_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A lazy unmount of `target` and everything below it; nothing mounted
/// there is fine.
fn detach(target: &Path) -> Result<(), std::io::Error> {
    let target_c = c_path(target).map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

impl Runtime {
    /// As [`Runtime::create`], for a pod that other containers join later
    /// ([`Runtime::join`]): its VM gets the join share. Refused on a
    /// backend that cannot share host directories.
    pub async fn create_joinable(
        self: &Arc<Self>,
        req: super::model::RunRequest,
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        if self.share_transport().is_none() {
            let backend = self
                .hypervisor
                .as_ref()
                .map_or("configured", |h| h.name())
                .to_string();
            return Err(RunError::Invalid(format!(
                "the {backend} backend cannot share host directories (it has no share transport): containers cannot join its pods; use the qemu, kvm or xen backend"
            )));
        }
        self.create_with(req, io, true).await
    }

    /// Makes the join directory of a joinable pod a shared mount point
    /// before its VM (and the share's server) starts, and adds its share
    /// to `spec`.
    pub(super) fn join_up(
        &self,
        record: &PodRecord,
        spec: &mut hyper_hypervisor::VmSpec,
    ) -> Result<(), RunError> {
        if !record.joinable {
            return Ok(());
        }
        if self.share_transport().is_none() {
            return Err(RunError::Invalid(format!(
                "the {} backend cannot share host directories: pod {} cannot take joining containers",
                record.backend, record.id
            )));
        }
        let pod_dir = self.pod_dir(&record.id);
        let dir = join_dir(&pod_dir);
        let state_err = |source| RunError::State {
            path: dir.clone(),
            source,
        };
        crate::private::create_private_dir(&dir).map_err(state_err)?;
        if self.host_mounts.load(Ordering::Relaxed) {
            // Its own mount, shared: binds made below it later reach the
            // slave copy in the share server's mount namespace.
            mount(Some(&dir), &dir, libc::MS_BIND).map_err(state_err)?;
            if let Err(e) = mount(None, &dir, libc::MS_SHARED) {
                let _ = detach(&dir);
                return Err(state_err(e));
            }
        }
        spec.shares.push(join_share(&pod_dir));
        Ok(())
    }

    /// Unmounts a pod's join directory and every root bound below it, and
    /// removes the (then empty) directories. Never removes a file: a root
    /// still mounted is the caller's. False when something is left.
    pub(super) fn join_down(&self, pod_dir: &Path) -> bool {
        let dir = join_dir(pod_dir);
        if !dir.exists() {
            return true;
        }
        if self.host_mounts.load(Ordering::Relaxed) {
            if let Err(e) = detach(&dir) {
                tracing::warn!(dir = %dir.display(), "unmounting the join share: {e}");
            }
        }
        let mut clean = true;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                clean &= self.unbind_root(&entry.path());
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::warn!(dir = %dir.display(), "removing the join share: {e}");
            clean = false;
        }
        clean
    }

    /// Binds a joining container's root below the join directory.
    fn bind_root(&self, rootfs: &Path, at: &Path) -> Result<(), RunError> {
        let state_err = |source| RunError::State {
            path: at.to_path_buf(),
            source,
        };
        std::fs::create_dir(at).map_err(state_err)?;
        if self.host_mounts.load(Ordering::Relaxed) {
            if let Err(e) = mount(Some(rootfs), at, libc::MS_BIND | libc::MS_REC) {
                let _ = std::fs::remove_dir(at);
                return Err(state_err(e));
            }
        }
        Ok(())
    }

    /// Undoes [`Runtime::bind_root`]; false when the directory stays.
    fn unbind_root(&self, at: &Path) -> bool {
        if self.host_mounts.load(Ordering::Relaxed) {
            if let Err(e) = detach(at) {
                tracing::warn!(dir = %at.display(), "unmounting a joined container's root: {e}");
            }
        }
        match std::fs::remove_dir(at) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!(dir = %at.display(), "removing a joined container's root: {e}");
                false
            }
        }
    }

    /// Changes `id`'s record under the lock and saves it; `None` without
    /// such a pod.
    fn update_record<T>(&self, id: &str, f: impl FnOnce(&mut PodRecord) -> T) -> Option<T> {
        let mut pods = self.pods();
        let record = pods.get_mut(id)?;
        let out = f(record);
        if let Err(e) = write_record(&self.pod_dir(id), record) {
            tracing::warn!(pod = %id, "cannot save pod.json: {e}");
        }
        Some(out)
    }

    /// Starts a container in pod `id`'s running VM, its root read from the
    /// host directory `req.rootfs`, attached to `io`; returns once it runs
    /// (or with `early` set when its process could not start: 127 for a
    /// command not found). Its end is in the returned `outcome`; the pod
    /// goes on whatever it exits with.
    pub async fn join(
        self: &Arc<Self>,
        id: &str,
        req: JoinRequest,
        io: RunIo,
    ) -> Result<Started, RunError> {
        check_join_request(&req)?;
        let live = self.live_pod(id)?;
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        let confinement = crate::security::check(&req.security)?;
        let rlimits = crate::security::rlimits(&req.security)?;
        // Its place in the record first: a second join of the same name
        // is refused from here on.
        let reserved = self.update_record(id, |r| -> Result<_, RunError> {
            if !r.joinable {
                return Err(RunError::Conflict(format!(
                    "pod {id} was not created to take more containers"
                )));
            }
            if r.joined.iter().any(|c| c.name == req.name) {
                return Err(RunError::Conflict(format!(
                    "pod {id} already has a container {}",
                    req.name
                )));
            }
            let knows = |cap: &str| r.guest_capabilities.iter().any(|c| c == cap);
            if !req.limits.is_unlimited()
                && !r.guest_capabilities.is_empty()
                && !knows(capability::CONTAINER_LIMITS)
            {
                return Err(RunError::Failed(format!(
                    "pod {id}'s guest agent cannot set container limits (no capability {}): install a payload built from this version, or leave out the container's linux.resources",
                    capability::CONTAINER_LIMITS
                )));
            }
            if !req.security.ulimits.is_empty()
                && !r.guest_capabilities.is_empty()
                && !knows(capability::RLIMITS)
            {
                return Err(RunError::Failed(format!(
                    "pod {id}'s guest agent cannot set ulimits (no capability {}): install a payload built from this version, or leave out the spec's process.rlimits",
                    capability::RLIMITS
                )));
            }
            if r.joined.len() >= MAX_JOINED {
                return Err(RunError::Conflict(format!(
                    "pod {id} has {MAX_JOINED} joined containers: remove one first"
                )));
            }
            let n = r.joins;
            r.joins += 1;
            let c = JoinedContainer {
                name: req.name.clone(),
                guest_id: format!("{id}-j{n}"),
                init_process: format!("{}-j{n}", super::INIT_PROCESS),
                rootfs: req.rootfs.clone(),
                args: req.args.clone(),
                env: req.env.clone(),
                workdir: req.workdir.clone(),
                user: req.user.clone(),
                state: PodState::Created,
                exit_code: None,
                oom_killed: false,
                security: req.security.clone(),
            };
            r.joined.push(c.clone());
            Ok((c, r.hostname()))
        });
        let (c, hostname) = reserved.ok_or_else(|| RunError::NoSuchPod(id.to_string()))??;
        let root = join_dir(&self.pod_dir(id)).join(&c.guest_id);
        let forget = |rt: &Self| {
            rt.update_record(id, |r| r.joined.retain(|j| j.name != c.name));
        };
        if let Err(e) = self.bind_root(&req.rootfs, &root) {
            forget(self);
            return Err(e);
        }
        let undo = |rt: &Self| {
            rt.unbind_root(&root);
            forget(rt);
        };
        let streams = match agent.new_process(&c.init_process) {
            Ok(s) => s,
            Err(e) => {
                undo(self);
                return Err(e.into());
            }
        };
        let mut env = c.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={hostname}"));
        }
        let spec = ContainerSpec {
            id: c.guest_id.clone(),
            rootfs: RootfsSpec {
                disk_id: String::new(),
                fstype: String::new(),
                share: Some(SharedRootfs {
                    volume: JOIN_VOLUME.into(),
                    dir: c.guest_id.clone(),
                }),
            },
            hostname,
            process: ProcessSpec {
                id: c.init_process.clone(),
                args: c.args.clone(),
                env,
                workdir: c.workdir.clone().unwrap_or_else(|| "/".into()),
                user: c.user.clone().unwrap_or_default(),
                terminal: req.tty,
                terminal_size: req.tty_size,
                stdio: streams.stdio,
                stderr: streams.stderr,
                confinement,
                rlimits,
            },
            mounts: Vec::new(),
            resources: req.limits,
        };
        match agent.request(Request::NewContainer(spec)).await {
            Ok(_) => {}
            Err(AgentCallError::Agent(e)) if e.exit_code().is_some() => {
                // It never ran: nothing of it stays in the pod.
                undo(self);
                return Ok(Started {
                    id: id.to_string(),
                    early: Some(RunOutcome {
                        pod: id.to_string(),
                        exit_code: e.exit_code().unwrap_or(RUNTIME_FAILURE_EXIT),
                        message: Some(e.message),
                        oom_killed: false,
                    }),
                    outcome: watch::channel(None).1,
                });
            }
            Err(e) => {
                undo(self);
                return Err(e.into());
            }
        }
        self.update_record(id, |r| {
            if let Some(j) = r.joined.iter_mut().find(|j| j.name == c.name) {
                j.state = PodState::Running;
            }
        });
        let (outcome_tx, outcome) = watch::channel(None);
        lock(&live.joined).insert(c.name.clone(), outcome.clone());
        let (resizer, pio) = client_process_io(
            &agent,
            &c.guest_id,
            &c.init_process,
            req.tty,
            req.interactive,
            io,
        );
        let rt = self.clone();
        let (pod, name) = (id.to_string(), c.name.clone());
        tokio::spawn(async move {
            let result = drive_process(&agent, live.vm.clone(), streams, pio).await;
            if let Some(task) = resizer {
                task.abort();
            }
            let (code, oom_killed) = match result {
                Ok(end) => (end.status, end.oom_killed),
                Err(_) if live.stop_requested.load(Ordering::SeqCst) => {
                    (128 + libc::SIGKILL, false)
                }
                Err(reason) => {
                    tracing::warn!(pod = %pod, container = %name, "{reason}");
                    (RUNTIME_FAILURE_EXIT, false)
                }
            };
            let record = rt.update_record(&pod, |r| {
                if let Some(j) = r.joined.iter_mut().find(|j| j.name == name) {
                    j.state = PodState::Exited;
                    j.exit_code = Some(code);
                    j.oom_killed = oom_killed;
                }
                r.clone()
            });
            if let (true, Some(record)) = (oom_killed, record) {
                rt.observe_joined_oom(&record, &name);
            }
            tracing::debug!(pod = %pod, container = %name, code, "joined container exited");
            outcome_tx.send_replace(Some(Ok(RunOutcome {
                pod,
                exit_code: code,
                message: None,
                oom_killed,
            })));
        });
        Ok(Started {
            id: id.to_string(),
            early: None,
            outcome,
        })
    }

    /// The record of pod `id`'s joined container `name`.
    pub fn joined(&self, id: &str, name: &str) -> Result<JoinedContainer, RunError> {
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NoSuchPod(id.to_string()))?;
        record
            .joined
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| RunError::NotFound(format!("pod {id} has no container {name}")))
    }

    /// Sends `signal` to the first process of pod `id`'s joined container
    /// `name`.
    pub async fn kill_joined(&self, id: &str, name: &str, signal: i32) -> Result<(), RunError> {
        if !(1..=64).contains(&signal) {
            return Err(RunError::Invalid(format!(
                "signal {signal}: use 1 to 64 or a name such as TERM or KILL"
            )));
        }
        let c = self.joined(id, name)?;
        let live = self.live_pod(id)?;
        let agent = lock(&live.agent).clone();
        let Some(agent) = agent else {
            return Err(RunError::Conflict(format!("pod {id} is still booting")));
        };
        agent
            .request(Request::Signal {
                container: c.guest_id,
                process: c.init_process,
                signal,
            })
            .await?;
        Ok(())
    }

    /// Removes pod `id`'s joined container `name`: kills it if it still
    /// runs, removes it from the guest, unbinds its root and forgets it.
    /// The pod and its other containers go on.
    pub async fn remove_joined(&self, id: &str, name: &str) -> Result<(), RunError> {
        let c = self.joined(id, name)?;
        if let Ok(live) = self.live_pod(id) {
            let agent = lock(&live.agent).clone();
            let outcome = lock(&live.joined).remove(name);
            if let Some(agent) = agent {
                if c.state == PodState::Running {
                    let _ = agent
                        .request(Request::Signal {
                            container: c.guest_id.clone(),
                            process: c.init_process.clone(),
                            signal: libc::SIGKILL,
                        })
                        .await;
                    if let Some(mut rx) = outcome {
                        let ended =
                            tokio::time::timeout(REMOVE_GRACE, rx.wait_for(Option::is_some));
                        if ended.await.is_err() {
                            tracing::warn!(pod = %id, container = %name, "still running {REMOVE_GRACE:?} after SIGKILL; removing it anyway");
                        }
                    }
                }
                if let Err(e) = agent
                    .request(Request::RemoveContainer {
                        container: c.guest_id.clone(),
                    })
                    .await
                {
                    tracing::debug!(pod = %id, container = %name, "guest's RemoveContainer: {e}");
                }
            }
        }
        self.unbind_root(&join_dir(&self.pod_dir(id)).join(&c.guest_id));
        self.update_record(id, |r| r.joined.retain(|j| j.name != name));
        Ok(())
    }
}

fn check_join_request(req: &JoinRequest) -> Result<(), RunError> {
    if req.name.is_empty() || req.name.len() > 128 || req.name.contains(['/', '\0']) {
        return Err(RunError::Invalid(format!(
            "container name {:?}: use 1 to 128 bytes without / or NUL",
            req.name
        )));
    }
    if req.args.is_empty() {
        return Err(RunError::Invalid(format!(
            "container {}: no command given",
            req.name
        )));
    }
    if !req.rootfs.is_absolute() || !req.rootfs.is_dir() {
        return Err(RunError::Invalid(format!(
            "container {}: rootfs {}: not an absolute path of a directory",
            req.name,
            req.rootfs.display()
        )));
    }
    check_env_and_workdir(&req.env, req.workdir.as_deref())?;
    hyper_api::resources::check_limits(&req.limits, |field| {
        format!("container {}: linux.resources ({field})", req.name)
    })
    .map_err(RunError::Invalid)?;
    crate::agent::check_c_strings(
        &req.args,
        &req.env,
        req.workdir.as_deref(),
        req.user.as_deref(),
    )
    .map_err(RunError::Invalid)
}
