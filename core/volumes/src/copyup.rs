//! Docker's copy-up: a new (empty) volume mounted where the image has a
//! directory is first filled with that directory's content, owners, modes
//! and symlinks, so `-v data:/var/lib/app` starts with what the image put
//! there.
//!
//! The image is untrusted. The source is a tree this process unpacked into
//! a private directory (`root`), which nothing else writes while it is
//! read; the mount path is resolved inside it as a chroot would (an
//! absolute or `..` symlink never leaves `root`), and nothing in it is
//! followed: a symlink is copied as a symlink, never read through. The
//! destination may be reachable by a running pod's guest (an empty volume
//! shared with it), so every file is made relative to a directory
//! descriptor with `O_EXCL`/`O_NOFOLLOW`: a symlink a guest planted there
//! is never written through. Devices, FIFOs and sockets are skipped (a
//! device node in a shared directory would be the host's device).

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use crate::store::StoreError;

/// How many symlinks one resolution follows (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;
/// Deepest directory nesting copied (the unpacker bounds path length too).
const MAX_DEPTH: usize = 512;

/// What a copy-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Devices, FIFOs and sockets, not copied.
    pub skipped: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `target` (an absolute container path) resolved inside `root` as the
/// container would see it, each symlink on the way read inside `root` (an
/// absolute one from `root`, `..` never above it). `None` when it does not
/// exist there, or is not a directory (nothing to copy).
pub fn resolve_in_root(root: &Path, target: &str) -> Result<Option<PathBuf>, StoreError> {
    // Components still to walk, last first.
    let mut todo: Vec<std::ffi::OsString> = Vec::new();
    let push = |todo: &mut Vec<std::ffi::OsString>, path: &Path| {
        let parts: Vec<_> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        todo.extend(parts.into_iter().rev());
    };
    push(&mut todo, Path::new(target));
    let mut current: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let mut here = root.to_path_buf();
        here.extend(&current);
        here.push(&part);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(io_err(&here)(e)),
        };
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return Err(StoreError::Io {
                    path: here,
                    source: io::Error::from_raw_os_error(libc::ELOOP),
                });
            }
            let link = std::fs::read_link(&here).map_err(io_err(&here))?;
            if link.is_absolute() {
                current.clear();
            }
            push(&mut todo, &link);
            continue;
        }
        if !meta.is_dir() && !todo.is_empty() {
            return Ok(None);
        }
        current.push(part);
    }
    let mut found = root.to_path_buf();
    found.extend(&current);
    let meta = std::fs::symlink_metadata(&found).map_err(io_err(&found))?;
    Ok(meta.is_dir().then_some(found))
}

/// Copies the directory at `target` in the unpacked image `root` into the
/// (empty) volume directory `dest`: content, owners, modes, mtimes and
/// symlinks (as symlinks); `dest` itself takes the source directory's
/// owner and mode, as in Docker. Nothing to copy (no such directory in the
/// image) is not an error.
pub fn copy_up(root: &Path, target: &str, dest: &Path) -> Result<CopyStats, StoreError> {
    let mut stats = CopyStats::default();
    let Some(source) = resolve_in_root(root, target)? else {
        return Ok(stats);
    };
    let dest_dir = open_dir_nofollow(None, dest).map_err(io_err(dest))?;
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let copier = Copier { is_root };
    copier.copy_dir(&source, &dest_dir, dest, 0, &mut stats)?;
    let meta = std::fs::symlink_metadata(&source).map_err(io_err(&source))?;
    copier.set_attrs(&dest_dir, &meta).map_err(io_err(dest))?;
    Ok(stats)
}

struct Copier {
    is_root: bool,
}

impl Copier {
    fn copy_dir(
        &self,
        src: &Path,
        dest_fd: &File,
        dest: &Path,
        depth: usize,
        stats: &mut CopyStats,
    ) -> Result<(), StoreError> {
        if depth > MAX_DEPTH {
            return Err(StoreError::Io {
                path: src.to_path_buf(),
                source: io::Error::other(format!("nested deeper than {MAX_DEPTH} directories")),
            });
        }
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(io_err(src))?
            .collect::<Result<_, _>>()
            .map_err(io_err(src))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let from = entry.path();
            let to = dest.join(&name);
            let meta = std::fs::symlink_metadata(&from).map_err(io_err(&from))?;
            let ft = meta.file_type();
            let c_name = c_string(&name).map_err(io_err(&to))?;
            if ft.is_symlink() {
                let link = std::fs::read_link(&from).map_err(io_err(&from))?;
                let c_link = c_string(link.as_os_str()).map_err(io_err(&from))?;
                // SAFETY: valid NUL-terminated strings and a directory
                // descriptor this function holds.
                check(unsafe {
                    libc::symlinkat(c_link.as_ptr(), dest_fd.as_raw_fd(), c_name.as_ptr())
                })
                .map_err(io_err(&to))?;
                self.chown_at(dest_fd, &c_name, &meta)
                    .map_err(io_err(&to))?;
                stats.symlinks += 1;
            } else if ft.is_dir() {
                // SAFETY: as above; mkdirat makes a new entry (EEXIST if
                // anything, a symlink included, is there).
                check(unsafe { libc::mkdirat(dest_fd.as_raw_fd(), c_name.as_ptr(), 0o700) })
                    .map_err(io_err(&to))?;
                let sub =
                    open_dir_nofollow(Some(dest_fd), Path::new(&name)).map_err(io_err(&to))?;
                self.copy_dir(&from, &sub, &to, depth + 1, stats)?;
                self.set_attrs(&sub, &meta).map_err(io_err(&to))?;
                stats.dirs += 1;
            } else if ft.is_file() {
                let mut input = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&from)
                    .map_err(io_err(&from))?;
                // SAFETY: as above; O_EXCL|O_NOFOLLOW: a new file, never an
                // existing one or a symlink's target.
                let fd = unsafe {
                    libc::openat(
                        dest_fd.as_raw_fd(),
                        c_name.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                };
                check(fd).map_err(io_err(&to))?;
                // SAFETY: openat returned a new descriptor owned by no one
                // else.
                let mut output = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                stats.bytes += io::copy(&mut input, &mut output).map_err(io_err(&to))?;
                self.set_attrs(&output, &meta).map_err(io_err(&to))?;
                stats.files += 1;
            } else {
                tracing::debug!(path = %from.display(), "copy-up skips a device, FIFO or socket");
                stats.skipped += 1;
            }
        }
        Ok(())
    }

    /// Owner (when root), then mode (chown clears set-id bits), then mtime.
    fn set_attrs(&self, file: &File, meta: &std::fs::Metadata) -> io::Result<()> {
        if self.is_root {
            // SAFETY: fchown on a descriptor this function borrows.
            check(unsafe { libc::fchown(file.as_raw_fd(), meta.uid(), meta.gid()) })?;
        }
        // SAFETY: fchmod on a borrowed descriptor.
        check(unsafe { libc::fchmod(file.as_raw_fd(), (meta.mode() & 0o7777) as libc::mode_t) })?;
        let times = [
            libc::timespec {
                tv_sec: meta.atime(),
                tv_nsec: meta.atime_nsec(),
            },
            libc::timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec(),
            },
        ];
        // SAFETY: futimens with a borrowed descriptor and two timespecs.
        check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) })
    }

    /// A symlink's owner, the link itself (never what it points at).
    fn chown_at(&self, dir: &File, name: &CString, meta: &std::fs::Metadata) -> io::Result<()> {
        if !self.is_root {
            return Ok(());
        }
        // SAFETY: a borrowed directory descriptor and a NUL-terminated
        // name; AT_SYMLINK_NOFOLLOW changes the link, not its target.
        check(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                meta.uid(),
                meta.gid(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_string(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Opens directory `path` (relative to `at`, or as given) without
/// following a symlink in its last component.
fn open_dir_nofollow(at: Option<&File>, path: &Path) -> io::Result<File> {
    let c = c_string(path.as_os_str())?;
    let dirfd = at.map_or(libc::AT_FDCWD, |f| f.as_raw_fd());
    // SAFETY: a valid NUL-terminated path and a borrowed (or the cwd)
    // directory descriptor.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check(fd)?;
    // SAFETY: openat returned a new descriptor owned by no one else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_directory_is_copied_with_modes_symlinks_and_owner() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("app/sub")).unwrap();
        std::fs::write(r.join("app/conf"), "hello").unwrap();
        std::fs::set_permissions(r.join("app/conf"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::set_permissions(r.join("app/sub"), std::fs::Permissions::from_mode(0o710))
            .unwrap();
        std::fs::set_permissions(r.join("app"), std::fs::Permissions::from_mode(0o750)).unwrap();
        std::fs::write(r.join("app/sub/x"), "x").unwrap();
        symlink("conf", r.join("app/rel")).unwrap();
        // Hostile: links that point out of the image. Copied as links.
        symlink("/etc/shadow", r.join("app/shadow")).unwrap();
        symlink("../../../../../etc", r.join("app/up")).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::lchown(r.join("app/conf"), Some(1234), Some(5678)).unwrap();
        }
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path();
        let stats = copy_up(r, "/app", d).unwrap();
        assert_eq!(
            (stats.dirs, stats.files, stats.symlinks, stats.bytes),
            (1, 2, 3, 6)
        );
        assert_eq!(std::fs::read_to_string(d.join("conf")).unwrap(), "hello");
        assert_eq!(mode(&d.join("conf")), 0o640);
        assert_eq!(mode(&d.join("sub")), 0o710);
        assert_eq!(mode(d), 0o750);
        assert_eq!(
            std::fs::read_link(d.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(std::fs::symlink_metadata(d.join("up"))
            .unwrap()
            .is_symlink());
        assert!(std::fs::symlink_metadata(d.join("shadow"))
            .unwrap()
            .is_symlink());
        if unsafe { libc::geteuid() } == 0 {
            let m = std::fs::metadata(d.join("conf")).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
        }
    }

    #[test]
    fn symlinks_on_the_mount_path_resolve_inside_the_image() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("real/data")).unwrap();
        std::fs::write(r.join("real/data/f"), "in image").unwrap();
        // /data -> /real/data (absolute, inside the image)
        symlink("/real/data", r.join("data")).unwrap();
        // /escape -> ../../../../ (clamped at the image's root)
        symlink("../../../../../../", r.join("escape")).unwrap();
        // /hostetc -> /etc: the image's /etc (missing), never the host's.
        symlink("/etc", r.join("hostetc")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        std::fs::write(r.join("file"), "").unwrap();
        assert_eq!(
            resolve_in_root(r, "/data").unwrap(),
            Some(r.join("real/data"))
        );
        assert_eq!(
            resolve_in_root(r, "/escape/real/data").unwrap(),
            Some(r.join("real/data"))
        );
        assert_eq!(resolve_in_root(r, "/hostetc").unwrap(), None);
        assert_eq!(resolve_in_root(r, "/missing/x").unwrap(), None);
        assert_eq!(resolve_in_root(r, "/file").unwrap(), None);
        assert_eq!(resolve_in_root(r, "/file/x").unwrap(), None);
        assert!(resolve_in_root(r, "/loop1").is_err());
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(
            copy_up(r, "/hostetc", dest.path()).unwrap(),
            CopyStats::default()
        );
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
        copy_up(r, "/data", dest.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.path().join("f")).unwrap(),
            "in image"
        );
    }

    #[test]
    fn a_symlink_planted_in_the_volume_is_never_written_through() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("app/etc")).unwrap();
        std::fs::write(root.path().join("app/etc/passwd"), "image").unwrap();
        std::fs::write(root.path().join("app/top"), "image").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("top"), "host").unwrap();
        let dest = tempfile::tempdir().unwrap();
        // A guest sharing the volume planted links to host paths.
        symlink(outside.path(), dest.path().join("etc")).unwrap();
        symlink(outside.path().join("top"), dest.path().join("top")).unwrap();
        let e = copy_up(root.path(), "/app", dest.path()).unwrap_err();
        assert!(e.to_string().contains("exists"), "{e}");
        assert_eq!(
            std::fs::read_to_string(outside.path().join("top")).unwrap(),
            "host"
        );
        assert!(!outside.path().join("passwd").exists());
        // The volume itself a symlink: refused too.
        let link = dest.path().join("vol");
        symlink(outside.path(), &link).unwrap();
        assert!(copy_up(root.path(), "/app", &link).is_err());
        assert!(!outside.path().join("etc").exists());
    }

    #[test]
    fn devices_and_fifos_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("d")).unwrap();
        let fifo = CString::new(root.path().join("d/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let dest = tempfile::tempdir().unwrap();
        let stats = copy_up(root.path(), "/d", dest.path()).unwrap();
        assert_eq!(stats.skipped, 1);
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    }
}
