//! A plugin from a future hyper: it exports `hyper_plugin_entry`, but its
//! descriptor speaks ABI version `PLUGIN_ABI_VERSION + 1000` and has another
//! layout after the first field. The loader must read only `abi_version`,
//! refuse the plugin with both versions named, and never touch the rest.
//!
//! Written by hand rather than through `export_backend!`, which can only
//! produce the current ABI.

use std::os::raw::c_char;

use hyper_hypervisor::plugin::PLUGIN_ABI_VERSION;

/// The ABI version this fixture claims.
pub const WRONG_ABI_VERSION: u32 = PLUGIN_ABI_VERSION + 1000;

/// A made-up future descriptor: only the first field is shared with every
/// ABI version; the rest deliberately differs from today's layout.
#[repr(C)]
pub struct FutureDescriptor {
    pub abi_version: u32,
    pub flags: u64,
    pub name: *const c_char,
    pub feature_count: u16,
}

// SAFETY: immutable static data (plain integers and a pointer to a static
// string); sharing it between threads cannot race.
unsafe impl Sync for FutureDescriptor {}

static DESCRIPTOR: FutureDescriptor = FutureDescriptor {
    abi_version: WRONG_ABI_VERSION,
    flags: u64::MAX,
    name: c"wrong-abi".as_ptr(),
    feature_count: 7,
};

/// The entry point, under the symbol the loader looks for.
#[no_mangle]
pub extern "C" fn hyper_plugin_entry() -> *const FutureDescriptor {
    &DESCRIPTOR
}
