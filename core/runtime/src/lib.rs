//! The core runtime: everything that is the same on every hypervisor.

pub mod agent;
pub mod cgroups;
pub mod config;
pub mod events;
pub mod logs;
pub mod metrics;
pub mod payload;
pub mod plugins;
pub use hyper_api::podfile;
pub mod pods;
pub mod private;
pub mod process;
pub mod quarantine;
pub mod resources;
pub mod rootfs;
pub mod security;
pub mod templates;
