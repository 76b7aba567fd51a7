//! The backend kit for NICs (Kata's tcfilter model).
//!
//! The core prepares a network namespace per pod (CNI puts `peer`, e.g.
//! `eth0`, in it); a backend makes its own device *inside* that namespace and
//! joins it to `peer` with tc mirred redirects both ways, so any CNI plugin
//! works unchanged and the guest NIC (carrying `peer`'s MAC) is, to the
//! network, the interface CNI configured:
//!
//! * [`attach_tap`]: a tap for a user-space VMM (QEMU, `hyper-vmm`), handed
//!   back as a descriptor; the tap lives while the VMM holds it.
//! * [`join`]: for a device that already exists in the namespace (a Xen vif
//!   moved there).
//! * [`detach`]: undo the peer's redirect after a failed launch.
//!
//! The pieces, one file per seam: [`netns`] (create/remove/enter named
//! namespaces, list leftovers), [`link`] (read/set an interface), [`tap`],
//! [`tc`] (the redirect). Everything that works inside a namespace runs on a
//! short-lived thread that entered it ([`netns::run_in`]) with its own netlink
//! socket; the calls block, so call them from `spawn_blocking` in async code.
//!
//! Why the backend and not the core joins the device: the device exists only
//! once the backend made it (QEMU's tap is opened by the plugin, a Xen vif is
//! created by `xl` when the domain is built), so only the backend knows when
//! and under what name it can be joined.

pub mod addr;
mod attach;
mod error;
pub mod link;
pub mod netns;
mod nl;
pub mod tap;
pub mod tc;

pub use attach::{attach_tap, detach, join, validate};
pub use error::NicError;
pub use link::{LinkInfo, Mac};
