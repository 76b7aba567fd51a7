//! The plugin boundary.
//!
//! A backend is a cdylib that exports one symbol, [`ENTRY_SYMBOL`], returning
//! a pointer to a `#[repr(C)]` [`PluginDescriptor`]. Rust has no stable ABI and
//! every cdylib carries its own std and tokio, so:
//!
//! * nothing Rust-shaped crosses: calls are JSON bytes in, JSON bytes out,
//!   through one C function ([`PluginDescriptor::call`]);
//! * the plugin runs its own tokio runtime and blocks on it inside `call`;
//! * the plugin is loaded by its own host process (`hyper-plugin-host`,
//!   [`host_main`]), never by hyperd: hyperd speaks the same JSON calls to
//!   it over a socket ([`LoadedPlugin`]), so a plugin that segfaults, aborts
//!   or hangs costs the calls in flight, and hyperd restarts the host and
//!   takes the VMs back through `recover`;
//! * a VM's end is watched once, by one `wait` call in the host, and handed
//!   to any number of async waiters in hyperd: a waiter costs no thread;
//! * every call catches panics inside the plugin and turns them into an
//!   error, because a panic unwinding into the host aborts it;
//! * `abi_version` is the descriptor's first field, read before anything
//!   else, and the build identity must match the host's: a mismatch is
//!   refused with both versions named, never undefined behaviour.

mod abi;
mod call_errors;
mod host;
mod host_side;
mod inproc;
mod plugin_side;
#[doc(hidden)]
pub mod testing;
mod wire;

pub use abi::*;
pub use call_errors::{call_errors, CallErrors};
pub use host::host_main;
pub use host_side::{
    default_host_binary, ConfigureError, LoadedPlugin, PluginHypervisor, HOST_BINARY,
};
pub use inproc::{InProcessPlugin, LoadError};
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
