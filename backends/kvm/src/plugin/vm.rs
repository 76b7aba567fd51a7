//! One running hyper-vmm process.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::adopt::AdoptedProcess;
use hyper_hypervisor::{HypervisorError, Vm, VmExit, VmInfo, VmStats};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

const KILL_EXIT_LIMIT: Duration = Duration::from_secs(10);

/// Per-VM files in the run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub agent: PathBuf,
    pub config: PathBuf,
    pub status: PathBuf,
    pub log: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            agent: dir.join("agent.sock"),
            config: dir.join("vmm.json"),
            status: dir.join("vmm-status.json"),
            log: dir.join("vmm.log"),
        }
    }

    /// hyper-vmm's own account of a failure (status file), else its log tail.
    pub fn failure_message(&self) -> String {
        if let Ok(text) = std::fs::read_to_string(&self.status) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(m) = v.get("message").and_then(|m| m.as_str()) {
                    return m.to_string();
                }
                return text.trim().to_string();
            }
        }
        let log = std::fs::read(&self.log).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(2048)..];
        String::from_utf8_lossy(tail).trim().to_string()
    }
}

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

/// The reaper task owns the child, so signals never reach a recycled pid.
pub struct KvmVm {
    info: VmInfo,
    pid: u32,
    exit: watch::Receiver<ExitSlot>,
    signal_tx: mpsc::Sender<i32>,
}

impl KvmVm {
    /// Must run inside the plugin's tokio runtime.
    pub fn start(info: VmInfo, child: Child, pid: u32, paths: RunPaths) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let (signal_tx, signal_rx) = mpsc::channel(4);
        tokio::spawn(reap(child, pid, paths, signal_rx, exit_tx));
        Self {
            info,
            pid,
            exit,
            signal_tx,
        }
    }

    /// Takes over a hyper-vmm an earlier hyperd started (not our child:
    /// watched and signalled through a pidfd).
    pub fn adopt(info: VmInfo, process: AdoptedProcess, paths: RunPaths) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let (signal_tx, signal_rx) = mpsc::channel(4);
        let pid = process.pid();
        tokio::spawn(watch_adopted(process, paths, signal_rx, exit_tx));
        Self {
            info,
            pid,
            exit,
            signal_tx,
        }
    }

    fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    async fn wait_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }
}

async fn reap(
    mut child: Child,
    pid: u32,
    paths: RunPaths,
    mut signal_rx: mpsc::Receiver<i32>,
    exit_tx: watch::Sender<ExitSlot>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signal_rx.recv() => match sig {
                Some(sig) => {
                    if let Some(raw) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                        // SAFETY: kill(2) has no memory-safety preconditions;
                        // the child is not reaped yet (we own it), so the pid
                        // is still ours.
                        if unsafe { libc::kill(raw, sig) } != 0 {
                            tracing::warn!(pid, sig, "cannot signal hyper-vmm: {}", std::io::Error::last_os_error());
                        }
                    }
                }
                None => break child.wait().await,
            },
        }
    };
    let result = status
        .map(|s| VmExit {
            code: s.code(),
            signal: s.signal(),
        })
        .map_err(|e| HypervisorError::Io(format!("waiting for hyper-vmm (pid {pid}): {e}")));
    let summary = std::fs::read_to_string(&paths.status).unwrap_or_default();
    tracing::info!(pid, exit = ?result, status = %summary.trim(), "hyper-vmm has exited");
    let _ = std::fs::remove_file(&paths.agent);
    exit_tx.send_replace(Some(result));
}

async fn watch_adopted(
    process: AdoptedProcess,
    paths: RunPaths,
    mut signal_rx: mpsc::Receiver<i32>,
    exit_tx: watch::Sender<ExitSlot>,
) {
    let pid = process.pid();
    loop {
        tokio::select! {
            () = process.exited() => break,
            sig = signal_rx.recv() => match sig {
                Some(sig) => {
                    if let Err(e) = process.signal(sig) {
                        tracing::warn!(pid, sig, "cannot signal hyper-vmm: {e}");
                    }
                }
                None => {
                    process.exited().await;
                    break;
                }
            },
        }
    }
    let summary = std::fs::read_to_string(&paths.status).unwrap_or_default();
    tracing::info!(pid, status = %summary.trim(), "adopted hyper-vmm has exited");
    let _ = std::fs::remove_file(&paths.agent);
    // Its exit status went to init; hyper-vmm's status file says why.
    exit_tx.send_replace(Some(Ok(VmExit {
        code: None,
        signal: None,
    })));
}

fn read_stats(pid: u32) -> std::io::Result<VmStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based) of the whole line.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(VmStats {
        rss_bytes: rss_kib * 1024,
        pss_bytes: None,
        cpu_time_ms: ticks * 1000 / hz,
    })
}

#[async_trait]
impl Vm for KvmVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut exit = self.exit.clone();
        let slot = exit.wait_for(Option::is_some).await.map_err(|_| {
            HypervisorError::Plugin("the task watching hyper-vmm has stopped".into())
        })?;
        match &*slot {
            Some(r) => r.clone(),
            None => Err(HypervisorError::Plugin("no exit published".into())),
        }
    }

    /// SIGTERM: hyper-vmm stops the VM and exits at once (there is no ACPI
    /// to ask the guest; the core asks hyperstart first). SIGKILL after
    /// `grace`.
    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        let _ = self.signal_tx.try_send(libc::SIGTERM);
        if self.wait_within(grace).await {
            return Ok(());
        }
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        let _ = self.signal_tx.try_send(libc::SIGKILL);
        if self.wait_within(KILL_EXIT_LIMIT).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "hyper-vmm (pid {}) has not exited {KILL_EXIT_LIMIT:?} after SIGKILL",
                self.pid
            )))
        }
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        let gone = || HypervisorError::Io(format!("VM {} is no longer running", self.info.id));
        if self.has_exited() {
            return Err(gone());
        }
        let s = read_stats(self.pid)
            .map_err(|e| HypervisorError::Io(format!("reading /proc/{}: {e}", self.pid)))?;
        if self.has_exited() {
            return Err(gone());
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_this_process() {
        let s = read_stats(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn failure_message_prefers_the_status_file() {
        let d = tempfile::tempdir().unwrap();
        let p = RunPaths::new(d.path());
        std::fs::write(&p.log, "some log\n").unwrap();
        assert_eq!(p.failure_message(), "some log");
        std::fs::write(&p.status, r#"{"reason":"error","message":"boom"}"#).unwrap();
        assert_eq!(p.failure_message(), "boom");
    }
}
