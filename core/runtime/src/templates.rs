//! The template store: booted VMs saved by a backend, that pods start
//! from instead of booting the payload (issue 16, DESIGN §12).
//!
//! `state_dir/templates/<key>/` (0700) holds what the backend's
//! `save_template` wrote plus the core's own `meta.json`. The key hashes
//! everything a clone must share with its template: the backend and its
//! build, the payload's contents and command line, vcpus, memory, the disk
//! slots and the NIC count. A template is built in
//! `.building-<key>-<unique>/` and renamed into place only once complete,
//! so a crash during a build leaves nothing the next hyperd uses (it
//! removes every `.building-*` at startup).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `meta.json`'s format.
pub const META_VERSION: u32 = 1;
const META_FILE: &str = "meta.json";
/// What a `meta.json` may weigh: it is small, and read before use.
const MAX_META_BYTES: u64 = 64 * 1024;
const BUILDING_PREFIX: &str = ".building-";

/// Everything a clone must share with its template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyParts {
    pub backend: String,
    pub plugin_build_id: String,
    /// SHA-256 of the kernel's and the initrd's contents and the command
    /// line.
    pub payload: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The disk slots in order: (id, read-only).
    pub disks: Vec<(String, bool)>,
    pub nics: usize,
}

impl KeyParts {
    /// The store's name for a template of these parts: 32 hex digits
    /// (short enough for the sockets under a build directory).
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        // serde_json of a struct is deterministic (field order).
        h.update(serde_json::to_vec(self).unwrap_or_default());
        hex(&h.finalize()[..16])
    }
}

/// The core's own record of a template (`meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub version: u32,
    pub key: String,
    pub parts: KeyParts,
    /// What the template's hyperstart said in its READY, and the
    /// protocol version of its session.
    pub agent: String,
    pub protocol_version: u32,
    pub capabilities: Vec<String>,
    pub created_unix: u64,
}

impl TemplateMeta {
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// One template as `hyper template ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInfo {
    pub key: String,
    /// `None` when its `meta.json` is missing or unreadable (such a
    /// template is never used and can be removed).
    pub meta: Option<TemplateMeta>,
    pub error: Option<String>,
    /// Bytes its files take on disk.
    pub disk_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template {0}")]
    NotFound(String),
    #[error("`{0}` is not a template key (32 hex digits)")]
    BadKey(String),
    #[error("template {key} is in use by a pod starting now; retry once it has started")]
    Busy { key: String },
    #[error("template store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("template {path}: {reason}")]
    Meta { path: PathBuf, reason: String },
}

pub use hyper_hypervisor::digest::hex;

/// Whether `key` can name a template (and is safe as a path component).
pub fn valid_key(key: &str) -> bool {
    key.len() == 32
        && key
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The payload's part of a key: a hash of the kernel's and initrd's
/// contents and the command line. Cached per file identity (device, inode,
/// size, mtime) so a pod start does not re-read a 20+ MB kernel.
#[derive(Default)]
pub struct PayloadHasher {
    files: hyper_hypervisor::digest::DigestMemo,
}

impl PayloadHasher {
    pub fn hash(&self, kernel: &Path, initrd: &Path, cmdline: &str) -> std::io::Result<String> {
        let mut h = Sha256::new();
        for file in [kernel, initrd] {
            h.update(self.files.file_sha256(file)?.1);
        }
        h.update(cmdline.as_bytes());
        Ok(hex(&h.finalize()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `state_dir/templates`.
pub struct TemplateStore {
    dir: PathBuf,
    /// Per key: a build or a removal holds it for writing (pods needing
    /// the template wait for that ONE build), a restore for reading.
    locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    next: std::sync::atomic::AtomicU64,
}

impl TemplateStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("templates"),
            locks: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The lock held while template `key` is built, used or removed.
    pub fn key_lock(&self, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        lock(&self.locks)
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::RwLock::new(())))
            .clone()
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
        let path = path.to_path_buf();
        move |source| TemplateError::Io { path, source }
    }

    /// Makes the store's directory (0700).
    pub fn ensure_dir(&self) -> Result<(), TemplateError> {
        crate::private::create_private_dir(&self.dir).map_err(self.io(&self.dir))
    }

    /// Removes what builds interrupted by a crash left (`.building-*`);
    /// how many went. Run at startup, before any build.
    pub fn remove_partial(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut gone = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(BUILDING_PREFIX) {
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => gone += 1,
                    Err(e) => tracing::warn!(
                        "cannot remove the partial template {}: {e}",
                        entry.path().display()
                    ),
                }
            }
        }
        gone
    }

    /// A fresh private directory for a build of `key`:
    /// `.building-<key>-<unique>`.
    pub fn building_dir(&self, key: &str) -> Result<PathBuf, TemplateError> {
        self.ensure_dir()?;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = self
            .dir
            .join(format!("{BUILDING_PREFIX}{key}-{}-{n}", std::process::id()));
        crate::private::create_private_dir(&path).map_err(self.io(&path))?;
        Ok(path)
    }

    /// Writes `meta` into the complete template at `built` (fsynced), then
    /// renames it into place as `meta.key`, replacing none: a template
    /// already there wins (and `built` goes).
    pub fn publish(&self, built: &Path, meta: &TemplateMeta) -> Result<PathBuf, TemplateError> {
        let meta_path = built.join(META_FILE);
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| TemplateError::Meta {
            path: meta_path.clone(),
            reason: e.to_string(),
        })?;
        write_synced(&meta_path, &bytes).map_err(self.io(&meta_path))?;
        sync_tree(built).map_err(self.io(built))?;
        let target = self.path(&meta.key);
        std::fs::rename(built, &target).map_err(self.io(&target))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(target)
    }

    /// The template `key`'s meta, validated against `parts`: `Ok(None)`
    /// when there is none.
    pub fn find(&self, key: &str, parts: &KeyParts) -> Result<Option<TemplateMeta>, TemplateError> {
        let path = self.path(key);
        if !path.exists() {
            return Ok(None);
        }
        let meta = read_meta(&path)?;
        if meta.version != META_VERSION || meta.key != key || &meta.parts != parts {
            return Err(TemplateError::Meta {
                path,
                reason: "its meta.json is for another template or version".into(),
            });
        }
        Ok(Some(meta))
    }

    /// Every template (and what is wrong with those that cannot be used).
    pub fn list(&self) -> Vec<TemplateInfo> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<TemplateInfo> = entries
            .flatten()
            .filter_map(|e| {
                let key = e.file_name().to_str()?.to_string();
                if !valid_key(&key) {
                    return None;
                }
                let path = e.path();
                let (meta, error) = match read_meta(&path) {
                    Ok(m) => (Some(m), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                Some(TemplateInfo {
                    key,
                    meta,
                    error,
                    disk_bytes: disk_usage(&path),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Removes template `key` (a pod starting from it has mapped what it
    /// needs already; one building or restoring it holds its lock).
    pub fn remove(&self, key: &str) -> Result<(), TemplateError> {
        if !valid_key(key) {
            return Err(TemplateError::BadKey(key.to_string()));
        }
        let guard_lock = self.key_lock(key);
        let Ok(_guard) = guard_lock.try_write() else {
            return Err(TemplateError::Busy {
                key: key.to_string(),
            });
        };
        self.remove_unlocked(key)
    }

    /// Removes template `key`; the caller holds its lock.
    pub fn remove_unlocked(&self, key: &str) -> Result<(), TemplateError> {
        let path = self.path(key);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(TemplateError::NotFound(key.to_string()))
            }
            Err(e) => Err(TemplateError::Io { path, source: e }),
        }
    }
}

fn read_meta(dir: &Path) -> Result<TemplateMeta, TemplateError> {
    let path = dir.join(META_FILE);
    let meta_err = |reason: String| TemplateError::Meta {
        path: path.clone(),
        reason,
    };
    let f = std::fs::File::open(&path).map_err(|e| meta_err(e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(MAX_META_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| meta_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_META_BYTES {
        return Err(meta_err(format!("larger than {MAX_META_BYTES} bytes")));
    }
    serde_json::from_slice(&bytes).map_err(|e| meta_err(format!("unreadable: {e}")))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsyncs every file and directory under `dir` (what the backend wrote
/// included), so a crash after the rename never publishes a torn
/// template.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            sync_tree(&entry.path())?;
        } else if ft.is_file() {
            std::fs::File::open(entry.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            backend: "qemu".into(),
            plugin_build_id: "b1".into(),
            payload: "p".into(),
            vcpus: 1,
            memory_mib: 128,
            disks: vec![("c0".into(), true)],
            nics: 0,
        }
    }

    fn meta(parts: KeyParts) -> TemplateMeta {
        TemplateMeta {
            version: META_VERSION,
            key: parts.key(),
            parts,
            agent: "hyperstart".into(),
            protocol_version: 1,
            capabilities: vec!["resume".into()],
            created_unix: 1,
        }
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = parts();
        let k = base.key();
        assert!(valid_key(&k), "{k}");
        let mut changed = Vec::new();
        let mut p = base.clone();
        p.backend = "kvm".into();
        changed.push(p);
        let mut p = base.clone();
        p.plugin_build_id = "b2".into();
        changed.push(p);
        let mut p = base.clone();
        p.payload = "q".into();
        changed.push(p);
        let mut p = base.clone();
        p.vcpus = 2;
        changed.push(p);
        let mut p = base.clone();
        p.memory_mib = 256;
        changed.push(p);
        let mut p = base.clone();
        p.disks[0].1 = false;
        changed.push(p);
        let mut p = base.clone();
        p.disks.push(("v0".into(), false));
        changed.push(p);
        let mut p = base.clone();
        p.nics = 1;
        changed.push(p);
        for p in changed {
            assert_ne!(p.key(), k, "{p:?}");
        }
        assert_eq!(base.clone().key(), k);
    }

    #[test]
    fn payload_hash_follows_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let (k, i) = (dir.path().join("k"), dir.path().join("i"));
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let h = PayloadHasher::default();
        let a = h.hash(&k, &i, "quiet").unwrap();
        assert_eq!(a, h.hash(&k, &i, "quiet").unwrap());
        assert_ne!(a, h.hash(&k, &i, "debug").unwrap());
        std::fs::write(&i, b"initrd, rebuilt").unwrap();
        assert_ne!(a, h.hash(&k, &i, "quiet").unwrap());
        assert!(h.hash(&dir.path().join("none"), &i, "").is_err());
    }

    #[test]
    fn a_published_template_is_found_listed_and_removed_and_partial_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let m = meta(parts());
        let b = store.building_dir(&m.key).unwrap();
        std::fs::write(b.join("memory"), b"ram").unwrap();
        let stale = store.building_dir(&m.key).unwrap();
        std::fs::write(stale.join("memory"), b"half").unwrap();
        assert_eq!(store.find(&m.key, &m.parts).unwrap(), None);
        let at = store.publish(&b, &m).unwrap();
        assert_eq!(at, store.path(&m.key));
        assert!(!b.exists());
        assert_eq!(store.find(&m.key, &m.parts).unwrap(), Some(m.clone()));
        let mut other = m.parts.clone();
        other.vcpus = 4;
        assert!(store.find(&m.key, &other).is_err());
        let listed = store.list();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].meta.as_ref(), Some(&m));
        assert_eq!(store.remove_partial(), 1);
        assert!(!stale.exists());
        assert!(matches!(
            store.remove("../x"),
            Err(TemplateError::BadKey(_))
        ));
        store.remove(&m.key).unwrap();
        assert!(matches!(
            store.remove(&m.key),
            Err(TemplateError::NotFound(_))
        ));
        assert!(store.list().is_empty());
    }

    #[test]
    fn an_altered_meta_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(dir.path());
        let m = meta(parts());
        let b = store.building_dir(&m.key).unwrap();
        store.publish(&b, &m).unwrap();
        std::fs::write(store.path(&m.key).join(META_FILE), b"{\"version\":").unwrap();
        let err = store.find(&m.key, &m.parts).unwrap_err().to_string();
        assert!(err.contains("meta.json"), "{err}");
        assert!(store.list()[0].error.is_some());
    }
}
