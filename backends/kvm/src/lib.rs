//! The KVM backend.
//!
//! * [`vmm`]: hyper-vmm, the per-VM process (binary `hyper-vmm`): guest
//!   memory, PVH/bzImage boot, vCPUs, in-kernel irqchip + PIT, an 8250
//!   serial console, and virtio-mmio console + block devices. A guest fault
//!   takes down one hyper-vmm, never hyperd.
//! * [`plugin`]: what hyperd loads (`libhyper_backend_kvm.so`, backend
//!   name "kvm"): `[hypervisor.kvm]` config, the probe, and launching,
//!   watching and stopping hyper-vmm processes.
//!
//! Per VM, the run directory holds `vmm.json` (hyper-vmm's config),
//! `agent.sock` (the virtio-console port, where hyperstart talks),
//! `vmm.log` (hyper-vmm's own log) and `vmm-status.json` (its exit status).

use std::sync::Arc;

use hyper_hypervisor::{ConfigProblem, Hypervisor};

pub mod plugin;
pub mod vmm;

pub use plugin::{KvmConfig, KvmHypervisor, KvmVm, BACKEND_NAME};

/// Validates the `[hypervisor.kvm]` table (as JSON) and builds the backend.
pub fn create(table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    let config = KvmConfig::from_table(&table)?;
    Ok(Arc::new(KvmHypervisor::new(config)))
}

hyper_hypervisor::export_backend!("kvm", create);
