//! Starting a pod's VM from a template (issue 16): which start a pod gets,
//! building the template it needs (once per key, however many pods wait
//! for it), and restoring a clone up to a hyperstart session made its own
//! (`Reattach`, then `Resume`). The rest of the boot is the cold path's
//! (`boot.rs`): the pod, its containers, the supervisor.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_hypervisor::{DiskSpec, Hypervisor, HypervisorError, NicSpec, Vm, VmSpec};
use hyper_protocol::{capability, Request, ResumeSpec};
use tokio::sync::OwnedRwLockReadGuard;

use super::boot::agent_channel;
use super::model::{PodRecord, RunError, StartedFrom};
use super::{console_tail, Runtime};
use crate::agent::{AgentClient, ReadyInfo};
use crate::config::StartMode;
use crate::templates::{hex, KeyParts, TemplateMeta, META_VERSION};

/// The size of each placeholder disk a template VM gets: its guest never
/// mounts them, and a clone re-reads its own disks' sizes on `Resume`.
const PLACEHOLDER_BYTES: u64 = 1 << 20;
/// Bytes of fresh host entropy a clone gets.
const RESUME_ENTROPY: usize = 64;
/// How long a template VM may take to stop once saved.
const SAVED_STOP: Duration = Duration::from_secs(30);

/// How a pod's VM is about to start.
pub(super) enum StartPlan {
    Cold {
        mode: StartMode,
        /// Why not from a template, when one was asked for.
        reason: Option<String>,
    },
    Template {
        mode: StartMode,
        key: String,
        dir: PathBuf,
        meta: Box<TemplateMeta>,
        /// Keeps the template from being removed or rebuilt meanwhile.
        _guard: OwnedRwLockReadGuard<()>,
    },
}

/// A restored clone's hyperstart session, made its own.
pub(super) struct Connected {
    pub(super) agent: AgentClient,
    pub(super) ready: ReadyInfo,
}

/// A VM launched or restored, with its session when restored.
pub(super) struct Started {
    pub(super) vm: Box<dyn Vm>,
    pub(super) connected: Option<Connected>,
    pub(super) from: StartedFrom,
}

impl Runtime {
    /// The start mode of `record`: its own `--start`, or `[vm] start`.
    pub(super) fn start_mode(&self, record: &PodRecord) -> StartMode {
        record
            .container
            .as_ref()
            .and_then(|c| c.start)
            .unwrap_or_else(|| self.config.vm.start_mode())
    }

    /// Every template in the store (`hyper template ls`).
    pub fn templates(&self) -> Vec<crate::templates::TemplateInfo> {
        self.templates.list()
    }

    /// Removes template `key` (`hyper template rm`); pods rebuild it when
    /// they need it.
    pub fn remove_template(&self, key: &str) -> Result<(), crate::templates::TemplateError> {
        self.templates.remove(key)
    }

    /// Removes every template; how many went.
    pub fn remove_all_templates(&self) -> Result<usize, crate::templates::TemplateError> {
        let mut gone = 0;
        for t in self.templates.list() {
            self.templates.remove(&t.key)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// Why the pods of this hyperd cannot start from templates whatever
    /// their layout, if they cannot (`hyper info`).
    pub fn templates_unavailable(&self) -> Option<String> {
        match &self.hypervisor {
            Err(e) => Some(format!("no backend: {e}")),
            Ok(hv) if !hv.capabilities().templates => Some(format!(
                "the {} backend cannot save or restore templates",
                hv.name()
            )),
            Ok(_) => None,
        }
    }

    /// Which start the pod whose VM `spec` describes gets; builds its
    /// template first if it needs one (pods needing the same template
    /// wait for one build). Errs only in `template` mode, when it cannot.
    pub(super) async fn start_plan(
        self: &Arc<Self>,
        hv: &Arc<dyn Hypervisor>,
        spec: &VmSpec,
        record: &PodRecord,
    ) -> Result<StartPlan, RunError> {
        let mode = self.start_mode(record);
        if mode == StartMode::Cold {
            return Ok(StartPlan::Cold { mode, reason: None });
        }
        // A template build boots a VM that is no pod's yet: hyperd's
        // shutdown waits for it to end, and the pod goes no further.
        self.launches_in_flight.fetch_add(1, Ordering::SeqCst);
        let found = self.template_for(hv, spec).await;
        self.launches_in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RunError::Stopping);
        }
        match found {
            Ok((key, meta, guard)) => Ok(StartPlan::Template {
                mode,
                dir: self.templates.path(&key),
                key,
                meta: Box::new(meta),
                _guard: guard,
            }),
            Err(reason) => {
                tracing::info!(pod = %record.id, "not starting from a template: {reason}");
                self.no_template(mode, reason)
                    .map(|reason| StartPlan::Cold { mode, reason })
            }
        }
    }

    /// `reason` a pod cannot start from a template: in `auto` it is
    /// cold-started saying why, in `template` it fails.
    fn no_template(&self, mode: StartMode, reason: String) -> Result<Option<String>, RunError> {
        if mode == StartMode::Template {
            return Err(RunError::NoTemplate(reason));
        }
        self.metrics
            .templates
            .with_label_values(&["cold_fallback"])
            .inc();
        Ok(Some(reason))
    }

    /// The template for `spec`'s layout, built if missing or unusable;
    /// held for reading until the pod's VM is restored.
    async fn template_for(
        self: &Arc<Self>,
        hv: &Arc<dyn Hypervisor>,
        spec: &VmSpec,
    ) -> Result<(String, TemplateMeta, OwnedRwLockReadGuard<()>), String> {
        if !hv.capabilities().templates {
            return Err(format!(
                "the {} backend cannot save or restore templates",
                hv.name()
            ));
        }
        if !spec.shares.is_empty() {
            return Err("host-directory volumes cannot be templated".into());
        }
        let parts = self.key_parts(hv, spec).await?;
        let key = parts.key();
        let lock = self.templates.key_lock(&key);
        {
            let guard = lock.clone().read_owned().await;
            if let Ok(Some(meta)) = self.templates.find(&key, &parts) {
                return usable(meta).map(|meta| (key, meta, guard));
            }
        }
        // Missing or unusable: one build, the others wait on the lock and
        // find it built.
        let write = lock.clone().write_owned().await;
        let meta = match self.templates.find(&key, &parts) {
            Ok(Some(meta)) => meta,
            found => {
                if let Err(e) = found {
                    tracing::warn!(template = %key, "removing an unusable template: {e}");
                    let _ = self.templates.remove_unlocked(&key);
                }
                match self.build_template(hv, &parts, &key, spec).await {
                    Ok(meta) => meta,
                    Err(e) => {
                        self.metrics
                            .templates
                            .with_label_values(&["build_failed"])
                            .inc();
                        return Err(format!("building the template failed: {e}"));
                    }
                }
            }
        };
        usable(meta).map(|meta| (key, meta, write.downgrade()))
    }

    /// The key parts of a template for `spec`'s layout.
    async fn key_parts(
        self: &Arc<Self>,
        hv: &Arc<dyn Hypervisor>,
        spec: &VmSpec,
    ) -> Result<KeyParts, String> {
        let plugin_build_id = self
            .backends
            .iter()
            .find(|b| b.name == hv.name())
            .map(|b| b.build_id.clone())
            .unwrap_or_default();
        let rt = self.clone();
        let (kernel, initrd, cmdline) = (
            spec.kernel.clone(),
            spec.initrd.clone(),
            spec.cmdline.clone(),
        );
        let payload =
            tokio::task::spawn_blocking(move || rt.payload_hasher.hash(&kernel, &initrd, &cmdline))
                .await
                .map_err(|e| format!("hashing the payload: {e}"))?
                .map_err(|e| format!("cannot read the payload to key its template: {e}"))?;
        Ok(KeyParts {
            backend: hv.name().to_string(),
            plugin_build_id,
            payload,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            disks: spec
                .disks
                .iter()
                .map(|d| (d.id.clone(), d.read_only))
                .collect(),
            nics: spec.nics.len(),
        })
    }

    /// Boots a template VM for `clone`'s layout and saves it under the
    /// store; nothing of it is left on any failure. The caller holds the
    /// key's lock for writing.
    async fn build_template(
        &self,
        hv: &Arc<dyn Hypervisor>,
        parts: &KeyParts,
        key: &str,
        clone: &VmSpec,
    ) -> Result<TemplateMeta, String> {
        let started = Instant::now();
        tracing::info!(template = %key, backend = %parts.backend, "building a template");
        let out = self
            .templates
            .building_dir(key)
            .map_err(|e| e.to_string())?;
        let scratch = match self.templates.building_dir(key) {
            Ok(dir) => dir,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&out);
                return Err(e.to_string());
            }
        };
        let mut netns = None;
        let built = self
            .boot_and_save(hv, parts, key, clone, &out, &scratch, &mut netns)
            .await;
        if let Some(ns) = netns {
            if let Err(e) = hyper_network::netns::remove(&ns) {
                tracing::warn!(template = %key, "cannot remove the template's namespace: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        let published = built.and_then(|meta| {
            self.templates
                .publish(&out, &meta)
                .map(|_| meta)
                .map_err(|e| e.to_string())
        });
        match published {
            Ok(meta) => {
                self.metrics.templates.with_label_values(&["built"]).inc();
                tracing::info!(template = %key, seconds = started.elapsed().as_secs_f64(), "template built");
                Ok(meta)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&out);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn boot_and_save(
        &self,
        hv: &Arc<dyn Hypervisor>,
        parts: &KeyParts,
        key: &str,
        clone: &VmSpec,
        out: &Path,
        scratch: &Path,
        netns: &mut Option<PathBuf>,
    ) -> Result<TemplateMeta, String> {
        let mut disks = Vec::with_capacity(clone.disks.len());
        for (i, d) in clone.disks.iter().enumerate() {
            let path = scratch.join(format!("disk{i}.img"));
            placeholder(&path).map_err(|e| format!("placeholder disk {}: {e}", path.display()))?;
            disks.push(DiskSpec {
                path,
                read_only: d.read_only,
                id: d.id.clone(),
            });
        }
        let nics = if clone.nics.is_empty() {
            Vec::new()
        } else {
            self.throwaway_nics(key, clone, netns)?
        };
        let spec = VmSpec {
            id: format!("tmpl-{}", &key[..12.min(key.len())]),
            kernel: clone.kernel.clone(),
            initrd: clone.initrd.clone(),
            cmdline: clone.cmdline.clone(),
            vcpus: clone.vcpus,
            memory_mib: clone.memory_mib,
            disks,
            console_log: scratch.join("console.log"),
            run_dir: scratch.join("vm"),
            nics,
            shares: Vec::new(),
            cgroup: None,
            save_as_template: true,
        };
        crate::private::create_private_dir(&spec.run_dir)
            .map_err(|e| format!("{}: {e}", spec.run_dir.display()))?;
        let console = spec.console_log.clone();
        let vm = hv
            .launch(spec)
            .await
            .map_err(|e| format!("launching the template VM: {e}"))?;
        let saved = async {
            let timeout = Duration::from_secs(self.config.vm.boot_timeout_secs);
            let channel = agent_channel(vm.as_ref());
            let (agent, ready) = tokio::select! {
                r = AgentClient::connect(&channel, timeout) => r
                    .map_err(|e| format!("the template VM did not boot: {e}{}", console_tail(&console)))?,
                _ = vm.wait() => return Err(format!(
                    "the template VM exited during boot{}", console_tail(&console)
                )),
            };
            // The handshake went out behind READY unanswered: an answered
            // ping means hyperstart served it and is idle.
            agent
                .request(Request::Ping)
                .await
                .map_err(|e| format!("the template's hyperstart: {e}"))?;
            vm.save_template(out)
                .await
                .map_err(|e| format!("saving the template: {e}"))?;
            Ok(TemplateMeta {
                version: META_VERSION,
                key: key.to_string(),
                parts: parts.clone(),
                agent: ready.agent,
                protocol_version: ready.version,
                capabilities: ready.capabilities,
                created_unix: super::store::now_unix(),
            })
        }
        .await;
        if saved.is_err() || tokio::time::timeout(SAVED_STOP, vm.wait()).await.is_err() {
            let _ = vm.kill().await;
            let _ = vm.wait().await;
        }
        saved
    }

    /// A namespace of its own for a template VM's NICs, each joined to one
    /// end of a veth pair that stands in for the pod's network.
    fn throwaway_nics(
        &self,
        key: &str,
        clone: &VmSpec,
        netns: &mut Option<PathBuf>,
    ) -> Result<Vec<NicSpec>, String> {
        use hyper_hypervisor::nic;
        let n = self
            .template_netns
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!(
            "{TEMPLATE_NETNS}{}-{}-{n}",
            &key[..8.min(key.len())],
            std::process::id()
        );
        let path = hyper_network::netns::create(&name)
            .map_err(|e| format!("the template's network namespace: {e}"))?;
        *netns = Some(path.clone());
        let mut nics = Vec::with_capacity(clone.nics.len());
        for (i, c) in clone.nics.iter().enumerate() {
            let (peer, other) = (format!("eth{i}"), format!("tpeer{i}"));
            nic::link::add_veth(&path, &peer, &other)
                .map_err(|e| format!("the template's stand-in network: {e}"))?;
            let (mac, mtu) = hyper_network::netns::link_info(&path, &peer)
                .map_err(|e| format!("the template's stand-in network: {e}"))?;
            nics.push(NicSpec {
                netns: path.clone(),
                peer,
                device: c.device.clone(),
                mac,
                mtu,
            });
        }
        Ok(nics)
    }

    /// Removes what a build interrupted by a crash left: `.building-*`
    /// directories and template namespaces. Run at startup.
    pub(super) fn remove_partial_templates(&self) {
        kill_build_vms(self.templates.dir());
        let gone = self.templates.remove_partial();
        if gone > 0 {
            tracing::info!("removed {gone} template build(s) a previous hyperd left unfinished");
        }
        let prefix = hyper_network::netns::name_for(TEMPLATE_NETNS);
        if let Ok(names) = hyper_hypervisor::nic::netns::list(&prefix) {
            for name in names {
                let path = hyper_hypervisor::nic::netns::path(&name);
                if let Err(e) = hyper_network::netns::remove(&path) {
                    tracing::warn!("cannot remove the stale template namespace {name}: {e}");
                }
            }
        }
    }

    /// The pod's VM, restored from its template when `plan` says so, else
    /// launched. A restore that fails before its guest answered removes
    /// the template (the next pod rebuilds it) and then cold-starts the
    /// pod (`auto`) or fails it (`template`), saying why.
    pub(super) async fn launch_or_restore(
        &self,
        hv: &Arc<dyn Hypervisor>,
        spec: VmSpec,
        plan: StartPlan,
        pod: &str,
    ) -> Result<Started, RunError> {
        let (mode, reason) = match plan {
            StartPlan::Cold { mode, reason } => (mode, reason),
            StartPlan::Template {
                mode,
                key,
                dir,
                meta,
                _guard: guard,
            } => {
                let restored = self.restore_clone(hv, spec.clone(), &dir, &meta).await;
                drop(guard);
                match restored {
                    Ok((vm, connected)) => {
                        self.metrics
                            .templates
                            .with_label_values(&["restored"])
                            .inc();
                        tracing::info!(pod = %pod, template = %key, "started from a template");
                        return Ok(Started {
                            vm,
                            connected: Some(connected),
                            from: StartedFrom {
                                mode: StartMode::Template,
                                template: Some(key),
                                reason: None,
                            },
                        });
                    }
                    Err(why) => {
                        tracing::warn!(pod = %pod, template = %key, "{why}; the template is removed");
                        self.metrics.templates.with_label_values(&["refused"]).inc();
                        let lock = self.templates.key_lock(&key);
                        if let Ok(_w) = lock.try_write() {
                            let _ = self.templates.remove_unlocked(&key);
                        }
                        let reason = self.no_template(mode, format!("template {key}: {why}"))?;
                        // The clone's files go: the cold VM starts afresh.
                        let _ = std::fs::remove_dir_all(&spec.run_dir);
                        crate::private::create_private_dir(&spec.run_dir).map_err(|source| {
                            RunError::State {
                                path: spec.run_dir.clone(),
                                source,
                            }
                        })?;
                        (mode, reason)
                    }
                }
            }
        };
        let vm = hv.launch(spec).await.map_err(RunError::Hypervisor)?;
        Ok(Started {
            vm,
            connected: None,
            from: StartedFrom {
                mode: StartMode::Cold,
                template: None,
                reason: reason.filter(|_| mode != StartMode::Cold),
            },
        })
    }

    /// Restores a clone and makes its hyperstart session its own: the
    /// resync (`Reattach`), then `Resume` with fresh entropy, the clock
    /// and its MACs. Nothing of it is left on failure.
    async fn restore_clone(
        &self,
        hv: &Arc<dyn Hypervisor>,
        spec: VmSpec,
        dir: &Path,
        meta: &TemplateMeta,
    ) -> Result<(Box<dyn Vm>, Connected), String> {
        let macs: Vec<String> = spec.nics.iter().map(|n| n.mac.clone()).collect();
        let console = spec.console_log.clone();
        let vm = hv.restore(spec, dir).await.map_err(|e| match e {
            HypervisorError::TemplateRejected(why) => format!("refused by the backend: {why}"),
            e => format!("restoring it failed: {e}"),
        })?;
        let timeout = Duration::from_secs(self.config.vm.boot_timeout_secs);
        let session = async {
            let channel = agent_channel(vm.as_ref());
            let (agent, processes) = tokio::select! {
                r = AgentClient::reattach(&channel, timeout) => r
                    .map_err(|e| format!("its hyperstart did not answer the resync: {e}"))?,
                _ = vm.wait() => return Err(format!(
                    "the restored VM exited{}", console_tail(&console)
                )),
            };
            if !processes.is_empty() {
                return Err(format!(
                    "its hyperstart tracks {} process(es); a template runs none",
                    processes.len()
                ));
            }
            let resume = ResumeSpec {
                entropy_hex: entropy_hex()?,
                realtime_ns: realtime_ns(),
                nic_macs: macs,
            };
            agent
                .request(Request::Resume(resume))
                .await
                .map_err(|e| format!("its hyperstart refused to resume: {e}"))?;
            Ok(agent)
        }
        .await;
        match session {
            Ok(agent) => Ok((
                vm,
                Connected {
                    agent,
                    ready: ReadyInfo {
                        version: meta.protocol_version,
                        capabilities: meta.capabilities.clone(),
                        agent: meta.agent.clone(),
                    },
                },
            )),
            Err(why) => {
                let _ = vm.kill().await;
                let _ = vm.wait().await;
                Err(why)
            }
        }
    }
}

/// Kills the VMs of template builds a killed hyperd left: processes whose
/// command line names a `.building-` directory of this store (nothing else
/// names one).
fn kill_build_vms(store: &Path) {
    let needle = store.join(".building-");
    for pid in crate::quarantine::processes_using(&needle) {
        tracing::info!(
            pid,
            "killing the VM of a template build a previous hyperd left"
        );
        // SAFETY: plain kill(2) on a process whose command line names this
        // store's build directory, read just now.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// The prefix of a template VM's network namespace (after `hyper-`).
const TEMPLATE_NETNS: &str = "tmpl-";

/// A template whose guest can make a clone its own, or why not.
fn usable(meta: TemplateMeta) -> Result<TemplateMeta, String> {
    if meta.has(capability::RESUME) {
        return Ok(meta);
    }
    Err(format!(
        "the template's guest agent ({}) cannot make a clone its own (no capability `{}`: no RNG reseed, clock or device re-probe); install a payload built from this version",
        meta.agent,
        capability::RESUME
    ))
}

/// A sparse placeholder disk file.
fn placeholder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_len(PLACEHOLDER_BYTES)
}

/// [`RESUME_ENTROPY`] bytes from the kernel's CSPRNG, hex.
fn entropy_hex() -> Result<String, String> {
    let mut buf = [0u8; RESUME_ENTROPY];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into the
        // valid, writable buffer `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("getrandom: {e}"));
        }
        filled += n as usize;
    }
    Ok(hex(&buf))
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
