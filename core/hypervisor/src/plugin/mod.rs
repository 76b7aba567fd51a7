//! The plugin boundary.
//!
//! A backend is a cdylib that exports one symbol, [`ENTRY_SYMBOL`], returning
//! a pointer to a `#[repr(C)]` [`PluginDescriptor`]. Rust has no stable ABI and
//! every cdylib carries its own std and tokio, so:
//!
//! * nothing Rust-shaped crosses: calls are JSON bytes in, JSON bytes out,
//!   through one C function ([`PluginDescriptor::call`]);
//! * the plugin runs its own tokio runtime and blocks on it inside `call`;
//!   the host makes each call from `spawn_blocking`, so a long call (waiting
//!   for a VM to end) ties up a blocking thread, never a worker;
//! * every call catches panics inside the plugin and turns them into an
//!   error, because a panic unwinding into the host aborts it;
//! * `abi_version` is the descriptor's first field, read before anything
//!   else, and the build identity must match the host's: a mismatch is
//!   refused with both versions named, never undefined behaviour.

mod abi;
mod host_side;
mod plugin_side;

pub use abi::*;
pub use host_side::{ConfigureError, LoadError, LoadedPlugin, PluginHypervisor};
pub use plugin_side::{dispatch, CreateFn};

/// Exports a backend from a cdylib.
///
/// `$name` is the backend's name as a string literal (what `[runtime]
/// hypervisor` and `[hypervisor.<name>]` use); `$create` is a
/// [`CreateFn`] that validates the backend's TOML table (as JSON) and builds
/// the [`crate::Hypervisor`].
#[macro_export]
macro_rules! export_backend {
    ($name:literal, $create:path) => {
        extern "C" fn __hyper_plugin_call(
            request: *const u8,
            request_len: usize,
            response: *mut $crate::plugin::PluginBuffer,
        ) -> i32 {
            // SAFETY: the host calls through the descriptor's `call` contract:
            // `request` holds `request_len` bytes and `response` is writable,
            // for the duration of this call.
            unsafe { $crate::plugin::dispatch($create, request, request_len, response) }
        }

        static __HYPER_PLUGIN_DESCRIPTOR: $crate::plugin::PluginDescriptor =
            $crate::plugin::PluginDescriptor {
                abi_version: $crate::plugin::PLUGIN_ABI_VERSION,
                name: concat!($name, "\0").as_ptr().cast(),
                build_id: $crate::plugin::BUILD_ID_NUL.as_ptr().cast(),
                call: __hyper_plugin_call,
                free_buffer: $crate::plugin::free_buffer,
            };

        /// The plugin's one entry point.
        #[no_mangle]
        pub extern "C" fn hyper_plugin_entry() -> *const $crate::plugin::PluginDescriptor {
            &__HYPER_PLUGIN_DESCRIPTOR
        }
    };
}
