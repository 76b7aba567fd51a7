//! The plugin side: `[hypervisor.kvm]` config, the honest probe, and one
//! hyper-vmm process per VM.

pub mod config;
mod hypervisor;
mod nics;
pub mod probe;
mod vm;

pub use config::KvmConfig;
pub use hypervisor::{KvmHypervisor, BACKEND_NAME};
pub use vm::KvmVm;
