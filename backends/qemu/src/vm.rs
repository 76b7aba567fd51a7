//! One running QEMU process.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::adopt::AdoptedProcess;
use hyper_hypervisor::{HypervisorError, Vm, VmExit, VmInfo, VmStats};
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use crate::cmdline::RunPaths;
use crate::procfs;
use crate::qmp::{Qmp, QmpError};

/// How long `quit` may take before kill() falls back to SIGKILL.
const QUIT_LIMIT: Duration = Duration::from_millis(500);
const QUIT_EXIT_LIMIT: Duration = Duration::from_secs(1);
/// SIGKILL cannot be ignored; this only guards against a stuck reaper.
const KILL_EXIT_LIMIT: Duration = Duration::from_secs(10);
const POWERDOWN_LIMIT: Duration = Duration::from_secs(2);

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

/// A QEMU process and its QMP connection.
///
/// One task owns the child process: it reaps it (so the pid is never
/// recycled under us while we might still signal it), removes the run files
/// and publishes the exit on a watch channel, which every `wait()` caller
/// reads. Dropping a `QemuVm` does not stop the VM; the task still reaps it.
pub struct QemuVm {
    info: VmInfo,
    pid: u32,
    paths: RunPaths,
    exit: watch::Receiver<ExitSlot>,
    /// Asks the reaper task to SIGKILL the child. Going through the task that
    /// owns the child means the signal can never hit a reaped, reused pid.
    kill_tx: mpsc::Sender<()>,
    /// Kept open between commands; reopened when an exchange broke.
    qmp: tokio::sync::Mutex<Option<Qmp>>,
}

impl QemuVm {
    /// Takes over a spawned, QMP-connected QEMU. Must run inside a tokio
    /// runtime that outlives the VM (the plugin's own).
    pub(crate) fn start(
        info: VmInfo,
        child: Child,
        pid: u32,
        paths: RunPaths,
        qmp: Qmp,
        (console, limit): (PathBuf, u64),
    ) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let (kill_tx, kill_rx) = mpsc::channel(1);
        tokio::spawn(reap(child, pid, paths.clone(), kill_rx, exit_tx));
        tokio::spawn(crate::console::watch_log(console, limit, exit.clone()));
        Self {
            info,
            pid,
            paths,
            exit,
            kill_tx,
            qmp: tokio::sync::Mutex::new(Some(qmp)),
        }
    }

    /// Takes over a QEMU an earlier hyperd started: watched through a pidfd
    /// (it is not our child), QMP reconnected on first use.
    pub(crate) fn adopt(
        info: VmInfo,
        process: AdoptedProcess,
        paths: RunPaths,
        (console, limit): (PathBuf, u64),
    ) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let (kill_tx, kill_rx) = mpsc::channel(1);
        let pid = process.pid();
        tokio::spawn(watch_adopted(process, paths.clone(), kill_rx, exit_tx));
        tokio::spawn(crate::console::watch_log(console, limit, exit.clone()));
        Self {
            info,
            pid,
            paths,
            exit,
            kill_tx,
            qmp: tokio::sync::Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    /// One QMP command, all of it (waiting for the connection lock,
    /// reconnecting, the exchange) bounded by `limit`.
    pub async fn qmp_command(&self, command: &str, limit: Duration) -> Result<Value, QmpError> {
        let attempt = async {
            let mut slot = self.qmp.lock().await;
            // Taken out of the slot for the exchange: if this future is
            // dropped midway the half-used connection goes with it.
            let mut qmp = match slot.take() {
                Some(qmp) => qmp,
                None => Qmp::connect(&self.paths.qmp, limit).await?,
            };
            let result = qmp.execute(command, None, limit).await;
            if !matches!(&result, Err(e) if e.is_fatal()) {
                *slot = Some(qmp);
            }
            result
        };
        tokio::time::timeout(limit, attempt)
            .await
            .map_err(|_| QmpError::Timeout(limit))?
    }

    fn request_kill(&self) {
        // Full: a kill is already pending. Closed: the reaper is done, the
        // process is gone. Neither needs more.
        let _ = self.kill_tx.try_send(());
    }
}

async fn reap(
    mut child: Child,
    pid: u32,
    paths: RunPaths,
    mut kill_rx: mpsc::Receiver<()>,
    exit_tx: watch::Sender<ExitSlot>,
) {
    let status = loop {
        tokio::select! {
            // Child::wait is cancel safe: losing the race to a kill request
            // loses nothing.
            status = child.wait() => break status,
            request = kill_rx.recv() => match request {
                Some(()) => {
                    if let Err(e) = child.start_kill() {
                        tracing::warn!(pid, "cannot SIGKILL QEMU: {e}");
                    }
                }
                // The VM handle is gone; the process is still ours to reap.
                None => break child.wait().await,
            },
        }
    };
    let result = status
        .map(|s| VmExit {
            code: s.code(),
            signal: s.signal(),
        })
        .map_err(|e| HypervisorError::Io(format!("waiting for QEMU (pid {pid}): {e}")));
    tracing::info!(pid, exit = ?result, "QEMU has exited");
    remove_run_files(&paths, pid);
    exit_tx.send_replace(Some(result));
}

async fn watch_adopted(
    process: AdoptedProcess,
    paths: RunPaths,
    mut kill_rx: mpsc::Receiver<()>,
    exit_tx: watch::Sender<ExitSlot>,
) {
    let pid = process.pid();
    loop {
        tokio::select! {
            () = process.exited() => break,
            request = kill_rx.recv() => match request {
                Some(()) => {
                    if let Err(e) = process.signal(libc::SIGKILL) {
                        tracing::warn!(pid, "cannot SIGKILL QEMU: {e}");
                    }
                }
                None => {
                    process.exited().await;
                    break;
                }
            },
        }
    }
    // Not our child: its status went to init; only the fact is known.
    tracing::info!(pid, "adopted QEMU has exited");
    remove_run_files(&paths, pid);
    exit_tx.send_replace(Some(Ok(VmExit {
        code: None,
        signal: None,
    })));
}

/// Removes the sockets and the pid file of QEMU `pid`, but only while the
/// pid file still names it: a newer launch in the same run directory may
/// already own them.
pub(crate) fn remove_run_files(paths: &RunPaths, pid: u32) {
    if procfs::read_pid_file(&paths.pid) != Some(pid) {
        return;
    }
    for path in [&paths.qmp, &paths.agent, &paths.pid] {
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
        let mut exit = self.exit.clone();
        let slot = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| HypervisorError::Plugin("the task watching QEMU has stopped".into()))?;
        match &*slot {
            Some(result) => result.clone(),
            None => Err(HypervisorError::Plugin(
                "the task watching QEMU published nothing".into(),
            )),
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        match self.qmp_command("system_powerdown", POWERDOWN_LIMIT).await {
            Ok(_) => {
                if self.wait_within(grace).await {
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
        if self.has_exited() {
            return Ok(());
        }
        // `quit` lets QEMU exit cleanly (flushing writable disks, removing its
        // sockets); worth trying only while it answers at once.
        if self.qmp_command("quit", QUIT_LIMIT).await.is_ok()
            && self.wait_within(QUIT_EXIT_LIMIT).await
        {
            return Ok(());
        }
        self.request_kill();
        if self.wait_within(KILL_EXIT_LIMIT).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "QEMU (pid {}) has not exited {KILL_EXIT_LIMIT:?} after SIGKILL",
                self.pid
            )))
        }
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        let gone = || HypervisorError::Io(format!("VM {} is no longer running", self.info.id));
        if self.has_exited() {
            return Err(gone());
        }
        let stats = procfs::read_stats(self.pid)
            .map_err(|e| HypervisorError::Io(format!("reading /proc/{}: {e}", self.pid)))?;
        // Exited meanwhile: the figures may be of a reused pid.
        if self.has_exited() {
            return Err(gone());
        }
        Ok(stats)
    }
}
