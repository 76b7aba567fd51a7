//! Volumes of a pod, host side (issue 15): what a user asks for with
//! Docker's `-v`/`--mount` forms ([`request`]), and the named volumes kept
//! under `state_dir/volumes` ([`store`]).
//!
//! The runtime turns resolved requests into the VM's shares and disks and
//! the guest's volume and mount specs; this crate knows nothing of VMs.

pub mod copyup;
pub mod private;
pub mod request;
pub mod store;

pub use request::{parse_mount, parse_volume, MountKind, RequestError, VolumeRequest};
pub use store::{
    check_volume_name, is_empty_dir, BlockLock, NamedVolume, StoreError, VolumeKind, VolumeOptions,
    VolumeStore,
};
