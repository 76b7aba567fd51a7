//! A backend whose `probe()` and `launch()` panic, to check that a panic in
//! a plugin becomes an error in the host and never crosses the boundary
//! (which would abort the host). It accepts any configuration table.
//!
//! The loader tests live in `tests/loader.rs`.

use std::sync::Arc;

use async_trait::async_trait;
use hyper_hypervisor::{
    Capabilities, ConfigProblem, Hypervisor, HypervisorError, ProbeReport, Vm, VmSpec,
};

pub const PROBE_PANIC: &str = "probe panicked on purpose";
pub const LAUNCH_PANIC: &str = "launch panicked on purpose";

struct Panicking;

#[async_trait]
impl Hypervisor for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }

    fn capabilities(&self) -> Capabilities {
        // Must not panic: configuring a plugin asks for its capabilities.
        Capabilities::default()
    }

    async fn probe(&self) -> ProbeReport {
        panic!("{PROBE_PANIC}");
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        panic!("{LAUNCH_PANIC} (vm {})", spec.id);
    }
}

/// Accepts any table.
pub fn create(_table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    Ok(Arc::new(Panicking))
}

hyper_hypervisor::export_backend!("panicking", create);
