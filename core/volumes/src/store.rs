//! Named volumes: `state_dir/volumes/NAME/` holds `volume.json` (what it
//! is) and either `_data/` (a directory volume, shared with pods as a host
//! directory) or `disk.img` (a block volume, a pod's extra disk). Like the
//! rest of the state, `volumes/` and each `NAME/` are 0700: only root on
//! the host reaches a volume's data; `_data/` itself is 0755 so that a
//! non-root user in a container can read it, as in Docker.
//!
//! A volume appears whole or not at all: it is made in a hidden directory
//! and renamed into place, so two pods asking for one new name at once end
//! up with the same volume, and a failed `mkfs` leaves nothing behind.
//! Whether a pod uses a volume is the runtime's to say (its records); this
//! store only refuses what it can see itself.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::private::{create_private_dir, write_private};

/// Longest volume name (it becomes a path component and a label).
pub const MAX_NAME: usize = 128;
const META: &str = "volume.json";
const DATA: &str = "_data";
const DISK: &str = "disk.img";
/// `volume.json` is small; a bigger one is not ours.
const MAX_META_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    /// `_data/`, shared as a host directory.
    Directory,
    /// `disk.img`, attached as a read-write disk.
    Block,
}

impl std::fmt::Display for VolumeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VolumeKind::Directory => "directory",
            VolumeKind::Block => "block",
        })
    }
}

/// A named volume, as `volume.json` keeps it and `hyper volume inspect`
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedVolume {
    pub name: String,
    pub kind: VolumeKind,
    pub created_unix: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A block volume's disk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The filesystem `mkfs` made on a block volume, if it made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Made for one pod's `-v /path` (Docker's anonymous volume): a random
    /// 64-hex name, removed with the pod by `--rm` or `hyper rm -v`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
    /// `_data/` or `disk.img` (filled in when read; not stored).
    #[serde(default, skip_deserializing)]
    pub mountpoint: PathBuf,
}

/// How to make a volume that does not exist yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    /// Directory unless said otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<VolumeKind>,
    /// A block volume's size (needed for one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `ext4`: make that filesystem on a new block volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkfs: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl VolumeOptions {
    pub fn kind(&self) -> VolumeKind {
        self.kind.unwrap_or(VolumeKind::Directory)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("volume name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("no such volume: {0}; create it with `hyper volume create {0}` (or name it in -v NAME:/path, which creates it)")]
    NotFound(String),
    #[error("volume {name} is a {is} volume, not a {wanted} one")]
    WrongKind {
        name: String,
        is: VolumeKind,
        wanted: VolumeKind,
    },
    #[error("volume {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("volume {name}: mkfs.{fstype} failed: {reason}")]
    Mkfs {
        name: String,
        fstype: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: in use by another running pod (two writers would corrupt its filesystem)")]
    InUse { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Docker's rule for local volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, and
/// at most [`MAX_NAME`] bytes.
pub fn check_volume_name(name: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| StoreError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(bad("empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(bad(
                "invalid: a volume name starts with a letter or digit ([a-zA-Z0-9][a-zA-Z0-9_.-]+); a host directory needs an absolute path",
            ))
        }
        _ => {}
    }
    if name.len() < 2 {
        return Err(bad(
            "invalid: at least two characters ([a-zA-Z0-9][a-zA-Z0-9_.-]+)",
        ));
    }
    if name.len() > MAX_NAME {
        return Err(bad(&format!("longer than {MAX_NAME} bytes")));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad(
            "invalid characters: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ (a host directory needs an absolute path)",
        ));
    }
    Ok(())
}

/// The named volumes under one state directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    dir: PathBuf,
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

impl VolumeStore {
    /// The store in `state_dir/volumes` (made on first use).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("volumes"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes volume `name` unless it exists. Returns it and whether it was
    /// made now; an existing one of the other kind is an error, an existing
    /// one of the same kind is returned as it is (Docker's `volume create`
    /// is idempotent too).
    pub fn create(
        &self,
        name: &str,
        opts: &VolumeOptions,
    ) -> Result<(NamedVolume, bool), StoreError> {
        self.create_marked(name, opts, false)
    }

    /// Makes a new anonymous directory volume: a random 64-hex name (as
    /// Docker names them), marked `anonymous`.
    pub fn create_anonymous(&self) -> Result<NamedVolume, StoreError> {
        let name = random_name().map_err(io_err(Path::new("/dev/urandom")))?;
        let (volume, made) = self.create_marked(&name, &VolumeOptions::default(), true)?;
        if !made {
            // 256 random bits that collide: the random source is broken.
            return Err(StoreError::Invalid {
                name,
                reason: "a new anonymous volume's random name exists already".into(),
            });
        }
        Ok(volume)
    }

    fn create_marked(
        &self,
        name: &str,
        opts: &VolumeOptions,
        anonymous: bool,
    ) -> Result<(NamedVolume, bool), StoreError> {
        check_volume_name(name)?;
        let kind = opts.kind();
        if let Some(existing) = self.find(name)? {
            return same_kind(existing, kind).map(|v| (v, false));
        }
        let invalid = |reason: &str| StoreError::Invalid {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let size = match kind {
            VolumeKind::Directory if opts.size_bytes.is_some() || opts.mkfs.is_some() => {
                return Err(invalid(
                    "size and mkfs are for a block volume (--kind block / type=block)",
                ))
            }
            VolumeKind::Directory => None,
            VolumeKind::Block => Some(opts.size_bytes.ok_or_else(|| {
                invalid("a new block volume needs a size (size=1g, or --size 1g)")
            })?),
        };
        if let Some(size) = size {
            if !(crate::request::MIN_BLOCK_BYTES..=crate::request::MAX_BLOCK_BYTES).contains(&size)
            {
                return Err(invalid("size: use 1m to 16t"));
            }
        }
        if let Some(fs) = &opts.mkfs {
            if !crate::request::MKFS_TYPES.contains(&fs.as_str()) {
                return Err(invalid("mkfs: only ext4 is supported"));
            }
        }
        private_dir(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".new-{name}-{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        let made = self.fill(&tmp, name, kind, size, opts, anonymous);
        let volume = match made {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let target = self.dir.join(name);
        match std::fs::rename(&tmp, &target) {
            Ok(()) => {
                tracing::info!(volume = name, %kind, "volume created");
                Ok((self.with_mountpoint(volume), true))
            }
            // Made by someone else meanwhile: theirs is the volume.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                let _ = std::fs::remove_dir_all(&tmp);
                same_kind(self.get(name)?, kind).map(|v| (v, false))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(io_err(&target)(e))
            }
        }
    }

    /// Makes a volume's files in `dir` (not yet in place).
    fn fill(
        &self,
        dir: &Path,
        name: &str,
        kind: VolumeKind,
        size: Option<u64>,
        opts: &VolumeOptions,
        anonymous: bool,
    ) -> Result<NamedVolume, StoreError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let mut volume = NamedVolume {
            name: name.to_string(),
            kind,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            labels: opts.labels.clone(),
            size_bytes: size,
            fstype: None,
            anonymous,
            mountpoint: PathBuf::new(),
        };
        match kind {
            VolumeKind::Directory => {
                let data = dir.join(DATA);
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&data)
                    .map_err(io_err(&data))?;
                // Whatever the umask: as Docker's `_data`.
                std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_err(&data))?;
            }
            VolumeKind::Block => {
                let disk = dir.join(DISK);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&disk)
                    .map_err(io_err(&disk))?;
                f.set_len(size.unwrap_or(0)).map_err(io_err(&disk))?;
                drop(f);
                if let Some(fs) = &opts.mkfs {
                    mkfs(name, fs, &disk)?;
                    volume.fstype = Some(fs.clone());
                }
            }
        }
        let meta = dir.join(META);
        let json = serde_json::to_vec_pretty(&volume).map_err(|e| StoreError::Io {
            path: meta.clone(),
            source: io::Error::other(e),
        })?;
        write_private(&meta, &json)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&meta))?;
        Ok(volume)
    }

    /// Volume `name`, or [`StoreError::NotFound`].
    pub fn get(&self, name: &str) -> Result<NamedVolume, StoreError> {
        check_volume_name(name)?;
        self.find(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    fn find(&self, name: &str) -> Result<Option<NamedVolume>, StoreError> {
        let meta = self.dir.join(name).join(META);
        let file = match File::open(&meta) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&meta)(e)),
        };
        let mut text = Vec::new();
        use std::io::Read;
        file.take(MAX_META_BYTES)
            .read_to_end(&mut text)
            .map_err(io_err(&meta))?;
        let volume: NamedVolume = serde_json::from_slice(&text).map_err(|e| StoreError::Io {
            path: meta.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        if volume.name != name {
            return Err(StoreError::Io {
                path: meta,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("names volume {:?}", volume.name),
                ),
            });
        }
        Ok(Some(self.with_mountpoint(volume)))
    }

    fn with_mountpoint(&self, mut volume: NamedVolume) -> NamedVolume {
        let dir = self.dir.join(&volume.name);
        volume.mountpoint = match volume.kind {
            VolumeKind::Directory => dir.join(DATA),
            VolumeKind::Block => dir.join(DISK),
        };
        volume
    }

    /// Every volume, by name. An unreadable entry is skipped with a warning
    /// (one broken volume does not hide the others).
    pub fn list(&self) -> Result<Vec<NamedVolume>, StoreError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_volume_name(&name).is_err() {
                continue;
            }
            match self.find(&name) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping volume {name}: {e}"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes volume `name` and its data. The caller has checked that no
    /// pod uses it. It disappears at once (renamed away), then its files
    /// go.
    pub fn remove(&self, name: &str) -> Result<NamedVolume, StoreError> {
        let volume = self.get(name)?;
        let dir = self.dir.join(name);
        let gone = self.dir.join(format!(
            ".rm-{name}-{}-{}",
            std::process::id(),
            NEXT_TMP.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&dir, &gone).map_err(io_err(&dir))?;
        std::fs::remove_dir_all(&gone).map_err(io_err(&gone))?;
        tracing::info!(volume = name, "volume removed");
        Ok(volume)
    }
}

/// 32 random bytes in hex: an anonymous volume's name.
fn random_name() -> io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether directory `dir` holds nothing (a volume that may be filled
/// from the image).
pub fn is_empty_dir(dir: &Path) -> Result<bool, StoreError> {
    Ok(std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .next()
        .is_none())
}

fn same_kind(v: NamedVolume, wanted: VolumeKind) -> Result<NamedVolume, StoreError> {
    if v.kind == wanted {
        Ok(v)
    } else {
        Err(StoreError::WrongKind {
            name: v.name,
            is: v.kind,
            wanted,
        })
    }
}

fn private_dir(dir: &Path) -> Result<(), StoreError> {
    create_private_dir(dir).map_err(io_err(dir))
}

/// Where `mkfs.FS` is: `PATH`, then the sbin directories a non-root
/// `PATH` often lacks.
fn find_mkfs(fstype: &str) -> Option<PathBuf> {
    let exe = format!("mkfs.{fstype}");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(&exe))
        .find(|p| p.is_file())
}

/// Makes an empty `fstype` filesystem on `disk`, owned by root in the guest.
fn mkfs(name: &str, fstype: &str, disk: &Path) -> Result<(), StoreError> {
    let fail = |reason: String| StoreError::Mkfs {
        name: name.to_string(),
        fstype: fstype.to_string(),
        reason,
    };
    let exe = find_mkfs(fstype).ok_or_else(|| {
        fail(format!(
            "mkfs.{fstype} not found; install it (Debian: apt-get install e2fsprogs)"
        ))
    })?;
    let out = Command::new(&exe)
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0"])
        .arg(disk)
        .output()
        .map_err(|e| fail(format!("{}: {e}", exe.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr.chars().take(1024).collect();
        return Err(fail(format!("{}: {}", out.status, tail.trim())));
    }
    Ok(())
}

/// A block volume's file held for one running pod: an exclusive `flock` on
/// its own open file description, so a second pod (of this hyperd or of
/// another one on the host) is refused while it is held. Dropped with the
/// pod's VM.
#[derive(Debug)]
pub struct BlockLock {
    path: PathBuf,
    _file: File,
}

impl BlockLock {
    /// Takes the lock on `path`, or [`StoreError::InUse`] if another holds
    /// it. Never blocks.
    pub fn take(path: &Path) -> Result<Self, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(io_err(path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is
        // passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StoreError::InUse {
                    path: path.to_path_buf(),
                }
            } else {
                io_err(path)(e)
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["ab", "data", "my-vol_1.2", "0x"] {
            assert!(check_volume_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            ".ab",
            "_ab",
            "a/b",
            "a b",
            "ä1",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(check_volume_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_volume_is_made_private_listed_and_removed() {
        let state = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(state.path());
        assert!(store.list().unwrap().is_empty());
        let (v, made) = store.create("data", &VolumeOptions::default()).unwrap();
        assert!(made);
        assert_eq!(v.kind, VolumeKind::Directory);
        assert_eq!(v.mountpoint, state.path().join("volumes/data/_data"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&state.path().join("volumes")), 0o700);
        assert_eq!(mode(&state.path().join("volumes/data")), 0o700);
        assert_eq!(mode(&v.mountpoint), 0o755);
        assert_eq!(mode(&state.path().join("volumes/data/volume.json")), 0o600);
        // Again: the same one, not made twice; of another kind: refused.
        let (again, made) = store.create("data", &VolumeOptions::default()).unwrap();
        assert!(!made);
        assert_eq!(again, v);
        let block = VolumeOptions {
            kind: Some(VolumeKind::Block),
            size_bytes: Some(1 << 20),
            ..Default::default()
        };
        let e = store.create("data", &block).unwrap_err().to_string();
        assert!(e.contains("directory volume, not a block"), "{e}");
        assert_eq!(store.list().unwrap(), vec![v.clone()]);
        assert_eq!(store.get("data").unwrap(), v);
        store.remove("data").unwrap();
        assert!(matches!(store.get("data"), Err(StoreError::NotFound(_))));
        assert!(matches!(store.remove("data"), Err(StoreError::NotFound(_))));
        // Nothing left behind, no hidden leftovers either.
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 0);
        let e = store.get("../x").unwrap_err().to_string();
        assert!(e.contains("volume name"), "{e}");
    }

    #[test]
    fn anonymous_volumes_get_random_hex_names_and_are_marked() {
        let state = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(state.path());
        let a = store.create_anonymous().unwrap();
        let b = store.create_anonymous().unwrap();
        assert_ne!(a.name, b.name);
        for v in [&a, &b] {
            assert_eq!(v.name.len(), 64);
            assert!(v.name.chars().all(|c| c.is_ascii_hexdigit()));
            assert!(v.anonymous && v.kind == VolumeKind::Directory);
            assert!(is_empty_dir(&v.mountpoint).unwrap());
        }
        let listed: Vec<_> = store
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.anonymous)
            .collect();
        assert_eq!(listed, [true, true]);
        // A named one is not anonymous, and its JSON says nothing of it.
        let (named, _) = store.create("named", &VolumeOptions::default()).unwrap();
        assert!(!named.anonymous);
        let json = std::fs::read_to_string(store.dir().join("named/volume.json")).unwrap();
        assert!(!json.contains("anonymous"), "{json}");
        std::fs::write(named.mountpoint.join("f"), "x").unwrap();
        assert!(!is_empty_dir(&named.mountpoint).unwrap());
        store.remove(&a.name).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn block_volumes_need_a_size_and_a_known_filesystem() {
        let state = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(state.path());
        let opts = |size, mkfs: Option<&str>| VolumeOptions {
            kind: Some(VolumeKind::Block),
            size_bytes: size,
            mkfs: mkfs.map(str::to_string),
            ..Default::default()
        };
        assert!(store.create("db", &opts(None, None)).is_err());
        assert!(store
            .create("db", &opts(Some(1 << 20), Some("xfs")))
            .is_err());
        assert!(store.create("db", &opts(Some(1), None)).is_err());
        let dir_with_size = VolumeOptions {
            size_bytes: Some(1 << 20),
            ..Default::default()
        };
        assert!(store.create("db", &dir_with_size).is_err());
        assert!(std::fs::read_dir(store.dir()).map_or(0, Iterator::count) == 0);
        let (v, _) = store.create("db", &opts(Some(8 << 20), None)).unwrap();
        assert_eq!(std::fs::metadata(&v.mountpoint).unwrap().len(), 8 << 20);
        assert_eq!(v.fstype, None);
    }

    #[test]
    fn mkfs_makes_ext4_when_it_is_installed() {
        if find_mkfs("ext4").is_none() {
            eprintln!("mkfs.ext4 not installed: skipped");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(state.path());
        let opts = VolumeOptions {
            kind: Some(VolumeKind::Block),
            size_bytes: Some(16 << 20),
            mkfs: Some("ext4".into()),
            ..Default::default()
        };
        let (v, _) = store.create("db", &opts).unwrap();
        assert_eq!(v.fstype.as_deref(), Some("ext4"));
        let mut magic = [0u8; 2];
        use std::io::{Read, Seek};
        let mut f = File::open(&v.mountpoint).unwrap();
        f.seek(io::SeekFrom::Start(1024 + 0x38)).unwrap();
        f.read_exact(&mut magic).unwrap();
        assert_eq!(magic, [0x53, 0xef], "ext superblock magic");
    }

    #[test]
    fn a_block_file_is_locked_for_one_pod_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"").unwrap();
        let first = BlockLock::take(&disk).unwrap();
        assert_eq!(first.path(), disk);
        let e = BlockLock::take(&disk).unwrap_err();
        assert!(matches!(e, StoreError::InUse { .. }), "{e}");
        drop(first);
        assert!(BlockLock::take(&disk).is_ok());
        assert!(BlockLock::take(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_broken_volume_json_is_skipped_in_the_list_and_named_in_get() {
        let state = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(state.path());
        store.create("good", &VolumeOptions::default()).unwrap();
        std::fs::create_dir_all(store.dir().join("bad1")).unwrap();
        std::fs::write(store.dir().join("bad1/volume.json"), "{").unwrap();
        let names: Vec<_> = store.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["good"]);
        let e = store.get("bad1").unwrap_err().to_string();
        assert!(e.contains("bad1/volume.json"), "{e}");
    }
}
