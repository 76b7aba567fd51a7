//! One running hyper-vmm process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::process::VmProcess;
use hyper_hypervisor::virtiofs::{supervise, Supervised, Virtiofsds};
use hyper_hypervisor::{HypervisorError, Vm, VmExit, VmHelper, VmInfo, VmStats};

const KILL_EXIT_LIMIT: Duration = Duration::from_secs(10);
/// From the save request to hyper-vmm's exit: pausing is quick, writing
/// guest memory takes a while on a slow disk.
const SAVE_LIMIT: Duration = Duration::from_secs(300);

/// Per-VM files in the run directory.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub agent: PathBuf,
    pub config: PathBuf,
    pub status: PathBuf,
    pub log: PathBuf,
    /// Names the directory hyper-vmm saves a snapshot into on SIGUSR1.
    pub save_request: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            agent: dir.join("agent.sock"),
            config: dir.join("vmm.json"),
            status: dir.join("vmm-status.json"),
            log: dir.join("vmm.log"),
            save_request: dir.join("save-request"),
        }
    }

    /// The `reason` of hyper-vmm's status file (written when it exits).
    fn exit_reason(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.status).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(v.get("reason")?.as_str()?.to_string())
    }

    /// Whether hyper-vmm's status file says it stopped the VM because a
    /// share's virtiofsd went away or stopped answering (it notices the
    /// vhost-user socket hang up, often before the kit sees the process
    /// end).
    pub fn helper_died(&self) -> Option<VmHelper> {
        (self.exit_reason()? == "helper_died").then_some(VmHelper::Virtiofsd)
    }

    /// Whether hyper-vmm saved a snapshot and stopped.
    pub fn saved(&self) -> bool {
        self.exit_reason().as_deref() == Some("saved")
    }

    /// Whether hyper-vmm refused the snapshot it was asked to restore.
    pub fn snapshot_rejected(&self) -> bool {
        self.exit_reason().as_deref() == Some("snapshot_rejected")
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

/// Runs once hyper-vmm has ended: logs its own account and removes the
/// agent socket.
pub fn on_exit(paths: RunPaths) -> impl FnOnce(u32) + Send + 'static {
    move |pid| {
        let summary = std::fs::read_to_string(&paths.status).unwrap_or_default();
        tracing::info!(pid, status = %summary.trim(), "hyper-vmm status");
        let _ = std::fs::remove_file(&paths.agent);
    }
}

/// One hyper-vmm, spawned or taken over, watched by the backend kit's
/// [`VmProcess`] (pidfd: signals never reach a recycled pid) together with
/// the virtiofsd of each share ([`supervise`]: a daemon that ends stops
/// the VM; the daemons are stopped when it ends).
pub struct KvmVm {
    info: VmInfo,
    process: Arc<VmProcess>,
    supervised: Supervised,
    paths: RunPaths,
}

impl KvmVm {
    /// Needs the plugin's tokio runtime (the supervising task).
    pub fn new(info: VmInfo, process: VmProcess, daemons: Virtiofsds, paths: RunPaths) -> Self {
        let process = Arc::new(process);
        let supervised = supervise(&info.id, Arc::clone(&process), daemons);
        Self {
            info,
            process,
            supervised,
            paths,
        }
    }
}

#[async_trait]
impl Vm for KvmVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let exit = self.supervised.wait().await?;
        Ok(VmExit {
            helper_died: exit.helper_died.or_else(|| self.paths.helper_died()),
            ..exit
        })
    }

    /// SIGTERM: hyper-vmm stops the VM and exits at once (there is no ACPI
    /// to ask the guest; the core asks hyperstart first). SIGKILL after
    /// `grace`.
    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.process.has_exited() {
            // Its daemons are being stopped: done when they are.
            self.supervised.wait_within(KILL_EXIT_LIMIT).await;
            return Ok(());
        }
        self.process.signal(libc::SIGTERM);
        if self.supervised.wait_within(grace).await {
            return Ok(());
        }
        self.kill().await
    }

    /// SIGKILL; returns once the VM and its daemons are gone.
    async fn kill(&self) -> Result<(), HypervisorError> {
        self.process.kill(KILL_EXIT_LIMIT).await?;
        if self.supervised.wait_within(KILL_EXIT_LIMIT).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "the virtiofsd of VM {} were not stopped within {KILL_EXIT_LIMIT:?}",
                self.info.id
            )))
        }
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        self.process.stats(&self.info.id)
    }

    /// Names `dir` in the run directory's save-request file and sends
    /// SIGUSR1: hyper-vmm pauses every vCPU (completing any I/O in flight),
    /// writes `state` and `memory` into `dir`, and exits; its status file
    /// says whether the snapshot was written.
    async fn save_template(&self, dir: &Path) -> Result<(), HypervisorError> {
        if self.process.has_exited() {
            return Err(HypervisorError::Io(format!(
                "VM {} has already stopped",
                self.info.id
            )));
        }
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| HypervisorError::Io(format!("template dir {}: {e}", dir.display())))?;
        let _ = std::fs::remove_file(&self.paths.status);
        std::fs::write(&self.paths.save_request, format!("{}\n", dir.display())).map_err(|e| {
            HypervisorError::Io(format!("{}: {e}", self.paths.save_request.display()))
        })?;
        self.process.signal(libc::SIGUSR1);
        if !self.supervised.wait_within(SAVE_LIMIT).await {
            let _ = self.kill().await;
            return Err(HypervisorError::Io(format!(
                "hyper-vmm did not save VM {} within {SAVE_LIMIT:?}; killed",
                self.info.id
            )));
        }
        if self.paths.saved() {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "hyper-vmm did not save VM {}: {}",
                self.info.id,
                self.paths.failure_message()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_message_prefers_the_status_file() {
        let d = tempfile::tempdir().unwrap();
        let p = RunPaths::new(d.path());
        std::fs::write(&p.log, "some log\n").unwrap();
        assert_eq!(p.failure_message(), "some log");
        std::fs::write(&p.status, r#"{"reason":"error","message":"boom"}"#).unwrap();
        assert_eq!(p.failure_message(), "boom");
        assert_eq!(p.helper_died(), None);
    }

    #[test]
    fn saved_and_rejected_snapshots_are_read_from_the_status_file() {
        let d = tempfile::tempdir().unwrap();
        let p = RunPaths::new(d.path());
        assert!(!p.saved() && !p.snapshot_rejected());
        std::fs::write(&p.status, r#"{"reason":"saved","dir":"/t"}"#).unwrap();
        assert!(p.saved() && !p.snapshot_rejected());
        std::fs::write(
            &p.status,
            r#"{"reason":"snapshot_rejected","message":"checksum"}"#,
        )
        .unwrap();
        assert!(!p.saved() && p.snapshot_rejected());
        assert_eq!(p.failure_message(), "checksum");
    }

    #[test]
    fn a_vmm_that_lost_its_virtiofsd_reports_the_helper() {
        let d = tempfile::tempdir().unwrap();
        let p = RunPaths::new(d.path());
        assert_eq!(p.helper_died(), None);
        std::fs::write(
            &p.status,
            r#"{"reason":"helper_died","helper":"virtiofsd","tag":"v","message":"gone"}"#,
        )
        .unwrap();
        assert_eq!(p.helper_died(), Some(VmHelper::Virtiofsd));
    }
}
