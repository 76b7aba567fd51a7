//! hyper-vmm: one VM per process on /dev/kvm.

pub mod boot;
pub mod config;
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
