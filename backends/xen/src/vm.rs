//! One running domU.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::{AgentChannel, HypervisorError, Vm, VmExit, VmHelper, VmInfo, VmStats};
use tokio::sync::watch;

use crate::bridge::Bridge;
use crate::config::XenConfig;
use crate::hypervisor::xs;
use crate::loopdev::LoopDevice;
use crate::owner;
use crate::share::DeviceModel;
use crate::template::{self, Metadata};
use crate::xenstore::{Xenstore, XsError};
use crate::xl;

const DESTROY_TIMEOUT: Duration = Duration::from_secs(30);
/// After `xl destroy`, how long the domain may take to leave xenstore.
const GONE_AFTER_DESTROY: Duration = Duration::from_secs(15);
/// How long one blocking watch round lasts before the state is re-checked
/// with `xl list` (a domain shut down but not destroyed fires no more events).
const WATCH_ROUND: Duration = Duration::from_secs(10);
const XS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long xl's monitor may take to notice its domain is gone.
const MONITOR_EXIT: Duration = Duration::from_secs(5);

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

/// What in dom0 serves a domain besides Xen: the device model of its
/// shares (watched) and the loop devices of its disks (held until it is
/// gone).
pub(crate) struct Held {
    pub device_model: Option<DeviceModel>,
    pub disks: Vec<LoopDevice>,
}

pub struct XenVm {
    info: VmInfo,
    domid: u32,
    config: XenConfig,
    exit: watch::Receiver<ExitSlot>,
    /// Set before this backend shuts the domain down or destroys it: libxl
    /// then stops the device model itself, which is no helper's death.
    stopping: Arc<AtomicBool>,
    /// Launched to be saved as a template: the layout its metadata records.
    template: Option<Metadata>,
}

impl XenVm {
    /// Takes over a created, unpaused domain whose console `bridge` serves
    /// the agent socket `agent`, and watches for its end, and for the end of the device
    /// model serving its shares, if it has any (then the domain is
    /// destroyed: its 9p requests would never be answered). `disks`: the
    /// loop devices its disks are on, let go once it is gone (the kernel
    /// then detaches them). Must run inside the plugin's runtime.
    pub(crate) fn start(
        name: String,
        domid: u32,
        config: XenConfig,
        bridge: Bridge,
        agent: PathBuf,
        held: Held,
    ) -> Self {
        let Held {
            device_model,
            disks,
        } = held;
        let info = VmInfo {
            id: name.clone(),
            agent_channel: AgentChannel::UnixSocket(agent.clone()),
            pid: None,
        };
        let (exit_tx, exit) = watch::channel(None);
        let cfg = config.clone();
        let stopping = Arc::new(AtomicBool::new(false));
        let helper = DeviceModelWatch {
            device_model,
            stopping: stopping.clone(),
        };
        tokio::spawn(async move {
            let result = watch_until_gone(&cfg, &name, domid, helper).await;
            tracing::info!(vm = %name, domid, exit = ?result, "domain is gone");
            // It ends by itself when the pty hangs up; killed all the same,
            // so nothing of the VM is left once wait() returns.
            bridge.stop().await;
            // xl's monitor process for the domain (it runs the on_poweroff
            // action) goes away right after: wait for it, so nothing of the
            // VM is left once wait() returns.
            if let Some(dir) = agent.parent() {
                wait_for_monitor_exit(&dir.join("xl.cfg")).await;
            }
            let _ = std::fs::remove_file(&agent);
            drop(disks);
            crate::share::release(&cfg.share_dir, &name);
            let key = owner::path(&name);
            let _ = xs(&cfg.xenstore_socket, move |x| x.rm(&key)).await;
            exit_tx.send_replace(Some(result));
        });
        Self {
            info,
            domid,
            config,
            exit,
            stopping,
            template: None,
        }
    }

    /// A VM launched with `VmSpec.save_as_template`: what
    /// [`Vm::save_template`] records about it.
    pub(crate) fn with_template(mut self, layout: Option<Metadata>) -> Self {
        self.template = layout;
        self
    }

    pub fn domid(&self) -> u32 {
        self.domid
    }

    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }
}

/// Processes whose command line mentions `needle` (xl's per-domain monitor
/// is an `xl create <cfg>` that stays in the background).
pub fn processes_mentioning(proc_dir: &std::path::Path, needle: &[u8]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|w| w == needle)
                .then_some(pid)
        })
        .collect()
}

async fn wait_for_monitor_exit(cfg: &std::path::Path) {
    let needle = cfg.as_os_str().as_encoded_bytes().to_vec();
    if needle.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + MONITOR_EXIT;
    while !processes_mentioning(std::path::Path::new("/proc"), &needle).is_empty() {
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(cfg = %cfg.display(), "xl's monitor is still running");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True once `/local/domain/<domid>` no longer names this domain.
fn gone(x: &mut Xenstore, domid: u32, name: &str) -> Result<bool, XsError> {
    Ok(x.read_opt(&format!("/local/domain/{domid}/name"), 256)?
        .as_deref()
        != Some(name))
}

/// Blocks until the domain is gone or `round` passes (`Ok(false)`), waking
/// on xenstore's `@releaseDomain` rather than polling.
fn watch_round(
    socket: PathBuf,
    domid: u32,
    name: String,
    round: Duration,
) -> Result<bool, XsError> {
    let mut watcher = Xenstore::connect(&socket, XS_TIMEOUT)?;
    let mut query = Xenstore::connect(&socket, XS_TIMEOUT)?;
    watcher.watch("@releaseDomain", "hyper-xen")?;
    let deadline = std::time::Instant::now() + round;
    loop {
        if gone(&mut query, domid, &name)? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Any event (or none in time) leads to a fresh check.
        watcher.next_event(left)?;
    }
}

/// The device model a domain's shares need, and whether its end is ours.
struct DeviceModelWatch {
    device_model: Option<DeviceModel>,
    stopping: Arc<AtomicBool>,
}

impl DeviceModelWatch {
    /// True when the device model ended while the domain still runs: libxl
    /// stops it itself once the domain has shut down (the guest's
    /// poweroff: the domain is listed shut down first) or is destroyed
    /// (by this backend: `stopping`).
    async fn died_first(&self, config: &XenConfig, name: &str) -> bool {
        if self.stopping.load(Ordering::SeqCst) || self.device_model.is_none_or(|dm| dm.is_alive())
        {
            return false;
        }
        let listed = xl::run(&config.xl, &["list", name], Duration::from_secs(30)).await;
        let running = matches!(&listed, Ok(out) if out.success
            && xl::parse_list(&out.stdout, name).is_some_and(|row| !xl::is_finished(&row.state)));
        running && !self.stopping.load(Ordering::SeqCst)
    }
}

async fn watch_until_gone(
    config: &XenConfig,
    name: &str,
    domid: u32,
    helper: DeviceModelWatch,
) -> Result<VmExit, HypervisorError> {
    let mut failures = 0u32;
    let mut helper_died = None;
    loop {
        let socket = config.xenstore_socket.clone();
        let owned = name.to_string();
        let round =
            tokio::task::spawn_blocking(move || watch_round(socket, domid, owned, WATCH_ROUND))
                .await;
        match round {
            Ok(Ok(true)) => {
                return Ok(VmExit {
                    code: None,
                    signal: None,
                    helper_died,
                })
            }
            Ok(Ok(false)) => failures = 0,
            Ok(Err(e)) => {
                failures += 1;
                tracing::warn!(vm = name, "watching the domain in xenstore: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(vm = name, "xenstore watch task: {e}");
            }
        }
        if helper_died.is_none() && helper.died_first(config, name).await {
            tracing::warn!(
                vm = name,
                domid,
                "the device model serving the domain's shares has ended: destroying the domain"
            );
            helper_died = Some(VmHelper::DeviceModel);
            let _ = xl::run(&config.xl, &["destroy", name], DESTROY_TIMEOUT).await;
            continue;
        }
        // Still listed after a while: one that has shut down but was not
        // destroyed (its xl monitor died) is destroyed here; one xl no longer
        // knows is gone even if xenstore cannot tell us.
        match xl::run(&config.xl, &["list", name], Duration::from_secs(30)).await {
            Ok(out) if !out.success && out.stderr.contains("is an invalid domain identifier") => {
                return Ok(VmExit {
                    code: None,
                    signal: None,
                    helper_died,
                })
            }
            Ok(out) => {
                if let Some(row) = xl::parse_list(&out.stdout, name) {
                    if xl::is_finished(&row.state) {
                        tracing::info!(vm = name, state = %row.state, "destroying a domain that has stopped");
                        let _ = xl::run(&config.xl, &["destroy", name], DESTROY_TIMEOUT).await;
                    }
                }
            }
            Err(e) => tracing::warn!(vm = name, "{e}"),
        }
        if failures >= 30 {
            return Err(HypervisorError::Io(format!(
                "lost track of domain {name} ({domid}): xenstored keeps failing"
            )));
        }
    }
}

#[async_trait]
impl Vm for XenVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut exit = self.exit.clone();
        let slot = exit.wait_for(Option::is_some).await.map_err(|_| {
            HypervisorError::Plugin("the task watching the domain has stopped".into())
        })?;
        match &*slot {
            Some(result) => result.clone(),
            None => Err(HypervisorError::Plugin(
                "the domain watch published nothing".into(),
            )),
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        self.stopping.store(true, Ordering::SeqCst);
        let secs = grace.as_secs().max(1).to_string();
        match xl::run(
            &self.config.xl,
            &["shutdown", "-w", &self.info.id],
            grace + Duration::from_secs(5),
        )
        .await
        {
            Ok(out) if out.success && self.wait_within(Duration::from_secs(5)).await => {
                return Ok(())
            }
            Ok(out) => {
                tracing::info!(vm = %self.info.id, grace = %secs, "xl shutdown: {}; destroying", out.reason())
            }
            Err(e) => tracing::info!(vm = %self.info.id, "{e}; destroying"),
        }
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        self.stopping.store(true, Ordering::SeqCst);
        match xl::run(
            &self.config.xl,
            &["destroy", &self.info.id],
            DESTROY_TIMEOUT,
        )
        .await
        {
            Ok(out) if !out.success => {
                tracing::warn!(vm = %self.info.id, "xl destroy: {}", out.reason())
            }
            Err(e) => tracing::warn!(vm = %self.info.id, "{e}"),
            Ok(_) => {}
        }
        if self.wait_within(GONE_AFTER_DESTROY).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "domain {} ({}) is still there {GONE_AFTER_DESTROY:?} after xl destroy",
                self.info.id, self.domid
            )))
        }
    }

    /// `xl save` writes the domain's memory, vCPU and device state into
    /// `dir` and destroys the domain; then this backend's metadata (layout,
    /// Xen version, the checkpoint's size and sha256) goes next to it.
    async fn save_template(&self, dir: &Path) -> Result<(), HypervisorError> {
        let Some(layout) = self.template.clone() else {
            return Err(HypervisorError::Unsupported(
                "saving a VM that was not launched as a template (VmSpec.save_as_template)".into(),
            ));
        };
        if self.has_exited() {
            return Err(HypervisorError::Io(format!(
                "VM {} has already ended",
                self.info.id
            )));
        }
        self.stopping.store(true, Ordering::SeqCst);
        let checkpoint = dir.join(template::CHECKPOINT);
        let target = checkpoint.to_string_lossy().into_owned();
        let limit = Duration::from_secs(self.config.xl_timeout_secs);
        let saved = xl::run(&self.config.xl, &["save", &self.info.id, &target], limit).await;
        let failure = match saved {
            Ok(out) if out.success => None,
            Ok(out) => Some(format!("xl save failed: {}", out.reason())),
            Err(e) => Some(e),
        };
        if let Some(message) = failure {
            let _ = std::fs::remove_file(&checkpoint);
            let _ = self.kill().await;
            return Err(HypervisorError::Io(message));
        }
        // xl save destroys the domain once its state is written.
        if !self.wait_within(GONE_AFTER_DESTROY).await {
            let _ = self.kill().await;
        }
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || template::write_metadata(&dir, layout))
            .await
            .map_err(|e| HypervisorError::Io(format!("template metadata task: {e}")))?
            .map_err(HypervisorError::Io)
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        let gone_err = || HypervisorError::Io(format!("VM {} is no longer running", self.info.id));
        if self.has_exited() {
            return Err(gone_err());
        }
        let domid = self.domid;
        let target_kib = xs(&self.config.xenstore_socket, move |x| {
            x.read_u64(&format!("/local/domain/{domid}/memory/target"))
        })
        .await
        .map_err(|e| HypervisorError::Io(format!("reading the domain's memory target: {e}")))?;
        let out = xl::run(
            &self.config.xl,
            &["list", &self.info.id],
            Duration::from_secs(30),
        )
        .await
        .map_err(HypervisorError::Io)?;
        let row = xl::parse_list(&out.stdout, &self.info.id).ok_or_else(gone_err)?;
        Ok(VmStats {
            rss_bytes: target_kib.saturating_mul(1024),
            pss_bytes: None,
            cpu_time_ms: (row.cpu_secs * 1000.0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An `xl` that lists domain `d1` in `state`.
    fn fake_xl(dir: &std::path::Path, state: &str) -> XenConfig {
        let xl = dir.join(format!("xl-{state}"));
        std::fs::write(
            &xl,
            format!(
                "#!/bin/sh\nprintf 'Name ID Mem VCPUs State Time(s)\\nd1 5 128 1 {state} 1.0\\n'\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&xl, std::fs::Permissions::from_mode(0o755)).unwrap();
        XenConfig {
            xl,
            ..XenConfig::default()
        }
    }

    /// Only a device model that ended while its domain still runs, and not
    /// while this backend stops it, is a helper's death: libxl kills it
    /// itself after the guest's poweroff (the domain is listed shut down).
    #[tokio::test]
    async fn a_device_model_gone_with_its_domain_is_no_death() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = hyper_hypervisor::adopt::process_start_time(pid).unwrap_or(1);
        child.wait().unwrap();
        let dead = DeviceModel { pid, start };
        let me = std::process::id();
        let alive = DeviceModel {
            pid: me,
            start: hyper_hypervisor::adopt::process_start_time(me).unwrap(),
        };
        let watch = |dm: Option<DeviceModel>, stopping: bool| DeviceModelWatch {
            device_model: dm,
            stopping: Arc::new(AtomicBool::new(stopping)),
        };
        let running = fake_xl(dir.path(), "-b----");
        let shut_down = fake_xl(dir.path(), "---s--");
        assert!(watch(Some(dead), false).died_first(&running, "d1").await);
        assert!(!watch(Some(dead), false).died_first(&shut_down, "d1").await);
        assert!(!watch(Some(dead), true).died_first(&running, "d1").await);
        assert!(!watch(Some(alive), false).died_first(&running, "d1").await);
        assert!(!watch(None, false).died_first(&running, "d1").await);
        // A domain xl no longer lists is gone, not running.
        assert!(!watch(Some(dead), false).died_first(&running, "other").await);
    }

    #[test]
    fn finds_processes_by_command_line() {
        let me = std::process::id();
        let arg0 = std::env::args().next().unwrap_or_default();
        let found = super::processes_mentioning(std::path::Path::new("/proc"), arg0.as_bytes());
        assert!(found.contains(&me), "{found:?}");
        let none =
            super::processes_mentioning(std::path::Path::new("/proc"), b"\x01no-such-arg\x02");
        assert!(none.is_empty());
    }
}
