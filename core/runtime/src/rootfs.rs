//! Container root filesystems as read-only erofs images, built once per
//! content and shared by every pod that uses them.
//!
//! erofs (rather than ext4) because it is made for exactly this: read-only,
//! compact, fast to mount, and `mkfs.erofs` builds it straight from a
//! directory without root-only loop mounts.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub const FSTYPE: &str = "erofs";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {path}: {reason}")]
    Source { path: PathBuf, reason: String },
    #[error("cannot run mkfs.erofs: {0}; install it with `apt-get install erofs-utils`")]
    NoMkfs(std::io::Error),
    #[error("mkfs.erofs failed for {path}: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error("rootfs image store {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Content-addressed store of rootfs images under `state_dir/rootfs`.
#[derive(Debug, Clone)]
pub struct RootfsStore {
    dir: PathBuf,
    /// One build at a time in this process: pods of the same new image wait
    /// for the first build instead of each making their own.
    build_lock: Arc<Mutex<()>>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl RootfsStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("rootfs"),
            build_lock: Arc::new(Mutex::new(())),
        }
    }

    /// The image for `source`, built only when no image of the same content
    /// exists. Returns the image path and whether it was built now.
    pub fn image_for_dir(&self, source: &Path) -> Result<(PathBuf, bool), RootfsError> {
        let meta = std::fs::metadata(source).map_err(|e| RootfsError::Source {
            path: source.into(),
            reason: e.to_string(),
        })?;
        if !meta.is_dir() {
            return Err(RootfsError::Source {
                path: source.into(),
                reason: "not a directory".into(),
            });
        }
        let key = content_key(source)?;
        let image = self.dir.join(format!("{key}.erofs"));
        if image.is_file() {
            return Ok((image, false));
        }
        // The guarded data is (); a panic elsewhere cannot corrupt it.
        let _guard = self.build_lock.lock().unwrap_or_else(|p| p.into_inner());
        if image.is_file() {
            return Ok((image, false));
        }
        let store_err = |source| RootfsError::Store {
            path: self.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(store_err)?;
        // Build under a unique name and rename, so a reader never sees half an
        // image, even with another process building the same content.
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        build_erofs(source, &tmp)?;
        std::fs::rename(&tmp, &image).map_err(store_err)?;
        Ok((image, true))
    }
}

/// Builds the erofs image `dest` from the directory `source`. Timestamps are
/// zeroed (`-T0`) so the same tree always gives the same image.
pub fn build_erofs(source: &Path, dest: &Path) -> Result<(), RootfsError> {
    let output = Command::new("mkfs.erofs")
        .arg("-T0")
        .arg(dest)
        .arg(source)
        .output()
        .map_err(RootfsError::NoMkfs)?;
    if !output.status.success() {
        let _ = std::fs::remove_file(dest);
        return Err(RootfsError::Mkfs {
            path: source.into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// A digest over everything the image would contain: names, types, modes,
/// owners, link targets, device numbers and file contents. Timestamps are
/// left out (`mkfs.erofs -T0` zeroes them too), so touching a file without
/// changing it does not rebuild the image.
pub fn content_key(root: &Path) -> Result<String, RootfsError> {
    let mut hasher = Sha256::new();
    hash_tree(root, Path::new(""), &mut hasher)?;
    let digest = hasher.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn hash_tree(root: &Path, rel: &Path, hasher: &mut Sha256) -> Result<(), RootfsError> {
    let dir = root.join(rel);
    let err = |path: &Path, e: std::io::Error| RootfsError::Source {
        path: path.into(),
        reason: e.to_string(),
    };
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| err(&dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let path = root.join(&rel_path);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        let ft = meta.file_type();
        hasher.update(rel_path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(meta.mode().to_le_bytes());
        hasher.update(meta.uid().to_le_bytes());
        hasher.update(meta.gid().to_le_bytes());
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| err(&path, e))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
        } else if ft.is_dir() {
            hash_tree(root, &rel_path, hasher)?;
        } else if ft.is_block_device() || ft.is_char_device() {
            hasher.update(meta.rdev().to_le_bytes());
        } else if ft.is_file() {
            hasher.update(meta.len().to_le_bytes());
            let mut file = std::fs::File::open(&path).map_err(|e| err(&path, e))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = file.read(&mut buf).map_err(|e| err(&path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
        }
        hasher.update([0xff]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_content_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/a"), b"one").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("bin/b")).unwrap();
        let k1 = content_key(dir.path()).unwrap();
        std::fs::write(dir.path().join("bin/a"), b"one").unwrap();
        assert_eq!(k1, content_key(dir.path()).unwrap());
        std::fs::write(dir.path().join("bin/a"), b"two").unwrap();
        assert_ne!(k1, content_key(dir.path()).unwrap());
    }

    #[test]
    fn image_is_built_once_per_content() {
        if Command::new("mkfs.erofs").arg("--help").output().is_err() {
            panic!("mkfs.erofs is required for this test: apt-get install erofs-utils");
        }
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("hello"), b"hi").unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = RootfsStore::new(state.path());
        let (image, built) = store.image_for_dir(src.path()).unwrap();
        assert!(built);
        let (again, built) = store.image_for_dir(src.path()).unwrap();
        assert_eq!(image, again);
        assert!(!built);
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(&image).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(
            u32::from_le_bytes(magic),
            0xE0F5_E1E2,
            "erofs superblock magic"
        );
    }

    #[test]
    fn missing_source_is_a_clear_error() {
        let state = tempfile::tempdir().unwrap();
        let err = RootfsStore::new(state.path())
            .image_for_dir(Path::new("/nonexistent/rootfs"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rootfs"), "{err}");
    }
}
