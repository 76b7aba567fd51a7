//! Pods: one VM each, running N ≥ 1 containers, from launch to cleanup.
//!
//! `hyper run` is a pod of one container and `hyper pod create -f` a pod of
//! the containers its file lists; both take the same path, one file per
//! step:
//!
//! * `model`: the records (`pod.json`), the requests, and `Member`, a
//!   container as the path runs it whichever kind of record it comes from;
//! * `store`: records in memory and on disk, ids, names;
//! * `create`: a request becomes a resolved, recorded pod;
//! * `boot`: a recorded pod's VM is launched and its containers started,
//!   or torn down with the record saying why;
//! * `supervise`: output to logs and clients, exits, the restart policy;
//! * `verbs`: wait, kill, stop, rm, start, restart, stats;
//! * `exec`: `hyper exec` and the stdio of every guest process;
//! * `restore`: a restarted hyperd takes the running pods over;
//! * `attach`: more clients on a running pod's main process.
//!
//! Lifecycle of a pod file's pod: it runs while any of its containers runs
//! and exits once all have exited; its exit code is the first non-zero exit
//! code in file order, or 0. The first container is the pod's main
//! container: `hyper exec POD`, `hyper logs POD` and the pod's own log go to
//! it; signals go to every container.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_hypervisor::{Hypervisor, Vm};
use hyper_images::{Image, ImageStore, PullOptions};

use crate::config::Config;
use crate::logs::Rotation;
use crate::payload::Payload;
use crate::plugins::{Backend, PluginFailure, Plugins};
use crate::rootfs::RootfsStore;

mod attach;
mod boot;
mod cgroup;
mod create;
mod exec;
mod join;
mod model;
mod network;
mod observe;
mod restore;
mod store;
mod supervise;
mod template;
#[cfg(test)]
mod tests;
mod verbs;
mod volumes;

pub use attach::Stdin;
use boot::LivePod;
pub use hyper_api::pods::{ExecRequest, RestartPolicy, RunOutcome, RunRequest};
pub use join::{JoinRequest, JoinedContainer, MAX_JOINED};
pub use model::{
    container_log_dir, ContainerRecord, Info, Output, PluginInfo, PodRecord, PodState, Restored,
    RunError, RunIo, SavedVm, StartError, Started, Takeovers,
};
pub use network::NetworkInfo;
pub use volumes::{MountRecord, VolumeView};

pub use hyper_api::pods::RUNTIME_FAILURE_EXIT;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Connecting to a running guest and its answer to the resync. Xen's PV
/// console moves the 64 KiB resync pad in 1 KiB ring turns: ≈14 s under TCG.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The process id of a pod of one's container's first process (and of a
/// pod file's main container).
const INIT_PROCESS: &str = "init";

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
    /// What happened to the pods, for `hyper events`.
    events: crate::events::EventLog,
    /// Counted as things happen, for `GET /metrics`.
    metrics: crate::metrics::Metrics,
    /// Published host ports, by pod.
    ports: network::PortTable,
    /// Named volumes (`state_dir/volumes`).
    volumes: hyper_volumes::VolumeStore,
    /// Held while named volumes are made for a pod and the pod recorded,
    /// and while one is removed: `volume rm` never takes one a pod being
    /// created is about to use.
    volume_lock: Mutex<()>,
    /// Booted VMs pods start from (`state_dir/templates`).
    templates: crate::templates::TemplateStore,
    /// The payload's part of a template's key.
    payload_hasher: crate::templates::PayloadHasher,
    /// Numbers the template builds' network namespaces.
    template_netns: std::sync::atomic::AtomicU64,
    /// Whether joined containers' roots are really bind-mounted (off in
    /// the unit tests, whose fake VMs read nothing).
    host_mounts: AtomicBool,
}

impl Runtime {
    /// A runtime on the hypervisor `plugins` picked (see
    /// [`Plugins::load`]), its stores under `[runtime] state_dir`.
    pub fn new(config: Config, plugins: Plugins) -> Result<Self, StartError> {
        let rootfs = RootfsStore::new(&config.runtime.state_dir);
        let templates = crate::templates::TemplateStore::new(&config.runtime.state_dir);
        let volumes = hyper_volumes::VolumeStore::new(&config.runtime.state_dir);
        let images = ImageStore::open(&config.runtime.state_dir.join("images"))
            .map_err(StartError::Images)?
            .with_limits(config.images.limits());
        Ok(Self {
            images,
            payload: Payload::from_config(&config),
            config,
            backends: plugins.backends,
            plugin_failures: plugins.failures,
            hypervisor: plugins.hypervisor,
            rootfs,
            pods: Mutex::new(BTreeMap::new()),
            live: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            launches_in_flight: AtomicUsize::new(0),
            recovering: Mutex::new(std::collections::BTreeSet::new()),
            events: crate::events::EventLog::default(),
            metrics: crate::metrics::Metrics::new(),
            ports: network::PortTable::default(),
            volumes,
            volume_lock: Mutex::new(()),
            templates,
            payload_hasher: Default::default(),
            template_netns: Default::default(),
            host_mounts: AtomicBool::new(true),
        })
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
        let stopped: Vec<String> = vms.iter().map(|(id, _)| id.clone()).collect();
        for (id, vm) in vms {
            tracing::info!(pod = %id, "stopping the pod's VM");
            if let Err(e) = vm.kill().await {
                tracing::warn!(pod = %id, "kill: {e}");
            }
            let _ = vm.wait().await;
        }
        // Each pod's supervisor sees its VM end and tears the rest down
        // (CNI DEL, netns, the record): let those finish before hyperd
        // exits, or the pods' networks outlive them.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stopped.iter().any(|id| self.live_pods().contains_key(id)) {
            if std::time::Instant::now() >= deadline {
                tracing::warn!("pods still tearing down after 30 s; the next hyperd finishes them");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
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
            start: self.config.vm.start_mode().to_string(),
            templates_unavailable: self.templates_unavailable(),
            templates: self.templates().len(),
        }
    }

    fn log_rotation(&self) -> Rotation {
        Rotation::default()
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent even if a
    // panic interrupts it, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
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
mod send_checks {
    use super::*;
    use tokio::sync::mpsc;

    /// The API serves these from multi-threaded tasks.
    #[allow(dead_code)]
    fn futures_are_send(rt: Arc<Runtime>, io: RunIo, exec: ExecRequest) {
        fn is_send<T: Send>(_: T) {}
        let r = rt.clone();
        is_send(async move { r.stop("x", Duration::ZERO).await });
        let r = rt.clone();
        is_send(async move { r.remove("x", true, false).await });
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

    #[test]
    fn start_time_of_this_process_is_read() {
        use hyper_hypervisor::adopt::process_start_time;
        assert!(process_start_time(std::process::id()).is_some());
        assert!(process_start_time(u32::MAX).is_none());
    }
}
