//! The KVM backend's plugin: what hyperd loads (`libhyper_backend_kvm.so`,
//! backend name "kvm"): `[hypervisor.kvm]` config, the honest probe, and
//! launching, watching and stopping one hyper-vmm process per VM (the VMM
//! itself is the `hyper-vmm` crate, a separate binary; this crate links
//! none of its KVM crates, only `hyper-vmm-config`, the configuration both
//! sides share).
//!
//! Per VM, the run directory holds `vmm.json` (hyper-vmm's config),
//! `agent.sock` (the virtio-console port, where hyperstart talks),
//! `vmm.log` (hyper-vmm's own log) and `vmm-status.json` (its exit status).

use std::sync::Arc;

use hyper_hypervisor::{ConfigProblem, Hypervisor};

pub mod config;
mod hypervisor;
mod nics;
pub mod probe;
mod vm;

pub use config::KvmConfig;
pub use hypervisor::{KvmHypervisor, BACKEND_NAME};
pub use vm::KvmVm;

/// Validates the `[hypervisor.kvm]` table (as JSON) and builds the backend.
pub fn create(table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    let config = KvmConfig::from_table(&table)?;
    Ok(Arc::new(KvmHypervisor::new(config)))
}

hyper_hypervisor::export_backend!("kvm", create);
