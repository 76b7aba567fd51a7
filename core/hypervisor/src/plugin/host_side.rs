//! The host side: load a plugin, check its ABI, and wrap it in the async
//! [`Hypervisor`] trait.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::abi::{
    PluginBuffer, PluginDescriptor, PluginReply, PluginRequest, PluginResult, BUILD_ID,
    ENTRY_SYMBOL, PLUGIN_ABI_VERSION,
};
use crate::{
    Capabilities, ConfigProblem, Hypervisor, HypervisorError, ProbeReport, Vm, VmExit, VmInfo,
    VmSpec, VmStats,
};

#[derive(Debug, thiserror::Error)]
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
    BadString { path: PathBuf, field: &'static str },
}

/// A plugin that passed the ABI and build checks. The library is never
/// unloaded: its runtime's threads run its code for the life of the process.
pub struct LoadedPlugin {
    path: PathBuf,
    name: String,
    build_id: String,
    descriptor: &'static PluginDescriptor,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
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
        field,
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

impl LoadedPlugin {
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

    /// One blocking call into the plugin. Use from `spawn_blocking`.
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

    /// Validates `table` (the plugin's own `[hypervisor.<name>]` table) and
    /// builds the hypervisor. Blocking and quick.
    pub fn configure(
        self: &Arc<Self>,
        table: serde_json::Value,
    ) -> Result<PluginHypervisor, ConfigureError> {
        match self.call(&PluginRequest::Configure { table })? {
            PluginReply::Configured { hypervisor } => {
                let capabilities = match self.call(&PluginRequest::Capabilities { hypervisor })? {
                    PluginReply::Capabilities(c) => c,
                    other => return Err(unexpected(&self.name, &other).into()),
                };
                Ok(PluginHypervisor {
                    plugin: self.clone(),
                    handle: hypervisor,
                    capabilities,
                })
            }
            PluginReply::ConfigRejected { problems } => Err(ConfigureError::Rejected(problems)),
            other => Err(unexpected(&self.name, &other).into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Rejected(Vec<ConfigProblem>),
    #[error(transparent)]
    Call(#[from] HypervisorError),
}

fn unexpected(plugin: &str, reply: &PluginReply) -> HypervisorError {
    HypervisorError::Plugin(format!(
        "plugin {plugin} gave an unexpected reply: {reply:?}"
    ))
}

async fn call_async(plugin: Arc<LoadedPlugin>, request: PluginRequest) -> PluginResult {
    tokio::task::spawn_blocking(move || plugin.call(&request))
        .await
        .map_err(|e| HypervisorError::Plugin(format!("plugin call did not complete: {e}")))?
}

/// A configured backend living in a plugin.
pub struct PluginHypervisor {
    plugin: Arc<LoadedPlugin>,
    handle: u64,
    capabilities: Capabilities,
}

impl PluginHypervisor {
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }
}

#[async_trait]
impl Hypervisor for PluginHypervisor {
    fn name(&self) -> &str {
        self.plugin.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn probe(&self) -> ProbeReport {
        match call_async(
            self.plugin.clone(),
            PluginRequest::Probe {
                hypervisor: self.handle,
            },
        )
        .await
        {
            Ok(PluginReply::Probe(report)) => report,
            Ok(other) => ProbeReport {
                usable: false,
                reason: unexpected(self.name(), &other).to_string(),
                details: Default::default(),
            },
            Err(e) => ProbeReport {
                usable: false,
                reason: e.to_string(),
                details: Default::default(),
            },
        }
    }

    async fn launch(&self, spec: VmSpec) -> Result<Box<dyn Vm>, HypervisorError> {
        match call_async(
            self.plugin.clone(),
            PluginRequest::Launch {
                hypervisor: self.handle,
                spec,
            },
        )
        .await?
        {
            PluginReply::Launched(info) => Ok(Box::new(PluginVm {
                plugin: self.plugin.clone(),
                info,
            })),
            other => Err(unexpected(self.name(), &other)),
        }
    }

    async fn recover(
        &self,
        spec: VmSpec,
        info: VmInfo,
        pid_start: Option<u64>,
    ) -> Result<Box<dyn Vm>, HypervisorError> {
        match call_async(
            self.plugin.clone(),
            PluginRequest::Recover {
                hypervisor: self.handle,
                spec,
                info,
                pid_start,
            },
        )
        .await?
        {
            PluginReply::Launched(info) => Ok(Box::new(PluginVm {
                plugin: self.plugin.clone(),
                info,
            })),
            other => Err(unexpected(self.name(), &other)),
        }
    }
}

struct PluginVm {
    plugin: Arc<LoadedPlugin>,
    info: VmInfo,
}

impl PluginVm {
    async fn call(&self, request: PluginRequest) -> PluginResult {
        call_async(self.plugin.clone(), request).await
    }

    fn expect_done(&self, reply: PluginReply) -> Result<(), HypervisorError> {
        match reply {
            PluginReply::Done => Ok(()),
            other => Err(unexpected(self.plugin.name(), &other)),
        }
    }
}

#[async_trait]
impl Vm for PluginVm {
    fn info(&self) -> VmInfo {
        self.info.clone()
    }

    async fn wait(&self) -> Result<VmExit, HypervisorError> {
        match self
            .call(PluginRequest::Wait {
                vm: self.info.id.clone(),
            })
            .await?
        {
            PluginReply::Exited(exit) => Ok(exit),
            other => Err(unexpected(self.plugin.name(), &other)),
        }
    }

    async fn shutdown(&self, grace: Duration) -> Result<(), HypervisorError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let reply = self
            .call(PluginRequest::Shutdown {
                vm: self.info.id.clone(),
                grace_ms,
            })
            .await?;
        self.expect_done(reply)
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        let reply = self
            .call(PluginRequest::Kill {
                vm: self.info.id.clone(),
            })
            .await?;
        self.expect_done(reply)
    }

    async fn stats(&self) -> Result<VmStats, HypervisorError> {
        match self
            .call(PluginRequest::Stats {
                vm: self.info.id.clone(),
            })
            .await?
        {
            PluginReply::Stats(stats) => Ok(stats),
            other => Err(unexpected(self.plugin.name(), &other)),
        }
    }
}

impl Drop for PluginVm {
    fn drop(&mut self) {
        // Quick and non-blocking inside the plugin: it only forgets the id.
        if let Err(e) = self.plugin.call(&PluginRequest::Release {
            vm: self.info.id.clone(),
        }) {
            tracing::warn!(vm = %self.info.id, "plugin did not release the VM: {e}");
        }
    }
}
