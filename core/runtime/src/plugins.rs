//! Finding backend plugins, configuring them from their tables, and picking
//! the hypervisor this host uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_hypervisor::plugin::{ConfigureError, LoadedPlugin};
use hyper_hypervisor::table::TableError;
use hyper_hypervisor::{Hypervisor, ProbeReport};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Order `auto` tries backends in: Xen only works in a dom0, where it is the
/// only choice; KVM is the fast path; QEMU works everywhere (TCG if need be).
pub const AUTO_ORDER: &[&str] = &["xen", "kvm", "qemu"];

/// A plugin found in the plugin directory.
pub struct Backend {
    pub name: String,
    pub path: PathBuf,
    pub build_id: String,
    /// The configured hypervisor, or why its table was refused (naming the
    /// config file and each key, [`TableError`]).
    pub hypervisor: Result<Arc<dyn Hypervisor>, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginFailure {
    pub path: PathBuf,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "config file {config}: key `runtime.hypervisor`: unknown backend `{name}`; plugins found in {dir}: {found}; \
         set it to one of them or to `auto`"
    )]
    Unknown {
        config: String,
        name: String,
        dir: String,
        found: String,
    },
    /// `problem` names the config file and the keys ([`Backend::hypervisor`]).
    #[error("{problem}")]
    Rejected { name: String, problem: String },
    #[error("no backend can run guests on this host ({tried}); `hyper info` says why for each")]
    NoneUsable { tried: String },
}

/// Loads every `*.so` in `dir`. Plugins that fail the ABI or build checks are
/// reported, never loaded.
pub fn discover(dir: &Path, config: &Config) -> (Vec<Backend>, Vec<PluginFailure>) {
    let mut backends = Vec::new();
    let mut failures = Vec::new();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "so"))
            .collect(),
        Err(e) => {
            failures.push(PluginFailure {
                path: dir.to_path_buf(),
                error: format!("cannot read plugin directory: {e}"),
            });
            Vec::new()
        }
    };
    paths.sort();
    for path in paths {
        match LoadedPlugin::load(&path) {
            Ok(plugin) => {
                let plugin = Arc::new(plugin);
                if backends.iter().any(|b: &Backend| b.name == plugin.name()) {
                    failures.push(PluginFailure {
                        path: path.clone(),
                        error: format!("a second plugin named `{}`: ignored", plugin.name()),
                    });
                    continue;
                }
                let hypervisor = match plugin.configure(config.hypervisor_table(plugin.name())) {
                    Ok(hv) => Ok(Arc::new(hv) as Arc<dyn Hypervisor>),
                    Err(ConfigureError::Rejected(problems)) => Err(TableError {
                        file: config.source_name(),
                        backend: plugin.name().to_string(),
                        problems,
                    }
                    .to_string()),
                    Err(e) => Err(format!(
                        "config file {}: [hypervisor.{}] {e}",
                        config.source_name(),
                        plugin.name()
                    )),
                };
                backends.push(Backend {
                    name: plugin.name().to_string(),
                    path,
                    build_id: plugin.build_id().to_string(),
                    hypervisor,
                });
            }
            Err(e) => failures.push(PluginFailure {
                path,
                error: e.to_string(),
            }),
        }
    }
    (backends, failures)
}

/// The hypervisor `[runtime] hypervisor` names, or the first usable one for
/// `auto`, with every probe verdict taken on the way.
pub async fn select(
    backends: &[Backend],
    config: &Config,
) -> Result<(Arc<dyn Hypervisor>, Vec<(String, ProbeReport)>), SelectError> {
    let wanted = config.runtime.hypervisor.as_str();
    let configured = |b: &Backend| -> Result<Arc<dyn Hypervisor>, SelectError> {
        b.hypervisor
            .clone()
            .map_err(|problem| SelectError::Rejected {
                name: b.name.clone(),
                problem,
            })
    };
    if wanted != "auto" {
        let backend =
            backends
                .iter()
                .find(|b| b.name == wanted)
                .ok_or_else(|| SelectError::Unknown {
                    config: config.source_name(),
                    name: wanted.to_string(),
                    dir: config.runtime.plugin_dir.display().to_string(),
                    found: if backends.is_empty() {
                        "none".to_string()
                    } else {
                        backends
                            .iter()
                            .map(|b| format!("{} ({})", b.name, b.path.display()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })?;
        return Ok((configured(backend)?, Vec::new()));
    }
    let mut ordered: Vec<&Backend> = Vec::new();
    for name in AUTO_ORDER {
        ordered.extend(backends.iter().filter(|b| b.name == *name));
    }
    ordered.extend(
        backends
            .iter()
            .filter(|b| !AUTO_ORDER.contains(&b.name.as_str())),
    );
    let mut verdicts = Vec::new();
    for backend in ordered {
        let Ok(hv) = configured(backend) else {
            continue;
        };
        let report = hv.probe().await;
        let usable = report.usable;
        verdicts.push((backend.name.clone(), report));
        if usable {
            return Ok((hv, verdicts));
        }
    }
    let tried = if verdicts.is_empty() {
        format!(
            "no usable plugin in {}",
            config.runtime.plugin_dir.display()
        )
    } else {
        verdicts
            .iter()
            .map(|(n, r)| format!("{n}: {}", r.reason))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Err(SelectError::NoneUsable { tried })
}

/// The plugins hyperd found and the hypervisor it picked, handed to
/// [`crate::pods::Runtime::new`]: discovery stays out of the runtime, so a
/// test builds one around an in-memory [`Hypervisor`].
pub struct Plugins {
    pub backends: Vec<Backend>,
    pub failures: Vec<PluginFailure>,
    /// The hypervisor to run pods with, or why there is none (reported by
    /// `hyper info` and by every `run`).
    pub hypervisor: Result<Arc<dyn Hypervisor>, String>,
}

impl Plugins {
    /// Loads the plugins in `[runtime] plugin_dir` and picks the hypervisor.
    /// An unknown backend name or a refused backend table is a
    /// configuration error; no usable backend is not.
    pub async fn load(config: &Config) -> Result<Self, SelectError> {
        let (backends, failures) = discover(&config.runtime.plugin_dir, config);
        for failure in &failures {
            tracing::warn!("plugin {}: {}", failure.path.display(), failure.error);
        }
        let hypervisor = match select(&backends, config).await {
            Ok((hv, _)) => Ok(hv),
            Err(e @ SelectError::NoneUsable { .. }) => Err(e.to_string()),
            Err(e) => return Err(e),
        };
        match &hypervisor {
            Ok(hv) => tracing::info!("hypervisor: {}", hv.name()),
            Err(e) => tracing::warn!("{e}"),
        }
        Ok(Self {
            backends,
            failures,
            hypervisor,
        })
    }

    /// Just `hypervisor`, with no plugin behind it.
    pub fn only(hypervisor: Arc<dyn Hypervisor>) -> Self {
        Self {
            backends: Vec::new(),
            failures: Vec::new(),
            hypervisor: Ok(hypervisor),
        }
    }
}
