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
//!
//! Both passes hash each layer's uncompressed stream (its `diff_id`), and
//! count every entry's metadata (a header, its path, link target and PAX
//! records) as well as file contents against one byte budget, so neither
//! a compression bomb nor a flood of tiny entries with long names is free.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

/// Bounds on what one image may make us write (`[images] max_unpack_bytes`
/// and `max_unpack_entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// File contents plus metadata (see [`ENTRY_COST`]), all layers together.
    pub max_bytes: u64,
    pub max_entries: u64,
}

pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What each entry costs the budget on top of its path, link target, PAX
/// records and contents: about what an inode and a tar header take.
pub const ENTRY_COST: u64 = 512;

/// The longest path or link target accepted (Linux's PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// What checking or unpacking the layers found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// "sha256:<hex>" of each layer's uncompressed stream, bottom first.
    pub diff_ids: Vec<String>,
    /// What the budget was charged: contents plus metadata.
    pub bytes: u64,
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

    fn charge(&mut self, n: u64) -> Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limits.max_bytes {
            return Err(self.too_big());
        }
        Ok(())
    }

    fn too_big(&self) -> UnpackError {
        unsafe_(format!(
            "unpacks to more than {} bytes (file contents plus {ENTRY_COST} bytes and the path of each entry); if the image is genuine raise [images] max_unpack_bytes",
            self.limits.max_bytes
        ))
    }
}

/// Counts and hashes what the tar reader consumes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// 128 bits of keyed (SipHash, random keys) hashes of a path: what the
/// per-layer sets keep instead of whole paths, so their memory does not grow
/// with path length; random keys, so a layer cannot aim for a collision.
struct PathKeys(
    std::collections::hash_map::RandomState,
    std::collections::hash_map::RandomState,
);

impl PathKeys {
    fn new() -> Self {
        PathKeys(Default::default(), Default::default())
    }
    fn key(&self, p: &Path) -> u128 {
        use std::hash::BuildHasher;
        let b = p.as_os_str().as_bytes();
        (u128::from(self.0.hash_one(b)) << 64) | u128::from(self.1.hash_one(b))
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
    // Keys of the paths this layer created, and of the directories whose
    // opaque marker was applied (a repeated marker would find only this
    // layer's own entries: skipping it keeps 20k markers linear).
    let keys = PathKeys::new();
    let path_key = |p: &Path| keys.key(p);
    let mut created: HashSet<u128> = HashSet::new();
    let mut opaqued: HashSet<u128> = HashSet::new();
    // The last entry's parent as named and as resolved: entries of one
    // directory come together, and resolving a deep path again for each is
    // quadratic in its depth. Valid until anything is removed or a symlink
    // is made (the only changes that can alter a resolution: every
    // component of the resolved parent is a real directory by then).
    let mut memo: Option<(Vec<OsString>, Vec<OsString>)> = None;
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Bad(crate::error::tar_detail(&e)))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| UnpackError::Bad(crate::error::tar_detail(&e)))?;
        budget.entries += 1;
        if budget.entries > budget.limits.max_entries {
            return Err(unsafe_(format!(
                "more than {} entries; if the image is genuine raise [images] max_unpack_entries",
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
            budget.charge(ENTRY_COST.saturating_add(entry.header().size().unwrap_or(0)))?;
            continue;
        }
        let raw_path = entry
            .path()
            .map_err(|e| UnpackError::Bad(crate::error::tar_detail(&e)))?
            .into_owned();
        let link_len = entry.link_name_bytes().map(|l| l.len()).unwrap_or(0);
        let pax_len: usize = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .flatten()
                .map(|x| x.key_bytes().len() + x.value_bytes().len())
                .sum(),
            _ => 0,
        };
        let path_len = raw_path.as_os_str().len();
        if path_len > MAX_PATH || link_len > MAX_PATH {
            return Err(UnpackError::Bad(format!(
                "an entry's path or link target is longer than {MAX_PATH} bytes"
            )));
        }
        budget.charge(ENTRY_COST + (path_len + link_len + pax_len) as u64)?;
        let comps = clean(&raw_path, "path")?;
        let Some((name, parent)) = comps.split_last() else {
            continue; // "./": the root itself
        };
        let name_s = name.to_string_lossy();
        let raw_parent = parent;
        let parent = match &memo {
            Some((raw, resolved)) if raw.as_slice() == raw_parent => resolved.clone(),
            _ => resolve_dir(tree, raw_parent, &raw_path)?,
        };
        let parent_path = join(&parent);
        if name_s == OPAQUE {
            if opaqued.insert(path_key(&parent_path)) {
                memo = None;
                for child in tree.children(&parent_path)? {
                    if !created.contains(&path_key(&child)) {
                        tree.remove_all(&child)?;
                    }
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
                memo = None;
                tree.remove_all(&victim)?;
            }
            continue;
        }
        let rel = parent_path.join(name);
        let link = if et == EntryType::Link {
            let target = entry
                .link_name()
                .map_err(|e| UnpackError::Bad(crate::error::tar_detail(&e)))?
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
        memo = (et != EntryType::Symlink).then(|| (raw_parent.to_vec(), parent.clone()));
        match tree.kind(&rel)? {
            Some(Kind::Dir) if et == EntryType::Directory => {
                tree.update_dir(&rel, &mut entry)?;
                created.insert(path_key(&rel));
                continue;
            }
            Some(_) => {
                memo = None;
                tree.remove_all(&rel)?
            }
            None => {}
        }
        tree.create(&rel, &mut entry, link.as_deref(), budget)?;
        created.insert(path_key(&rel));
    }
    tree.finish_layer()
}

// ---------------------------------------------------------------- the model

/// An in-memory model of the tree: names and kinds only, as a tree of
/// nodes so that listing a directory costs its children, not its subtree,
/// and a node holds its own name rather than its whole path.
struct Model {
    /// Node 0 is the root. Removed subtrees are unlinked and left in place:
    /// their number is bounded by the entry limit.
    nodes: Vec<Node>,
}

struct Node {
    kind: Kind,
    children: HashMap<OsString, usize>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            nodes: vec![Node {
                kind: Kind::Dir,
                children: HashMap::new(),
            }],
        }
    }
}

impl Model {
    fn find(&self, rel: &Path) -> Option<usize> {
        let mut at = 0;
        for c in rel.components() {
            at = *self.nodes[at].children.get(c.as_os_str())?;
        }
        Some(at)
    }

    fn split(rel: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
        match (rel.parent(), rel.file_name()) {
            (Some(p), Some(n)) => Ok((p, n)),
            _ => Err(UnpackError::Bad(format!(
                "{rel:?} is not a path below the root"
            ))),
        }
    }
}

impl Tree for Model {
    fn kind(&self, rel: &Path) -> Result<Option<Kind>> {
        Ok(self.find(rel).map(|i| self.nodes[i].kind.clone()))
    }
    fn ensure_dir(&mut self, rel: &Path) -> Result<()> {
        let mut at = 0;
        for c in rel.components() {
            at = match self.nodes[at].children.get(c.as_os_str()) {
                Some(&i) if self.nodes[i].kind == Kind::Dir => i,
                Some(_) => return Err(UnpackError::Bad(format!("{rel:?} is not a directory"))),
                None => {
                    let i = self.nodes.len();
                    self.nodes.push(Node {
                        kind: Kind::Dir,
                        children: HashMap::new(),
                    });
                    self.nodes[at].children.insert(c.as_os_str().to_owned(), i);
                    i
                }
            };
        }
        Ok(())
    }
    fn remove_all(&mut self, rel: &Path) -> Result<()> {
        let (parent, name) = Model::split(rel)?;
        if let Some(p) = self.find(parent) {
            self.nodes[p].children.remove(name);
        }
        Ok(())
    }
    fn children(&self, rel: &Path) -> Result<Vec<PathBuf>> {
        Ok(match self.find(rel) {
            Some(i) => self.nodes[i].children.keys().map(|n| rel.join(n)).collect(),
            None => Vec::new(),
        })
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
        budget.charge(entry.header().size().unwrap_or(0))?;
        let (parent, name) = Model::split(rel)?;
        let p = self
            .find(parent)
            .ok_or_else(|| UnpackError::Bad(format!("{rel:?}: no parent directory")))?;
        let i = self.nodes.len();
        self.nodes.push(Node {
            kind,
            children: HashMap::new(),
        });
        self.nodes[p].children.insert(name.to_owned(), i);
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
        .map_err(|e| UnpackError::Bad(crate::error::tar_detail(&e)))?
        .ok_or_else(|| UnpackError::Bad("symlink without a target".into()))?
        .into_owned();
    if t.as_os_str().is_empty() || t.as_os_str().len() > MAX_PATH {
        return Err(UnpackError::Bad(format!(
            "symlink target {t:?} is empty or too long"
        )));
    }
    Ok(t)
}

/// Applies `layers` in order to `tree`, hashing each one's uncompressed
/// stream (tar padding after the end marker included, as `diff_id`s are).
fn apply_all(
    tree: &mut dyn Tree,
    layers: &[PathBuf],
    limits: Limits,
) -> std::result::Result<Checked, (usize, UnpackError)> {
    let mut budget = Budget::new(limits);
    let mut diff_ids = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let mut src = Hashing {
            inner: open_layer(l).map_err(|e| (i, e))?,
            hasher: Sha256::new(),
        };
        apply_layer(tree, Box::new(&mut src), &mut budget).map_err(|e| (i, e))?;
        // What follows the end-of-archive marker is hashed and counted too.
        let room = budget.limits.max_bytes.saturating_sub(budget.bytes);
        let tail = io::copy(
            &mut (&mut src).take(room.saturating_add(1)),
            &mut io::sink(),
        )
        .map_err(|e| (i, UnpackError::Bad(crate::error::tar_detail(&e))))?;
        budget.charge(tail).map_err(|e| (i, e))?;
        diff_ids.push(format!("sha256:{:x}", src.hasher.finalize()));
    }
    Ok(Checked {
        diff_ids,
        bytes: budget.bytes,
    })
}

/// Checks layers, in order, without writing anything. On error, returns the
/// index of the offending layer.
pub fn validate(
    layers: &[PathBuf],
    limits: Limits,
) -> std::result::Result<Checked, (usize, UnpackError)> {
    apply_all(&mut Model::default(), layers, limits)
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
                if !xattr_allowed(name) {
                    tracing::debug!(path = %abs.display(), xattr = name, "xattr not in the allow-list: dropped");
                    continue;
                }
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

/// The extended attributes an image may set: `user.*`, POSIX ACLs, and file
/// capabilities (`security.capability`), which images use instead of
/// setuid (ping, arping) and which the kernel ignores on the nosuid unpack
/// mount. Never `trusted.*` (overlayfs and other root-only metadata) nor the
/// rest of `security.*` (LSM labels such as `security.selinux`/`.ima`).
pub fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.")
        || matches!(
            name,
            "security.capability" | "system.posix_acl_access" | "system.posix_acl_default"
        )
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
        if !matches!(et, EntryType::Regular | EntryType::Continuous) {
            // As the model does: whatever data the header claims is read.
            budget.charge(entry.header().size().unwrap_or(0))?;
        }
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
                budget.charge(n)?;
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
) -> std::result::Result<Checked, (usize, UnpackError)> {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut disk = Disk {
        root,
        dir_times: Vec::new(),
        is_root,
    };
    apply_all(&mut disk, layers, limits)
}

#[cfg(test)]
mod tests;

/// Generators of the bomb layers the tests use (uncompressed tars).
#[cfg(test)]
pub(crate) mod tests_support {
    fn empty_file(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, std::io::empty()).unwrap();
    }

    /// `n` empty files whose paths are about `path_len` bytes long.
    pub fn many_entries(n: usize, path_len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let pad = "p".repeat(path_len.saturating_sub(12).max(1));
        for i in 0..n {
            empty_file(&mut b, &format!("{pad}/{i:09}"));
        }
        b.into_inner().unwrap()
    }

    /// `d/new`, then `n` files in `d` each followed by an opaque marker of `d`.
    pub fn opaque_markers(n: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        empty_file(&mut b, "d/new");
        for i in 0..n {
            empty_file(&mut b, &format!("d/f{i}"));
            empty_file(&mut b, "d/.wh..wh..opq");
        }
        b.into_inner().unwrap()
    }
}
