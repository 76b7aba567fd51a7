//! Mount and namespace setup sequences, written against [`Sys`] so their
//! order and options are unit-tested without root.

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

/// Mounts the image read-only, a tmpfs for the writable layer, and the
/// overlay of both that becomes the container's root. Undoes what it did on
/// failure.
///
/// `nodev` (every container but a privileged one): device nodes on the
/// container's root cannot be opened, whatever the container `mknod`s
/// there (see docs/security/confine.md).
pub fn mount_container_rootfs(
    sys: &mut dyn Sys,
    paths: &ContainerPaths,
    device: &Path,
    fstype: &str,
    nodev: bool,
) -> SysResult {
    for dir in [&paths.lower, &paths.rw, &paths.root] {
        sys.mkdir_all(dir, 0o755)?;
    }
    let device = device.to_string_lossy();
    // The image is never written: skip ext4 journal replay, which a
    // read-only disk could not do anyway.
    let data = (fstype == "ext4").then_some("noload");
    if let Err(e) = sys.mount(
        Some(&device),
        &paths.lower,
        Some(fstype),
        MsFlags::MS_RDONLY,
        data,
    ) {
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

/// Best-effort teardown: lazy unmounts, since the container's processes may
/// still be dying and holding the mounts.
pub fn unmount_container_rootfs(sys: &mut dyn Sys, paths: &ContainerPaths) -> Vec<SysError> {
    let mut errors = Vec::new();
    for dir in [&paths.root, &paths.rw, &paths.lower] {
        match sys.umount(dir, MntFlags::MNT_DETACH) {
            Ok(())
            | Err(SysError {
                errno: Errno::EINVAL | Errno::ENOENT,
                ..
            }) => {}
            Err(e) => errors.push(e),
        }
    }
    remove_dirs(sys, paths);
    errors
}

/// Where pod volumes live in hyperstart's mount namespace: beside the
/// container directories, under a name no container id can take (ids never
/// start with a dot).
pub fn volume_dir(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(".volumes").join(name)
}

/// Mounts a pod volume: a tmpfs, world-writable with the sticky bit like
/// /tmp, because the containers sharing it may run as different users.
pub fn create_volume(sys: &mut dyn Sys, dir: &Path, size_mib: u32) -> SysResult {
    sys.mkdir_all(dir, 0o755)?;
    let data = if size_mib > 0 {
        format!("mode=1777,size={size_mib}m")
    } else {
        "mode=1777".to_string()
    };
    if let Err(e) = sys.mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(&data),
    ) {
        let _ = sys.remove_dir(dir);
        return Err(e);
    }
    Ok(())
}

/// One volume to bind into a container: its directory, the path inside the
/// container (absolute, already validated) and whether it is read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub source: PathBuf,
    pub path: String,
    pub readonly: bool,
}

/// Binds volumes into a container's root before its init starts, so its
/// mount namespace (a copy of hyperstart's) has them under the root it
/// pivots into. The caller unmounts the root on failure, which lazily takes
/// every bind below it along.
pub fn bind_volumes(sys: &mut dyn Sys, root: &Path, binds: &[VolumeBind]) -> SysResult {
    for bind in binds {
        let target = root.join(bind.path.trim_start_matches('/'));
        sys.mkdir_all(&target, 0o755)?;
        let source = bind.source.to_string_lossy();
        sys.mount(Some(&source), &target, None, MsFlags::MS_BIND, None)?;
        if bind.readonly {
            // MS_RDONLY is ignored on the first bind; only a remount applies
            // it, and the remount sets every per-mount flag: keep the
            // volume's nosuid and nodev.
            sys.mount(
                None,
                &target,
                None,
                MsFlags::MS_BIND
                    | MsFlags::MS_REMOUNT
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV,
                None,
            )?;
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

    #[test]
    fn container_rootfs_is_an_overlay_of_the_image_and_a_tmpfs() {
        let mut sys = RecordingSys::new();
        mount_container_rootfs(&mut sys, &paths(), Path::new("/dev/vdb"), "erofs", false).unwrap();
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
    fn ext4_images_skip_journal_replay() {
        let mut sys = RecordingSys::new();
        mount_container_rootfs(&mut sys, &paths(), Path::new("/dev/vdb"), "ext4", true).unwrap();
        assert!(sys.calls.contains(
            &"mount /dev/vdb /run/hyper/c/c1/lower ext4 MsFlags(MS_RDONLY) noload".to_string()
        ));
    }

    #[test]
    fn a_failed_overlay_mount_is_undone() {
        let mut sys = RecordingSys::failing("mount overlay", Errno::EINVAL);
        let err = mount_container_rootfs(&mut sys, &paths(), Path::new("/dev/vdb"), "erofs", true)
            .unwrap_err();
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
        create_volume(&mut sys, &dir, 16).unwrap();
        assert_eq!(
            sys.calls,
            [
                "mkdir /run/hyper/c/.volumes/data 755",
                "mount tmpfs /run/hyper/c/.volumes/data tmpfs MsFlags(MS_NOSUID | MS_NODEV) mode=1777,size=16m",
            ]
        );
        let mut sys = RecordingSys::failing("mount tmpfs", Errno::ENOMEM);
        assert!(create_volume(&mut sys, &dir, 0).is_err());
        assert_eq!(
            sys.calls.last().unwrap(),
            "rmdir /run/hyper/c/.volumes/data"
        );
    }

    #[test]
    fn volumes_are_bound_under_the_root_and_read_only_ones_remounted() {
        let mut sys = RecordingSys::new();
        let binds = [
            VolumeBind {
                source: "/v/a".into(),
                path: "/data".into(),
                readonly: false,
            },
            VolumeBind {
                source: "/v/b".into(),
                path: "/etc/conf".into(),
                readonly: true,
            },
        ];
        bind_volumes(&mut sys, Path::new("/r"), &binds).unwrap();
        assert_eq!(
            sys.calls,
            [
                "mkdir /r/data 755",
                "mount /v/a /r/data - MsFlags(MS_BIND) -",
                "mkdir /r/etc/conf 755",
                "mount /v/b /r/etc/conf - MsFlags(MS_BIND) -",
                "mount - /r/etc/conf - MsFlags(MS_RDONLY | MS_NOSUID | MS_NODEV | MS_REMOUNT | MS_BIND) -",
            ]
        );
        let mut sys = RecordingSys::failing("mkdir /r/data", Errno::ENOTDIR);
        assert!(bind_volumes(&mut sys, Path::new("/r"), &binds).is_err());
        assert_eq!(sys.calls.len(), 1);
    }
}
