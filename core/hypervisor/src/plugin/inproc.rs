//! The in-process loader: `dlopen` a plugin, check its ABI version and build
//! identity, and call it. Only `hyper-plugin-host` uses it: a plugin's code
//! runs in that process, never in hyperd (see [`super::host_side`]).

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::abi::{
    PluginBuffer, PluginDescriptor, PluginRequest, PluginResult, BUILD_ID, ENTRY_SYMBOL,
    PLUGIN_ABI_VERSION,
};
use crate::HypervisorError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum LoadError {
    #[error("cannot load plugin {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("{path} is not a hyper backend plugin: it has no `hyper_plugin_entry` symbol")]
    NoEntry { path: PathBuf },
    #[error("plugin {path} returned no descriptor")]
    NullDescriptor { path: PathBuf },
    #[error(
        "plugin {path} speaks plugin ABI version {plugin}, but this build of hyper speaks version {host}; \
         rebuild the plugin together with hyper (`make install`)"
    )]
    AbiMismatch {
        path: PathBuf,
        plugin: u32,
        host: u32,
    },
    #[error(
        "plugin {path} was built against {plugin}, but this build of hyper is {host}; \
         rebuild the plugin together with hyper (`make install`)"
    )]
    BuildMismatch {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    #[error("plugin {path} has a malformed {field}: not a NUL-terminated UTF-8 string")]
    BadString { path: PathBuf, field: String },
    #[error("cannot load plugin {path}: its host process {host}: {reason}")]
    Host {
        path: PathBuf,
        host: PathBuf,
        reason: String,
    },
}

/// A plugin that passed the ABI and build checks. The library is never
/// unloaded: its runtime's threads run its code for the life of the process.
pub struct InProcessPlugin {
    path: PathBuf,
    name: String,
    build_id: String,
    descriptor: &'static PluginDescriptor,
}

impl std::fmt::Debug for InProcessPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessPlugin")
            .field("path", &self.path)
            .field("name", &self.name)
            .finish()
    }
}

fn c_string(
    ptr: *const std::os::raw::c_char,
    path: &Path,
    field: &'static str,
) -> Result<String, LoadError> {
    let bad = || LoadError::BadString {
        path: path.to_path_buf(),
        field: field.to_string(),
    };
    if ptr.is_null() {
        return Err(bad());
    }
    // SAFETY: the ABI check passed, so this descriptor is of our layout and
    // the field points at a static NUL-terminated string in the plugin, which
    // is never unloaded.
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str().map(str::to_owned).map_err(|_| bad())
}

impl InProcessPlugin {
    /// Loads a plugin and checks its ABI version and build identity.
    ///
    /// Loading runs the library's initialisers: only load from a directory
    /// that only root can write (`[runtime] plugin_dir`).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let open_err = |e: libloading::Error| LoadError::Open {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // SAFETY: loading a shared object runs its initialisers; plugins come
        // from the operator's plugin directory, which is trusted like the
        // hyperd binary itself.
        let lib = unsafe { libloading::Library::new(path) }.map_err(open_err)?;
        // Never dlclose: the plugin's runtime threads outlive any one call.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        // SAFETY: the symbol's type is the one every plugin exports through
        // `export_backend!`; a library with a different type under this name
        // is not a plugin of ours, which the ABI check below catches for every
        // plugin that follows the first-field rule.
        let entry: libloading::Symbol<'static, extern "C" fn() -> *const PluginDescriptor> =
            unsafe { lib.get(ENTRY_SYMBOL) }.map_err(|_| LoadError::NoEntry {
                path: path.to_path_buf(),
            })?;
        let descriptor = entry();
        if descriptor.is_null() {
            return Err(LoadError::NullDescriptor {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: non-null, and every ABI version keeps `abi_version: u32` as
        // the first field of a `#[repr(C)]` struct, so reading it is sound for
        // a plugin of any version. Nothing else is read before it matches.
        let abi_version = unsafe { std::ptr::addr_of!((*descriptor).abi_version).read() };
        if abi_version != PLUGIN_ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                path: path.to_path_buf(),
                plugin: abi_version,
                host: PLUGIN_ABI_VERSION,
            });
        }
        // SAFETY: same ABI version, so the whole descriptor has our layout; it
        // is static data in a library that is never unloaded.
        let descriptor: &'static PluginDescriptor = unsafe { &*descriptor };
        let build_id = c_string(descriptor.build_id, path, "build id")?;
        if build_id != BUILD_ID {
            return Err(LoadError::BuildMismatch {
                path: path.to_path_buf(),
                plugin: build_id,
                host: BUILD_ID.into(),
            });
        }
        let name = c_string(descriptor.name, path, "name")?;
        Ok(Self {
            path: path.to_path_buf(),
            name,
            build_id,
            descriptor,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn build_id(&self) -> &str {
        &self.build_id
    }

    /// One blocking call into the plugin.
    pub fn call(&self, request: &PluginRequest) -> PluginResult {
        let bytes =
            serde_json::to_vec(request).map_err(|e| HypervisorError::Plugin(e.to_string()))?;
        let mut buffer = PluginBuffer::empty();
        let rc = (self.descriptor.call)(bytes.as_ptr(), bytes.len(), &mut buffer);
        if rc != 0 {
            return Err(HypervisorError::Plugin(format!(
                "plugin {} failed a call (code {rc})",
                self.name
            )));
        }
        let reply = if buffer.ptr.is_null() {
            Err(HypervisorError::Plugin(format!(
                "plugin {} returned no reply",
                self.name
            )))
        } else {
            // SAFETY: on success the plugin filled `buffer` with `len`
            // initialised bytes it owns until we hand them back below.
            let slice = unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.len) };
            serde_json::from_slice::<PluginResult>(slice).map_err(|e| {
                HypervisorError::Plugin(format!("plugin {} sent a malformed reply: {e}", self.name))
            })
        };
        (self.descriptor.free_buffer)(buffer);
        reply?
    }
}
