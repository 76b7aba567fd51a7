//! Unpacking untrusted layers: in order, with whiteouts, links, devices,
//! ownership, modes, mtimes and xattrs, refusing anything that would write
//! outside the root.
//!
//! Paths are resolved by hand, one component at a time, against the tree
//! built so far: a symlink inside the root is followed *in scope* (an
//! absolute target means the root, as in a chroot), and one whose `..` would
//! climb above the root is refused. The same logic runs against an
//! in-memory model ([`validate`]) when an image is pulled or loaded, so a
//! hostile image is refused before it is stored, and against the real file
//! system ([`unpack`]) when the rootfs is built.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

/// Bounds on what one image may make us write.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 << 30,
            max_entries: 4_000_000,
        }
    }
}

#[derive(Debug)]
pub enum UnpackError {
    /// The layer tries to escape the root or is otherwise hostile.
    Unsafe(String),
    /// The layer is not a tar archive we can read.
    Bad(String),
    Io(&'static str, PathBuf, io::Error),
}

type Result<T> = std::result::Result<T, UnpackError>;

fn unsafe_(m: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe(m.into())
}

/// Opens a layer blob, detecting gzip / zstd / plain tar by its magic bytes.
pub fn open_layer(path: &Path) -> Result<Box<dyn Read>> {
    let mut f = fs::File::open(path).map_err(|e| UnpackError::Io("open", path.into(), e))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match f.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::Io("read", path.into(), e)),
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let r = head.chain(f);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| UnpackError::Bad(format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Dir,
    Symlink(PathBuf),
    Other,
}

/// The tree a layer is applied to: the real directory or a model of it.
trait Tree {
    fn kind(&self, rel: &Path) -> Result<Option<Kind>>;
    fn ensure_dir(&mut self, rel: &Path) -> Result<()>;
    fn remove_all(&mut self, rel: &Path) -> Result<()>;
    fn children(&self, rel: &Path) -> Result<Vec<PathBuf>>;
    /// Creates `rel` (absent) from the entry. `link` is the resolved hard-link target.
    fn create(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
        link: Option<&Path>,
        budget: &mut Budget,
    ) -> Result<()>;
    /// Called for a directory entry whose directory already exists.
    fn update_dir(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<()>;
    fn finish_layer(&mut self) -> Result<()> {
        Ok(())
    }
}

pub struct Budget {
    limits: Limits,
    bytes: u64,
    entries: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            bytes: 0,
            entries: 0,
        }
    }
}

/// Splits an archive path into normal components; refuses `..` and absolute paths.
fn clean(path: &Path, what: &str) -> Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_(format!("{what} {path:?} contains `..`"))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_(format!("{what} {path:?} is absolute")))
            }
        }
    }
    Ok(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// Resolves a directory path inside the root, following symlinks in scope.
fn resolve_dir(tree: &dyn Tree, comps: &[OsString], shown: &Path) -> Result<Vec<OsString>> {
    let mut pending: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if resolved.pop().is_none() {
                return Err(unsafe_(format!(
                    "{shown:?} leads through a symlink outside the root"
                )));
            }
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        resolved.push(c);
        match tree.kind(&join(&resolved))? {
            None | Some(Kind::Dir) => {}
            Some(Kind::Symlink(target)) => {
                hops += 1;
                if hops > 40 {
                    return Err(unsafe_(format!("{shown:?}: too many levels of symlinks")));
                }
                resolved.pop();
                if target.is_absolute() {
                    resolved.clear();
                }
                for (i, t) in target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .enumerate()
                {
                    pending.insert(i, t);
                }
            }
            Some(Kind::Other) => {
                return Err(UnpackError::Bad(format!(
                    "{shown:?}: {:?} is not a directory",
                    join(&resolved)
                )));
            }
        }
    }
    Ok(resolved)
}

const WH: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Applies one layer to `tree`.
fn apply_layer(tree: &mut dyn Tree, layer: Box<dyn Read + '_>, budget: &mut Budget) -> Result<()> {
    let mut archive = tar::Archive::new(layer);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Bad(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Bad(e.to_string()))?;
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(unsafe_(format!(
                "more than {} entries",
                budget.limits.max_entries
            )));
        }
        let et = entry.header().entry_type();
        if matches!(
            et,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let raw_path = entry
            .path()
            .map_err(|e| UnpackError::Bad(e.to_string()))?
            .into_owned();
        let comps = clean(&raw_path, "path")?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // "./": the root itself
        };
        let name_s = name.to_string_lossy();
        let parent = resolve_dir(tree, parent, &raw_path)?;
        let parent_path = join(&parent);
        if name_s == OPAQUE {
            for child in tree.children(&parent_path)? {
                if !created.contains(&child) {
                    tree.remove_all(&child)?;
                }
            }
            continue;
        }
        if let Some(hidden) = name_s.strip_prefix(WH) {
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(unsafe_(format!("bad whiteout {raw_path:?}")));
            }
            let victim = parent_path.join(hidden);
            if tree.kind(&victim)?.is_some() {
                tree.remove_all(&victim)?;
            }
            continue;
        }
        let rel = parent_path.join(name);
        let link = if et == EntryType::Link {
            let target = entry
                .link_name()
                .map_err(|e| UnpackError::Bad(e.to_string()))?
                .ok_or_else(|| UnpackError::Bad(format!("hard link {raw_path:?} has no target")))?
                .into_owned();
            let tcomps = clean(&target, "hard link target")?;
            let Some((tname, tparent)) = tcomps.split_last() else {
                return Err(unsafe_(format!(
                    "hard link {raw_path:?} points at the root"
                )));
            };
            let tp = join(&resolve_dir(tree, tparent, &target)?).join(tname);
            match tree.kind(&tp)? {
                None => {
                    return Err(UnpackError::Bad(format!(
                        "hard link {raw_path:?} -> {target:?}: target does not exist"
                    )))
                }
                Some(Kind::Dir) => {
                    return Err(unsafe_(format!(
                        "hard link {raw_path:?} -> {target:?} points at a directory"
                    )))
                }
                _ => {}
            }
            if tp == rel {
                continue;
            }
            Some(tp)
        } else {
            None
        };
        match et {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            other => {
                return Err(UnpackError::Bad(format!(
                    "{raw_path:?}: unsupported tar entry type {other:?}"
                )))
            }
        }
        tree.ensure_dir(&parent_path)?;
        match tree.kind(&rel)? {
            Some(Kind::Dir) if et == EntryType::Directory => {
                tree.update_dir(&rel, &mut entry)?;
                created.insert(rel);
                continue;
            }
            Some(_) => tree.remove_all(&rel)?,
            None => {}
        }
        tree.create(&rel, &mut entry, link.as_deref(), budget)?;
        created.insert(rel);
    }
    tree.finish_layer()
}

// ---------------------------------------------------------------- the model

/// An in-memory model of the tree: paths and kinds only.
#[derive(Default)]
struct Model {
    nodes: BTreeMap<PathBuf, Kind>,
}

impl Tree for Model {
    fn kind(&self, rel: &Path) -> Result<Option<Kind>> {
        if rel.as_os_str().is_empty() {
            return Ok(Some(Kind::Dir));
        }
        Ok(self.nodes.get(rel).cloned())
    }
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        let mut p = PathBuf::new();
        for c in rel.components() {
            p.push(c);
            self.nodes.entry(p.clone()).or_insert(Kind::Dir);
        }
        Ok(())
    }
    fn remove_all(&mut self, rel: &Path) -> Result<()> {
        let doomed: Vec<PathBuf> = self
            .nodes
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .map(|(k, _)| k.clone())
            .collect();
        for d in doomed {
            self.nodes.remove(&d);
        }
        Ok(())
    }
    fn children(&self, rel: &Path) -> Result<Vec<PathBuf>> {
        let depth = rel.components().count() + 1;
        Ok(self
            .nodes
            .range(rel.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(rel))
            .filter(|(k, _)| k.components().count() == depth)
            .map(|(k, _)| k.clone())
            .collect())
    }
    fn create(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
        _link: Option<&Path>,
        budget: &mut Budget,
    ) -> Result<()> {
        let kind = match entry.header().entry_type() {
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(symlink_target(entry)?),
            _ => Kind::Other,
        };
        budget.bytes = budget
            .bytes
            .saturating_add(entry.header().size().unwrap_or(0));
        if budget.bytes > budget.limits.max_bytes {
            return Err(unsafe_(format!(
                "unpacks to more than {} bytes",
                budget.limits.max_bytes
            )));
        }
        self.nodes.insert(rel.to_path_buf(), kind);
        Ok(())
    }
    fn update_dir(
        &mut self,
        _rel: &Path,
        _entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<()> {
        Ok(())
    }
}

fn symlink_target(entry: &tar::Entry<'_, Box<dyn Read + '_>>) -> Result<PathBuf> {
    let t = entry
        .link_name()
        .map_err(|e| UnpackError::Bad(e.to_string()))?
        .ok_or_else(|| UnpackError::Bad("symlink without a target".into()))?
        .into_owned();
    if t.as_os_str().is_empty() || t.as_os_str().len() > 4096 {
        return Err(UnpackError::Bad(format!(
            "symlink target {t:?} is empty or too long"
        )));
    }
    Ok(t)
}

/// Checks layers, in order, without writing anything. On error, returns the
/// index of the offending layer.
pub fn validate(
    layers: &[PathBuf],
    limits: Limits,
) -> std::result::Result<(), (usize, UnpackError)> {
    let mut model = Model::default();
    let mut budget = Budget::new(limits);
    for (i, l) in layers.iter().enumerate() {
        let r = open_layer(l).map_err(|e| (i, e))?;
        apply_layer(&mut model, r, &mut budget).map_err(|e| (i, e))?;
    }
    Ok(())
}

// ------------------------------------------------------------ the real tree

struct Disk<'a> {
    root: &'a Path,
    dir_times: Vec<(PathBuf, i64)>,
    is_root: bool,
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| UnpackError::Bad(format!("{p:?} contains a NUL byte")))
}

fn errno(op: &'static str, p: &Path) -> UnpackError {
    UnpackError::Io(op, p.to_path_buf(), io::Error::last_os_error())
}

impl Disk<'_> {
    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn set_meta(
        &mut self,
        abs: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<()> {
        let h = entry.header().clone();
        let et = h.entry_type();
        let c = cpath(abs)?;
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        if self.is_root {
            // SAFETY: `c` is a valid NUL-terminated path; lchown does not follow the final symlink.
            if unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) } != 0 {
                return Err(errno("lchown", abs));
            }
        }
        if et != EntryType::Symlink {
            let mode = h.mode().unwrap_or(0o644) & 0o7777;
            // SAFETY: valid path; chmod after chown so setuid/setgid bits survive.
            if unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) } != 0 {
                return Err(errno("chmod", abs));
            }
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                let Ok(key) = ext.key() else { continue };
                let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                    continue;
                };
                let Ok(cname) = CString::new(name) else {
                    continue;
                };
                let value = ext.value_bytes();
                // SAFETY: valid C strings and a value slice that outlives the call.
                let r = unsafe {
                    libc::lsetxattr(
                        c.as_ptr(),
                        cname.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                if r != 0 {
                    tracing::debug!(path = %abs.display(), xattr = name, err = %io::Error::last_os_error(), "xattr not set");
                }
            }
        }
        let mtime = h.mtime().unwrap_or(0) as i64;
        if et == EntryType::Directory {
            self.dir_times.push((abs.to_path_buf(), mtime));
        } else {
            set_mtime(abs, mtime)?;
        }
        Ok(())
    }
}

fn set_mtime(abs: &Path, mtime: i64) -> Result<()> {
    let c = cpath(abs)?;
    let t = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: valid path and a two-element timespec array, as utimensat requires.
    if unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(errno("set mtime of", abs));
    }
    Ok(())
}

impl Tree for Disk<'_> {
    fn kind(&self, rel: &Path) -> Result<Option<Kind>> {
        let p = self.abs(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let t = fs::read_link(&p).map_err(|e| UnpackError::Io("readlink", p.clone(), e))?;
                Ok(Some(Kind::Symlink(t)))
            }
            Ok(m) if m.is_dir() => Ok(Some(Kind::Dir)),
            Ok(_) => Ok(Some(Kind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UnpackError::Io("lstat", p, e)),
        }
    }
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        // resolve_dir checked every component: each is a real directory or absent.
        let p = self.abs(rel);
        fs::create_dir_all(&p).map_err(|e| UnpackError::Io("mkdir", p, e))
    }
    fn remove_all(&mut self, rel: &Path) -> Result<()> {
        let p = self.abs(rel);
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        r.map_err(|e| UnpackError::Io("remove", p, e))
    }
    fn children(&self, rel: &Path) -> Result<Vec<PathBuf>> {
        let p = self.abs(rel);
        let rd = match fs::read_dir(&p) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(UnpackError::Io("read dir", p, e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| UnpackError::Io("read dir", p.clone(), e))?;
            out.push(rel.join(e.file_name()));
        }
        Ok(out)
    }
    fn create(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
        link: Option<&Path>,
        budget: &mut Budget,
    ) -> Result<()> {
        let abs = self.abs(rel);
        let et = entry.header().entry_type();
        match et {
            EntryType::Directory => {
                fs::create_dir(&abs).map_err(|e| UnpackError::Io("mkdir", abs.clone(), e))?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&abs)
                    .map_err(|e| UnpackError::Io("create", abs.clone(), e))?;
                let remaining = budget.limits.max_bytes.saturating_sub(budget.bytes);
                let n = io::copy(
                    &mut entry.by_ref().take(remaining.saturating_add(1)),
                    &mut f,
                )
                .map_err(|e| UnpackError::Io("write", abs.clone(), e))?;
                budget.bytes += n;
                if budget.bytes > budget.limits.max_bytes {
                    return Err(unsafe_(format!(
                        "unpacks to more than {} bytes",
                        budget.limits.max_bytes
                    )));
                }
            }
            EntryType::Symlink => {
                let target = symlink_target(entry)?;
                symlink(&target, &abs).map_err(|e| UnpackError::Io("symlink", abs.clone(), e))?;
            }
            EntryType::Link => {
                let Some(target) = link else {
                    return Err(UnpackError::Bad(format!(
                        "hard link {rel:?} without a target"
                    )));
                };
                let t = self.abs(target);
                fs::hard_link(&t, &abs)
                    .map_err(|e| UnpackError::Io("hard link", abs.clone(), e))?;
                return Ok(()); // a hard link shares its target's metadata
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let h = entry.header();
                let kind = match et {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                let c = cpath(&abs)?;
                let mode = (h.mode().unwrap_or(0o644) & 0o7777) as libc::mode_t;
                // SAFETY: valid path; mknod creates a node, never follows an existing one.
                if unsafe { libc::mknod(c.as_ptr(), kind | mode, dev) } != 0 {
                    let err = io::Error::last_os_error();
                    if et != EntryType::Fifo && !self.is_root {
                        tracing::warn!(path = %abs.display(), %err, "device node skipped (not root)");
                        return Ok(());
                    }
                    return Err(UnpackError::Io("mknod", abs, err));
                }
            }
            other => {
                return Err(UnpackError::Bad(format!(
                    "{rel:?}: unsupported entry type {other:?}"
                )))
            }
        }
        self.set_meta(&abs, entry)
    }
    fn update_dir(
        &mut self,
        rel: &Path,
        entry: &mut tar::Entry<'_, Box<dyn Read + '_>>,
    ) -> Result<()> {
        let abs = self.abs(rel);
        self.set_meta(&abs, entry)
    }
    fn finish_layer(&mut self) -> Result<()> {
        // Children changed their directories' mtimes: set them last, deepest first.
        let mut times = std::mem::take(&mut self.dir_times);
        times.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, t) in times {
            if fs::symlink_metadata(&p)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                set_mtime(&p, t)?;
            }
        }
        Ok(())
    }
}

/// Unpacks `layers` in order into the (empty) directory `root`.
pub fn unpack(
    root: &Path,
    layers: &[PathBuf],
    limits: Limits,
) -> std::result::Result<(), (usize, UnpackError)> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut disk = Disk {
        root,
        dir_times: Vec::new(),
        is_root,
    };
    let mut budget = Budget::new(limits);
    for (i, l) in layers.iter().enumerate() {
        let r = open_layer(l).map_err(|e| (i, e))?;
        apply_layer(&mut disk, r, &mut budget).map_err(|e| (i, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
