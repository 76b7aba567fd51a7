use std::os::raw::c_char;

use serde::{Deserialize, Serialize};

use crate::{
    Capabilities, ConfigProblem, HypervisorError, ProbeReport, VmExit, VmInfo, VmSpec, VmStats,
};

/// The plugin ABI version, written once: [`PLUGIN_ABI_VERSION`] and the
/// build identity ([`BUILD_ID`]) both come from here. Bump it whenever
/// [`PluginDescriptor`] or the JSON calls change shape.
macro_rules! abi_version {
    () => {
        2
    };
}

/// The plugin ABI version (defined once, in `abi_version!`).
pub const PLUGIN_ABI_VERSION: u32 = abi_version!();
/// The one symbol a backend exports.
pub const ENTRY_SYMBOL: &[u8] = b"hyper_plugin_entry\0";
/// The build identity both sides must share: the contract crate's version and
/// the ABI version. The JSON boundary makes the rustc version irrelevant.
pub const BUILD_ID: &str = concat!(
    "hyper-hypervisor/",
    env!("CARGO_PKG_VERSION"),
    " abi/",
    abi_version!()
);
#[doc(hidden)]
pub const BUILD_ID_NUL: &str = concat!(
    "hyper-hypervisor/",
    env!("CARGO_PKG_VERSION"),
    " abi/",
    abi_version!(),
    "\0"
);

/// The descriptor a plugin's entry returns. `abi_version` must stay the
/// first field in every future version: it is read before anything else.
#[repr(C)]
pub struct PluginDescriptor {
    pub abi_version: u32,
    /// NUL-terminated backend name.
    pub name: *const c_char,
    /// NUL-terminated build identity, compared with [`BUILD_ID`].
    pub build_id: *const c_char,
    /// Handles one JSON-encoded [`PluginRequest`], writes a JSON-encoded
    /// [`PluginResult`] into `response` and returns 0. A non-zero return
    /// means `response` was not written.
    pub call:
        extern "C" fn(request: *const u8, request_len: usize, response: *mut PluginBuffer) -> i32,
    /// Frees a buffer the plugin filled in `call`.
    pub free_buffer: extern "C" fn(buffer: PluginBuffer),
}

// SAFETY: the descriptor is immutable static data: two pointers to static,
// NUL-terminated strings and two function pointers. Sharing it between
// threads cannot race.
unsafe impl Sync for PluginDescriptor {}

/// Bytes allocated by the plugin and handed to the host, which must give
/// them back through [`PluginDescriptor::free_buffer`] (each side has its own
/// allocator state).
#[repr(C)]
pub struct PluginBuffer {
    pub ptr: *mut u8,
    pub len: usize,
    pub cap: usize,
}

impl PluginBuffer {
    pub const fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    pub(crate) fn from_vec(bytes: Vec<u8>) -> Self {
        let mut bytes = std::mem::ManuallyDrop::new(bytes);
        Self {
            ptr: bytes.as_mut_ptr(),
            len: bytes.len(),
            cap: bytes.capacity(),
        }
    }
}

/// The `free_buffer` every plugin exports (through [`crate::export_backend!`]).
pub extern "C" fn free_buffer(buffer: PluginBuffer) {
    if buffer.ptr.is_null() {
        return;
    }
    // SAFETY: a non-null buffer was made by `PluginBuffer::from_vec` in this
    // same plugin, from a Vec whose pointer, length and capacity are these,
    // and the host hands each buffer back exactly once.
    drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
}

/// One call across the boundary. `hypervisor` handles come from
/// [`PluginRequest::Configure`]; VM ids from [`PluginRequest::Launch`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginRequest {
    /// Validates the backend's `[hypervisor.<name>]` table (as JSON) and
    /// builds a configured hypervisor.
    Configure {
        table: serde_json::Value,
    },
    Capabilities {
        hypervisor: u64,
    },
    Probe {
        hypervisor: u64,
    },
    Launch {
        hypervisor: u64,
        spec: VmSpec,
    },
    Recover {
        hypervisor: u64,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    },
    /// Starts a clone of a template ([`crate::Hypervisor::restore`]).
    Restore {
        hypervisor: u64,
        spec: VmSpec,
        template: std::path::PathBuf,
    },
    Wait {
        vm: String,
    },
    SaveTemplate {
        vm: String,
        dir: std::path::PathBuf,
    },
    Shutdown {
        vm: String,
        grace_ms: u64,
    },
    Kill {
        vm: String,
    },
    Stats {
        vm: String,
    },
    /// The host no longer holds this VM: forget it.
    Release {
        vm: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginReply {
    Configured { hypervisor: u64 },
    ConfigRejected { problems: Vec<ConfigProblem> },
    Capabilities(Capabilities),
    Probe(ProbeReport),
    Launched(VmInfo),
    Exited(VmExit),
    Stats(VmStats),
    Done,
}

pub type PluginResult = Result<PluginReply, HypervisorError>;
