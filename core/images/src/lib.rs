//! Docker/OCI images for hypercontainer: pull from registries (`oci-client`),
//! a content-addressed store with metadata and GC, `load` of OCI layouts and
//! `docker save` tarballs, safe unpacking of untrusted layers, and one shared
//! read-only rootfs image per image.
//!
//! Store layout under `root` (= `<state_dir>/images`):
//! ```text
//! blobs/sha256/<hex>    verified blobs (configs, layers), shared between images
//! images/<hex>.json     one `Image` per config digest, its tags inside
//! rootfs/<chain>.img    the built rootfs image of a verified layer stack,
//!                       named by the chain of its diff_ids (see `chain_id`)
//! tmp/                  downloads and unpacks in progress (0700, like the root)
//! locks/                flock files: meta.lock, gc.lock, <hex>.rootfs.lock
//! ```

mod error;
mod load;
mod manifest;
mod pull;
mod reference;
mod store;
pub mod unpack;

use serde::{Deserialize, Serialize};

pub use error::ImageError;
pub use reference::{normalize_tag, ImageRef};
pub use store::{chain_id, save_login, ImageStore, Removed};
pub use unpack::Limits;

/// A stored image.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// "sha256:<config digest>"
    pub id: String,
    /// normalized, e.g. "docker.io/library/busybox:latest"
    pub repo_tags: Vec<String>,
    /// e.g. "127.0.0.1:5000/test/busybox@sha256:…"
    pub repo_digests: Vec<String>,
    /// sum of the layer blob sizes
    pub size: u64,
    pub created: Option<String>,
    pub config: ImageConfig,
    /// layer blob digests, bottom first
    pub layers: Vec<String>,
    /// the config's `rootfs.diff_ids`, each verified against the layer's
    /// uncompressed stream before the image was recorded (empty in records
    /// written before that check existed: those are re-verified on use)
    #[serde(default)]
    pub diff_ids: Vec<String>,
    /// bytes the layers unpack to, metadata included (0 if unknown)
    #[serde(default)]
    pub unpacked_size: u64,
}

/// The run settings of an image config.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// os/architecture[/variant]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.variant {
            Some(v) => write!(f, "{}/{}/{v}", self.os, self.architecture),
            None => write!(f, "{}/{}", self.os, self.architecture),
        }
    }
}

impl std::str::FromStr for Platform {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ImageError::InvalidReference {
            reference: s.into(),
            reason: "a platform is OS/ARCH[/VARIANT], e.g. linux/amd64".into(),
        };
        match parts.as_slice() {
            [o, a] if !o.is_empty() && !a.is_empty() => Ok(Platform {
                os: (*o).into(),
                architecture: (*a).into(),
                variant: None,
            }),
            [o, a, v] if !o.is_empty() && !a.is_empty() && !v.is_empty() => Ok(Platform {
                os: (*o).into(),
                architecture: (*a).into(),
                variant: Some((*v).into()),
            }),
            _ => Err(bad()),
        }
    }
}

/// How to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// "host:port" registries spoken to over plain HTTP
    pub insecure_registries: Vec<String>,
    /// docker config.json format: {"auths":{"host":{"auth":base64(user:pass)}}}
    pub auth_file: Option<std::path::PathBuf>,
    pub platform: Platform,
    pub max_concurrent_downloads: usize,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            auth_file: None,
            platform: Platform::default(),
            max_concurrent_downloads: 3,
        }
    }
}

/// Pull progress callbacks (called from download tasks).
pub trait PullProgress: Send + Sync {
    fn resolved(&self, reference: &str, digest: &str);
    fn layer_started(&self, digest: &str, size: u64, cached: bool);
    fn layer_progress(&self, digest: &str, done: u64);
    fn layer_done(&self, digest: &str);
}

/// A `PullProgress` that reports nothing.
pub struct NoProgress;

impl PullProgress for NoProgress {
    fn resolved(&self, _: &str, _: &str) {}
    fn layer_started(&self, _: &str, _: u64, _: bool) {}
    fn layer_progress(&self, _: &str, _: u64) {}
    fn layer_done(&self, _: &str) {}
}
