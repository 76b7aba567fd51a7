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

    /// Whether hyper-vmm's configuration (ours, in the run directory) arms
    /// the save: a VM launched with `save_as_template`.
    pub fn save_armed(&self) -> bool {
        std::fs::read(&self.config)
            .ok()
            .and_then(|b| serde_json::from_slice::<hyper_vmm_config::VmmConfig>(&b).ok())
            .is_some_and(|c| c.save_request.is_some())
    }

    /// Whether hyper-vmm saved a snapshot and stopped.
    pub fn saved(&self) -> bool {
        self.exit_reason().as_deref() == Some("saved")
    }

    /// Whether hyper-vmm refused the snapshot it was asked to restore.
    pub fn snapshot_rejected(&self) -> bool {
        self.exit_reason().as_deref() == Some("snapshot_rejected")
    }

    /// The line hyper-vmm's SIGSYS report left in its log ("killed by
    /// seccomp: syscall N on a T thread"), if its filters killed it: read
    /// from the last 4 KiB only (the log holds what the guest triggered).
    pub fn seccomp_kill(&self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.log).ok()?;
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
        let mut tail = Vec::new();
        f.take(4096).read_to_end(&mut tail).ok()?;
        let text = String::from_utf8_lossy(&tail);
        let line = text
            .lines()
            .rev()
            .find(|l| l.contains("killed by seccomp: syscall"))?;
        Some(line.chars().take(300).collect())
    }

    /// hyper-vmm's own account of a failure (status file), else its log tail.
    pub fn failure_message(&self) -> String {
        if let Some(line) = self.seccomp_kill() {
            return line;
        }
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
        if exit.signal == Some(libc::SIGSYS) {
            let why = self.paths.seccomp_kill().unwrap_or_else(|| {
                "killed by SIGSYS (seccomp); the syscall is in the kernel's audit log".into()
            });
            tracing::error!(vm = %self.info.id, "hyper-vmm died: {why}");
        }
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
        // Only a VM launched with save_as_template arms the save (and is
        // then the only kind that runs outside the mount jail).
        if !self.paths.save_armed() {
            return Err(HypervisorError::Io(format!(
                "VM {} was not launched to become a template (save_as_template): it cannot be saved",
                self.info.id
            )));
        }
        let dir = std::fs::canonicalize(dir)
            .map_err(|e| HypervisorError::Io(format!("template dir {}: {e}", dir.display())))?;
        // The status file is not removed: hyper-vmm opened it at start (the
        // jail leaves no path to open it by later) and writes it at exit.
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
    fn a_seccomp_kill_is_found_in_the_log_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = RunPaths::new(d.path());
        assert_eq!(p.seccomp_kill(), None);
        let mut log = "x".repeat(10_000);
        log.push_str("\nhyper-vmm: killed by seccomp: syscall 41 on a vcpu thread (…)\n");
        std::fs::write(&p.log, &log).unwrap();
        let line = p.seccomp_kill().unwrap();
        assert!(line.contains("syscall 41 on a vcpu thread"), "{line}");
        std::fs::write(&p.log, "hyper-vmm: exit {}\n").unwrap();
        assert_eq!(p.seccomp_kill(), None);
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
