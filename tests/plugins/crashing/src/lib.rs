//! A backend that crashes its process on demand, to check that a plugin
//! which aborts or dereferences a null pointer costs the calls in flight and
//! never hyperd (its host process dies and is restarted).
//!
//! Its table picks the crash: `{"crash": "abort"}` calls `abort()` in
//! `probe()`, `{"crash": "null"}` reads through a null pointer there, and
//! anything else probes fine. Its VMs are no processes: each runs until
//! `kill()`, and `recover()` takes any VM back (as a real backend does with
//! a VM process that outlived its host).
//!
//! The tests live in `tests/` and in the panicking plugin's `loader.rs`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper_hypervisor::{
    AgentChannel, Capabilities, ConfigProblem, Hypervisor, HypervisorError, ProbeReport, Vm,
    VmExit, VmInfo, VmSpec, VmStats,
};
use tokio::sync::watch;

#[derive(Clone, Copy)]
enum Crash {
    Abort,
    Null,
    Never,
}

struct Crashing {
    crash: Crash,
}

fn crash_now(crash: Crash) {
    match crash {
        Crash::Abort => std::process::abort(),
        Crash::Null => {
            // An address in the never-mapped first page, as a field read
            // through a null struct pointer would use; black_box keeps the
            // compiler from seeing it.
            let p = std::hint::black_box(8usize) as *const u8;
            // SAFETY: not safe at all, on purpose: this faults (SIGSEGV).
            let v = unsafe { std::ptr::read_volatile(p) };
            std::hint::black_box(v);
        }
        Crash::Never => {}
    }
}

struct IdleVm {
    info: VmInfo,
    killed: watch::Sender<bool>,
}

impl IdleVm {
    fn new(spec: &VmSpec) -> Self {
        Self {
            info: VmInfo {
                id: spec.id.clone(),
                agent_channel: AgentChannel::UnixSocket(spec.run_dir.join("agent.sock")),
                pid: None,
            },
            killed: watch::channel(false).0,
        }
    }
}

#[async_trait]
impl Vm for IdleVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut rx = self.killed.subscribe();
        let _ = rx.wait_for(|k| *k).await;
        Ok(VmExit {
            code: None,
            signal: Some(9),
            helper_died: None,
        })
    }

    async fn shutdown(&self, _grace: Duration) -> Result<(), HypervisorError> {
        self.kill().await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        self.killed.send_replace(true);
        Ok(())
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        Ok(VmStats::default())
    }
}

#[async_trait]
impl Hypervisor for Crashing {
    fn name(&self) -> &str {
        "crashing"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            recover: true,
            share_transport: None,
            templates: false,
        }
    }

    async fn probe(&self) -> ProbeReport {
        crash_now(self.crash);
        ProbeReport {
            usable: true,
            reason: "never crashes".into(),
            details: Default::default(),
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(IdleVm::new(&spec)))
    }

    async fn recover(
        &self,
        spec: VmSpec,
        _info: VmInfo,
        _pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        Ok(Box::new(IdleVm::new(&spec)))
    }
}

/// `{"crash": "abort" | "null"}`, or anything else for a plugin that works.
pub fn create(table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    let crash = match table.get("crash").and_then(|v| v.as_str()) {
        Some("abort") => Crash::Abort,
        Some("null") => Crash::Null,
        _ => Crash::Never,
    };
    Ok(Arc::new(Crashing { crash }))
}

hyper_hypervisor::export_backend!("crashing", create);
