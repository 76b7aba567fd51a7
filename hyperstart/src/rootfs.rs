//! Mount and namespace setup sequences, written against [`Sys`] so their
//! order and options are unit-tested without root.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::sys::{NodeKind, Sys, SysError, SysResult};

/// Where container rootfs mounts live in hyperstart's mount namespace.
pub const RUN_DIR: &str = "/run/hyper/c";

/// Where hyperstart moves its own root at boot (see [`switch_to_tmpfs_root`]).
const NEW_ROOT: &str = "/.hyperstart-root";

/// The per-container directories under [`RUN_DIR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPaths {
    pub base: PathBuf,
    /// The read-only image.
    pub lower: PathBuf,
    /// A tmpfs holding the overlay's upper and work dirs.
    pub rw: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The overlay: the container's `/`.
    pub root: PathBuf,
}

impl ContainerPaths {
    pub fn new(run_dir: &Path, id: &str) -> Self {
        let base = run_dir.join(id);
        let rw = base.join("rw");
        Self {
            lower: base.join("lower"),
            upper: rw.join("upper"),
            work: rw.join("work"),
            root: base.join("root"),
            rw,
            base,
        }
    }
}

/// Moves hyperstart's root from the initramfs onto a fresh tmpfs, like
/// switch_root does. The kernel's initial rootfs cannot be pivot_root'ed away
/// from (it has no parent mount), so without this every container would have
/// to fall back to chroot; from a tmpfs root, pivot_root works and the
/// container's mount namespace drops every hyperstart mount.
pub fn switch_to_tmpfs_root(sys: &mut dyn Sys) -> SysResult {
    let new_root = Path::new(NEW_ROOT);
    sys.mkdir_all(new_root, 0o755)?;
    sys.mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )?;
    for dir in ["proc", "sys", "dev", "run", "tmp"] {
        sys.mkdir_all(&new_root.join(dir), 0o755)?;
    }
    sys.chdir(new_root)?;
    if let Err(e) = sys.mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None) {
        let _ = sys.chdir(Path::new("/"));
        let _ = sys.umount(new_root, MntFlags::MNT_DETACH);
        return Err(e);
    }
    sys.chroot(Path::new("."))?;
    sys.chdir(Path::new("/"))
}

/// The API filesystems hyperstart needs. Already-mounted ones (EBUSY) are
/// fine; other failures are returned for logging, not fatal.
pub fn boot_mounts(sys: &mut dyn Sys) -> Vec<SysError> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&str, &str, &str, MsFlags, Option<&str>); 6] = [
        ("proc", "/proc", "proc", common, None),
        ("sysfs", "/sys", "sysfs", common, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    let mut errors = Vec::new();
    for (source, target, fstype, flags, data) in mounts {
        let target = Path::new(target);
        let _ = sys.mkdir_all(target, 0o755);
        match sys.mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) => {}
            Err(e) if e.errno == Errno::EBUSY => {}
            Err(e) => errors.push(e),
        }
    }
    errors
}

/// What a container's overlay reads from.
#[derive(Debug, Clone, Copy)]
pub enum Lower<'a> {
    /// A read-only disk holding a filesystem of `fstype`.
    Disk { device: &'a Path, fstype: &'a str },
    /// A directory of a shared pod volume (a container that joined a
    /// running pod), bound read-only: the overlay's upper layer takes the
    /// container's writes, so the host's directory is never written.
    Dir(&'a Path),
}

/// Mounts the image (or shared directory) read-only, a tmpfs for the writable layer, and the
/// overlay of both that becomes the container's root. Undoes what it did on
/// failure.
///
/// `nodev` (every container but a privileged one): device nodes on the
/// container's root cannot be opened, whatever the container `mknod`s
/// there (see docs/security/confine.md).
pub fn mount_container_rootfs(
    sys: &mut dyn Sys,
    paths: &ContainerPaths,
    lower: Lower<'_>,
    nodev: bool,
) -> SysResult {
    for dir in [&paths.lower, &paths.rw, &paths.root] {
        sys.mkdir_all(dir, 0o755)?;
    }
    let mounted = match lower {
        Lower::Disk { device, fstype } => {
            let device = device.to_string_lossy();
            // The image is never written: skip ext4 journal replay, which a
            // read-only disk could not do anyway.
            let data = (fstype == "ext4").then_some("noload");
            sys.mount(
                Some(&device),
                &paths.lower,
                Some(fstype),
                MsFlags::MS_RDONLY,
                data,
            )
        }
        Lower::Dir(dir) => {
            let dir = dir.to_string_lossy();
            sys.mount(Some(&dir), &paths.lower, None, MsFlags::MS_BIND, None)
                .and_then(|()| {
                    let ro = sys.mount(
                        None,
                        &paths.lower,
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None,
                    );
                    if ro.is_err() {
                        let _ = sys.umount(&paths.lower, MntFlags::MNT_DETACH);
                    }
                    ro
                })
        }
    };
    if let Err(e) = mounted {
        remove_dirs(sys, paths);
        return Err(e);
    }
    let rw = sys
        .mount(
            Some("tmpfs"),
            &paths.rw,
            Some("tmpfs"),
            // No nodev: device files the container creates or copies up live
            // here and must stay usable through the overlay.
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .and_then(|()| sys.mkdir_all(&paths.upper, 0o755))
        .and_then(|()| sys.mkdir_all(&paths.work, 0o755));
    if let Err(e) = rw {
        let _ = sys.umount(&paths.rw, MntFlags::MNT_DETACH);
        let _ = sys.umount(&paths.lower, MntFlags::MNT_DETACH);
        remove_dirs(sys, paths);
        return Err(e);
    }
    let options = overlay_options(paths);
    let flags = if nodev {
        MsFlags::MS_NODEV
    } else {
        MsFlags::empty()
    };
    if let Err(e) = sys.mount(
        Some("overlay"),
        &paths.root,
        Some("overlay"),
        flags,
        Some(&options),
    ) {
        let _ = sys.umount(&paths.rw, MntFlags::MNT_DETACH);
        let _ = sys.umount(&paths.lower, MntFlags::MNT_DETACH);
        remove_dirs(sys, paths);
        return Err(e);
    }
    Ok(())
}

fn overlay_options(paths: &ContainerPaths) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        paths.lower.display(),
        paths.upper.display(),
        paths.work.display()
    )
}

fn remove_dirs(sys: &mut dyn Sys, paths: &ContainerPaths) {
    for dir in [&paths.root, &paths.lower, &paths.rw, &paths.base] {
        let _ = sys.remove_dir(dir);
    }
}

/// A lazy unmount; nothing mounted there (EINVAL) or no such path is fine.
fn detach(sys: &mut dyn Sys, dir: &Path) -> Option<SysError> {
    match sys.umount(dir, MntFlags::MNT_DETACH) {
        Ok(())
        | Err(SysError {
            errno: Errno::EINVAL | Errno::ENOENT,
            ..
        }) => None,
        Err(e) => Some(e),
    }
}

/// Best-effort teardown: lazy unmounts, since the container's processes may
/// still be dying and holding the mounts.
pub fn unmount_container_rootfs(sys: &mut dyn Sys, paths: &ContainerPaths) -> Vec<SysError> {
    let errors = [&paths.root, &paths.rw, &paths.lower]
        .into_iter()
        .filter_map(|dir| detach(sys, dir))
        .collect();
    remove_dirs(sys, paths);
    errors
}

/// Where pod volumes live in hyperstart's mount namespace: beside the
/// container directories, under a name no container id can take (ids never
/// start with a dot).
pub fn volume_dir(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(".volumes").join(name)
}

/// What backs a pod volume, checked and resolved by the agent (names,
/// tags, the disk found) before anything is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeMount {
    /// A tmpfs of at most `size_mib` MiB (0: the kernel's default).
    Tmpfs { size_mib: u32 },
    /// A virtio-fs share, by its tag.
    VirtioFs { tag: String },
    /// A 9p share over Xen's 9pfs transport, by its tag.
    Xen9p { tag: String },
    /// A read-write disk holding a filesystem of `fstype`.
    Block { device: PathBuf, fstype: String },
}

/// The 9p options of a share over Xen.
///
/// - `version=9p2000.L`: the Linux dialect (owners, modes, symlinks, hard
///   links, xattrs as on the host); the guest checks permissions itself
///   (9p2000.L's default `access=client`), like for a local filesystem.
/// - `cache=mmap` (Linux 6.1 knows `none`, `loose`, `fscache`, `mmap`):
///   reads and writes go to the host every time, as with `none`, so what
///   the host or another pod writes to the same directory is seen at once
///   (`loose` and `fscache` keep stale pages and attributes, and would break
///   two pods sharing a named volume); unlike `none` it allows shared
///   writable `mmap(2)`, which databases and many tools need.
/// - `msize=262144`: 256 KiB per message, twice 6.1's default of 128 KiB,
///   so sequential I/O takes half the round trips through the ring. 6.1's
///   Xen transport allows 512 KiB (ring order 9) and would clamp a larger
///   value; 256 KiB also keeps each request's buffer a modest allocation in
///   a small guest.
///
/// The hyperkernel (6.1) takes these options as they are (checked over
/// virtio-9p in QEMU, where /proc/mounts shows `mmap,access=client,
/// msize=262144`); only `trans=` differs on Xen.
pub const XEN_9P_OPTIONS: &str = "trans=xen,version=9p2000.L,cache=mmap,msize=262144";

/// Mounts a pod volume at `dir`, once per pod, before any container uses
/// it. Every kind is `nosuid,nodev`: a volume must not bring setuid
/// binaries or usable device nodes into a container (the host or another
/// pod may have put them there). `readonly` makes the pod-level mount
/// read-only, so no container's bind of it can write.
///
/// A tmpfs is world-writable with the sticky bit like /tmp, because the
/// containers sharing it may run as different users; shares and disks keep
/// the owners and modes they have.
pub fn mount_volume(
    sys: &mut dyn Sys,
    dir: &Path,
    volume: &VolumeMount,
    readonly: bool,
) -> SysResult {
    sys.mkdir_all(dir, 0o755)?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    let result = match volume {
        VolumeMount::Tmpfs { size_mib } => {
            let data = if *size_mib > 0 {
                format!("mode=1777,size={size_mib}m")
            } else {
                "mode=1777".to_string()
            };
            sys.mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some(&data))
        }
        VolumeMount::VirtioFs { tag } => sys.mount(Some(tag), dir, Some("virtiofs"), flags, None),
        VolumeMount::Xen9p { tag } => {
            sys.mount(Some(tag), dir, Some("9p"), flags, Some(XEN_9P_OPTIONS))
        }
        VolumeMount::Block { device, fstype } => sys.mount(
            Some(&device.to_string_lossy()),
            dir,
            Some(fstype),
            flags,
            None,
        ),
    };
    if let Err(e) = result {
        let _ = sys.remove_dir(dir);
        return Err(e);
    }
    Ok(())
}

/// Best-effort teardown of a pod volume (lazily: a dying container may
/// still hold it).
pub fn unmount_volume(sys: &mut dyn Sys, dir: &Path) -> Vec<SysError> {
    let mut errors: Vec<SysError> = detach(sys, dir).into_iter().collect();
    if let Err(e) = sys.remove_dir(dir) {
        if e.errno != Errno::ENOENT {
            errors.push(e);
        }
    }
    errors
}

/// One volume to bind into a container: its directory, the path inside the
/// container (absolute, already validated) and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub source: PathBuf,
    pub path: String,
    pub readonly: bool,
}

/// The path through which a mount reaches exactly the directory `fd` was
/// opened on, whatever happened to the tree since.
fn fd_path(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Binds volumes into a container's root before its init starts, so its
/// mount namespace (a copy of hyperstart's) has them under the root it
/// pivots into. The caller unmounts the root on failure, which lazily takes
/// every bind below it along.
///
/// The mounts happen in hyperstart's namespace, where a symlink would lead
/// out of the container; the image, a share's contents (written by the
/// host or another pod) and a tmpfs volume (written by a running container
/// of the pod) are all untrusted. So each target is opened component by
/// component under the root without following any symlink or `..`
/// ([`Sys::open_dir_beneath`]), right before its mount, and the bind goes
/// onto that open directory through `/proc/self/fd`: what the path names
/// afterwards does not matter. Parents are bound before their children
/// (fewer components first, as runc does), so `/data/sub` lands inside the
/// volume at `/data`, not under it.
pub fn bind_volumes(sys: &mut dyn Sys, root: &Path, binds: &[VolumeBind]) -> SysResult {
    let mut ordered: Vec<&VolumeBind> = binds.iter().collect();
    ordered.sort_by_key(|b| b.path.split('/').filter(|c| !c.is_empty()).count());
    for bind in ordered {
        let relative = bind.path.trim_start_matches('/');
        let source = bind.source.to_string_lossy();
        let fd = sys.open_dir_beneath(root, relative, 0o755)?;
        // Errors name the path, not the fd it was reached through.
        let named = |e: SysError| SysError::new(e.op, root.join(relative).display(), e.errno);
        let bound = sys.mount(Some(&source), &fd_path(fd), None, MsFlags::MS_BIND, None);
        sys.close(fd);
        bound.map_err(named)?;
        if bind.readonly {
            // MS_RDONLY is ignored on the first bind; only a remount applies
            // it, and the remount sets every per-mount flag: keep the
            // volume's nosuid and nodev. The directory opened above is now
            // covered by the bind: open the bind's root to remount it.
            let fd = sys.open_dir_beneath(root, relative, 0o755)?;
            let remounted = sys.mount(
                None,
                &fd_path(fd),
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                None,
            );
            sys.close(fd);
            remounted.map_err(named)?;
        }
    }
    Ok(())
}

/// In the intermediate process of a new container: the namespaces its init
/// will be PID 1 of.
pub fn new_container_namespaces(sys: &mut dyn Sys, hostname: &str) -> SysResult {
    sys.unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID,
    )?;
    if !hostname.is_empty() {
        sys.sethostname(hostname)?;
    }
    Ok(())
}

/// In the intermediate process of an exec: joins the namespaces and the root
/// of the container's init. Every file is opened before the first setns,
/// while /proc still resolves in hyperstart's mount namespace.
pub fn join_container(sys: &mut dyn Sys, init_pid: i32) -> SysResult {
    let proc_dir = PathBuf::from(format!("/proc/{init_pid}"));
    let namespaces = [
        ("ns/ipc", CloneFlags::CLONE_NEWIPC),
        ("ns/uts", CloneFlags::CLONE_NEWUTS),
        ("ns/mnt", CloneFlags::CLONE_NEWNS),
        ("ns/pid", CloneFlags::CLONE_NEWPID),
    ];
    let mut fds = Vec::new();
    let result = (|| {
        for (name, kind) in namespaces {
            fds.push((sys.open(&proc_dir.join(name))?, kind));
        }
        let root = sys.open(&proc_dir.join("root"))?;
        fds.push((root, CloneFlags::empty()));
        for &(fd, kind) in &fds {
            if !kind.is_empty() {
                sys.setns(fd, kind)?;
            }
        }
        // setns(CLONE_NEWNS) puts us at the namespace's root mount, which is
        // not the container's root if its init had to chroot; /proc/PID/root
        // is, either way.
        sys.fchdir(root)?;
        sys.chroot(Path::new("."))?;
        sys.chdir(Path::new("/"))
    })();
    for (fd, _) in fds {
        sys.close(fd);
    }
    result
}

/// Device nodes every container gets: (name, major, minor).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// In the container's init, already in its new mount and PID namespaces:
/// builds /proc, /sys and /dev inside `root` and makes `root` the process's
/// `/`.
pub fn enter_container_rootfs(sys: &mut dyn Sys, root: &Path, privileged: bool) -> SysResult {
    // Nothing mounted from here on may leak back into hyperstart's namespace.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = root.join("proc");
    sys.mkdir_all(&proc, 0o555)?;
    sys.mount(Some("proc"), &proc, Some("proc"), hardened, None)?;
    let sysfs = root.join("sys");
    sys.mkdir_all(&sysfs, 0o555)?;
    // Read-only unless privileged (as Docker): the guest's devices, drivers
    // and hyperstart's channel port are in there.
    let sys_ro = if privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    sys.mount(
        Some("sysfs"),
        &sysfs,
        Some("sysfs"),
        hardened | sys_ro,
        None,
    )?;
    if !privileged {
        crate::confine::protect_paths(sys, root)?;
    }

    let dev = root.join("dev");
    sys.mkdir_all(&dev, 0o755)?;
    // Unless privileged, /dev is nodev like the rest of the container's
    // writable mounts, and the standard nodes are hyperstart's own bound in
    // (a bind mount has its own flags): only they can be opened.
    let dev_flags = if privileged {
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME
    } else {
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME
    };
    sys.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        dev_flags,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let node = dev.join(name);
        if privileged {
            sys.mknod(&node, NodeKind::Char, 0o666, major, minor)?;
        } else {
            sys.create_file(&node, 0o666)?;
            let source = format!("/dev/{name}");
            sys.mount(Some(&source), &node, None, MsFlags::MS_BIND, None)?;
        }
    }
    for (target, name) in [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        sys.symlink(target, &dev.join(name))?;
    }
    let pts = dev.join("pts");
    sys.mkdir_all(&pts, 0o755)?;
    sys.mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    sys.symlink("pts/ptmx", &dev.join("ptmx"))?;
    let shm = dev.join("shm");
    sys.mkdir_all(&shm, 0o1777)?;
    sys.mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777,size=65536k"),
    )?;

    sys.chdir(root)?;
    match sys.pivot_root(Path::new("."), Path::new(".")) {
        Ok(()) => {
            // The old root is stacked under the new one; detaching it drops
            // every hyperstart mount from the container's namespace.
            sys.umount(Path::new("."), MntFlags::MNT_DETACH)?;
        }
        Err(e) if e.errno == Errno::EINVAL => {
            // Still on the initial rootfs (the boot-time switch failed):
            // do what switch_root and runc --no-pivot do.
            sys.mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)?;
            sys.chroot(Path::new("."))?;
        }
        Err(e) => return Err(e),
    }
    sys.chdir(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::RecordingSys;

    fn paths() -> ContainerPaths {
        ContainerPaths::new(Path::new(RUN_DIR), "c1")
    }

    fn disk(fstype: &str) -> Lower<'_> {
        Lower::Disk {
            device: Path::new("/dev/vdb"),
            fstype,
        }
    }

    #[test]
    fn container_rootfs_is_an_overlay_of_the_image_and_a_tmpfs() {
        let mut sys = RecordingSys::new();
        mount_container_rootfs(&mut sys, &paths(), disk("erofs"), false).unwrap();
        assert_eq!(
            sys.calls,
            vec![
                "mkdir /run/hyper/c/c1/lower 755",
                "mkdir /run/hyper/c/c1/rw 755",
                "mkdir /run/hyper/c/c1/root 755",
                "mount /dev/vdb /run/hyper/c/c1/lower erofs MsFlags(MS_RDONLY) -",
                "mount tmpfs /run/hyper/c/c1/rw tmpfs MsFlags(0x0) mode=0755",
                "mkdir /run/hyper/c/c1/rw/upper 755",
                "mkdir /run/hyper/c/c1/rw/work 755",
                "mount overlay /run/hyper/c/c1/root overlay MsFlags(0x0) \
                 lowerdir=/run/hyper/c/c1/lower,upperdir=/run/hyper/c/c1/rw/upper,workdir=/run/hyper/c/c1/rw/work",
            ]
        );
    }

    #[test]
    fn a_shared_directory_is_bound_read_only_under_the_same_overlay() {
        let mut sys = RecordingSys::new();
        let dir = Path::new("/run/hyper/c/.volumes/hyper-join/c1");
        mount_container_rootfs(&mut sys, &paths(), Lower::Dir(dir), true).unwrap();
        assert_eq!(
            &sys.calls[3..5],
            &[
                "mount /run/hyper/c/.volumes/hyper-join/c1 /run/hyper/c/c1/lower - MsFlags(MS_BIND) -",
                "mount - /run/hyper/c/c1/lower - MsFlags(MS_RDONLY | MS_REMOUNT | MS_BIND) -",
            ]
        );
        assert!(sys
            .calls
            .last()
            .is_some_and(|c| c.starts_with("mount overlay")));
    }

    #[test]
    fn ext4_images_skip_journal_replay() {
        let mut sys = RecordingSys::new();
        mount_container_rootfs(&mut sys, &paths(), disk("ext4"), true).unwrap();
        assert!(sys.calls.contains(
            &"mount /dev/vdb /run/hyper/c/c1/lower ext4 MsFlags(MS_RDONLY) noload".to_string()
        ));
    }

    #[test]
    fn a_failed_overlay_mount_is_undone() {
        let mut sys = RecordingSys::failing("mount overlay", Errno::EINVAL);
        let err = mount_container_rootfs(&mut sys, &paths(), disk("erofs"), true).unwrap_err();
        assert_eq!(err.errno, Errno::EINVAL);
        let tail: Vec<_> = sys
            .calls
            .iter()
            .skip_while(|c| !c.starts_with("mount overlay"))
            .skip(1)
            .collect();
        assert_eq!(
            tail,
            vec![
                "umount /run/hyper/c/c1/rw MntFlags(MNT_DETACH)",
                "umount /run/hyper/c/c1/lower MntFlags(MNT_DETACH)",
                "rmdir /run/hyper/c/c1/root",
                "rmdir /run/hyper/c/c1/lower",
                "rmdir /run/hyper/c/c1/rw",
                "rmdir /run/hyper/c/c1",
            ]
        );
    }

    #[test]
    fn teardown_unmounts_top_down_then_removes_dirs() {
        let mut sys = RecordingSys::new();
        assert!(unmount_container_rootfs(&mut sys, &paths()).is_empty());
        assert_eq!(
            sys.calls[0],
            "umount /run/hyper/c/c1/root MntFlags(MNT_DETACH)"
        );
        assert_eq!(
            sys.calls[1],
            "umount /run/hyper/c/c1/rw MntFlags(MNT_DETACH)"
        );
        assert_eq!(
            sys.calls[2],
            "umount /run/hyper/c/c1/lower MntFlags(MNT_DETACH)"
        );
        assert_eq!(
            sys.calls.last().map(String::as_str),
            Some("rmdir /run/hyper/c/c1")
        );
    }

    #[test]
    fn container_root_gets_api_filesystems_devices_then_pivots() {
        let mut sys = RecordingSys::new();
        let root = paths().root;
        enter_container_rootfs(&mut sys, &root, false).unwrap();
        let c = &sys.calls;
        assert_eq!(c[0], "mount - / - MsFlags(MS_REC | MS_PRIVATE) -");
        assert!(c.contains(&"mount proc /run/hyper/c/c1/root/proc proc MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -".into()));
        assert!(
            c.iter()
                .any(|l| l
                    .starts_with("mount sysfs /run/hyper/c/c1/root/sys sysfs MsFlags(MS_RDONLY"))
        );
        // Not privileged: /dev is nodev and hyperstart's nodes are bound in;
        // nothing is created with mknod.
        assert!(c.iter().any(|l| l.starts_with(
            "mount tmpfs /run/hyper/c/c1/root/dev tmpfs MsFlags(MS_NOSUID | MS_NODEV"
        )));
        assert!(!c.iter().any(|l| l.starts_with("mknod")));
        for node in ["null", "zero", "full", "random", "urandom", "tty"] {
            let bind =
                format!("mount /dev/{node} /run/hyper/c/c1/root/dev/{node} - MsFlags(MS_BIND) -");
            let create = format!("create /run/hyper/c/c1/root/dev/{node} 666");
            assert!(
                sys.position(&create).is_some() && sys.position(&create) < sys.position(&bind),
                "{node}"
            );
        }
        // Privileged: real nodes on a /dev that allows them.
        let mut privileged = RecordingSys::new();
        enter_container_rootfs(&mut privileged, &root, true).unwrap();
        for node in [
            "null c 1 3 666",
            "zero c 1 5 666",
            "full c 1 7 666",
            "random c 1 8 666",
            "urandom c 1 9 666",
            "tty c 5 0 666",
        ] {
            assert!(
                privileged
                    .calls
                    .contains(&format!("mknod /run/hyper/c/c1/root/dev/{node}")),
                "{node}"
            );
        }
        assert!(privileged.calls.iter().any(|l| l
            == "mount tmpfs /run/hyper/c/c1/root/dev tmpfs MsFlags(MS_NOSUID | MS_STRICTATIME) \
                mode=755,size=65536k"));
        assert!(c.contains(&"symlink /proc/self/fd /run/hyper/c/c1/root/dev/fd".into()));
        assert!(c.contains(&"symlink pts/ptmx /run/hyper/c/c1/root/dev/ptmx".into()));
        assert!(c.iter().any(|l| l
            .starts_with("mount devpts /run/hyper/c/c1/root/dev/pts devpts")
            && l.contains("newinstance,ptmxmode=0666")));
        // Parents exist before mounts; the devices live on the /dev tmpfs.
        assert!(sys.position("mkdir /run/hyper/c/c1/root/proc") < sys.position("mount proc"));
        assert!(sys.position("mount tmpfs /run/hyper/c/c1/root/dev ") < sys.position("create"));
        // Every mount happens before the root moves.
        let pivot = sys.position("pivot_root").unwrap();
        assert!(c
            .iter()
            .enumerate()
            .all(|(i, l)| !l.starts_with("mount ") || i < pivot));
        assert_eq!(sys.position("chdir /run/hyper/c/c1/root"), Some(pivot - 1));
        assert_eq!(
            &c[pivot..],
            ["pivot_root . .", "umount . MntFlags(MNT_DETACH)", "chdir /"]
        );
    }

    #[test]
    fn only_a_privileged_container_gets_a_writable_sys_and_unmasked_proc() {
        let mut sys = RecordingSys::new();
        let root = paths().root;
        sys.kinds
            .push((root.join("proc/kcore").display().to_string(), false));
        sys.kinds
            .push((root.join("proc/sys").display().to_string(), true));
        enter_container_rootfs(&mut sys, &root, false).unwrap();
        let ro_sys = "mount sysfs /run/hyper/c/c1/root/sys sysfs MsFlags(MS_RDONLY";
        assert!(sys.calls.iter().any(|l| l.starts_with(ro_sys)));
        let kcore = "mount /dev/null /run/hyper/c/c1/root/proc/kcore - MsFlags(MS_BIND) -";
        assert!(sys.calls.iter().any(|l| l == kcore));
        // Masks go on after /proc and /sys are mounted, before the pivot.
        assert!(sys.position("mount sysfs") < sys.position("mount /dev/null"));
        assert!(sys.position("mount /dev/null") < sys.position("pivot_root"));
        assert!(sys
            .calls
            .iter()
            .any(|l| l.starts_with("mount - /run/hyper/c/c1/root/proc/sys - MsFlags(MS_RDONLY")));

        let mut sys = RecordingSys::new();
        sys.kinds = vec![(root.join("proc/kcore").display().to_string(), false)];
        enter_container_rootfs(&mut sys, &root, true).unwrap();
        assert!(!sys.calls.iter().any(|l| l.starts_with(ro_sys)));
        assert!(!sys.calls.iter().any(|l| l == kcore));
    }

    #[test]
    fn without_pivot_root_the_container_root_is_moved_and_chrooted() {
        let mut sys = RecordingSys::failing("pivot_root", Errno::EINVAL);
        enter_container_rootfs(&mut sys, &paths().root, false).unwrap();
        let pivot = sys.position("pivot_root").unwrap();
        assert_eq!(
            &sys.calls[pivot + 1..],
            ["mount . / - MsFlags(MS_MOVE) -", "chroot .", "chdir /"]
        );
    }

    #[test]
    fn other_pivot_root_errors_fail_the_setup() {
        let mut sys = RecordingSys::failing("pivot_root", Errno::EPERM);
        assert_eq!(
            enter_container_rootfs(&mut sys, &paths().root, false)
                .unwrap_err()
                .errno,
            Errno::EPERM
        );
    }

    #[test]
    fn exec_joins_the_init_namespaces_then_its_root() {
        let mut sys = RecordingSys::new();
        join_container(&mut sys, 42).unwrap();
        assert_eq!(
            sys.calls,
            vec![
                "open /proc/42/ns/ipc",
                "open /proc/42/ns/uts",
                "open /proc/42/ns/mnt",
                "open /proc/42/ns/pid",
                "open /proc/42/root",
                "setns 101 CloneFlags(CLONE_NEWIPC)",
                "setns 102 CloneFlags(CLONE_NEWUTS)",
                "setns 103 CloneFlags(CLONE_NEWNS)",
                "setns 104 CloneFlags(CLONE_NEWPID)",
                "fchdir 105",
                "chroot .",
                "chdir /",
                "close 101",
                "close 102",
                "close 103",
                "close 104",
                "close 105",
            ]
        );
    }

    #[test]
    fn join_closes_what_it_opened_on_failure() {
        let mut sys = RecordingSys::failing("open /proc/42/ns/mnt", Errno::ENOENT);
        assert_eq!(
            join_container(&mut sys, 42).unwrap_err().errno,
            Errno::ENOENT
        );
        assert_eq!(sys.calls[3..], ["close 101", "close 102"]);
    }

    #[test]
    fn new_container_namespaces_and_hostname() {
        let mut sys = RecordingSys::new();
        new_container_namespaces(&mut sys, "web").unwrap();
        assert_eq!(
            sys.calls,
            vec![
                "unshare CloneFlags(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID)",
                "sethostname web"
            ]
        );
    }

    #[test]
    fn boot_ignores_already_mounted_filesystems() {
        let mut sys = RecordingSys::failing("mount proc", Errno::EBUSY);
        sys.fail.push(("mount tmpfs /run".into(), Errno::ENODEV));
        let errors = boot_mounts(&mut sys);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].errno, Errno::ENODEV);
        assert!(sys
            .calls
            .iter()
            .any(|c| c.starts_with("mount devtmpfs /dev devtmpfs")));
    }

    #[test]
    fn boot_switches_root_like_switch_root() {
        let mut sys = RecordingSys::new();
        switch_to_tmpfs_root(&mut sys).unwrap();
        let c = &sys.calls;
        assert_eq!(
            c[1],
            "mount tmpfs /.hyperstart-root tmpfs MsFlags(0x0) mode=0755"
        );
        assert_eq!(
            &c[c.len() - 4..],
            [
                "chdir /.hyperstart-root",
                "mount . / - MsFlags(MS_MOVE) -",
                "chroot .",
                "chdir /"
            ]
        );
    }
    #[test]
    fn volumes_are_sticky_world_writable_tmpfs() {
        let mut sys = RecordingSys::new();
        let dir = volume_dir(Path::new("/run/hyper/c"), "data");
        assert_eq!(dir, Path::new("/run/hyper/c/.volumes/data"));
        mount_volume(&mut sys, &dir, &VolumeMount::Tmpfs { size_mib: 16 }, false).unwrap();
        assert_eq!(
            sys.calls,
            [
                "mkdir /run/hyper/c/.volumes/data 755",
                "mount tmpfs /run/hyper/c/.volumes/data tmpfs MsFlags(MS_NOSUID | MS_NODEV) mode=1777,size=16m",
            ]
        );
        let mut sys = RecordingSys::failing("mount tmpfs", Errno::ENOMEM);
        let tmpfs = VolumeMount::Tmpfs { size_mib: 0 };
        assert!(mount_volume(&mut sys, &dir, &tmpfs, false).is_err());
        assert_eq!(
            sys.calls.last().unwrap(),
            "rmdir /run/hyper/c/.volumes/data"
        );
    }

    #[test]
    fn each_volume_kind_is_mounted_nosuid_nodev_and_read_only_when_asked() {
        let dir = Path::new("/run/hyper/c/.volumes/v");
        let cases = [
            (
                VolumeMount::VirtioFs {
                    tag: "hyper-vol0".into(),
                },
                false,
                "mount hyper-vol0 /run/hyper/c/.volumes/v virtiofs MsFlags(MS_NOSUID | MS_NODEV) -",
            ),
            (
                VolumeMount::VirtioFs {
                    tag: "hyper-vol0".into(),
                },
                true,
                "mount hyper-vol0 /run/hyper/c/.volumes/v virtiofs \
                 MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV) -",
            ),
            (
                VolumeMount::Xen9p {
                    tag: "hyper-vol1".into(),
                },
                false,
                "mount hyper-vol1 /run/hyper/c/.volumes/v 9p MsFlags(MS_NOSUID | MS_NODEV) \
                 trans=xen,version=9p2000.L,cache=mmap,msize=262144",
            ),
            (
                VolumeMount::Block {
                    device: "/dev/vdc".into(),
                    fstype: "ext4".into(),
                },
                false,
                "mount /dev/vdc /run/hyper/c/.volumes/v ext4 MsFlags(MS_NOSUID | MS_NODEV) -",
            ),
            (
                VolumeMount::Block {
                    device: "/dev/xvdc".into(),
                    fstype: "ext4".into(),
                },
                true,
                "mount /dev/xvdc /run/hyper/c/.volumes/v ext4 \
                 MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV) -",
            ),
            (
                VolumeMount::Tmpfs { size_mib: 0 },
                true,
                "mount tmpfs /run/hyper/c/.volumes/v tmpfs \
                 MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV) mode=1777",
            ),
        ];
        for (volume, readonly, want) in cases {
            let mut sys = RecordingSys::new();
            mount_volume(&mut sys, dir, &volume, readonly).unwrap();
            assert_eq!(
                sys.calls,
                ["mkdir /run/hyper/c/.volumes/v 755", want],
                "{volume:?}"
            );
        }
    }

    #[test]
    fn a_failed_volume_mount_leaves_no_directory_and_teardown_is_lazy() {
        let dir = Path::new("/run/hyper/c/.volumes/v");
        let share = VolumeMount::VirtioFs { tag: "t".into() };
        let mut sys = RecordingSys::failing("virtiofs", Errno::EINVAL);
        let e = mount_volume(&mut sys, dir, &share, false).unwrap_err();
        assert_eq!(e.errno, Errno::EINVAL);
        assert_eq!(sys.calls.last().unwrap(), "rmdir /run/hyper/c/.volumes/v");
        // Nothing is mounted when the directory cannot be made.
        let mut sys = RecordingSys::failing("mkdir", Errno::ENOSPC);
        assert!(mount_volume(&mut sys, dir, &share, false).is_err());
        assert_eq!(sys.calls, ["mkdir /run/hyper/c/.volumes/v 755"]);

        let mut sys = RecordingSys::new();
        assert!(unmount_volume(&mut sys, dir).is_empty());
        assert_eq!(
            sys.calls,
            [
                "umount /run/hyper/c/.volumes/v MntFlags(MNT_DETACH)",
                "rmdir /run/hyper/c/.volumes/v"
            ]
        );
        // Already gone is fine; a busy directory is reported.
        let mut sys = RecordingSys::failing("umount", Errno::EINVAL);
        sys.fail.push(("rmdir".into(), Errno::EBUSY));
        let errors = unmount_volume(&mut sys, dir);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].errno, Errno::EBUSY);
    }

    #[test]
    fn volumes_are_bound_onto_directories_opened_under_the_root_parents_first() {
        let mut sys = RecordingSys::new();
        let binds = [
            VolumeBind {
                source: "/v/b".into(),
                path: "/etc/conf".into(),
                readonly: true,
            },
            VolumeBind {
                source: "/v/a".into(),
                path: "/data".into(),
                readonly: false,
            },
        ];
        bind_volumes(&mut sys, Path::new("/r"), &binds).unwrap();
        assert_eq!(
            sys.calls,
            [
                "open_beneath /r data 755",
                "mount /v/a /proc/self/fd/101 - MsFlags(MS_BIND) -",
                "close 101",
                "open_beneath /r etc/conf 755",
                "mount /v/b /proc/self/fd/102 - MsFlags(MS_BIND) -",
                "close 102",
                // The remount goes onto the bind itself, opened again.
                "open_beneath /r etc/conf 755",
                "mount - /proc/self/fd/103 - \
                 MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_REMOUNT | MS_BIND) -",
                "close 103",
            ]
        );
        // A child comes after its parent whatever the order asked.
        let nested = [
            VolumeBind {
                source: "/v/inner".into(),
                path: "/data/sub".into(),
                readonly: false,
            },
            VolumeBind {
                source: "/v/outer".into(),
                path: "/data".into(),
                readonly: false,
            },
        ];
        let mut sys = RecordingSys::new();
        bind_volumes(&mut sys, Path::new("/r"), &nested).unwrap();
        assert!(sys.position("mount /v/outer") < sys.position("mount /v/inner"));
        assert!(sys.position("open_beneath /r data/sub") > sys.position("mount /v/outer"));
    }

    #[test]
    fn a_refused_or_failed_bind_stops_and_closes_its_fd() {
        let binds = [
            VolumeBind {
                source: "/v/a".into(),
                path: "/data".into(),
                readonly: true,
            },
            VolumeBind {
                source: "/v/b".into(),
                path: "/data2".into(),
                readonly: false,
            },
        ];
        // A symlink on the way: nothing is mounted.
        let mut sys = RecordingSys::failing("open_beneath /r data ", Errno::ELOOP);
        let e = bind_volumes(&mut sys, Path::new("/r"), &binds).unwrap_err();
        assert_eq!(e.errno, Errno::ELOOP);
        assert_eq!(sys.calls, ["open_beneath /r data 755"]);
        // The bind fails: its fd is closed, nothing else happens.
        let mut sys = RecordingSys::failing("mount /v/a", Errno::ENOENT);
        assert!(bind_volumes(&mut sys, Path::new("/r"), &binds).is_err());
        assert_eq!(sys.calls.last().unwrap(), "close 101");
        assert!(!sys.calls.iter().any(|c| c.contains("/v/b")));
        // The read-only remount fails: the error is returned, fd closed.
        let mut sys = RecordingSys::failing("MS_REMOUNT", Errno::EPERM);
        let e = bind_volumes(&mut sys, Path::new("/r"), &binds).unwrap_err();
        assert_eq!(e.errno, Errno::EPERM);
        assert_eq!(e.target, "/r/data");
        assert_eq!(sys.calls.last().unwrap(), "close 102");
    }
}
