//! The contract between the core runtime and a hypervisor backend, and the
//! plugin boundary it crosses.
//!
//! * [`Hypervisor`] and [`Vm`]: what the core calls. A backend turns a
//!   [`VmSpec`] into a running VM and reports on it; everything that is the
//!   same on every hypervisor (config, images, payload, guest protocol, pods)
//!   stays in the core.
//! * [`plugin`]: the C-shaped ABI a backend cdylib exports
//!   ([`export_backend!`]) and the host-side loader that wraps a loaded
//!   plugin back into a `Hypervisor`, so nothing above the loader knows a
//!   backend is dynamic.

pub mod adopt;
pub mod command;
mod contract;
pub mod digest;
pub mod logcap;
pub mod mount;
pub mod nic;
pub mod plugin;
pub mod process;
pub mod table;
pub mod virtiofs;

pub use contract::*;
