//! Container root filesystems as read-only erofs images, built once per
//! content and shared by every pod that uses them.
//!
//! erofs (rather than ext4) because it is made for exactly this: read-only,
//! compact, fast to mount, and `mkfs.erofs` builds it straight from a
//! directory without root-only loop mounts.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
    ///
    /// `mkfs.erofs` never reads `source` itself: the tree is first copied
    /// into a private snapshot (0700, under the store) while it is hashed,
    /// and the image is built from that copy and named by that hash. So the
    /// name always describes the image's content even if `source` changes
    /// while it is read (the cache key and the image cannot drift apart).
    pub fn image_for_dir(&self, source: &Path) -> Result<(PathBuf, bool), RootfsError> {
        self.image_for_dir_hooked(source, &|| {})
    }

    /// `image_for_dir`, calling `after_snapshot` between the copy and mkfs
    /// (tests change the source there).
    fn image_for_dir_hooked(
        &self,
        source: &Path,
        after_snapshot: &dyn Fn(),
    ) -> Result<(PathBuf, bool), RootfsError> {
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
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(store_err)?;
        // Build under unique names and rename, so a reader never sees half an
        // image, even with another process building the same content.
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let snap = self.dir.join(format!(".snap.{}.{n}", std::process::id()));
        let tmp = self
            .dir
            .join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        let res = (|| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&snap)
                .map_err(store_err)?;
            let copied = snapshot(source, &snap.join("root"))?;
            after_snapshot();
            if copied != key {
                tracing::warn!(source = %source.display(), "rootfs source changed while it was read: the image holds what was copied");
            }
            build_erofs(&snap.join("root"), &tmp)?;
            let image = self.dir.join(format!("{copied}.erofs"));
            std::fs::rename(&tmp, &image).map_err(store_err)?;
            Ok((image, true))
        })();
        let _ = std::fs::remove_dir_all(&snap);
        let _ = std::fs::remove_file(&tmp);
        res
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
/// owners, link targets, device numbers and file contents, the root
/// directory's mode and owner included. Timestamps are left out
/// (`mkfs.erofs -T0` zeroes them too), so touching a file without changing
/// it does not rebuild the image. Sockets are left out, as from snapshots.
pub fn content_key(root: &Path) -> Result<String, RootfsError> {
    walk(root, None)
}

/// Copies the tree `root` to `dest` (which must not exist) and returns the
/// [`content_key`] of exactly what was copied.
pub fn snapshot(root: &Path, dest: &Path) -> Result<String, RootfsError> {
    walk(root, Some(dest))
}

fn walk(root: &Path, dest: Option<&Path>) -> Result<String, RootfsError> {
    let mut hasher = Sha256::new();
    let meta = std::fs::metadata(root).map_err(|e| src_err(root, e))?;
    hash_meta(&mut hasher, &meta);
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if let Some(d) = dest {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(|e| dest_err(d, e))?;
    }
    hash_tree(root, Path::new(""), &mut hasher, dest, is_root)?;
    if let Some(d) = dest {
        set_owner_mode(d, &meta, is_root)?;
    }
    let digest = hasher.finalize();
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}

fn src_err(path: &Path, e: std::io::Error) -> RootfsError {
    RootfsError::Source {
        path: path.into(),
        reason: e.to_string(),
    }
}

fn dest_err(path: &Path, source: std::io::Error) -> RootfsError {
    RootfsError::Store {
        path: path.into(),
        source,
    }
}

fn hash_meta(hasher: &mut Sha256, meta: &std::fs::Metadata) {
    hasher.update(meta.mode().to_le_bytes());
    hasher.update(meta.uid().to_le_bytes());
    hasher.update(meta.gid().to_le_bytes());
}

/// Gives the copy `path` the owner (as root) and mode of `meta`, without
/// following a symlink.
fn set_owner_mode(path: &Path, meta: &std::fs::Metadata, is_root: bool) -> Result<(), RootfsError> {
    if is_root {
        std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| dest_err(path, e))?;
    }
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| dest_err(path, e))?;
    }
    Ok(())
}

fn hash_tree(
    root: &Path,
    rel: &Path,
    hasher: &mut Sha256,
    dest: Option<&Path>,
    is_root: bool,
) -> Result<(), RootfsError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| src_err(&dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| src_err(&dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let path = root.join(&rel_path);
        let out = dest.map(|d| d.join(&rel_path));
        let meta = std::fs::symlink_metadata(&path).map_err(|e| src_err(&path, e))?;
        let ft = meta.file_type();
        if ft.is_socket() {
            continue;
        }
        hasher.update(rel_path.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hash_meta(hasher, &meta);
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| src_err(&path, e))?;
            hasher.update(target.as_os_str().as_encoded_bytes());
            if let Some(o) = &out {
                std::os::unix::fs::symlink(&target, o).map_err(|e| dest_err(o, e))?;
            }
        } else if ft.is_dir() {
            if let Some(o) = &out {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(o)
                    .map_err(|e| dest_err(o, e))?;
            }
            hash_tree(root, &rel_path, hasher, dest, is_root)?;
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() {
            if !ft.is_fifo() {
                hasher.update(meta.rdev().to_le_bytes());
            }
            if let Some(o) = &out {
                let c = std::ffi::CString::new(o.as_os_str().as_encoded_bytes())
                    .map_err(|_| dest_err(o, std::io::Error::from_raw_os_error(libc::EINVAL)))?;
                // SAFETY: a valid NUL-terminated path; mknod never follows an
                // existing entry. Created 0600; the mode is set below.
                let r = unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        (meta.mode() & libc::S_IFMT) | 0o600,
                        meta.rdev() as libc::dev_t,
                    )
                };
                if r != 0 {
                    return Err(dest_err(o, std::io::Error::last_os_error()));
                }
            }
        } else if ft.is_file() {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| src_err(&path, e))?;
            let mut copy = match &out {
                Some(o) => Some(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(o)
                        .map_err(|e| dest_err(o, e))?,
                ),
                None => None,
            };
            let mut buf = vec![0u8; 64 * 1024];
            let mut len: u64 = 0;
            loop {
                let n = file.read(&mut buf).map_err(|e| src_err(&path, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
                if let (Some(c), Some(o)) = (&mut copy, &out) {
                    c.write_all(&buf[..n]).map_err(|e| dest_err(o, e))?;
                }
            }
            // The length of what was read, after it: what the copy holds.
            hasher.update(len.to_le_bytes());
        }
        if let Some(o) = &out {
            set_owner_mode(o, &meta, is_root)?;
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

    /// The Low finding: the cache key was hashed from the source, then
    /// mkfs.erofs read the source again. Now the image is built from the
    /// snapshot that was hashed: a change after the hash does not reach the
    /// image filed under the old content's name.
    #[test]
    fn a_source_changed_after_hashing_does_not_poison_the_cache() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("a"), b"one").unwrap();
        let key_one = content_key(src.path()).unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = RootfsStore::new(state.path());
        let (image, built) = store
            .image_for_dir_hooked(src.path(), &|| {
                std::fs::write(src.path().join("a"), b"evil").unwrap();
            })
            .unwrap();
        assert!(built);
        assert_eq!(
            image.file_name().unwrap().to_string_lossy(),
            format!("{key_one}.erofs")
        );
        let out = tempfile::tempdir().unwrap();
        let x = out.path().join("x");
        let st = Command::new("fsck.erofs")
            .arg(format!("--extract={}", x.display()))
            .arg(&image)
            .status()
            .expect("fsck.erofs (erofs-utils)");
        assert!(st.success());
        assert_eq!(
            std::fs::read(x.join("a")).unwrap(),
            b"one",
            "the image holds what was hashed"
        );
        // The changed source is other content: its own image.
        let (again, built) = store.image_for_dir(src.path()).unwrap();
        assert!(built);
        assert_ne!(again, image);
        // Nothing but the images is left in the store, and it is private.
        let names: Vec<_> = std::fs::read_dir(state.path().join("rootfs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.ends_with(".erofs") && !n.starts_with('.')),
            "{names:?}"
        );
        let mode = std::fs::metadata(state.path().join("rootfs"))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn snapshot_keeps_modes_links_and_the_root_mode() {
        let src = tempfile::tempdir().unwrap();
        std::fs::set_permissions(src.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/x"), b"x").unwrap();
        std::fs::set_permissions(
            src.path().join("d/x"),
            std::fs::Permissions::from_mode(0o4751),
        )
        .unwrap();
        std::os::unix::fs::symlink("d/x", src.path().join("l")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let copy = out.path().join("c");
        let key = snapshot(src.path(), &copy).unwrap();
        assert_eq!(key, content_key(src.path()).unwrap());
        assert_eq!(key, content_key(&copy).unwrap());
        assert_eq!(std::fs::metadata(&copy).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(
            std::fs::metadata(copy.join("d/x")).unwrap().mode() & 0o7777,
            0o4751
        );
        assert_eq!(
            std::fs::read_link(copy.join("l")).unwrap(),
            Path::new("d/x")
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
