//! Making a pod: `hyper run`/`create` (a pod of one container) and `hyper
//! pod create -f` (a pod file) both become a [`NewPod`], resolved (images,
//! rootfs, process defaults), recorded and launched by one path. Also where
//! rootfs images come from, for a new pod and for one started again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper_hypervisor::Hypervisor;
use hyper_images::Image;

use super::model::{
    container_log_dir, ContainerRecord, PodRecord, PodState, RestartPolicy, RunError, RunIo,
    RunOutcome, RunRequest, SizeRequest, Started,
};
use super::store::{check_env_and_workdir, new_id, now_unix, write_record};
use super::{Runtime, INIT_PROCESS};
use crate::config::{MAX_VCPUS, MIN_MEMORY_MIB};
use crate::podfile::{PodFile, PodMount};
use crate::process::{self, Overrides};
use crate::resources::SizeRefusal;
use crate::rootfs;

/// A pod to make, however it was asked for.
struct NewPod {
    name: Option<String>,
    labels: BTreeMap<String, String>,
    remove: bool,
    restart: RestartPolicy,
    size: SizeRequest,
    /// In start order, the main one first: each container's name (empty
    /// for a pod of one), what runs in it, and its volume mounts.
    containers: Vec<(String, RunRequest, Vec<PodMount>)>,
    /// The pod file it comes from, if any: `hyper start` boots it again
    /// from it.
    pod_file: Option<PodFile>,
    /// Other containers join it while it runs.
    joinable: bool,
}

impl Runtime {
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

    /// Starts a pod of one container: boots its VM and starts its
    /// container, then leaves a supervisor task to carry its output to the
    /// log (and to `io`) and to clean up when it exits. Returns once the
    /// container runs, or with `early` set when it could not start (command
    /// not found: 127).
    pub async fn create(
        self: &Arc<Self>,
        req: RunRequest,
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        self.create_with(req, io, false).await
    }

    /// [`Runtime::create`]; `joinable`: the pod takes more containers
    /// while it runs (see [`Runtime::create_joinable`]).
    pub(super) async fn create_with(
        self: &Arc<Self>,
        req: RunRequest,
        io: Option<RunIo>,
        joinable: bool,
    ) -> Result<Started, RunError> {
        check_env_and_workdir(&req.env, req.workdir.as_deref())?;
        crate::security::check(&req.security)?;
        check_run_limits(&req.limits)?;
        if let Some(h) = &req.hostname {
            super::network::check_hostname(h)?;
        }
        if req.remove && req.restart != RestartPolicy::No {
            return Err(RunError::RemoveWithRestart);
        }
        let new = NewPod {
            name: req.name.clone(),
            labels: req.labels.clone(),
            remove: req.remove,
            restart: req.restart,
            size: ((req.cpus, "cpus"), (req.memory_mib, "memory_mib")),
            containers: vec![(String::new(), req, Vec::new())],
            pod_file: None,
            joinable,
        };
        self.create_new(new, io).await
    }

    /// Creates and starts a pod of the containers `pod` lists; returns its
    /// id once every container runs. `name` overrides the file's name.
    /// Restart policies are not offered for these pods.
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
        let mut containers = Vec::with_capacity(pod.containers.len());
        for c in &pod.containers {
            if let Some(dir) = &c.rootfs {
                if !dir.is_absolute() {
                    return Err(RunError::Invalid(format!(
                        "container {}: rootfs {}: hyperd needs an absolute path",
                        c.name,
                        dir.display()
                    )));
                }
            }
            let limits = c.limits().map_err(|(key, message)| {
                RunError::Invalid(format!("pod file: container {}: {key}: {message}", c.name))
            })?;
            let req = RunRequest {
                limits,
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
                network: Default::default(),
                hostname: None,
                volumes: Vec::new(),
                start: None,
            };
            containers.push((c.name.clone(), req, c.mounts.clone()));
        }
        let new = NewPod {
            name: pod.name.clone(),
            labels: pod.labels.clone(),
            remove: false,
            restart: RestartPolicy::No,
            size: ((pod.vcpus, "vcpus ="), (pod.memory_mib, "memory_mib =")),
            containers,
            pod_file: Some(pod),
            joinable: false,
        };
        Ok(self.create_new(new, None).await?.id)
    }

    /// Resolves each container of `new`, records the pod and launches it.
    async fn create_new(
        self: &Arc<Self>,
        new: NewPod,
        io: Option<RunIo>,
    ) -> Result<Started, RunError> {
        let size = self.checked_vm_size(new.size)?;
        let hypervisor = self.ready_to_launch()?;
        self.check_new_name(new.name.as_deref())?;
        let network = match (&new.pod_file, new.containers.first()) {
            (Some(pod), _) => pod
                .network_request()
                .map_err(|e| RunError::Invalid(format!("pod file: {}: {}", e.key, e.message)))?,
            (None, Some((_, req, _))) => req.network.clone(),
            (None, None) => Default::default(),
        };
        self.network_preflight(&network)?;
        let from_file = new.pod_file.is_some();
        let volume_requests: Vec<(String, hyper_volumes::VolumeRequest)> = match &new.pod_file {
            Some(pod) => super::volumes::pod_file_requests(pod),
            None => new
                .containers
                .iter()
                .flat_map(|(name, req, _)| req.volumes.iter().map(|v| (name.clone(), v.clone())))
                .collect(),
        };
        // Checked before any image is resolved: a bad -v is reported at
        // once.
        for (c, reqs) in group_by_container(&volume_requests) {
            hyper_volumes::request::validate(&reqs).map_err(|e| {
                RunError::Invalid(if from_file {
                    format!("container {c}: {e}")
                } else {
                    e.to_string()
                })
            })?;
        }
        let id = new_id();
        let mut containers = Vec::with_capacity(new.containers.len());
        let mut main_req = None;
        for (i, (name, req, mounts)) in new.containers.into_iter().enumerate() {
            let named = |e: RunError| if from_file { in_container(&name, e) } else { e };
            let (image, process, image_id) = self.resolve_source(&req).await.map_err(named)?;
            if let Some(w) = &process.workdir {
                if !w.starts_with('/') {
                    return Err(RunError::Invalid(if from_file {
                        format!("container {name}: the image's working directory {w} is not an absolute path; set workdir")
                    } else {
                        format!(
                            "the image's working directory {w} is not an absolute path; pass -w"
                        )
                    }));
                }
            }
            crate::agent::check_c_strings(
                &process.args,
                &process.env,
                process.workdir.as_deref(),
                process.user.as_deref(),
            )
            .map_err(|e| named(RunError::Invalid(e)))?;
            let resolved = RunRequest {
                args: process.args,
                env: process.env,
                workdir: process.workdir,
                user: process.user,
                ..req
            };
            let (guest_id, init_process) = if i == 0 {
                (id.clone(), INIT_PROCESS.to_string())
            } else {
                (format!("{id}-{name}"), format!("{INIT_PROCESS}-{name}"))
            };
            containers.push(ContainerRecord {
                name,
                guest_id,
                init_process,
                image: image_id,
                image_name: resolved.image.clone(),
                rootfs_image: image,
                args: resolved.args.clone(),
                env: resolved.env.clone(),
                workdir: resolved.workdir.clone(),
                user: resolved.user.clone(),
                mounts,
                security: resolved.security.clone(),
                state: PodState::Created,
                exit_code: None,
                oom_killed: false,
                limits: resolved.limits,
            });
            main_req.get_or_insert(resolved);
        }
        let (Some(main_req), Some(main)) = (main_req, containers.first()) else {
            return Err(RunError::Invalid("the pod has no containers".into()));
        };

        // Named volumes are made and the pod that uses them recorded under
        // one lock, so `volume rm` never takes one away in between.
        // A new empty volume is filled from the container's image (Docker's
        // copy-up) here too, under the lock: one pod fills it.
        let volume_guard = super::lock(&self.volume_lock);
        let images: BTreeMap<String, String> = containers
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.image.clone()?)))
            .collect();
        let mounts = self.resolve_volumes(&volume_requests, &images)?;
        let pod_dir = self.pod_dir(&id);
        let state_err = |source| RunError::State {
            path: pod_dir.clone(),
            source,
        };
        let dirs = std::iter::once(pod_dir.join("vm")).chain(
            containers
                .iter()
                .enumerate()
                .map(|(i, c)| container_log_dir(&pod_dir, i, &c.name)),
        );
        for dir in dirs {
            if let Err(e) = crate::private::create_private_dir(&dir) {
                self.remove_anonymous_volumes(&mounts);
                return Err(state_err(e));
            }
        }
        let record = PodRecord {
            id: id.clone(),
            name: new.name,
            labels: new.labels,
            state: PodState::Created,
            backend: hypervisor.name().to_string(),
            args: main.args.clone(),
            image: main.image.clone(),
            image_name: main.image_name.clone(),
            rootfs_image: main.rootfs_image.clone(),
            created_unix: now_unix(),
            exit_code: None,
            oom_killed: false,
            finished_unix: None,
            vm_pid: None,
            vm_pid_start: None,
            vm: None,
            container: Some(main_req),
            // A pod of one keeps its container in `container` alone, as
            // pod.json always had it.
            containers: if from_file { containers } else { Vec::new() },
            pod_file: new.pod_file,
            remove: new.remove,
            restart: new.restart,
            restart_count: 0,
            network: None,
            mounts,
            error: None,
            started: None,
            joinable: new.joinable,
            joined: Vec::new(),
            joins: 0,
            guest_capabilities: Vec::new(),
        };
        // The name is claimed and the pod listed under one lock: of two
        // concurrent runs of one --name, the second gets the conflict.
        if let Err(e) = self.claim_new(&record, &pod_dir) {
            self.remove_anonymous_volumes(&record.mounts);
            return Err(e);
        }
        if let Err(e) = write_record(&pod_dir, &record) {
            self.pods().remove(&id);
            self.remove_anonymous_volumes(&record.mounts);
            return Err(state_err(e));
        }
        drop(volume_guard);
        self.event(crate::events::Action::Create, &record, &[]);
        self.launch(hypervisor, record, size, io).await
    }

    /// The hypervisor to launch a VM with, once hyperd takes work and the
    /// payload is in place.
    pub(super) fn ready_to_launch(&self) -> Result<Arc<dyn Hypervisor>, RunError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RunError::Stopping);
        }
        let hypervisor = self.hypervisor.clone().map_err(RunError::NoHypervisor)?;
        self.payload.check(&self.config)?;
        Ok(hypervisor)
    }

    /// vCPUs and memory in MiB, each asked for (under the name the user
    /// gave it) or the configured default, within what a VM may have.
    pub(super) fn checked_vm_size(
        &self,
        ((vcpus, vcpus_key), (memory_mib, memory_key)): SizeRequest,
    ) -> Result<(u32, u32), RunError> {
        let asked = (vcpus.is_some(), memory_mib.is_some());
        let vcpus = vcpus.unwrap_or(self.config.vm.vcpus);
        if !(1..=MAX_VCPUS).contains(&vcpus) {
            return Err(RunError::Size(SizeRefusal::vcpus(
                vcpus_key,
                vcpus,
                format!("use 1 to {MAX_VCPUS}"),
            )));
        }
        let memory_mib = memory_mib.unwrap_or(self.config.vm.memory_mib);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(RunError::Size(SizeRefusal::memory(
                memory_key,
                memory_mib,
                format!("use at least {MIN_MEMORY_MIB} MiB"),
            )));
        }
        // A size nobody asked for is the config's: say so.
        let keys = (vcpus_key, memory_key);
        let keys = (
            if asked.0 { keys.0 } else { "[vm] vcpus" },
            if asked.1 { keys.1 } else { "[vm] memory_mib" },
        );
        let host = crate::resources::HostResources::read();
        host.check((vcpus, keys.0), (memory_mib, keys.1))
            .map_err(RunError::Size)?;
        Ok((vcpus, memory_mib))
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
            (Some(_), Some(_)) => Err(RunError::ImageAndRootfs),
            (None, None) => Err(RunError::NoImage),
        }
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
}

/// An error about one container of a pod file, naming it.
fn in_container(name: &str, e: RunError) -> RunError {
    match e {
        RunError::Invalid(m) => RunError::Invalid(format!("container {name}: {m}")),
        RunError::Failed(m) => RunError::Failed(format!("container {name}: {m}")),
        other => other,
    }
}

/// Requests by container name, in order.
fn group_by_container(
    reqs: &[(String, hyper_volumes::VolumeRequest)],
) -> BTreeMap<&str, Vec<hyper_volumes::VolumeRequest>> {
    let mut out: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for (c, r) in reqs {
        out.entry(c.as_str()).or_default().push(r.clone());
    }
    out
}

/// A run request's container limits, with errors naming the flag that set
/// them (`hyper run --pids-limit`) or the REST field.
pub(super) fn check_run_limits(limits: &hyper_protocol::ResourceLimits) -> Result<(), RunError> {
    hyper_api::resources::check_limits(limits, |field| match field {
        "pids_max" => "--pids-limit (limits.pids_max)".into(),
        other => format!("limits.{other}"),
    })
    .map_err(RunError::Invalid)
}
