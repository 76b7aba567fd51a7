//! The core runtime: everything that is the same on every hypervisor.

pub mod agent;
pub mod config;
pub mod payload;
pub mod plugins;
pub mod pods;
pub mod rootfs;
