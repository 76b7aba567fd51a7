//! The payload every backend boots: the hyperkernel, the hyperstart
//! initramfs, and the kernel command line the core composes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Arguments every guest gets, whatever the backend:
/// * `quiet`: every serial byte is an exit (or emulated) — keep boot silent;
/// * `panic=-1`: a guest kernel panic reboots, which backends turn into an exit;
/// * `rdinit=/init`: hyperstart is the initramfs's init.
const BASE_CMDLINE: &str = "quiet panic=-1 rdinit=/init";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "the {what} {path} (config {config}, key `{key}`) is missing or unreadable: {reason}; \
         build and install it with `make install`, or point `{key}` at it"
    )]
    Missing {
        what: &'static str,
        path: PathBuf,
        config: String,
        key: &'static str,
        reason: String,
    },
}

impl Payload {
    pub fn from_config(config: &Config) -> Self {
        let mut cmdline = BASE_CMDLINE.to_string();
        let extra = config.payload.cmdline.trim();
        if !extra.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        Self {
            kernel: config.payload.kernel.clone(),
            initrd: config.payload.initrd.clone(),
            cmdline,
        }
    }

    /// Checks both files can be opened, naming the config key on failure.
    pub fn check(&self, config: &Config) -> Result<(), PayloadError> {
        check_file("kernel", &self.kernel, config, "payload.kernel")?;
        check_file("initramfs", &self.initrd, config, "payload.initrd")
    }
}

fn check_file(
    what: &'static str,
    path: &Path,
    config: &Config,
    key: &'static str,
) -> Result<(), PayloadError> {
    let missing = |reason: String| PayloadError::Missing {
        what,
        path: path.to_path_buf(),
        config: config.source_name(),
        key,
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| missing(e.to_string()))?;
    if !meta.is_file() {
        return Err(missing("not a regular file".into()));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| missing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_base_plus_extra() {
        let mut config = Config::default();
        assert_eq!(Payload::from_config(&config).cmdline, BASE_CMDLINE);
        config.payload.cmdline = " loglevel=4 ".into();
        assert_eq!(
            Payload::from_config(&config).cmdline,
            format!("{BASE_CMDLINE} loglevel=4")
        );
    }

    #[test]
    fn missing_kernel_names_the_key() {
        let mut config = Config::default();
        config.payload.kernel = "/nonexistent/hyperkernel".into();
        let err = Payload::from_config(&config)
            .check(&config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("payload.kernel") && err.contains("/nonexistent/hyperkernel"),
            "{err}"
        );
    }
}
