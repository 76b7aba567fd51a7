//! The core runtime: everything that is the same on every hypervisor.

pub mod agent;
pub mod config;
pub mod logs;
pub mod payload;
pub mod plugins;
pub mod podfile;
pub mod pods;
pub mod private;
pub mod process;
pub mod quarantine;
pub mod rootfs;
pub mod security;
