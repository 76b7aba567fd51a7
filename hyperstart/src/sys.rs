//! The system calls that set up mounts and namespaces, behind a trait so the
//! setup sequences can be unit-tested with a recording fake (youki's pattern)
//! instead of needing root and a VM.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};

/// A failed system call: what was attempted, on what, and the errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysError {
    pub op: &'static str,
    pub target: String,
    pub errno: Errno,
}

impl SysError {
    pub fn new(op: &'static str, target: impl fmt::Display, errno: Errno) -> Self {
        Self {
            op,
            target: target.to_string(),
            errno,
        }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.op, self.target, self.errno.desc())
    }
}

pub type SysResult<T = ()> = Result<T, SysError>;

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Device node kinds the container's /dev needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
}

pub trait Sys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult;
    fn umount(&mut self, target: &Path, flags: MntFlags) -> SysResult;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&mut self, path: &Path, mode: u32) -> SysResult;
    fn remove_dir(&mut self, path: &Path) -> SysResult;
    /// Removes a non-directory (a symlink itself, not its target).
    fn remove_file(&mut self, path: &Path) -> SysResult;
    /// Creates a device node with exactly `perm` (not masked by the umask).
    fn mknod(
        &mut self,
        path: &Path,
        kind: NodeKind,
        perm: u32,
        major: u64,
        minor: u64,
    ) -> SysResult;
    fn symlink(&mut self, target: &str, link: &Path) -> SysResult;
    /// Creates an empty regular file with `perm` (a bind-mount target).
    fn create_file(&mut self, path: &Path, perm: u32) -> SysResult;
    fn chdir(&mut self, path: &Path) -> SysResult;
    fn fchdir(&mut self, fd: RawFd) -> SysResult;
    fn chroot(&mut self, path: &Path) -> SysResult;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult;
    fn sethostname(&mut self, name: &str) -> SysResult;
    fn unshare(&mut self, flags: CloneFlags) -> SysResult;
    /// Opens a namespace file or directory (close-on-exec) for setns/fchdir.
    fn open(&mut self, path: &Path) -> SysResult<RawFd>;
    /// Opens the directory `relative` (plain components) under `root`, one
    /// component at a time, creating the missing ones with `mode`, and never
    /// following a symlink or leaving `root` (`ELOOP` for a symlink,
    /// `ENOTDIR` for anything else that is not a directory, `EXDEV` for a
    /// way out). The fd (`O_PATH`, close-on-exec, given back with
    /// [`Sys::close`]) keeps naming that directory whatever happens to the
    /// tree afterwards; mount onto it through `/proc/self/fd/N`.
    fn open_dir_beneath(&mut self, root: &Path, relative: &str, mode: u32) -> SysResult<RawFd>;
    fn close(&mut self, fd: RawFd);
    fn setns(&mut self, fd: RawFd, nstype: CloneFlags) -> SysResult;
    /// Whether `/` is the kernel's initial rootfs (ramfs or tmpfs), which
    /// pivot_root(2) refuses to move away from.
    fn root_is_rootfs(&mut self) -> bool;
    /// `Some(true)` for a directory, `Some(false)` for anything else that
    /// exists, `None` if nothing is there (symlinks are not followed).
    fn kind(&mut self, path: &Path) -> Option<bool>;
}

/// The real thing.
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult {
        nix::mount::mount(source, target, fstype, flags, data)
            .map_err(|e| SysError::new("mount", target.display(), e))
    }

    fn umount(&mut self, target: &Path, flags: MntFlags) -> SysResult {
        nix::mount::umount2(target, flags).map_err(|e| SysError::new("umount", target.display(), e))
    }

    fn mkdir_all(&mut self, path: &Path, mode: u32) -> SysResult {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| SysError::new("mkdir", path.display(), io_errno(&e)))
    }

    fn remove_dir(&mut self, path: &Path) -> SysResult {
        std::fs::remove_dir(path).map_err(|e| SysError::new("rmdir", path.display(), io_errno(&e)))
    }

    fn remove_file(&mut self, path: &Path) -> SysResult {
        std::fs::remove_file(path)
            .map_err(|e| SysError::new("unlink", path.display(), io_errno(&e)))
    }

    fn mknod(
        &mut self,
        path: &Path,
        kind: NodeKind,
        perm: u32,
        major: u64,
        minor: u64,
    ) -> SysResult {
        let kind = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
        };
        let mode = Mode::from_bits_truncate(perm as libc::mode_t);
        nix::sys::stat::mknod(path, kind, mode, nix::sys::stat::makedev(major, minor))
            .map_err(|e| SysError::new("mknod", path.display(), e))?;
        // mknod(2) applies the umask; device nodes need their exact mode
        // (/dev/null must be writable by everyone).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
            .map_err(|e| SysError::new("chmod", path.display(), io_errno(&e)))
    }

    fn symlink(&mut self, target: &str, link: &Path) -> SysResult {
        std::os::unix::fs::symlink(target, link)
            .map_err(|e| SysError::new("symlink", link.display(), io_errno(&e)))
    }

    fn create_file(&mut self, path: &Path, perm: u32) -> SysResult {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(perm)
            .open(path)
            .map(drop)
            .map_err(|e| SysError::new("create", path.display(), io_errno(&e)))
    }

    fn chdir(&mut self, path: &Path) -> SysResult {
        nix::unistd::chdir(path).map_err(|e| SysError::new("chdir", path.display(), e))
    }

    fn fchdir(&mut self, fd: RawFd) -> SysResult {
        // SAFETY: fchdir only reads the fd number; a bad fd gives EBADF.
        Errno::result(unsafe { libc::fchdir(fd) })
            .map(drop)
            .map_err(|e| SysError::new("fchdir", fd, e))
    }

    fn chroot(&mut self, path: &Path) -> SysResult {
        nix::unistd::chroot(path).map_err(|e| SysError::new("chroot", path.display(), e))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult {
        nix::unistd::pivot_root(new_root, put_old)
            .map_err(|e| SysError::new("pivot_root", new_root.display(), e))
    }

    fn sethostname(&mut self, name: &str) -> SysResult {
        nix::unistd::sethostname(name).map_err(|e| SysError::new("sethostname", name, e))
    }

    fn unshare(&mut self, flags: CloneFlags) -> SysResult {
        nix::sched::unshare(flags)
            .map_err(|e| SysError::new("unshare", format_args!("{flags:?}"), e))
    }

    fn open(&mut self, path: &Path) -> SysResult<RawFd> {
        use std::os::fd::IntoRawFd;
        nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map(|fd| fd.into_raw_fd())
            .map_err(|e| SysError::new("open", path.display(), e))
    }

    fn open_dir_beneath(&mut self, root: &Path, relative: &str, mode: u32) -> SysResult<RawFd> {
        use nix::fcntl::{openat2, OpenHow, ResolveFlag};
        use std::os::fd::IntoRawFd;
        let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        // The root itself is hyperstart's own path, trusted.
        let mut dir = nix::fcntl::open(root, path_flags, Mode::empty())
            .map_err(|e| SysError::new("open", root.display(), e))?;
        // No O_NOFOLLOW: with RESOLVE_NO_SYMLINKS a symlink as the last
        // component is then ELOOP too, not an fd on the link.
        let how = OpenHow::new().flags(path_flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        let mut at = root.to_path_buf();
        for component in relative.split('/').filter(|c| !c.is_empty()) {
            at.push(component);
            let fail = |e| SysError::new("open without following symlinks", at.display(), e);
            let next = match openat2(&dir, component, how) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match nix::sys::stat::mkdirat(
                        &dir,
                        component,
                        Mode::from_bits_truncate(mode as libc::mode_t),
                    ) {
                        // EEXIST: made meanwhile; the open below checks it.
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(SysError::new("mkdir", at.display(), e)),
                    }
                    openat2(&dir, component, how).map_err(fail)?
                }
                Err(e) => return Err(fail(e)),
            };
            dir = next;
        }
        Ok(dir.into_raw_fd())
    }

    fn close(&mut self, fd: RawFd) {
        // SAFETY: `fd` came from `open` above and is owned by the caller, who
        // hands it back here exactly once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    fn setns(&mut self, fd: RawFd, nstype: CloneFlags) -> SysResult {
        // SAFETY: setns only reads the fd number; a bad fd gives EBADF.
        Errno::result(unsafe { libc::setns(fd, nstype.bits()) })
            .map(drop)
            .map_err(|e| SysError::new("setns", format_args!("{nstype:?}"), e))
    }

    fn root_is_rootfs(&mut self) -> bool {
        const RAMFS_MAGIC: u32 = 0x8584_58f6;
        const TMPFS_MAGIC: u32 = 0x0102_1994;
        match nix::sys::statfs::statfs("/") {
            // f_type's integer type differs by libc; the magics are 32-bit.
            Ok(st) => matches!(st.filesystem_type().0 as u32, RAMFS_MAGIC | TMPFS_MAGIC),
            Err(_) => false,
        }
    }

    fn kind(&mut self, path: &Path) -> Option<bool> {
        std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;

    /// Records every call as a line of text; calls whose line contains a
    /// `fail` pattern return that errno instead.
    #[derive(Default)]
    pub struct RecordingSys {
        pub calls: Vec<String>,
        pub fail: Vec<(String, Errno)>,
        pub rootfs: bool,
        /// Paths that exist: (path, is a directory).
        pub kinds: Vec<(String, bool)>,
        next_fd: RawFd,
    }

    impl RecordingSys {
        pub fn new() -> Self {
            Self {
                next_fd: 100,
                ..Default::default()
            }
        }

        pub fn failing(pattern: &str, errno: Errno) -> Self {
            let mut s = Self::new();
            s.fail.push((pattern.to_string(), errno));
            s
        }

        fn record(&mut self, op: &'static str, line: String) -> SysResult {
            let failure = self
                .fail
                .iter()
                .find(|(p, _)| line.contains(p.as_str()))
                .map(|(_, e)| *e);
            self.calls.push(line.clone());
            match failure {
                Some(errno) => Err(SysError::new(op, line, errno)),
                None => Ok(()),
            }
        }

        pub fn position(&self, prefix: &str) -> Option<usize> {
            self.calls.iter().position(|c| c.starts_with(prefix))
        }
    }

    impl Sys for RecordingSys {
        fn mount(
            &mut self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> SysResult {
            let line = format!(
                "mount {} {} {} {:?} {}",
                source.unwrap_or("-"),
                target.display(),
                fstype.unwrap_or("-"),
                flags,
                data.unwrap_or("-")
            );
            self.record("mount", line)
        }
        fn umount(&mut self, target: &Path, flags: MntFlags) -> SysResult {
            self.record("umount", format!("umount {} {flags:?}", target.display()))
        }
        fn mkdir_all(&mut self, path: &Path, mode: u32) -> SysResult {
            self.record("mkdir", format!("mkdir {} {mode:o}", path.display()))
        }
        fn remove_dir(&mut self, path: &Path) -> SysResult {
            self.record("rmdir", format!("rmdir {}", path.display()))
        }
        fn remove_file(&mut self, path: &Path) -> SysResult {
            self.record("unlink", format!("unlink {}", path.display()))
        }
        fn mknod(
            &mut self,
            path: &Path,
            _kind: NodeKind,
            perm: u32,
            major: u64,
            minor: u64,
        ) -> SysResult {
            self.record(
                "mknod",
                format!("mknod {} c {major} {minor} {perm:o}", path.display()),
            )
        }
        fn symlink(&mut self, target: &str, link: &Path) -> SysResult {
            self.record("symlink", format!("symlink {target} {}", link.display()))
        }
        fn create_file(&mut self, path: &Path, perm: u32) -> SysResult {
            self.record("create", format!("create {} {perm:o}", path.display()))
        }
        fn chdir(&mut self, path: &Path) -> SysResult {
            self.record("chdir", format!("chdir {}", path.display()))
        }
        fn fchdir(&mut self, fd: RawFd) -> SysResult {
            self.record("fchdir", format!("fchdir {fd}"))
        }
        fn chroot(&mut self, path: &Path) -> SysResult {
            self.record("chroot", format!("chroot {}", path.display()))
        }
        fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult {
            self.record(
                "pivot_root",
                format!("pivot_root {} {}", new_root.display(), put_old.display()),
            )
        }
        fn sethostname(&mut self, name: &str) -> SysResult {
            self.record("sethostname", format!("sethostname {name}"))
        }
        fn unshare(&mut self, flags: CloneFlags) -> SysResult {
            self.record("unshare", format!("unshare {flags:?}"))
        }
        fn open(&mut self, path: &Path) -> SysResult<RawFd> {
            self.record("open", format!("open {}", path.display()))?;
            self.next_fd += 1;
            Ok(self.next_fd)
        }
        fn open_dir_beneath(&mut self, root: &Path, relative: &str, mode: u32) -> SysResult<RawFd> {
            let line = format!("open_beneath {} {relative} {mode:o}", root.display());
            self.record("open_beneath", line)?;
            self.next_fd += 1;
            Ok(self.next_fd)
        }
        fn close(&mut self, fd: RawFd) {
            self.calls.push(format!("close {fd}"));
        }
        fn setns(&mut self, fd: RawFd, nstype: CloneFlags) -> SysResult {
            self.record("setns", format!("setns {fd} {nstype:?}"))
        }
        fn root_is_rootfs(&mut self) -> bool {
            self.rootfs
        }
        fn kind(&mut self, path: &Path) -> Option<bool> {
            let path = path.to_string_lossy();
            self.kinds
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, dir)| *dir)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_beneath(root: &Path, relative: &str) -> SysResult<std::path::PathBuf> {
        let fd = RealSys.open_dir_beneath(root, relative, 0o755)?;
        let named = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        RealSys.close(fd);
        Ok(named)
    }

    #[test]
    fn open_beneath_creates_plain_directories_and_refuses_symlinks_and_files() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("dir", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("dir/up")).unwrap();

        assert_eq!(open_beneath(root, "dir").unwrap(), root.join("dir"));
        assert_eq!(
            open_beneath(root, "dir/new/deeper").unwrap(),
            root.join("dir/new/deeper")
        );
        assert!(root.join("dir/new/deeper").is_dir());
        for (bad, errno) in [
            ("abs", Errno::ELOOP),
            ("abs/etc", Errno::ELOOP),
            // Even a symlink that stays inside is refused.
            ("rel", Errno::ELOOP),
            ("rel/x", Errno::ELOOP),
            ("dir/up", Errno::ELOOP),
            ("dir/up/x", Errno::ELOOP),
            ("file", Errno::ENOTDIR),
            ("file/x", Errno::ENOTDIR),
            ("..", Errno::EXDEV),
        ] {
            assert_eq!(open_beneath(root, bad).unwrap_err().errno, errno, "{bad}");
        }
        // Nothing was created through a symlink or beside a file.
        assert!(!root.join("dir/x").exists());
        assert!(!Path::new("/x").exists() && !Path::new("/etc/x").exists());
    }

    #[test]
    fn the_opened_directory_stays_the_one_checked() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        std::fs::create_dir(root.join("a")).unwrap();
        let fd = RealSys.open_dir_beneath(root, "a", 0o755).unwrap();
        // Swapped for a symlink after the check: the fd still names the
        // directory, now at its new place, never the symlink's target.
        std::fs::rename(root.join("a"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink("/", root.join("a")).unwrap();
        let named = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        RealSys.close(fd);
        assert_eq!(named, root.join("moved"));
    }
}
