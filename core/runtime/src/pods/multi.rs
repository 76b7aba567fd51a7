//! Pods of several containers (`hyper pod create -f POD.toml`): one VM, one
//! rootfs disk per container, pod volumes shared through hyperstart.
//!
//! Lifecycle: the pod runs while any of its containers runs and exits once
//! all have exited; its exit code is the first non-zero exit code in file
//! order, or 0. The first container is the pod's main container: `hyper exec
//! POD`, `hyper logs POD` and the pod's own log go to it; signals go to every
//! container. Restart policies are not offered for these pods. A restarted
//! hyperd takes them over as it does pods of one container: every container
//! whose first process still runs (or whose exit hyperstart kept) is
//! supervised again.

use hyper_protocol::{capability, MountSpec, VolumeSpec};

use super::*;
use crate::podfile::{PodFile, PodMount};

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

fn in_container(name: &str, e: RunError) -> RunError {
    match e {
        RunError::Invalid(m) => RunError::Invalid(format!("container {name}: {m}")),
        RunError::Failed(m) => RunError::Failed(format!("container {name}: {m}")),
        other => other,
    }
}

impl Runtime {
    /// Creates and starts a pod of the containers `pod` lists; returns its
    /// id once every container runs. `name` overrides the file's name.
    pub async fn create_pod(
        self: &Arc<Self>,
        mut pod: PodFile,
        name: Option<String>,
    ) -> Result<String, RunError> {
        if name.is_some() {
            pod.name = name;
        }
        pod.validate()
            .map_err(|e| RunError::Invalid(format!("pod file: {}: {}", e.key, e.message)))?;
        let size = self.pod_vm_size(&pod)?;
        let hypervisor = self.ready_to_launch()?;
        if let Some(name) = &pod.name {
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
        let mut containers = Vec::with_capacity(pod.containers.len());
        let mut main_req = None;
        for (i, c) in pod.containers.iter().enumerate() {
            if let Some(dir) = &c.rootfs {
                if !dir.is_absolute() {
                    return Err(RunError::Invalid(format!(
                        "container {}: rootfs {}: hyperd needs an absolute path",
                        c.name,
                        dir.display()
                    )));
                }
            }
            let req = RunRequest {
                rootfs: c.rootfs.clone(),
                image: c.image.clone(),
                entrypoint: c.entrypoint.clone(),
                args: c.command.clone(),
                env: c.env.clone(),
                workdir: c.workdir.clone(),
                user: c.user.clone(),
                cpus: None,
                memory_mib: None,
                remove: false,
                interactive: false,
                name: None,
                labels: BTreeMap::new(),
                restart: RestartPolicy::No,
                tty: false,
                tty_size: None,
                security: c.security.clone(),
            };
            let (image, process, image_id) = self
                .resolve_source(&req)
                .await
                .map_err(|e| in_container(&c.name, e))?;
            if let Some(w) = &process.workdir {
                if !w.starts_with('/') {
                    return Err(RunError::Invalid(format!(
                        "container {}: the image's working directory {w} is not an absolute path; set workdir",
                        c.name
                    )));
                }
            }
            crate::agent::check_c_strings(
                &process.args,
                &process.env,
                process.workdir.as_deref(),
                process.user.as_deref(),
            )
            .map_err(|e| RunError::Invalid(format!("container {}: {e}", c.name)))?;
            let (guest_id, init_process) = if i == 0 {
                (id.clone(), INIT_PROCESS.to_string())
            } else {
                (
                    format!("{id}-{}", c.name),
                    format!("{INIT_PROCESS}-{}", c.name),
                )
            };
            if i == 0 {
                main_req = Some(RunRequest {
                    args: process.args.clone(),
                    env: process.env.clone(),
                    workdir: process.workdir.clone(),
                    user: process.user.clone(),
                    ..req
                });
            }
            containers.push(ContainerRecord {
                name: c.name.clone(),
                guest_id,
                init_process,
                image: image_id,
                image_name: c.image.clone(),
                rootfs_image: image,
                args: process.args,
                env: process.env,
                workdir: process.workdir,
                user: process.user,
                mounts: c.mounts.clone(),
                security: c.security.clone(),
                state: PodState::Created,
                exit_code: None,
            });
        }
        let Some(main_req) = main_req else {
            return Err(RunError::Invalid("the pod has no containers".into()));
        };

        let pod_dir = self.pods_dir().join(&id);
        let run_dir = pod_dir.join("vm");
        let state_err = |source| RunError::State {
            path: pod_dir.clone(),
            source,
        };
        crate::private::create_private_dir(&run_dir).map_err(state_err)?;
        for (i, c) in containers.iter().enumerate() {
            crate::private::create_private_dir(&container_log_dir(&pod_dir, i, &c.name))
                .map_err(state_err)?;
        }
        let main = &containers[0];
        let record = PodRecord {
            id: id.clone(),
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            state: PodState::Created,
            backend: hypervisor.name().to_string(),
            args: main.args.clone(),
            image: main.image.clone(),
            image_name: main.image_name.clone(),
            rootfs_image: main.rootfs_image.clone(),
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            exit_code: None,
            finished_unix: None,
            vm_pid: None,
            vm_pid_start: None,
            vm: None,
            container: Some(main_req.clone()),
            pod_file: Some(pod.clone()),
            remove: false,
            restart: RestartPolicy::No,
            restart_count: 0,
            containers,
        };
        // The name is claimed and the pod listed under one lock: of two
        // concurrent runs of one --name, the second gets the conflict.
        self.claim_new(&record, &pod_dir)?;
        if let Err(e) = write_record(&pod_dir, &record) {
            self.pods().remove(&id);
            return Err(state_err(e));
        }

        let spec = self.pod_vm_spec(&record, size);
        self.launch_pod(hypervisor, &pod, record, spec, main_req)
            .await?;
        Ok(id)
    }

    /// Launches the VM of a recorded pod of several containers, starts them
    /// and leaves the pod supervised; on failure the record says why.
    async fn launch_pod(
        self: &Arc<Self>,
        hypervisor: Arc<dyn Hypervisor>,
        pod: &PodFile,
        record: PodRecord,
        spec: VmSpec,
        main_req: RunRequest,
    ) -> Result<(), RunError> {
        let pod_dir = self.pods_dir().join(&record.id);
        let (vm, live, mut record) = self
            .launch_vm(hypervisor, spec, main_req, record, PodLinks::new())
            .await?;
        match self.boot_pod(pod, &mut record, vm, &pod_dir).await {
            Ok((agent, streams)) => {
                live.set_agent(&agent);
                let _ = write_record(&pod_dir, &record);
                self.pods().insert(record.id.clone(), record.clone());
                let rt = self.clone();
                let streams = streams.into_iter().enumerate().collect();
                tokio::spawn(async move { rt.supervise_pod(live, record, agent, streams).await });
                Ok(())
            }
            Err(err) => {
                self.teardown(&live, record, Err(err.to_string())).await;
                Err(err)
            }
        }
    }

    /// The VM of a pod of several containers: one rootfs disk each.
    fn pod_vm_spec(&self, record: &PodRecord, size: (u32, u32)) -> VmSpec {
        let disks = record
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| DiskSpec {
                path: c.rootfs_image.clone(),
                read_only: true,
                id: disk_id(i),
            })
            .collect();
        self.vm_spec(&record.id, disks, size)
    }

    /// The vCPUs and memory a pod file asks for, or the configured defaults.
    fn pod_vm_size(&self, pod: &PodFile) -> Result<(u32, u32), RunError> {
        self.checked_vm_size((pod.vcpus, "vcpus ="), (pod.memory_mib, "memory_mib ="))
    }

    /// `start` of an exited pod of several containers: a fresh VM from the
    /// pod file it was created with, each container from its rootfs image
    /// (built again if it was removed).
    pub(super) async fn start_again_pod(
        self: &Arc<Self>,
        id: &str,
        record: PodRecord,
    ) -> Result<Started, RunError> {
        let (Some(pod), Some(main_req)) = (&record.pod_file, &record.container) else {
            return Err(RunError::Conflict(format!(
                "pod {id} was created by an older hyperd that did not keep its pod file; create it anew"
            )));
        };
        let hypervisor = self.ready_to_launch()?;
        let size = self.pod_vm_size(pod)?;
        let mut images = Vec::with_capacity(record.containers.len());
        for (c, from_file) in record.containers.iter().zip(&pod.containers) {
            let image = self
                .rootfs_again(
                    &c.rootfs_image,
                    c.image.as_deref(),
                    from_file.rootfs.as_ref(),
                )
                .await?;
            images.push(image);
        }
        let record = self.claim_for_start(id, |r| {
            for (c, image) in r.containers.iter_mut().zip(&images) {
                c.rootfs_image = image.clone();
                c.state = PodState::Created;
                c.exit_code = None;
            }
        })?;
        let spec = self.pod_vm_spec(&record, size);
        let (pod, main_req) = (pod.clone(), main_req.clone());
        self.launch_pod(hypervisor, &pod, record, spec, main_req)
            .await?;
        let outcome = self
            .live_pods()
            .get(id)
            .map(|live| live.outcome.clone())
            // Already over: its record says how.
            .unwrap_or_else(|| watch::channel(None).1);
        Ok(Started {
            id: id.to_string(),
            early: None,
            outcome,
        })
    }

    /// Connects to hyperstart, creates the pod's volumes and starts its
    /// containers in order.
    async fn boot_pod(
        &self,
        pod: &PodFile,
        record: &mut PodRecord,
        vm: Arc<dyn Vm>,
        pod_dir: &Path,
    ) -> Result<(AgentClient, Vec<ProcessStreams>), RunError> {
        let id = record.id.clone();
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
        if !pod.volumes.is_empty() && !ready.capabilities.iter().any(|c| c == capability::VOLUMES) {
            return Err(RunError::Failed(format!(
                "the guest agent ({}) does not support volumes; install a payload built from this version",
                ready.agent
            )));
        }
        agent
            .request(Request::StartPod(PodSpec {
                hostname: id.clone(),
                volumes: pod
                    .volumes
                    .iter()
                    .map(|v| VolumeSpec {
                        name: v.name.clone(),
                        size_mib: v.size_mib.unwrap_or(0),
                    })
                    .collect(),
            }))
            .await?;
        let mut all = Vec::with_capacity(record.containers.len());
        for (i, c) in record.containers.iter_mut().enumerate() {
            let streams = agent.new_process(&c.init_process)?;
            let mut env = c.env.clone();
            if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
                env.push(format!("HOSTNAME={id}"));
            }
            let spec = ContainerSpec {
                id: c.guest_id.clone(),
                rootfs: RootfsSpec {
                    disk_id: disk_id(i),
                    fstype: rootfs::FSTYPE.into(),
                },
                // Containers of a pod share its hostname, as in Kubernetes.
                hostname: id.clone(),
                process: ProcessSpec {
                    id: c.init_process.clone(),
                    args: c.args.clone(),
                    env,
                    workdir: c.workdir.clone().unwrap_or_else(|| "/".into()),
                    user: c.user.clone().unwrap_or_default(),
                    terminal: false,
                    terminal_size: None,
                    stdio: streams.stdio,
                    stderr: streams.stderr,
                    confinement: crate::security::check(&c.security)?,
                },
                mounts: c
                    .mounts
                    .iter()
                    .map(|m| MountSpec {
                        volume: m.volume.clone(),
                        path: m.path.clone(),
                        readonly: m.readonly,
                    })
                    .collect(),
            };
            match agent.request(Request::NewContainer(spec)).await {
                Ok(_) => {
                    c.state = PodState::Running;
                    all.push(streams);
                }
                Err(AgentCallError::Agent(e)) => {
                    if let Some(code) = e.exit_code() {
                        c.state = PodState::Exited;
                        c.exit_code = Some(code);
                    }
                    return Err(RunError::Failed(format!(
                        "container {}: {}",
                        c.name, e.message
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::debug!(pod = %id, containers = all.len(), "pod started");
        Ok((agent, all))
    }

    /// Logs the output of every container in `streams` (by index in the
    /// record), records each exit, and takes the VM down once the last one
    /// exited (or the VM died).
    pub(super) async fn supervise_pod(
        self: Arc<Self>,
        live: Arc<LivePod>,
        mut record: PodRecord,
        agent: AgentClient,
        streams: Vec<(usize, ProcessStreams)>,
    ) {
        let id = record.id.clone();
        let pod_dir = self.pods_dir().join(&id);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let count = streams.len();
        for (i, s) in streams {
            let Some(container) = record.containers.get(i) else {
                continue;
            };
            let dir = container_log_dir(&pod_dir, i, &container.name);
            let log = Arc::new(Mutex::new(LogWriter::new(&dir, self.log_rotation())));
            let agent = agent.clone();
            let vm = live.vm.clone();
            let tx = tx.clone();
            // `hyper attach POD` follows the main container.
            let io = ProcessIo {
                log: Some(log.clone()),
                attach: (i == 0).then(|| live.links.attach.clone()),
                ..ProcessIo::default()
            };
            tokio::spawn(async move {
                let result = drive_process(&agent, vm, s, io).await;
                lock(&log).flush();
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        let mut failure = None;
        let mut done = 0;
        while let Some((i, result)) = rx.recv().await {
            done += 1;
            let stopped = live.stop_requested.load(Ordering::SeqCst);
            let code = match result {
                Ok(code) => code,
                Err(_) if stopped => 128 + libc::SIGKILL,
                Err(reason) => {
                    failure.get_or_insert(reason);
                    RUNTIME_FAILURE_EXIT
                }
            };
            if let Some(c) = record.containers.get_mut(i) {
                c.state = PodState::Exited;
                c.exit_code = Some(code);
                tracing::debug!(pod = %id, container = %c.name, code, "container exited");
            }
            if done < count {
                let _ = write_record(&pod_dir, &record);
                self.pods().insert(id.clone(), record.clone());
            }
        }
        let result = match failure {
            Some(reason) if !live.stop_requested.load(Ordering::SeqCst) => Err(RunError::Boot {
                reason,
                console: console_tail(&pod_dir.join("console.log")),
            }
            .to_string()),
            _ => Ok(RunOutcome {
                pod: id.clone(),
                exit_code: pod_exit_code(&record.containers),
                message: None,
            }),
        };
        self.teardown(&live, record, result).await;
    }

    /// The container a `hyper exec`/`logs` names (`None`: the main one):
    /// its id in the guest and its record, if the pod has several.
    pub fn container_of(
        &self,
        id: &str,
        container: Option<&str>,
    ) -> Result<Option<(usize, ContainerRecord)>, RunError> {
        let Some(name) = container else {
            return Ok(None);
        };
        let record = self
            .record(id)
            .ok_or_else(|| RunError::NotFound(format!("no such pod: {id}")))?;
        record
            .containers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == name)
            .map(|(i, c)| Some((i, c.clone())))
            .ok_or_else(|| {
                let names: Vec<&str> = record.containers.iter().map(|c| c.name.as_str()).collect();
                RunError::NotFound(if names.is_empty() {
                    format!("pod {id} has one unnamed container: drop /{name}")
                } else {
                    format!(
                        "pod {id} has no container {name}; it has {}",
                        names.join(", ")
                    )
                })
            })
    }

    /// The log directory of the pod's main container, or of `container`.
    pub fn log_dir(&self, id: &str, container: Option<&str>) -> Result<PathBuf, RunError> {
        Ok(match self.container_of(id, container)? {
            Some((i, c)) => container_log_dir(&self.pod_dir(id), i, &c.name),
            None => self.pod_dir(id),
        })
    }

    /// Sends `signal` to every running container of a several-container
    /// pod; `false` for a pod of one container, which the caller signals.
    pub(super) async fn signal_containers(
        &self,
        id: &str,
        agent: &AgentClient,
        signal: i32,
    ) -> Result<bool, RunError> {
        let Some(record) = self.record(id) else {
            return Ok(false);
        };
        if record.containers.is_empty() {
            return Ok(false);
        }
        let mut delivered = false;
        let mut last_err = None;
        for c in record
            .containers
            .iter()
            .filter(|c| c.state == PodState::Running)
        {
            match agent
                .request(Request::Signal {
                    container: c.guest_id.clone(),
                    process: c.init_process.clone(),
                    signal,
                })
                .await
            {
                Ok(_) => delivered = true,
                // It exited in the meantime.
                Err(AgentCallError::Agent(e)) if e.kind == AgentErrorKind::NotFound => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) if !delivered => Err(e.into()),
            _ => Ok(true),
        }
    }
}

/// Containers that had not exited when their pod ended (a failed start, a
/// VM that died) are exited too, without an exit code of their own.
pub(super) fn containers_end_with_the_pod(record: &mut PodRecord) {
    for c in &mut record.containers {
        c.state = PodState::Exited;
    }
}

fn disk_id(index: usize) -> String {
    format!("hyper-rootfs{index}")
}

/// The first non-zero exit code in file order, else 0.
fn pod_exit_code(containers: &[ContainerRecord]) -> i32 {
    containers
        .iter()
        .filter_map(|c| c.exit_code)
        .find(|&c| c != 0)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, exit_code: Option<i32>) -> ContainerRecord {
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
        }
    }

    #[test]
    fn the_pod_exit_code_is_the_first_failure_in_file_order() {
        assert_eq!(
            pod_exit_code(&[container("a", Some(0)), container("b", Some(0))]),
            0
        );
        assert_eq!(
            pod_exit_code(&[
                container("a", Some(0)),
                container("b", Some(3)),
                container("c", Some(4))
            ]),
            3
        );
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
        assert_eq!(disk_id(0), ROOTFS_DISK_ID);
    }

    #[test]
    fn old_records_without_containers_still_load() {
        let json = r#"{"id":"abc","state":"exited","backend":"qemu","args":["sh"],
            "rootfs_image":"/x","created_unix":1,"exit_code":0,"vm_pid":null,"vm_pid_start":null}"#;
        let r: PodRecord = serde_json::from_str(json).unwrap();
        assert!(r.containers.is_empty());
        let out = serde_json::to_string(&r).unwrap();
        assert!(!out.contains("containers"));
    }
}
