//! hyper-vmm: one VM per process on /dev/kvm (binary `hyper-vmm`): guest
//! memory, PVH/bzImage boot, vCPUs, in-kernel irqchip + PIT, an 8250
//! serial console, and virtio-mmio console, block, net and fs devices on
//! a device bus ([`devices::bus`]). A guest fault takes down one
//! hyper-vmm, never hyperd.
//!
//! Its configuration ([`config`], the `hyper-vmm-config` crate) is what
//! the KVM plugin writes into the VM's run directory as `vmm.json`.

pub mod boot;
pub use hyper_vmm_config as config;
pub mod cpu;
pub mod devices;
pub mod jail;
pub mod layout;
pub mod memory;
pub mod mptable;
mod run;
pub mod seccomp;
pub mod snapshot;

pub use config::{DiskConfig, NetConfig, ShareConfig, VmmConfig};
pub use run::{run, ExitReason, ExitStatus};
