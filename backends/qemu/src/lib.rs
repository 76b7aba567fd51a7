//! The QEMU backend: each VM is one `qemu-system-x86_64` process, driven
//! over QMP on a unix socket.
//!
//! Built as a cdylib, this is the plugin `libhyper_backend_qemu.so` that
//! hyperd loads ([`hyper_hypervisor::export_backend!`]); built as an rlib it
//! is tested directly.
//!
//! Per VM, the run directory the core hands over holds:
//! * `qmp.sock`: QMP, used for the start-up check, power-down and quit;
//! * `agent.sock`: the virtio-serial port `sh.hyper.channel.0` hyperstart
//!   talks on (the core connects to it);
//! * `qemu.pid`: the QEMU pid while it runs. Before acting on it, check that
//!   `/proc/<pid>/cmdline` names this directory's `qmp.sock`: pids are
//!   recycled. A launch into a directory whose `qemu.pid` still names a live
//!   QEMU of that directory kills that QEMU first;
//! * `qemu.log`: QEMU's own stdout and stderr (why it failed to start).
//!
//! Each of the spec's NICs is a tap the plugin opens inside the pod's
//! network namespace and QEMU inherits as a descriptor ([`nic`]).
//!
//! The first three are removed when the process has been reaped; the log
//! and the console log stay for the core to read (it removes the directory).
//!
//! Each of the spec's directory shares is served by a sandboxed `virtiofsd`
//! the plugin starts before QEMU (the backend kit's
//! [`hyper_hypervisor::virtiofs`], which keeps `vfs-<tag>.sock`,
//! `vfs-<tag>.log` and `virtiofsd.json` here) and a vhost-user-fs device
//! ([`share`]); the VM and its daemons are watched together: a daemon that
//! ends takes the VM down with it (`helper_died`).
//!
//! `[hypervisor.qemu]` keys: `binary`, `machine` (`microvm` | `q35`), `accel`
//! (`auto` | `kvm` | `tcg`), `extra_args`, `console_log_limit_mib` (the
//! console log's cap, [`console`]), `virtiofsd` (its path, when not in the
//! usual places); see [`config::QemuConfig`].

use std::sync::Arc;

use hyper_hypervisor::{ConfigProblem, Hypervisor};

pub mod accel;
pub mod cmdline;
pub mod config;
pub mod console;
mod hypervisor;
pub mod memory;
pub mod nic;
pub mod procfs;
pub mod qmp;
pub mod share;
pub mod spec;
pub mod template;
mod vm;

pub use config::QemuConfig;
pub use hypervisor::{parse_version, QemuHypervisor, BACKEND_NAME};
pub use vm::QemuVm;

/// Validates the `[hypervisor.qemu]` table (as JSON) and builds the backend.
pub fn create(table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    let config = QemuConfig::from_table(&table)?;
    Ok(Arc::new(QemuHypervisor::new(config)))
}

hyper_hypervisor::export_backend!("qemu", create);
