//! One running QEMU process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::adopt::AdoptedProcess;
use hyper_hypervisor::process::VmProcess;
use hyper_hypervisor::virtiofs::{supervise, Supervised, Virtiofsds};
use hyper_hypervisor::{HypervisorError, Vm, VmExit, VmInfo, VmStats};
use serde_json::Value;
use tokio::process::Child;

use crate::cmdline::RunPaths;
use crate::memory::template_memory_path;
use crate::procfs;
use crate::qmp::{Qmp, QmpError};
use crate::template::meta::Layout;

/// How long `quit` may take before kill() falls back to SIGKILL.
const QUIT_LIMIT: Duration = Duration::from_millis(500);
const QUIT_EXIT_LIMIT: Duration = Duration::from_secs(1);
/// SIGKILL cannot be ignored; this only guards against a stuck reaper.
const KILL_EXIT_LIMIT: Duration = Duration::from_secs(10);
const POWERDOWN_LIMIT: Duration = Duration::from_secs(2);

/// A QEMU process, its QMP connection and its shares' daemons.
///
/// The backend kit's [`VmProcess`] watches the process (reaping it, so the
/// pid is never recycled under us, and signalling it through a pidfd) and
/// removes the run files once it has ended; the kit's [`supervise`] watches
/// it with its `virtiofsd`s (a daemon that ends kills QEMU; QEMU's end
/// stops the daemons) and publishes the exit to every `wait()` caller.
/// Dropping a `QemuVm` does not stop the VM.
pub struct QemuVm {
    info: VmInfo,
    paths: RunPaths,
    process: Arc<VmProcess>,
    supervised: Supervised,
    /// Kept open between commands; reopened when an exchange broke.
    qmp: tokio::sync::Mutex<Option<Qmp>>,
    /// Set when the VM was launched with `save_as_template`: what its
    /// template records.
    template: Option<Layout>,
}

impl QemuVm {
    /// Takes over a spawned, QMP-connected QEMU. Must run inside a tokio
    /// runtime that outlives the VM (the plugin's own).
    pub(crate) async fn start(
        info: VmInfo,
        child: Child,
        paths: RunPaths,
        qmp: Qmp,
        (console, limit): (PathBuf, u64),
        daemons: Virtiofsds,
    ) -> Result<Self, HypervisorError> {
        let process = match VmProcess::watch_child(child, "QEMU", on_exit(paths.clone())) {
            Ok(process) => Arc::new(process),
            Err(e) => {
                daemons.stop().await;
                return Err(HypervisorError::LaunchFailed(e.to_string()));
            }
        };
        tokio::spawn(crate::console::watch_log(
            console,
            limit,
            process.exit_watch(),
        ));
        let supervised = supervise(&info.id, process.clone(), daemons);
        Ok(Self {
            info,
            paths,
            process,
            supervised,
            qmp: tokio::sync::Mutex::new(Some(qmp)),
            template: None,
        })
    }

    /// Takes over a QEMU an earlier hyperd started: watched through a pidfd
    /// (it is not our child), QMP reconnected on first use.
    pub(crate) fn adopt(
        info: VmInfo,
        process: AdoptedProcess,
        paths: RunPaths,
        (console, limit): (PathBuf, u64),
        daemons: Virtiofsds,
    ) -> Self {
        let process = Arc::new(VmProcess::adopted(process, "QEMU", on_exit(paths.clone())));
        tokio::spawn(crate::console::watch_log(
            console,
            limit,
            process.exit_watch(),
        ));
        let supervised = supervise(&info.id, process.clone(), daemons);
        Self {
            info,
            paths,
            process,
            supervised,
            qmp: tokio::sync::Mutex::new(None),
            template: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn paths(&self) -> &RunPaths {
        &self.paths
    }

    /// Marks this VM as a future template of `layout`.
    pub(crate) fn set_template(&mut self, layout: Layout) {
        self.template = Some(layout);
    }

    /// One QMP command, all of it (waiting for the connection lock,
    /// reconnecting, the exchange) bounded by `limit`.
    pub async fn qmp_command(&self, command: &str, limit: Duration) -> Result<Value, QmpError> {
        self.qmp_execute(command, None, limit).await
    }

    /// [`Self::qmp_command`] with arguments.
    pub async fn qmp_execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        limit: Duration,
    ) -> Result<Value, QmpError> {
        let attempt = async {
            let mut slot = self.qmp.lock().await;
            // Taken out of the slot for the exchange: if this future is
            // dropped midway the half-used connection goes with it.
            let mut qmp = match slot.take() {
                Some(qmp) => qmp,
                None => Qmp::connect(&self.paths.qmp, limit).await?,
            };
            let result = qmp.execute(command, arguments, limit).await;
            if !matches!(&result, Err(e) if e.is_fatal()) {
                *slot = Some(qmp);
            }
            result
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| QmpError::Timeout(limit))?
    }
}

/// Runs once QEMU has ended.
fn on_exit(paths: RunPaths) -> impl FnOnce(u32) + Send + 'static {
    move |pid| remove_run_files(&paths, pid)
}

/// Removes the sockets and the pid file of QEMU `pid`, and the RAM file of
/// a template VM that was not saved, but only while the pid file still
/// names it: a newer launch in the same run directory may already own them.
pub(crate) fn remove_run_files(paths: &RunPaths, pid: u32) {
    if procfs::read_pid_file(&paths.pid) != Some(pid) {
        return;
    }
    let memory = template_memory_path(&paths.dir);
    for path in [
        &paths.migrate,
        &memory,
        &paths.qmp,
        &paths.agent,
        &paths.pid,
    ] {
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
            }
        }
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        self.supervised.wait().await
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.supervised.is_done() {
            return Ok(());
        }
        match self.qmp_command("system_powerdown", POWERDOWN_LIMIT).await {
            Ok(_) => {
                if self.supervised.wait_within(grace).await {
                    return Ok(());
                }
                tracing::info!(vm = %self.info.id, ?grace, "the guest did not power off in time; killing it");
            }
            // Nobody asked the guest to stop, so waiting would only waste the grace.
            Err(e) => {
                tracing::warn!(vm = %self.info.id, "cannot ask QEMU to power down ({e}); killing it")
            }
        }
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        if self.supervised.is_done() {
            return Ok(());
        }
        // `quit` lets QEMU exit cleanly (flushing writable disks, removing its
        // sockets); worth trying only while it answers at once.
        let quit = self.qmp_command("quit", QUIT_LIMIT).await.is_ok()
            && self.process.wait_within(QUIT_EXIT_LIMIT).await;
        if !quit {
            self.process.kill(KILL_EXIT_LIMIT).await?;
        }
        // Then its daemons are stopped: back once nothing of the VM is left.
        if self.supervised.wait_within(KILL_EXIT_LIMIT).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "the daemons of VM {} have not stopped {KILL_EXIT_LIMIT:?} after it ended",
                self.info.id
            )))
        }
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        self.process.stats(&self.info.id)
    }

    async fn save_template(&self, dir: &Path) -> Result<(), HypervisorError> {
        let Some(layout) = &self.template else {
            return Err(HypervisorError::Unsupported(
                "saving a VM that was not launched with save_as_template (or was taken over after a restart)".into(),
            ));
        };
        if self.supervised.is_done() {
            return Err(HypervisorError::Io(format!(
                "VM {} has ended: nothing to save",
                self.info.id
            )));
        }
        crate::template::save(self, layout, dir).await
    }
}
