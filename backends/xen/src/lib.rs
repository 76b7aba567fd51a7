//! The Xen backend: each VM is one PV (default) or PVH domU, created with
//! `xl create` and watched through xenstore.
//!
//! Built as a cdylib, this is the plugin `libhyper_backend_xen.so` that
//! hyperd loads ([`hyper_hypervisor::export_backend!`]); built as an rlib it
//! is tested directly. hyperd must run in dom0 (it needs `xl` and xenstored).
//!
//! Per VM, the run directory the core hands over holds:
//! * `xl.cfg`: the domain's xl configuration (name = the VM id);
//! * `xl.log`: what `xl create` printed (libxl's reasons when it fails);
//! * `agent.sock`: a unix socket bridged to the domain's PV console pty
//!   (xenstore `/local/domain/<domid>/console/tty`), where hyperstart talks
//!   (`hyper.channel=/dev/hvc0`), by a `hyper-xen-console` process of the
//!   domain's own ([`bridge`]), which outlives a crashed plugin host.
//!
//! The spec's disks (the read-only rootfs, then read-write block volumes)
//! become xen-blkfront disks `xvda`, `xvdb` …, each attached by the backend
//! to a loop device of its own ([`loopdev`]; read-only for a read-only
//! disk) that the `block_script` (`scripts/block-hyper`) names to blkback
//! (without that script installed: the image itself, through Xen's `block`);
//! since blkfront has no serial, the kernel command line maps each disk id to
//! its device: `hyper.disk.<id>=xvda`.
//!
//! A domain's owner (hyperd pid and start time, run directory) is recorded in
//! xenstore under `/tool/hyper/vms/<name>`, writable by dom0 only. A new
//! hyperd takes over the domains of its pods (`recover`: the record names
//! the pod's run directory; the recorded console bridge is kept, or a new
//! one started) and destroys the
//! other domains whose owner is gone, since no host process holds them.
//!
//! Each of the spec's NICs becomes a vif (netfront in the guest, the guest
//! MAC in xl.cfg) whose hotplug script is the backend's bridge-less
//! `scripts/vif-hyper`; before the domain runs, [`vif::join`] moves netback's
//! `vif<domid>.<n>` into the pod's netns, names it `NicSpec.device` and joins
//! it to the CNI interface with tc redirect both ways.
//!
//! Each of the spec's shares becomes a `p9` entry (Xen 9pfs): libxl starts
//! a QEMU device model in dom0 that serves it; a read-only share is served
//! from a read-only bind mount the backend makes ([`share`]).
//!
//! `[hypervisor.xen]` keys: `type` (`pv` | `pvh`), `xl`, `xenstore_socket`,
//! `xl_timeout_secs`, `vif_script`, `block_script`, `share_dir`; see [`config::XenConfig`].

use std::sync::Arc;

use hyper_hypervisor::{ConfigProblem, Hypervisor};

pub mod bridge;
pub mod config;
pub mod console;
mod hypervisor;
pub mod loopdev;
pub mod owner;
pub mod share;
pub mod template;
pub mod vif;
mod vm;
pub mod xenstore;
pub mod xl;
pub mod xlcfg;

pub use config::XenConfig;
pub use hypervisor::{XenHypervisor, BACKEND_NAME};
pub use vm::XenVm;

/// Validates the `[hypervisor.xen]` table (as JSON) and builds the backend.
pub fn create(table: serde_json::Value) -> Result<Arc<dyn Hypervisor>, Vec<ConfigProblem>> {
    let config = XenConfig::from_table(&table)?;
    let hv = XenHypervisor::new(config);
    hv.sweep_orphans_in_background();
    Ok(Arc::new(hv))
}

hyper_hypervisor::export_backend!("xen", create);
