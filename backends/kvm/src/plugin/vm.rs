//! One running hyper-vmm process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::process::VmProcess;
use hyper_hypervisor::{HypervisorError, Vm, VmExit, VmInfo, VmStats};

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
/// [`VmProcess`] (pidfd: signals never reach a recycled pid).
pub struct KvmVm {
    info: VmInfo,
    process: VmProcess,
}

impl KvmVm {
    pub fn new(info: VmInfo, process: VmProcess) -> Self {
        Self { info, process }
    }
}

#[async_trait]
impl Vm for KvmVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        self.process.wait().await
    }

    /// SIGTERM: hyper-vmm stops the VM and exits at once (there is no ACPI
    /// to ask the guest; the core asks hyperstart first). SIGKILL after
    /// `grace`.
    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        if self.process.has_exited() {
            return Ok(());
        }
        self.process.signal(libc::SIGTERM);
        if self.process.wait_within(grace).await {
            return Ok(());
        }
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        self.process.kill(KILL_EXIT_LIMIT).await
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        self.process.stats(&self.info.id)
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
    }
}
