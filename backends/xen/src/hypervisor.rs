//! The configured Xen backend: probing the host and creating domains.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::{
    Capabilities, Hypervisor, HypervisorError, ProbeReport, ShareTransport, Vm, VmInfo, VmSpec,
};
use std::os::unix::net::UnixListener;

use crate::bridge::{self, Bridge};
use crate::config::XenConfig;
use crate::console;
use crate::loopdev::{self, LoopDevice};
use crate::owner::{self, Owner, Verdict};
use crate::share::{self, DeviceModel};
use crate::template::{self, Metadata};
use crate::vif;
use crate::vm::{Held, XenVm};
use crate::xenstore::{Xenstore, XsError};
use crate::xlcfg::DiskTarget;
use crate::{xl, xlcfg};

pub const BACKEND_NAME: &str = "xen";

const XS_TIMEOUT: Duration = Duration::from_secs(3);
const XL_INFO_TIMEOUT: Duration = Duration::from_secs(20);
const XL_QUICK_TIMEOUT: Duration = Duration::from_secs(30);
/// xenconsoled writes the console tty into xenstore shortly after the
/// domain is introduced.
const TTY_WAIT: Duration = Duration::from_secs(15);
const MAX_DOMAINS_SCANNED: usize = 4096;
/// How long the orphan sweep waits for the runtime to take a dead hyperd's
/// domain over or give it up (restoring pods reattaches them one by one).
const TAKEOVER_WAIT: Duration = Duration::from_secs(600);
const TAKEOVER_POLL: Duration = Duration::from_secs(1);

pub struct XenHypervisor {
    config: XenConfig,
    proc_xen: PathBuf,
    /// One `xl create` at a time: Xen's block hotplug script (used when
    /// `block-hyper` is not installed) serialises on a global lock anyway,
    /// and several at once under a slow dom0 run into libxl's hotplug
    /// timeout ("killing execution of /etc/xen/scripts/block add because of
    /// timeout"); it also makes the loop devices' sharing check and attach
    /// one step. Guests still boot concurrently.
    create_lock: tokio::sync::Mutex<()>,
    /// Said once: `block_script` is missing, disks go through Xen's `block`.
    told_no_block_script: std::sync::atomic::AtomicBool,
    /// `xl info`'s xen_version, once read (templates record and check it).
    xen_version: OnceLock<String>,
    /// Template checkpoints already hashed in full ([`template::check`]).
    verified: Arc<template::Verified>,
    /// The console bridge binary ([`crate::bridge`]).
    console_bridge: PathBuf,
}

/// True when `path` is an executable file.
fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What the host says before anything is run.
pub fn host_check(proc_xen: &Path, xl: &Path) -> Result<(), String> {
    if !proc_xen.is_dir() {
        return Err(format!(
            "no {}: this host is not running under Xen (boot it as a Xen dom0; if it is one, mount xenfs: `mount -t xenfs xenfs {}`)",
            proc_xen.display(),
            proc_xen.display()
        ));
    }
    let caps_path = proc_xen.join("capabilities");
    let caps = std::fs::read(&caps_path).map_err(|e| {
        format!(
            "cannot read {}: {e}; mount xenfs there (`mount -t xenfs xenfs {}`)",
            caps_path.display(),
            proc_xen.display()
        )
    })?;
    if !String::from_utf8_lossy(&caps[..caps.len().min(256)]).contains("control_d") {
        return Err(format!(
            "this host is a Xen guest, not dom0 ({} has no control_d): run hyperd in dom0",
            caps_path.display()
        ));
    }
    let fix = "install Xen's tools (Debian: `apt-get install xen-utils-4.17`) or set `xl` in [hypervisor.xen]";
    let meta = std::fs::metadata(xl).map_err(|e| format!("xl at {}: {e}; {fix}", xl.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file; {fix}", xl.display()));
    }
    Ok(())
}

/// Runs blocking xenstore work off the async threads.
pub(crate) async fn xs<T: Send + 'static>(
    socket: &Path,
    f: impl FnOnce(&mut Xenstore) -> Result<T, XsError> + Send + 'static,
) -> Result<T, XsError> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut conn = Xenstore::connect(&socket, XS_TIMEOUT)?;
        f(&mut conn)
    })
    .await
    .map_err(|e| XsError::Io(format!("xenstore task: {e}")))?
}

/// The domid of the domain called `name`, from `/local/domain/*/name`.
pub(crate) fn find_domid(xs: &mut Xenstore, name: &str) -> Result<Option<u32>, XsError> {
    let ids = xs.directory("/local/domain")?;
    for id in ids.iter().take(MAX_DOMAINS_SCANNED) {
        let Ok(domid) = id.parse::<u32>() else {
            continue;
        };
        if xs
            .read_opt(&format!("/local/domain/{domid}/name"), 256)?
            .as_deref()
            == Some(name)
        {
            return Ok(Some(domid));
        }
    }
    Ok(None)
}

fn unavailable(reason: String) -> HypervisorError {
    HypervisorError::Unavailable {
        backend: BACKEND_NAME.to_string(),
        reason,
    }
}

impl XenHypervisor {
    pub fn new(config: XenConfig) -> Self {
        Self::with_proc_xen(config, PathBuf::from("/proc/xen"))
    }

    /// For tests: another place than /proc/xen to look at.
    pub fn with_proc_xen(config: XenConfig, proc_xen: PathBuf) -> Self {
        Self {
            config,
            proc_xen,
            create_lock: tokio::sync::Mutex::new(()),
            told_no_block_script: std::sync::atomic::AtomicBool::new(false),
            xen_version: OnceLock::new(),
            verified: Arc::default(),
            console_bridge: bridge::default_binary(),
        }
    }

    /// Starts the console bridge of the VM `spec` describes: opens the
    /// checked pty `tty`, binds the agent socket (a stale one is replaced:
    /// nobody serves it) and hands both to a bridge process.
    fn start_bridge(&self, spec: &VmSpec, tty: &Path) -> Result<(Bridge, PathBuf), String> {
        if !executable(&self.console_bridge) {
            return Err(format!(
                "the console bridge {} is missing (it is built with the Xen plugin and installed beside hyper-plugin-host or in <prefix>/lib/hyper)",
                self.console_bridge.display()
            ));
        }
        let pty = console::open_pty(tty)?;
        let agent = spec.run_dir.join("agent.sock");
        let _ = std::fs::remove_file(&agent);
        let listener = UnixListener::bind(&agent)
            .map_err(|e| format!("cannot listen on {}: {e}", agent.display()))?;
        match Bridge::spawn(
            &self.console_bridge,
            &spec.id,
            &agent,
            listener,
            pty,
            spec.cgroup.as_ref(),
        ) {
            Ok(b) => Ok((b, agent)),
            Err(e) => {
                let _ = std::fs::remove_file(&agent);
                Err(e)
            }
        }
    }

    pub fn config(&self) -> &XenConfig {
        &self.config
    }

    /// Destroys, in a thread of its own, the domains whose owning hyperd is
    /// gone (see [`crate::owner`]). Quiet and quick on hosts without Xen.
    pub fn sweep_orphans_in_background(&self) {
        if host_check(&self.proc_xen, &self.config.xl).is_err() {
            return;
        }
        let config = self.config.clone();
        let spawned = std::thread::Builder::new()
            .name("xen-orphan-sweep".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => return tracing::warn!("orphan sweep: {e}"),
                };
                rt.block_on(sweep_orphans(&config));
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the orphan sweep: {e}");
        }
    }

    async fn xs_check(&self) -> Result<usize, String> {
        let socket = self.config.xenstore_socket.clone();
        let attempt = xs(&socket, |x| x.directory("/local/domain").map(|d| d.len()));
        match tokio::time::timeout(XS_TIMEOUT * 2, attempt).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(format!(
                "xenstored does not answer ({e}); start it (Debian: `/etc/init.d/xencommons start`) or set `xenstore_socket` in [hypervisor.xen]"
            )),
            Err(_) => Err(format!(
                "xenstored at {} did not answer within {:?}",
                socket.display(),
                XS_TIMEOUT * 2
            )),
        }
    }

    async fn destroy_stale(&self, name: &str) -> Result<(), HypervisorError> {
        let owned = name.to_string();
        let found = xs(&self.config.xenstore_socket, move |x| find_domid(x, &owned))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if let Some(domid) = found {
            tracing::warn!(
                vm = name,
                domid,
                "destroying a domain left over with this VM's name"
            );
            let _ = xl::run(&self.config.xl, &["destroy", name], XL_QUICK_TIMEOUT).await;
        }
        Ok(())
    }

    /// The device model serving the domain's shares (none without shares):
    /// libxl records its pid in xenstore once it has started it, which `xl
    /// create` waits for.
    async fn device_model(&self, spec: &VmSpec, domid: u32) -> Result<Option<DeviceModel>, String> {
        if spec.shares.is_empty() {
            return Ok(None);
        }
        let key = share::device_model_pid_key(domid);
        let pid = xs(&self.config.xenstore_socket, move |x| x.read_opt(&key, 32))
            .await
            .map_err(|e| format!("cannot read the device model's pid: {e}"))?
            .ok_or_else(|| {
                format!("domain {domid} has shares but libxl recorded no device model for it")
            })?;
        DeviceModel::find(&pid, domid).map(Some)
    }

    /// The running Xen's version (`xl info`), read once.
    async fn xen_version(&self) -> Result<String, String> {
        if let Some(v) = self.xen_version.get() {
            return Ok(v.clone());
        }
        let out = xl::run(&self.config.xl, &["info"], XL_INFO_TIMEOUT).await?;
        if !out.success {
            return Err(format!("`xl info` failed: {}", out.reason()));
        }
        let version = xl::info_field(&out.stdout, "xen_version")
            .filter(|v| !v.is_empty() && v.len() <= 64)
            .ok_or("`xl info` names no xen_version")?
            .to_string();
        Ok(self.xen_version.get_or_init(|| version).clone())
    }

    /// Builds the domain with `xl create -p` (or, from a template's
    /// checkpoint, `xl restore -p`) and the spec's own xl.cfg, then lets it
    /// run. Nothing of it is left when this fails.
    async fn create(
        &self,
        spec: VmSpec,
        checkpoint: Option<PathBuf>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        self.destroy_stale(&spec.id).await?;
        // What save_template will record, known before anything starts.
        let layout = if spec.save_as_template {
            let version = self.xen_version().await.map_err(unavailable)?;
            Some(Metadata::layout(&spec, &version, self.config.guest_type))
        } else {
            None
        };
        let io = |what: &str, path: &Path, e: std::io::Error| {
            HypervisorError::Io(format!("cannot {what} {}: {e}", path.display()))
        };
        let cfg_path = spec.run_dir.join("xl.cfg");
        // The read-only shares' bind mounts, before xl starts the device
        // model that serves them.
        share::prepare(&self.config.share_dir, &spec).map_err(HypervisorError::LaunchFailed)?;
        // The guest's console carries the agent channel; say so where a
        // console log is looked for.
        let _ = std::fs::write(
            &spec.console_log,
            "xen: the guest's PV console carries the agent channel; see xl.log in the VM's run directory\n",
        );
        let cfg = cfg_path.to_string_lossy().into_owned();
        let checkpoint_arg = checkpoint
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned());
        let (verb, args) = match &checkpoint_arg {
            None => ("create", vec!["create", "-p", cfg.as_str()]),
            Some(c) => ("restore", vec!["restore", "-p", cfg.as_str(), c.as_str()]),
        };
        tracing::info!(vm = %spec.id, guest_type = self.config.guest_type.as_str(), "xl {verb}");
        let limit = Duration::from_secs(self.config.xl_timeout_secs);
        let log_path = spec.run_dir.join("xl.log");
        let serialised = self.create_lock.lock().await;
        let attached = match self.disk_targets(&spec).await {
            Ok(a) => Ok(a),
            Err(e) => {
                share::release(&self.config.share_dir, &spec.id);
                Err(e)
            }
        };
        let (targets, disks) = attached?;
        let text = xlcfg::render(
            &spec,
            self.config.guest_type,
            &self.config.vif_script,
            &self.config.share_dir,
            &targets,
        );
        if let Err(e) = std::fs::write(&cfg_path, text) {
            share::release(&self.config.share_dir, &spec.id);
            return Err(io("write", &cfg_path, e));
        }
        let created = xl::run_logged(
            &self.config.xl,
            &args,
            limit,
            &log_path,
            spec.cgroup.as_ref(),
        )
        .await;
        drop(serialised);
        let failure = match created {
            Ok(out) if out.success => None,
            Ok(out) => Some(format!("xl {verb} failed: {}", out.reason())),
            Err(e) => Some(e),
        };
        if let Some(message) = failure {
            // A half-built domain must not linger.
            let _ = xl::run(&self.config.xl, &["destroy", &spec.id], XL_QUICK_TIMEOUT).await;
            share::release(&self.config.share_dir, &spec.id);
            return Err(HypervisorError::LaunchFailed(message));
        }
        match self.start_created(&spec, disks).await {
            Ok(vm) => {
                tracing::info!(vm = %spec.id, domid = vm.domid(), "domain running");
                Ok(Box::new(vm.with_template(layout)))
            }
            Err(message) => {
                let _ = xl::run(&self.config.xl, &["destroy", &spec.id], XL_QUICK_TIMEOUT).await;
                vif::detach(&spec.nics).await;
                share::release(&self.config.share_dir, &spec.id);
                let key = owner::path(&spec.id);
                let _ = xs(&self.config.xenstore_socket, move |x| x.rm(&key)).await;
                let _ = std::fs::remove_file(spec.run_dir.join("agent.sock"));
                Err(HypervisorError::LaunchFailed(message))
            }
        }
    }

    /// Where xl finds the spec's disks: each attached to a loop device of
    /// its own for `block-hyper`, or (without that script) the images for
    /// Xen's `block`. The devices go when the returned handles are dropped
    /// and blkback has let go of them.
    async fn disk_targets(
        &self,
        spec: &VmSpec,
    ) -> Result<(Vec<DiskTarget>, Vec<LoopDevice>), HypervisorError> {
        let script = self.config.block_script.clone();
        if spec.disks.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if !executable(&script) {
            if !self
                .told_no_block_script
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    script = %script.display(),
                    "no block_script: disks go through Xen's own `block` hotplug script, which is much slower; install backends/xen/scripts/block-hyper there (`make install` does)"
                );
            }
            return Ok((DiskTarget::images(spec), Vec::new()));
        }
        let disks: Vec<(PathBuf, bool)> = spec
            .disks
            .iter()
            .map(|d| (d.path.clone(), d.read_only))
            .collect();
        let devices = tokio::task::spawn_blocking(move || {
            loopdev::attach_all(disks.iter().map(|(p, ro)| (p.as_path(), *ro)))
        })
        .await
        .map_err(|e| HypervisorError::Io(format!("loop device task: {e}")))?
        .map_err(HypervisorError::LaunchFailed)?;
        let targets = devices
            .iter()
            .map(|d| DiskTarget {
                path: d.path().to_path_buf(),
                script: Some(script.clone()),
            })
            .collect();
        Ok((targets, devices))
    }

    /// After `xl create -p`: find the domain, record its owner, open its
    /// console and bind the agent socket, then let it run.
    async fn start_created(&self, spec: &VmSpec, disks: Vec<LoopDevice>) -> Result<XenVm, String> {
        let name = spec.id.clone();
        let lookup = name.clone();
        let deadline = tokio::time::Instant::now() + TTY_WAIT;
        let (domid, tty) = loop {
            let lookup = lookup.clone();
            let found = xs(&self.config.xenstore_socket, move |x| {
                let Some(domid) = find_domid(x, &lookup)? else {
                    return Ok(None);
                };
                let tty = x.read_opt(&format!("/local/domain/{domid}/console/tty"), 64)?;
                Ok(Some((domid, tty)))
            })
            .await
            .map_err(|e| e.to_string())?;
            match found {
                Some((domid, Some(tty))) if !tty.is_empty() => break (domid, tty),
                Some(_) | None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Some((domid, _)) => {
                    return Err(format!(
                        "domain {domid} has no console tty in xenstore after {TTY_WAIT:?}: is xenconsoled running?"
                    ))
                }
                None => return Err(format!("xl created no domain named {name}")),
            }
        };
        // Checked while the domain is still paused: the guest cannot have
        // written its console/tty key yet.
        let tty = console::check_tty_path(&tty)?;
        let (bridge, agent) = self.start_bridge(spec, &tty)?;
        match self.unpause_created(spec, domid, &tty, &bridge).await {
            Ok(device_model) => Ok(XenVm::start(
                name,
                domid,
                self.config.clone(),
                bridge,
                agent,
                Held {
                    device_model,
                    disks,
                },
            )),
            Err(e) => {
                bridge.stop().await;
                Err(e)
            }
        }
    }

    /// The rest of [`Self::start_created`] once the bridge runs: record the
    /// owner (with the bridge), join the NICs, find the device model, and
    /// unpause.
    async fn unpause_created(
        &self,
        spec: &VmSpec,
        domid: u32,
        tty: &Path,
        bridge: &Bridge,
    ) -> Result<Option<DeviceModel>, String> {
        let name = spec.id.clone();
        let record = Owner::me(domid, &spec.run_dir, tty, Some(bridge.id())).encode();
        let key = owner::path(&name);
        xs(&self.config.xenstore_socket, move |x| {
            x.write(&key, record.as_bytes())
        })
        .await
        .map_err(|e| format!("cannot record the domain's owner in xenstore: {e}"))?;
        // Joined while the domain is still paused: the guest's first frame
        // already finds the pod's network.
        for (devid, nic) in spec.nics.iter().enumerate() {
            vif::join(domid, devid, nic).await?;
        }
        let device_model = self.device_model(spec, domid).await?;
        let out = xl::run(&self.config.xl, &["unpause", &name], XL_QUICK_TIMEOUT).await?;
        if !out.success {
            return Err(format!("xl unpause failed: {}", out.reason()));
        }
        Ok(device_model)
    }
}

/// See [`XenHypervisor::sweep_orphans_in_background`]. A dead hyperd's
/// domain whose run directory is still there may be taken over by the
/// runtime restoring its pods, which runs at the same time: it is looked at
/// again until it is (its record then names this hyperd) or the runtime
/// gives the pod up (and removes the run directory).
pub async fn sweep_orphans(config: &XenConfig) {
    let mut waiting = sweep_once(config, None).await;
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(TAKEOVER_POLL).await;
        waiting = sweep_once(config, Some(&waiting)).await;
    }
    for name in waiting {
        tracing::warn!(vm = %name, "left running: its hyperd is gone but its run directory is still there; a hyperd on that state directory takes it over or removes it");
    }
}

/// One look at the owner records (all of them, or those in `only`); returns
/// the names still to wait for.
async fn sweep_once(config: &XenConfig, only: Option<&[String]>) -> Vec<String> {
    let only: Option<Vec<String>> = only.map(<[String]>::to_vec);
    let listed = xs(&config.xenstore_socket, move |x| {
        let names = match only {
            Some(names) => names,
            None => match x.directory(owner::ROOT) {
                Ok(n) => n,
                Err(e) if e.is_enoent() => return Ok(Vec::new()),
                Err(e) => return Err(e),
            },
        };
        let mut out = Vec::new();
        for name in names.into_iter().take(MAX_DOMAINS_SCANNED) {
            let record = x
                .read_opt(&owner::path(&name), owner::MAX_RECORD)?
                .as_deref()
                .and_then(Owner::decode);
            let domain = match &record {
                Some(o) => x.read_opt(&format!("/local/domain/{}/name", o.domid), 256)?,
                None => None,
            };
            out.push((name, record, domain));
        }
        Ok(out)
    })
    .await;
    let entries = match listed {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!("orphan sweep skipped: {e}");
            return Vec::new();
        }
    };
    let mut waiting = Vec::new();
    for (name, record, domain_name) in entries {
        match owner::verdict(
            &name,
            record.as_ref(),
            domain_name.as_deref(),
            Owner::is_alive,
            Path::exists,
        ) {
            Verdict::Keep => continue,
            Verdict::Wait => {
                waiting.push(name);
                continue;
            }
            Verdict::Destroy => {
                tracing::info!(vm = %name, "destroying a domain whose hyperd is gone and that is not taken over");
                if let Err(e) = xl::run(&config.xl, &["destroy", &name], XL_QUICK_TIMEOUT).await {
                    tracing::warn!(vm = %name, "{e}");
                }
            }
            Verdict::Forget => {}
        }
        // The domain is gone (or going): so are its console bridge and its
        // shares' mounts.
        if let Some(o) = &record {
            if let Some(dir) = &o.run_dir {
                bridge::stop_recorded(o.bridge, &dir.join("agent.sock")).await;
            }
        }
        share::release(&config.share_dir, &name);
        let key = owner::path(&name);
        let _ = xs(&config.xenstore_socket, move |x| x.rm(&key)).await;
    }
    waiting
}

#[async_trait]
impl Hypervisor for XenHypervisor {
    fn name(&self) -> &str {
        BACKEND_NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recover: true,
            // p9 entries served by the domain's device model in dom0.
            share_transport: Some(ShareTransport::Xen9p),
            // `xl save` / `xl restore` (crate::template): a restore copies
            // the checkpoint's memory but skips the kernel load and boot,
            // and measured well under a cold start in the Xen leg
            // (docs/perf/tmplxen.md).
            templates: true,
        }
    }

    async fn probe(&self) -> ProbeReport {
        let mut details = BTreeMap::new();
        details.insert("xl".to_string(), self.config.xl.display().to_string());
        details.insert(
            "type".to_string(),
            self.config.guest_type.as_str().to_string(),
        );
        details.insert(
            "xenstore_socket".to_string(),
            self.config.xenstore_socket.display().to_string(),
        );
        details.insert(
            "templates".to_string(),
            "xl save / xl restore: each clone gets its own copy of the template's memory (no page sharing on Xen)"
                .to_string(),
        );
        details.insert(
            "block_script".to_string(),
            if executable(&self.config.block_script) {
                self.config.block_script.display().to_string()
            } else {
                format!(
                    "{} missing: disks go through Xen's slower `block` script",
                    self.config.block_script.display()
                )
            },
        );
        let unusable = |reason: String, details| ProbeReport {
            usable: false,
            reason,
            details,
        };
        if let Err(reason) = host_check(&self.proc_xen, &self.config.xl) {
            return unusable(reason, details);
        }
        match self.xs_check().await {
            Ok(n) => details.insert("domains".to_string(), n.to_string()),
            Err(reason) => return unusable(reason, details),
        };
        let info = match xl::run(&self.config.xl, &["info"], XL_INFO_TIMEOUT).await {
            Ok(out) if out.success => out.stdout,
            Ok(out) => return unusable(format!("`xl info` failed: {}", out.reason()), details),
            Err(reason) => return unusable(reason, details),
        };
        let version = xl::info_field(&info, "xen_version")
            .unwrap_or("?")
            .to_string();
        details.insert("xen_version".to_string(), version.clone());
        if let Some(free) = xl::info_field(&info, "free_memory") {
            details.insert("free_memory_mib".to_string(), free.to_string());
        }
        ProbeReport {
            usable: true,
            reason: format!(
                "Xen {version} dom0: xl and xenstored answer; guests are {} domUs",
                self.config.guest_type.as_str().to_uppercase()
            ),
            details,
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        xlcfg::validate(&spec).map_err(HypervisorError::InvalidSpec)?;
        host_check(&self.proc_xen, &self.config.xl).map_err(unavailable)?;
        self.create(spec, None).await
    }

    /// `xl restore -p` of the template's checkpoint with the clone's own
    /// xl.cfg (its name, loop-attached disks, vifs, shares), once the
    /// template's metadata and checkpoint are checked ([`template::check`]).
    /// Xen copies the checkpoint's memory into the new domain.
    async fn restore(&self, spec: VmSpec, template: &Path) -> Result<Box<dyn Vm>, HypervisorError> {
        xlcfg::validate(&spec).map_err(HypervisorError::InvalidSpec)?;
        host_check(&self.proc_xen, &self.config.xl).map_err(unavailable)?;
        let version = self.xen_version().await.map_err(unavailable)?;
        let wanted = Metadata::layout(&spec, &version, self.config.guest_type);
        let dir = template.to_path_buf();
        let verified = self.verified.clone();
        let checkpoint =
            tokio::task::spawn_blocking(move || template::check(&dir, &wanted, &verified))
                .await
                .map_err(|e| HypervisorError::Io(format!("template check task: {e}")))?
                .map_err(HypervisorError::TemplateRejected)?;
        self.create(spec, Some(checkpoint)).await
    }

    /// No host process holds a domain, so `info.pid` and `pid_start` say
    /// nothing: the owner record in xenstore tells that the domain is ours
    /// and from this run directory. The console bridge it records is kept
    /// if it is still that process and serves this VM's agent socket (a
    /// restarted plugin host: hyperd's agent session goes on); otherwise a
    /// new one serves the same agent socket path.
    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        _pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        xlcfg::validate(&spec).map_err(HypervisorError::InvalidSpec)?;
        host_check(&self.proc_xen, &self.config.xl).map_err(unavailable)?;
        let name = spec.id.clone();
        let not_found = |why: String| HypervisorError::NotFound(format!("{name}: {why}"));
        if info.id != name {
            return Err(not_found(format!("saved as VM {}", info.id)));
        }
        let lookup = name.clone();
        let (record, domain_name, tty) = xs(&self.config.xenstore_socket, move |x| {
            let record = x.read_opt(&owner::path(&lookup), owner::MAX_RECORD)?;
            let Some(domid) = record.as_deref().and_then(Owner::decode).map(|o| o.domid) else {
                return Ok((record, None, None));
            };
            let domain_name = x.read_opt(&format!("/local/domain/{domid}/name"), 256)?;
            let tty = x.read_opt(&format!("/local/domain/{domid}/console/tty"), 64)?;
            Ok((record, domain_name, tty))
        })
        .await
        .map_err(|e| unavailable(e.to_string()))?;
        let me = std::process::id();
        let domid = owner::check_takeover(
            &name,
            &spec.run_dir,
            record.as_deref(),
            domain_name.as_deref(),
            |o| o.pid != me && o.is_alive(),
        )
        .map_err(not_found)?;
        // The pty recorded at launch, and only if the guest-writable key
        // still names it.
        let owner = record
            .as_deref()
            .and_then(Owner::decode)
            .ok_or_else(|| not_found("its owner record went".into()))?;
        let tty = owner::check_console(&owner, tty.as_deref().filter(|t| !t.is_empty()))
            .map_err(HypervisorError::Io)?;
        // A domain whose device model is gone cannot serve its shares any
        // more: not taken over (the orphan sweep destroys it, the core
        // counts it as ended).
        let device_model = self.device_model(&spec, domid).await.map_err(not_found)?;
        let agent = spec.run_dir.join("agent.sock");
        let kept = owner
            .bridge
            .and_then(|(pid, start)| Bridge::adopt(pid, start, &agent));
        let adopted = kept.is_some();
        let bridge = match kept {
            Some(b) => b,
            None => {
                // Whatever else the record names is no longer that bridge.
                self.start_bridge(&spec, &tty)
                    .map_err(HypervisorError::Io)?
                    .0
            }
        };
        // From here on the orphan sweep leaves the domain alone.
        let record = Owner::me(domid, &spec.run_dir, &tty, Some(bridge.id())).encode();
        let key = owner::path(&name);
        if let Err(e) = xs(&self.config.xenstore_socket, move |x| {
            x.write(&key, record.as_bytes())
        })
        .await
        {
            bridge.stop().await;
            let _ = std::fs::remove_file(&agent);
            return Err(HypervisorError::Io(format!(
                "cannot record the domain's new owner in xenstore: {e}"
            )));
        }
        tracing::info!(vm = %name, domid, kept_console_bridge = adopted, "took over a running domain");
        Ok(Box::new(XenVm::start(
            name,
            domid,
            self.config.clone(),
            bridge,
            agent,
            Held {
                device_model,
                // blkback holds the loop devices the launching plugin attached.
                disks: Vec::new(),
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc_xen(caps: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(caps) = caps {
            std::fs::write(dir.path().join("capabilities"), caps).unwrap();
        }
        dir
    }

    fn hv(proc_xen: &Path, xl: &str, socket: &str) -> XenHypervisor {
        XenHypervisor::with_proc_xen(
            XenConfig {
                xl: xl.into(),
                xenstore_socket: socket.into(),
                ..XenConfig::default()
            },
            proc_xen.to_path_buf(),
        )
    }

    #[tokio::test]
    async fn probe_without_proc_xen() {
        let r = hv(
            Path::new("/nonexistent/proc/xen"),
            "/bin/true",
            "/nonexistent",
        )
        .probe()
        .await;
        assert!(!r.usable);
        assert!(r.reason.contains("not running under Xen"), "{}", r.reason);
        assert!(r.reason.contains("mount -t xenfs"), "{}", r.reason);
    }

    #[tokio::test]
    async fn probe_in_a_domu() {
        let dir = fake_proc_xen(Some(""));
        let r = hv(dir.path(), "/bin/true", "/nonexistent").probe().await;
        assert!(!r.usable);
        assert!(r.reason.contains("not dom0"), "{}", r.reason);
        let empty = fake_proc_xen(None);
        let r = hv(empty.path(), "/bin/true", "/nonexistent").probe().await;
        assert!(r.reason.contains("capabilities"), "{}", r.reason);
    }

    #[tokio::test]
    async fn probe_without_xl() {
        let dir = fake_proc_xen(Some("control_d\n"));
        let r = hv(dir.path(), "/nonexistent/xl", "/nonexistent")
            .probe()
            .await;
        assert!(!r.usable);
        assert!(r.reason.contains("/nonexistent/xl"), "{}", r.reason);
        assert!(r.reason.contains("xen-utils-4.17"), "{}", r.reason);
        let not_exec = dir.path().join("xl");
        std::fs::write(&not_exec, "").unwrap();
        std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = hv(dir.path(), &not_exec.to_string_lossy(), "/nonexistent")
            .probe()
            .await;
        assert!(r.reason.contains("not an executable"), "{}", r.reason);
    }

    #[tokio::test]
    async fn probe_without_xenstored() {
        let dir = fake_proc_xen(Some("control_d\n"));
        let r = hv(dir.path(), "/bin/true", "/nonexistent/xenstored/socket")
            .probe()
            .await;
        assert!(!r.usable);
        assert!(
            r.reason.contains("xenstored does not answer"),
            "{}",
            r.reason
        );
        assert!(
            r.reason.contains("/nonexistent/xenstored/socket"),
            "{}",
            r.reason
        );
    }

    /// A xenstored that accepts and never answers must not hang the probe.
    #[tokio::test]
    async fn probe_with_a_silent_xenstored() {
        let dir = fake_proc_xen(Some("control_d\n"));
        let sock = dir.path().join("xs.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let _keep = std::thread::spawn(move || {
            let held: Vec<_> = listener.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(20));
            drop(held);
        });
        let started = std::time::Instant::now();
        let r = hv(dir.path(), "/bin/true", &sock.to_string_lossy())
            .probe()
            .await;
        assert!(!r.usable);
        assert!(r.reason.contains("xenstored"), "{}", r.reason);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn launch_refuses_bad_specs_and_missing_xen() {
        let h = hv(
            Path::new("/nonexistent/proc/xen"),
            "/bin/true",
            "/nonexistent",
        );
        let mut spec = VmSpec {
            id: "a b".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            console_log: "/tmp/c.log".into(),
            run_dir: "/tmp".into(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        };
        assert!(matches!(
            h.launch(spec.clone()).await.err(),
            Some(HypervisorError::InvalidSpec(_))
        ));
        spec.id = "ok".into();
        match h.launch(spec).await.err() {
            Some(HypervisorError::Unavailable { reason, .. }) => {
                assert!(reason.contains("not running under Xen"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// A stand-in xenstored on a unix socket, over a shared key/value map:
    /// READ, WRITE, RM and WATCH (then an event every 50 ms, so a watcher
    /// re-checks its domain often).
    fn fake_xenstored(
        socket: &Path,
        store: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
    ) {
        use crate::xenstore::{Header, Op, HEADER_LEN};
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let store = store.clone();
                std::thread::spawn(move || loop {
                    let mut head = [0u8; HEADER_LEN];
                    if conn.read_exact(&mut head).is_err() {
                        return;
                    }
                    let h = Header::decode(&head).unwrap();
                    let mut body = vec![0u8; h.len as usize];
                    conn.read_exact(&mut body).unwrap();
                    let mut parts = body.splitn(2, |b| *b == 0);
                    let path =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let rest = parts.next().unwrap_or_default().to_vec();
                    let mut map = store.lock().unwrap();
                    let (op, payload) = match h.op {
                        x if x == Op::Read as u32 => match map.get(&path) {
                            Some(v) => (h.op, v.as_bytes().to_vec()),
                            None => (Op::Error as u32, b"ENOENT\0".to_vec()),
                        },
                        x if x == Op::Write as u32 => {
                            map.insert(path, String::from_utf8(rest).unwrap());
                            (h.op, b"OK\0".to_vec())
                        }
                        x if x == Op::Rm as u32 => {
                            map.remove(&path);
                            (h.op, b"OK\0".to_vec())
                        }
                        _ => (h.op, b"OK\0".to_vec()),
                    };
                    drop(map);
                    let reply = crate::xenstore::reply;
                    if conn.write_all(&reply(op, h.req_id, &payload)).is_err() {
                        return;
                    }
                    if h.op == Op::Watch as u32 {
                        let event = reply(Op::WatchEvent as u32, 0, b"@releaseDomain\0hyper-xen\0");
                        while conn.write_all(&event).is_ok() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        return;
                    }
                });
            }
        });
    }

    #[tokio::test]
    async fn recover_rebridges_the_console_of_a_recorded_domain() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = fake_proc_xen(Some("control_d\n"));
        let socket = dir.path().join("xs.sock");
        let store = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        fake_xenstored(&socket, store.clone());
        let (master, slave, tty) = crate::console::pty_pair();
        let run_dir = dir.path().join("pods/p1/vm");
        std::fs::create_dir_all(&run_dir).unwrap();
        // What the dead hyperd's bridge left.
        std::fs::write(run_dir.join("agent.sock"), "stale").unwrap();
        let dead = Owner {
            domid: 5,
            pid: u32::MAX,
            start: 1,
            run_dir: Some(run_dir.clone()),
            tty: Some(tty.clone()),
            bridge: None,
        };
        {
            let mut map = store.lock().unwrap();
            map.insert(owner::path("p1"), dead.encode());
            map.insert("/local/domain/5/name".into(), "p1".into());
            map.insert(
                "/local/domain/5/console/tty".into(),
                tty.to_string_lossy().into_owned(),
            );
        }
        let h = hv(dir.path(), "/bin/true", &socket.to_string_lossy());
        assert!(h.capabilities().recover);
        let spec = VmSpec {
            id: "p1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![],
            console_log: dir.path().join("console.log"),
            run_dir: run_dir.clone(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        };
        let info = VmInfo {
            id: "p1".into(),
            agent_channel: hyper_hypervisor::AgentChannel::UnixSocket(run_dir.join("agent.sock")),
            pid: None,
        };

        // Refused: another run directory, a domid that names another domain,
        // a console that is not a pty.
        let elsewhere = VmSpec {
            run_dir: dir.path().join("elsewhere"),
            nics: Vec::new(),
            ..spec.clone()
        };
        let err = h.recover(elsewhere, info.clone(), None).await.err();
        assert!(matches!(err, Some(HypervisorError::NotFound(_))), "{err:?}");
        store
            .lock()
            .unwrap()
            .insert("/local/domain/5/name".into(), "other".into());
        let err = h.recover(spec.clone(), info.clone(), None).await.err();
        assert!(matches!(err, Some(HypervisorError::NotFound(_))), "{err:?}");
        {
            let mut map = store.lock().unwrap();
            map.insert("/local/domain/5/name".into(), "p1".into());
            map.insert("/local/domain/5/console/tty".into(), "/etc/passwd".into());
        }
        let err = h.recover(spec.clone(), info.clone(), None).await.err();
        assert!(matches!(err, Some(HypervisorError::Io(_))), "{err:?}");
        // The guest names another pty (another domain's console, a
        // terminal): not the one recorded at launch, refused.
        let (_other_master, _other_slave, other_tty) = crate::console::pty_pair();
        store.lock().unwrap().insert(
            "/local/domain/5/console/tty".into(),
            other_tty.to_string_lossy().into_owned(),
        );
        let err = h.recover(spec.clone(), info.clone(), None).await.err();
        assert!(
            matches!(&err, Some(HypervisorError::Io(m)) if m.contains("not") && m.contains("as at launch")),
            "{err:?}"
        );
        assert_eq!(
            store.lock().unwrap().get(&owner::path("p1")),
            Some(&dead.encode())
        );

        store.lock().unwrap().insert(
            "/local/domain/5/console/tty".into(),
            tty.to_string_lossy().into_owned(),
        );
        let vm = h.recover(spec.clone(), info.clone(), None).await.unwrap();
        assert_eq!(vm.info(), info);
        let record = store.lock().unwrap().get(&owner::path("p1")).cloned();
        let record = record.as_deref().and_then(Owner::decode).unwrap();
        assert_eq!(record.pid, std::process::id());
        assert_eq!(record.domid, 5);
        assert_eq!(record.run_dir.as_deref(), Some(run_dir.as_path()));
        assert_eq!(record.tty.as_deref(), Some(tty.as_path()));
        // A bridge process of its own, recorded, serving this VM's socket.
        let (bridge_pid, bridge_start) = record.bridge.unwrap();
        assert_eq!(
            hyper_hypervisor::adopt::process_start_time(bridge_pid),
            Some(bridge_start)
        );
        assert!(hyper_hypervisor::adopt::cmdline_mentions(
            bridge_pid,
            run_dir.join("agent.sock").as_os_str().as_encoded_bytes()
        ));

        // The new bridge: socket to pty and back.
        let mut client = tokio::net::UnixStream::connect(run_dir.join("agent.sock"))
            .await
            .unwrap();
        let mut master_file = std::fs::File::from(master);
        std::io::Write::write_all(&mut master_file, b"from-guest").unwrap();
        let mut got = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"from-guest");
        client.write_all(b"to-guest").await.unwrap();
        let read = |mut master: std::fs::File, n: usize| {
            tokio::task::spawn_blocking(move || {
                let mut back = vec![0u8; n];
                std::io::Read::read_exact(&mut master, &mut back).map(|_| (back, master))
            })
        };
        let (back, master_file) = read(master_file, 8).await.unwrap().unwrap();
        assert_eq!(back, b"to-guest");

        // Taken over again (a restarted plugin host): the recorded bridge is
        // kept, and the client connected to it never notices.
        let again = h.recover(spec.clone(), info.clone(), None).await.unwrap();
        let record = store.lock().unwrap().get(&owner::path("p1")).cloned();
        let record = record.as_deref().and_then(Owner::decode).unwrap();
        assert_eq!(record.bridge, Some((bridge_pid, bridge_start)));
        client.write_all(b"still").await.unwrap();
        let (still, mut master_file) = read(master_file, 5).await.unwrap().unwrap();
        assert_eq!(still, b"still");
        std::io::Write::write_all(&mut master_file, b"back").unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"back");

        // The domain goes: wait() ends, the bridge, the socket and the
        // record go too.
        store.lock().unwrap().remove("/local/domain/5/name");
        for vm in [&vm, &again] {
            tokio::time::timeout(Duration::from_secs(10), vm.wait())
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            hyper_hypervisor::adopt::process_start_time(bridge_pid),
            None,
            "the bridge is gone"
        );
        drop(master_file);
        assert!(!run_dir.join("agent.sock").exists());
        assert_eq!(store.lock().unwrap().get(&owner::path("p1")), None);
        drop(slave);
    }
}
