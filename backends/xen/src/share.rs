//! Directory shares over Xen 9pfs: what each `p9` entry of the domain's
//! xl.cfg serves, and the read-only bind mounts behind read-only shares.
//!
//! libxl starts a QEMU device model (`xen-qemu-system-i386`, Debian's
//! qemu-system-xen) in dom0 for a domain with `p9` entries, and its 9pfs
//! backend serves each entry's `path` with the `local` fs driver. Xen 4.17's
//! p9 spec has no read-only flag (its keys are `tag`, `security_model`,
//! `path` and `backend`), so a read-only share is served from a read-only
//! bind mount of its source that the backend makes under
//! `share_dir/<vm id>/<tag>` before `xl create` and removes on every end of
//! the VM (launch failure, the domain's end, the orphan sweep). Writes
//! through it fail with EROFS in dom0's kernel, whatever the guest sends.

use std::io;
use std::path::{Path, PathBuf};

use hyper_hypervisor::mount::{self, cstring};
use hyper_hypervisor::{ShareSpec, VmSpec};

/// The directory holding one VM's read-only mounts.
pub fn vm_dir(share_dir: &Path, vm_id: &str) -> PathBuf {
    share_dir.join(vm_id)
}

/// The host directory the domain's 9pfs server exports for `share`: the
/// source itself, or for a read-only share its read-only bind mount.
pub fn served_path(share_dir: &Path, vm_id: &str, share: &ShareSpec) -> PathBuf {
    if share.read_only {
        vm_dir(share_dir, vm_id).join(&share.tag)
    } else {
        share.source.clone()
    }
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let src = source.map(cstring).transpose()?;
    mount::mount(src.as_deref(), &cstring(target)?, flags)
}

/// Detaches whatever is mounted on `target`; `Ok(false)`: nothing was.
fn unmount(target: &Path) -> io::Result<bool> {
    mount::unmount(&cstring(target)?, libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW)
}

/// Checks each share's source and makes the read-only bind mounts of the
/// read-only ones. On failure nothing is left mounted.
pub fn prepare(share_dir: &Path, spec: &VmSpec) -> Result<(), String> {
    release(share_dir, &spec.id);
    for share in &spec.shares {
        let meta = std::fs::metadata(&share.source).map_err(|e| {
            format!(
                "share {}: its source {}: {e}",
                share.tag,
                share.source.display()
            )
        })?;
        if !meta.is_dir() {
            return Err(format!(
                "share {}: its source {} is not a directory",
                share.tag,
                share.source.display()
            ));
        }
    }
    let ro: Vec<&ShareSpec> = spec.shares.iter().filter(|s| s.read_only).collect();
    if ro.is_empty() {
        return Ok(());
    }
    let dir = vm_dir(share_dir, &spec.id);
    let made = (|| {
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        for share in ro {
            let target = dir.join(&share.tag);
            std::fs::create_dir(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            // Not recursive: mounts below the source stay out of the share
            // (a recursive bind's submounts would stay writable).
            mount(Some(&share.source), &target, libc::MS_BIND).map_err(|e| {
                format!(
                    "share {}: cannot bind-mount {} on {}: {e}",
                    share.tag,
                    share.source.display(),
                    target.display()
                )
            })?;
            let ro_flags = libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            mount(None, &target, ro_flags).map_err(|e| {
                format!(
                    "share {}: cannot make {} read-only: {e}",
                    share.tag,
                    target.display()
                )
            })?;
        }
        Ok(())
    })();
    if made.is_err() {
        release(share_dir, &spec.id);
    }
    made
}

/// Unmounts and removes the VM's read-only share mounts; returns how many
/// mounts it removed. Quiet when there are none; what it cannot remove is
/// logged (and left for the next release of that VM id).
pub fn release(share_dir: &Path, vm_id: &str) -> usize {
    let dir = vm_dir(share_dir, vm_id);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let target = entry.path();
        match unmount(&target) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(vm = vm_id, path = %target.display(), "cannot unmount a share: {e}");
                continue;
            }
        }
        // rmdir, never a recursive removal: a directory that is still a
        // mount point (or has content) stays.
        if let Err(e) = std::fs::remove_dir(&target) {
            tracing::warn!(vm = vm_id, path = %target.display(), "cannot remove a share's mount point: {e}");
        }
    }
    let _ = std::fs::remove_dir(&dir);
    removed
}

/// The xenstore key where libxl records the pid of a domain's device model.
pub fn device_model_pid_key(domid: u32) -> String {
    format!("/local/domain/{domid}/image/device-model-pid")
}

/// The device model serving a domain's shares, as found when the VM was
/// launched or taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceModel {
    pub pid: u32,
    /// `/proc/<pid>/stat` start time: a reused pid is not taken for it.
    pub start: u64,
}

impl DeviceModel {
    /// The process `pid_text` (what xenstore says) names, if it is a QEMU
    /// serving `domid` (its command line has `-xen-domid <domid>`).
    pub fn find(pid_text: &str, domid: u32) -> Result<Self, String> {
        let pid: u32 = pid_text
            .trim()
            .parse()
            .map_err(|_| format!("device-model-pid {pid_text:?} is not a pid"))?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map_err(|e| format!("device model pid {pid}: {e}"))?;
        if !serves_domain(&cmdline, domid) {
            return Err(format!(
                "process {pid} is not the device model of domain {domid}"
            ));
        }
        let start = hyper_hypervisor::adopt::process_start_time(pid)
            .ok_or_else(|| format!("device model pid {pid}: no start time"))?;
        Ok(Self { pid, start })
    }

    pub fn is_alive(&self) -> bool {
        hyper_hypervisor::adopt::process_start_time(self.pid) == Some(self.start)
    }
}

/// True when a NUL-separated command line has `-xen-domid <domid>`.
pub fn serves_domain(cmdline: &[u8], domid: u32) -> bool {
    let want = domid.to_string();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-xen-domid" && w[1] == want.as_bytes())
}

/// The mount points under `dir` in this process's mount table: what the
/// tests count.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(tag: &str, source: &Path, read_only: bool) -> ShareSpec {
        ShareSpec {
            tag: tag.into(),
            source: source.to_path_buf(),
            read_only,
        }
    }

    fn spec(shares: Vec<ShareSpec>) -> VmSpec {
        VmSpec {
            id: "vm1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 128,
            disks: Vec::new(),
            console_log: "/tmp/c.log".into(),
            run_dir: "/tmp".into(),
            nics: Vec::new(),
            shares,
            cgroup: None,
            save_as_template: false,
        }
    }

    #[test]
    fn the_device_model_is_known_by_its_domid_argument() {
        let cmd = b"/usr/libexec/xen-qemu-system-i386\0-xen-domid\x0012\0-M\0xenpv\0";
        assert!(serves_domain(cmd, 12));
        assert!(!serves_domain(cmd, 1));
        assert!(!serves_domain(b"qemu\0-xen-domid12\0", 12));
        assert!(!serves_domain(b"", 0));
        assert!(DeviceModel::find("not a pid", 1)
            .unwrap_err()
            .contains("not a pid"));
        // This test process is no device model.
        let me = std::process::id().to_string();
        assert!(DeviceModel::find(&me, 1)
            .unwrap_err()
            .contains("not the device model"));
    }

    #[test]
    fn read_write_shares_are_served_from_their_source() {
        let s = share("data", Path::new("/srv/data"), false);
        assert_eq!(
            served_path(Path::new("/run/x"), "vm1", &s),
            PathBuf::from("/srv/data")
        );
        let s = share("conf", Path::new("/srv/conf"), true);
        assert_eq!(
            served_path(Path::new("/run/x"), "vm1", &s),
            PathBuf::from("/run/x/vm1/conf")
        );
    }

    #[test]
    fn a_missing_or_non_directory_source_is_refused_and_nothing_is_made() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("shares");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = prepare(&base, &spec(vec![share("a", &file, true)])).unwrap_err();
        assert!(
            e.contains("share a") && e.contains("not a directory"),
            "{e}"
        );
        let e = prepare(
            &base,
            &spec(vec![share("b", &tmp.path().join("nope"), false)]),
        )
        .unwrap_err();
        assert!(e.contains("share b") && e.contains("nope"), "{e}");
        assert!(!base.join("vm1").exists());
    }

    /// Needs CAP_SYS_ADMIN (CI and the dev machines run as root): the
    /// read-only mount refuses writes, the source stays writable, and
    /// release leaves no mount and no directory.
    #[test]
    fn read_only_shares_are_read_only_bind_mounts_removed_on_release() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("shares");
        let src = tmp.path().join("src");
        let rw = tmp.path().join("rw");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::write(src.join("f"), "host").unwrap();
        let s = spec(vec![share("conf", &src, true), share("data", &rw, false)]);
        if let Err(e) = prepare(&base, &s) {
            // A container without mount rights: say so, do not pass silently.
            assert!(e.contains("Operation not permitted"), "{e}");
            eprintln!("skipped: {e}");
            return;
        }
        let served = served_path(&base, "vm1", &s.shares[0]);
        assert_eq!(mounts_under(&base), vec![served.clone()]);
        assert_eq!(std::fs::read_to_string(served.join("f")).unwrap(), "host");
        let e = std::fs::write(served.join("new"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        let e = std::fs::write(served.join("f"), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        std::fs::write(src.join("g"), "still writable").unwrap();
        assert!(served.join("g").exists());
        // A second prepare for the same VM id replaces, not stacks.
        prepare(&base, &s).unwrap();
        assert_eq!(mounts_under(&base).len(), 1);
        assert_eq!(release(&base, "vm1"), 1);
        assert!(mounts_under(&base).is_empty());
        assert!(!base.join("vm1").exists());
        assert_eq!(release(&base, "vm1"), 0);
    }
}
