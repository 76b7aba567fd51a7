//! The content-addressed store: blobs, image metadata, tags, GC, rootfs images.
//!
//! Locks (flock): `meta.lock` (exclusive) around every metadata
//! read-modify-write; `gc.lock` shared by every pull, load and rootfs build
//! (they add blobs no image references yet), exclusive for GC, which is
//! skipped (not waited for) while any of those run.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::manifest::ConfigInfo;
use crate::reference::normalize_tag;
use crate::unpack::{self, Limits, UnpackError};
use crate::{Image, ImageError, PullOptions, PullProgress};

/// What `remove` did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Removed {
    pub untagged: Vec<String>,
    /// image ids
    pub deleted: Vec<String>,
    pub freed_bytes: u64,
}

/// The image store. Cheap to clone; safe to share between threads and
/// between processes on the same root.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: Arc<PathBuf>,
    pub(crate) limits: Limits,
}

/// A held flock; released on drop.
pub(crate) struct Flock(#[allow(dead_code)] fs::File);

pub(crate) fn flock(path: &Path, exclusive: bool, wait: bool) -> Result<Option<Flock>, ImageError> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ImageError::io("open lock", path, e))?;
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: the fd is open and owned by `f` for the duration of the call.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(Flock(f)));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(None),
            _ => return Err(ImageError::io("flock", path, err)),
        }
    }
}

/// Writes `data` to `path` atomically (temp file, fsync, rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        unique()
    ));
    let res = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| ImageError::io("create", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| ImageError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| ImageError::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into", path, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// A name unique in this host for temp files.
pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        t,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Everything needed to record an image.
pub(crate) struct NewImage {
    pub config_digest: String,
    pub info: ConfigInfo,
    pub layers: Vec<(String, u64)>,
    /// what `check_layers` measured
    pub unpacked_size: u64,
    pub repo_tag: Option<String>,
    pub repo_digest: Option<String>,
}

impl ImageStore {
    /// Opens (creating) the store at `root`, and cleans what a crash left
    /// behind when no other process is using it.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "images", "rootfs", "tmp", "locks"] {
            let p = root.join(d);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| ImageError::io("create directory", &p, e))?;
        }
        // Untrusted trees are unpacked under tmp/: nobody but root may
        // reach into the store (older stores were made 0755).
        for p in [root.to_path_buf(), root.join("tmp")] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                .map_err(|e| ImageError::io("make private", &p, e))?;
        }
        let store = ImageStore {
            root: Arc::new(root.to_path_buf()),
            limits: Limits::default(),
        };
        if let Some(_gc) = flock(&store.lock_path("gc"), true, false)? {
            store.clean_tmp();
            let _meta = flock(&store.lock_path("meta"), true, true)?;
            store.gc_locked()?;
        }
        Ok(store)
    }

    /// Sets the unpack limits (bytes and entries per image).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    fn image_path(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", hex_of(id)))
    }

    /// The rootfs image of a verified layer stack: named by the chain of
    /// its diff_ids, never by the config digest alone.
    fn rootfs_path(&self, chain: &str) -> PathBuf {
        self.root.join("rootfs").join(format!("{chain}.img"))
    }

    /// Refuses early when the store's file system has less than `needed`
    /// bytes free.
    pub(crate) fn ensure_space(&self, what: &str, needed: u64) -> Result<(), ImageError> {
        let path = self.tmp_dir();
        let free = free_bytes(&path).map_err(|e| ImageError::io("statvfs", &path, e))?;
        if free < needed {
            return Err(ImageError::NoSpace {
                path,
                what: what.into(),
                needed,
                free,
            });
        }
        Ok(())
    }

    fn clean_tmp(&self) {
        if let Ok(rd) = fs::read_dir(self.tmp_dir()) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }

    /// Pulls `reference` (see the crate docs); the image is stored only
    /// after every blob is verified and every layer checked.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: Arc<dyn PullProgress>,
    ) -> Result<Image, ImageError> {
        let gc = {
            let p = self.lock_path("gc");
            tokio::task::spawn_blocking(move || flock(&p, false, true))
                .await
                .map_err(|e| ImageError::io("lock", "gc.lock", io::Error::other(e)))??
        };
        let res = crate::pull::pull(self, reference, opts, progress).await;
        drop(gc);
        if res.is_err() {
            // Drop verified blobs of the failed pull that no image uses.
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.try_gc()).await;
        }
        res
    }

    /// Loads every image of an OCI image layout directory or a `docker save` tarball.
    pub fn load(&self, path: &Path) -> Result<Vec<Image>, ImageError> {
        let gc = flock(&self.lock_path("gc"), false, true)?;
        let res = crate::load::load(self, path);
        drop(gc);
        if res.is_err() {
            let _ = self.try_gc();
        }
        res
    }

    /// Verifies layers before they are recorded: against hostile content
    /// and the limits, and each one's uncompressed stream against the
    /// config's `diff_ids` (same count, same order), which is what the image
    /// id really names. Returns the bytes they unpack to.
    pub(crate) fn check_layers(
        &self,
        reference: &str,
        layers: &[String],
        diff_ids: &[String],
    ) -> Result<u64, ImageError> {
        let paths: Vec<PathBuf> = layers.iter().map(|d| self.blob_path(d)).collect();
        check_count(reference, layers, diff_ids)?;
        let checked = unpack::validate(&paths, self.limits)
            .map_err(|(i, e)| layer_error(reference, &layers[i], e))?;
        check_diff_ids(reference, layers, diff_ids, &checked.diff_ids)?;
        Ok(checked.bytes)
    }

    /// Records an image (merging tags into an existing one), moving the tag
    /// away from any other image. `new`'s layers were verified against the
    /// config's diff_ids; a stored record of the same id whose layer list
    /// differs (another compression of the same content, or a record from
    /// before that check) takes the verified list: a record never keeps
    /// layers that were not checked against its id.
    pub(crate) fn commit_image(&self, new: NewImage) -> Result<Image, ImageError> {
        let _meta = flock(&self.lock_path("meta"), true, true)?;
        let id = new.config_digest.clone();
        let layers: Vec<String> = new.layers.iter().map(|(d, _)| d.clone()).collect();
        let size = new.layers.iter().map(|(_, s)| s).sum();
        let mut image = match self.read_image(&self.image_path(&id))? {
            Some(img) => img,
            None => Image {
                id: id.clone(),
                repo_tags: Vec::new(),
                repo_digests: Vec::new(),
                size,
                created: new.info.created.clone(),
                config: new.info.config.clone(),
                layers: layers.clone(),
                diff_ids: new.info.diff_ids.clone(),
                unpacked_size: new.unpacked_size,
            },
        };
        if image.layers != layers || image.diff_ids != new.info.diff_ids {
            if !image.layers.is_empty() && image.layers != layers {
                tracing::warn!(id = %id, old = ?image.layers, new = ?layers, "stored image had other layers than the verified ones: replaced");
            }
            image.layers = layers;
            image.size = size;
            image.diff_ids = new.info.diff_ids.clone();
            image.unpacked_size = new.unpacked_size;
        }
        if let Some(tag) = &new.repo_tag {
            self.untag_others(tag, &id)?;
            if !image.repo_tags.contains(tag) {
                image.repo_tags.push(tag.clone());
            }
        }
        if let Some(d) = &new.repo_digest {
            if !image.repo_digests.contains(d) {
                image.repo_digests.push(d.clone());
            }
        }
        self.write_image(&image)?;
        Ok(image)
    }

    fn untag_others(&self, tag: &str, keep: &str) -> Result<(), ImageError> {
        for mut other in self.list_unlocked()? {
            if other.id != keep && other.repo_tags.iter().any(|t| t == tag) {
                other.repo_tags.retain(|t| t != tag);
                self.write_image(&other)?;
            }
        }
        Ok(())
    }

    fn write_image(&self, image: &Image) -> Result<(), ImageError> {
        let data = serde_json::to_vec_pretty(image).map_err(|e| ImageError::Corrupt {
            path: self.image_path(&image.id),
            detail: e.to_string(),
        })?;
        write_atomic(&self.image_path(&image.id), &data, 0o644)
    }

    fn read_image(&self, path: &Path) -> Result<Option<Image>, ImageError> {
        let data = match fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io("read", path, e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| ImageError::Corrupt {
                path: path.into(),
                detail: crate::error::json_detail(&e),
            })
    }

    fn list_unlocked(&self) -> Result<Vec<Image>, ImageError> {
        let dir = self.root.join("images");
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read directory", &dir, e))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| ImageError::io("read directory", &dir, e))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                match self.read_image(&p) {
                    Ok(Some(img)) => out.push(img),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(%err, "skipping unreadable image metadata"),
                }
            }
        }
        out.sort_by(|a, b| {
            a.repo_tags
                .first()
                .cmp(&b.repo_tags.first())
                .then(a.id.cmp(&b.id))
        });
        Ok(out)
    }

    /// All images.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        self.list_unlocked()
    }

    /// By name ("busybox", "host:5000/a/b:tag", "repo@sha256:…") or by id
    /// (full or unique prefix, with or without "sha256:").
    pub fn find(&self, name_or_id: &str) -> Result<Option<Image>, ImageError> {
        let images = self.list_unlocked()?;
        find_in(&images, name_or_id)
    }

    /// Adds the tag `target` to the image `source`.
    pub fn tag(&self, source: &str, target: &str) -> Result<Image, ImageError> {
        let tag = normalize_tag(target)?;
        let _meta = flock(&self.lock_path("meta"), true, true)?;
        let images = self.list_unlocked()?;
        let mut image = find_in(&images, source)?.ok_or_else(|| ImageError::NoSuchImage {
            name: source.into(),
        })?;
        self.untag_others(&tag, &image.id)?;
        if !image.repo_tags.contains(&tag) {
            image.repo_tags.push(tag);
        }
        self.write_image(&image)?;
        Ok(image)
    }

    /// Untags a name, and deletes the image when no tag is left or when it
    /// is given by id; refuses with `InUse` if `in_use(image)`.
    pub fn remove(
        &self,
        name_or_id: &str,
        in_use: &dyn Fn(&Image) -> bool,
    ) -> Result<Removed, ImageError> {
        let mut removed = Removed::default();
        {
            let _meta = flock(&self.lock_path("meta"), true, true)?;
            let images = self.list_unlocked()?;
            let mut image =
                find_in(&images, name_or_id)?.ok_or_else(|| ImageError::NoSuchImage {
                    name: name_or_id.into(),
                })?;
            let by_tag = normalize_tag(name_or_id)
                .ok()
                .filter(|t| image.repo_tags.contains(t));
            let delete = match &by_tag {
                Some(t) => image.repo_tags.len() == 1 && image.repo_tags[0] == *t,
                None => true,
            };
            if delete {
                if in_use(&image) {
                    return Err(ImageError::InUse {
                        id: image.id.clone(),
                        tags: image.repo_tags.join(", "),
                    });
                }
                removed.untagged = image.repo_tags.clone();
                let p = self.image_path(&image.id);
                fs::remove_file(&p).map_err(|e| ImageError::io("remove", &p, e))?;
                let chain = chain_id(&image.diff_ids);
                let shared = images
                    .iter()
                    .any(|i| i.id != image.id && chain_id(&i.diff_ids) == chain);
                let rf = self.rootfs_path(&chain);
                if !image.diff_ids.is_empty() && !shared {
                    if let Ok(m) = fs::metadata(&rf) {
                        if fs::remove_file(&rf).is_ok() {
                            removed.freed_bytes += m.len();
                        }
                    }
                }
                removed.deleted.push(image.id.clone());
            } else if let Some(t) = by_tag {
                image.repo_tags.retain(|x| *x != t);
                self.write_image(&image)?;
                removed.untagged.push(t);
            }
        }
        removed.freed_bytes += self.try_gc()?;
        Ok(removed)
    }

    /// Deletes blobs no image references, unless a pull/load/build is running.
    /// Returns the bytes freed.
    pub fn try_gc(&self) -> Result<u64, ImageError> {
        let Some(_gc) = flock(&self.lock_path("gc"), true, false)? else {
            tracing::debug!("image GC skipped: a pull, load or rootfs build is running");
            return Ok(0);
        };
        let _meta = flock(&self.lock_path("meta"), true, true)?;
        self.gc_locked()
    }

    fn gc_locked(&self) -> Result<u64, ImageError> {
        let images = self.list_unlocked()?;
        let mut keep: HashSet<String> = HashSet::new();
        for img in &images {
            keep.insert(hex_of(&img.id).to_string());
            for l in &img.layers {
                keep.insert(hex_of(l).to_string());
            }
        }
        let chains: HashSet<String> = images
            .iter()
            .filter(|i| !i.diff_ids.is_empty())
            .map(|i| chain_id(&i.diff_ids))
            .collect();
        let mut freed = 0;
        let dir = self.root.join("blobs/sha256");
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read directory", &dir, e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                if fs::remove_file(e.path()).is_ok() {
                    freed += size;
                }
            }
        }
        let rdir = self.root.join("rootfs");
        if let Ok(rd) = fs::read_dir(&rdir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".img").unwrap_or(&name);
                if !chains.contains(stem) {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    if fs::remove_file(e.path()).is_ok() {
                        freed += size;
                    }
                }
            }
        }
        Ok(freed)
    }

    /// The shared read-only rootfs image of `image`, built once per
    /// verified layer stack. The layers are checked against the diff_ids of
    /// the config the image id names (read again from the store, not taken
    /// from the record), and unpacked into a private directory: 0700, on a
    /// nosuid,nodev,noexec bind mount in a mount namespace of its own when
    /// run as root (see [`private_mount`]).
    pub fn rootfs(
        &self,
        image: &Image,
        build: &(dyn Fn(&Path, &Path) -> Result<(), String> + Sync),
    ) -> Result<PathBuf, ImageError> {
        let name = display_name(image);
        let diff_ids = self.checked_diff_ids(image, &name)?;
        let dest = self.rootfs_path(&chain_id(&diff_ids));
        if dest.exists() {
            return Ok(dest);
        }
        let _gc = flock(&self.lock_path("gc"), false, true)?;
        let _build = flock(
            &self.lock_path(&format!("{}.rootfs", chain_id(&diff_ids))),
            true,
            true,
        )?;
        if dest.exists() {
            return Ok(dest);
        }
        let file = self.tmp_dir().join(format!("rootfs-{}.img", unique()));
        // The unpacked tree and the image built from it, at most the limit each.
        let res = self.unpack_verified(image, &name, &diff_ids, 2, |root| {
            build(root, &file).map_err(|detail| ImageError::RootfsBuild {
                id: image.id.clone(),
                detail,
            })?;
            fs::rename(&file, &dest).map_err(|e| ImageError::io("rename into", &dest, e))
        });
        let _ = fs::remove_file(&file);
        res.map(|()| dest)
    }

    /// Unpacks `image`'s layers into a private temporary directory, as for
    /// its rootfs (same limits, same checks of the layers' digests), runs
    /// `visit` on the tree and removes it. For a volume's copy-up, which
    /// needs the image's files on the host (the rootfs image is an erofs
    /// file only the guest mounts).
    pub fn with_unpacked<T: Send>(
        &self,
        image: &Image,
        visit: &(dyn Fn(&Path) -> Result<T, String> + Sync),
    ) -> Result<T, ImageError> {
        let name = display_name(image);
        let diff_ids = self.checked_diff_ids(image, &name)?;
        // Layers are not removed while the tree is read (gc waits).
        let _gc = flock(&self.lock_path("gc"), false, true)?;
        self.unpack_verified(image, &name, &diff_ids, 1, |root| {
            visit(root).map_err(|detail| ImageError::Unpacked {
                id: image.id.clone(),
                detail,
            })
        })
    }

    /// The diff_ids of the config `image`'s id names, read again from the
    /// store (not taken from the record) and checked against that id and
    /// the image's layer count.
    fn checked_diff_ids(&self, image: &Image, name: &str) -> Result<Vec<String>, ImageError> {
        let cfg_path = self.blob_path(&image.id);
        let cfg = crate::load::read_small(&cfg_path, crate::manifest::MAX_CONFIG_BYTES)?;
        if format!("sha256:{:x}", <sha2::Sha256 as sha2::Digest>::digest(&cfg)) != image.id {
            return Err(ImageError::Corrupt {
                path: cfg_path,
                detail: "the config blob does not match its digest".into(),
            });
        }
        let diff_ids = crate::manifest::parse_config(name, &cfg)?.diff_ids;
        check_count(name, &image.layers, &diff_ids)?;
        Ok(diff_ids)
    }

    /// Unpacks `image`'s layers into a private directory (0700, on a
    /// nosuid,nodev,noexec bind mount of its own: [`private_mount`]),
    /// checks what was unpacked against `diff_ids`, runs `use_tree` on the
    /// tree inside that mount, and removes the directory. `copies` is how
    /// many times the unpacked size must fit in the free space. The caller
    /// holds the gc lock, so the layers stay.
    fn unpack_verified<T: Send>(
        &self,
        image: &Image,
        name: &str,
        diff_ids: &[String],
        copies: u64,
        use_tree: impl FnOnce(&Path) -> Result<T, ImageError> + Send,
    ) -> Result<T, ImageError> {
        if !self.image_path(&image.id).exists() {
            return Err(ImageError::NoSuchImage {
                name: image.id.clone(),
            });
        }
        let estimate = if image.unpacked_size > 0 {
            image.unpacked_size
        } else {
            self.limits.max_bytes.min(image.size.saturating_mul(4))
        };
        self.ensure_space(
            &format!("unpacking {name}"),
            estimate.saturating_mul(copies),
        )?;
        let dir = self.tmp_dir().join(format!("unpack-{}", unique()));
        let root = dir.join("root");
        let res = (|| {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| ImageError::io("create directory", &dir, e))?;
            // The image's own "/" (0755 unless a layer says otherwise).
            fs::DirBuilder::new()
                .mode(0o755)
                .create(&root)
                .map_err(|e| ImageError::io("create directory", &root, e))?;
            let layers: Vec<PathBuf> = image.layers.iter().map(|d| self.blob_path(d)).collect();
            private_mount(&dir, || {
                let checked = unpack::unpack(&root, &layers, self.limits)
                    .map_err(|(i, e)| layer_error(name, &image.layers[i], e))?;
                check_diff_ids(name, &image.layers, diff_ids, &checked.diff_ids)?;
                use_tree(&root)
            })
        })();
        let _ = fs::remove_dir_all(&dir);
        res
    }
}

/// How errors name an image: its first tag, or its id.
fn display_name(image: &Image) -> String {
    image
        .repo_tags
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.clone())
}

/// Runs `f` on a thread of its own, in a mount namespace of its own where
/// `dir` is bind-mounted on itself `nosuid,nodev,noexec` (root only; as
/// another user, or if the kernel refuses, `dir`'s 0700 mode is the only
/// barrier, and a warning says so). Whatever `f` starts (mkfs.erofs) runs
/// in that namespace; the mount goes away with the thread and its children,
/// so a crash leaves no mount behind.
pub(crate) fn private_mount<T: Send>(dir: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                if let Err(e) = bind_private(dir) {
                    tracing::warn!(dir = %dir.display(), err = %e, "no private nosuid,nodev mount for the unpack; relying on its 0700 mode");
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn bind_private(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: unshare affects only this thread (which owns no fs state
    // others rely on: it was made for this); the mount calls get valid
    // NUL-terminated paths and null pointers where the kernel allows them.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c.as_ptr(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))
    }
}

/// Bytes available to unprivileged writers on `path`'s file system.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: statvfs is plain data; zeroed is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a pointer to an owned statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The OCI ChainID of a layer stack (hex): what its unpacked tree depends
/// on, and the name of its rootfs image. `sha256("")` for no layers.
pub fn chain_id(diff_ids: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut chain: Option<String> = None;
    for d in diff_ids {
        chain = Some(match chain {
            None => d.clone(),
            Some(c) => format!("sha256:{:x}", Sha256::digest(format!("{c} {d}"))),
        });
    }
    match chain {
        Some(c) => hex_of(&c).to_string(),
        None => format!("{:x}", Sha256::digest(b"")),
    }
}

fn check_count(reference: &str, layers: &[String], diff_ids: &[String]) -> Result<(), ImageError> {
    if layers.len() != diff_ids.len() {
        let (index, digest) = if layers.len() > diff_ids.len() {
            (diff_ids.len(), layers[diff_ids.len()].clone())
        } else {
            (layers.len(), "(missing)".to_string())
        };
        return Err(ImageError::DiffIdMismatch {
            reference: reference.into(),
            digest,
            index,
            detail: format!(
                "the manifest lists {} layers but the config's rootfs.diff_ids has {}",
                layers.len(),
                diff_ids.len()
            ),
        });
    }
    Ok(())
}

fn check_diff_ids(
    reference: &str,
    layers: &[String],
    want: &[String],
    got: &[String],
) -> Result<(), ImageError> {
    check_count(reference, layers, want)?;
    if let Some(i) = (0..want.len()).find(|&i| got.get(i) != Some(&want[i])) {
        return Err(ImageError::DiffIdMismatch {
            reference: reference.into(),
            digest: layers[i].clone(),
            index: i,
            detail: format!(
                "its uncompressed content is {}, the config's diff_ids[{i}] says {}",
                got.get(i).map(String::as_str).unwrap_or("(not read)"),
                want[i]
            ),
        });
    }
    Ok(())
}

pub(crate) fn layer_error(reference: &str, digest: &str, e: UnpackError) -> ImageError {
    match e {
        UnpackError::Unsafe(detail) => ImageError::UnsafeLayer {
            reference: reference.into(),
            digest: digest.into(),
            detail,
        },
        UnpackError::Bad(detail) => ImageError::BadLayer {
            reference: reference.into(),
            digest: digest.into(),
            detail,
        },
        UnpackError::Io(op, path, source) => ImageError::io(op, path, source),
    }
}

fn find_in(images: &[Image], name_or_id: &str) -> Result<Option<Image>, ImageError> {
    if let Ok(tag) = normalize_tag(name_or_id) {
        if let Some(i) = images.iter().find(|i| i.repo_tags.contains(&tag)) {
            return Ok(Some(i.clone()));
        }
    }
    if let Ok(r) = crate::ImageRef::parse(name_or_id) {
        if let Some(d) = &r.digest {
            let rd = format!("{}@{d}", r.repo);
            if let Some(i) = images.iter().find(|i| i.repo_digests.contains(&rd)) {
                return Ok(Some(i.clone()));
            }
        }
    }
    let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hex = hex.to_ascii_lowercase();
    let hits: Vec<&Image> = images
        .iter()
        .filter(|i| hex_of(&i.id).starts_with(&hex))
        .collect();
    match hits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).clone())),
        many => Err(ImageError::Ambiguous {
            name: name_or_id.into(),
            candidates: many
                .iter()
                .map(|i| &hex_of(&i.id)[..12])
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct AuthFile {
    #[serde(default)]
    auths: serde_json::Map<String, serde_json::Value>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// Docker Hub's historical key in auth files.
const HUB_KEYS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "https://index.docker.io/v1/",
    "registry-1.docker.io",
];

/// Stores credentials for `registry` in a docker config.json-style file
/// (atomically, mode 0600), keeping other entries.
pub fn save_login(
    auth_file: &Path,
    registry: &str,
    user: &str,
    password: &str,
) -> Result<(), ImageError> {
    let bad = |detail: String| ImageError::AuthFile {
        path: auth_file.into(),
        detail,
    };
    if registry.is_empty() || user.is_empty() || user.contains(':') {
        return Err(bad(
            "the registry and user must be non-empty and the user must not contain ':'".into(),
        ));
    }
    let mut file: AuthFile = match fs::read(auth_file) {
        Ok(d) => serde_json::from_slice(&d).map_err(|e| bad(crate::error::json_detail(&e)))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => AuthFile::default(),
        Err(e) => return Err(ImageError::io("read", auth_file, e)),
    };
    let key = if HUB_KEYS.contains(&registry) {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    file.auths
        .insert(key.to_string(), serde_json::json!({ "auth": auth }));
    if let Some(dir) = auth_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| ImageError::io("create directory", dir, e))?;
    }
    let data = serde_json::to_vec_pretty(&file).map_err(|e| bad(e.to_string()))?;
    write_atomic(auth_file, &data, 0o600)
}

/// Reads the credentials for `registry` from an auth file, if any.
pub(crate) fn read_login(
    auth_file: &Path,
    registry: &str,
) -> Result<Option<(String, String)>, ImageError> {
    let bad = |detail: String| ImageError::AuthFile {
        path: auth_file.into(),
        detail,
    };
    let data = match fs::read(auth_file) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io("read", auth_file, e)),
    };
    let file: AuthFile =
        serde_json::from_slice(&data).map_err(|e| bad(crate::error::json_detail(&e)))?;
    let keys: Vec<String> = if HUB_KEYS.contains(&registry) {
        HUB_KEYS.iter().map(|s| s.to_string()).collect()
    } else {
        vec![
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
        ]
    };
    for k in keys {
        let Some(entry) = file.auths.get(&k) else {
            continue;
        };
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            return Err(bad(format!("auths.{k:?} has no \"auth\" string")));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("auths.{k:?}.auth is not base64: {e}")))?;
        let text =
            String::from_utf8(raw).map_err(|_| bad(format!("auths.{k:?}.auth is not UTF-8")))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| bad(format!("auths.{k:?}.auth is not base64(user:password)")))?;
        return Ok(Some((u.to_string(), p.to_string())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
