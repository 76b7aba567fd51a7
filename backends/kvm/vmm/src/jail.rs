//! hyper-vmm's mount jail: once everything the VM needs is open, the VMM
//! moves into a private mount namespace whose root is an empty, read-only
//! tmpfs (Firecracker's jailer chroots into a per-VM directory; hyper-vmm
//! needs no file at all after set-up, so its root holds nothing).
//!
//! What it keeps: the descriptors it already holds (`/dev/kvm`, the VM and
//! vCPU fds, guest memory, kernel-loaded memory, disks, taps, the console
//! log, the listening agent socket, virtiofsd sockets, the status file and
//! `/proc/self/status`, opened before). The host still sees the process
//! with its host pid and `/proc/PID`, the agent socket at its path in the
//! run directory (the socket file is on the host's filesystem), and the
//! process in its cgroup: takeover and stats are unchanged.
//!
//! Done on the main thread before the vCPU threads exist (`unshare` moves
//! only the calling thread; threads started later inherit its namespace).

use std::ffi::CStr;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "mount jail, {step}: {source} (hyper-vmm needs CAP_SYS_ADMIN for it: run it as root, or pass --no-jail to run without)"
    )]
    Step {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("dropping to uid {uid} gid {gid}, {step}: {source} (hyper-vmm must start as root to drop to another uid)")]
    Drop {
        step: &'static str,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
}

fn check(r: libc::c_int, step: &'static str) -> Result<(), JailError> {
    if r == 0 {
        Ok(())
    } else {
        Err(JailError::Step {
            step,
            source: std::io::Error::last_os_error(),
        })
    }
}

fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
    step: &'static str,
) -> Result<(), JailError> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string or null.
    let r = unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    check(r, step)
}

/// The last step of [`enter`], left for later: detaching the host's root
/// stacked under the empty one. It waits for an RCU grace period (0.1 ms
/// on a quiet host, 3 ms and more on a loaded one), so the VMM does it once
/// the vCPUs run, off the boot path. Until then the vCPU threads cannot
/// open anything anyway (no `openat` in their seccomp list).
#[must_use = "the host's root stays reachable until finish()"]
pub struct Pending {
    detach: bool,
}

impl Pending {
    pub fn finish(self) -> Result<(), JailError> {
        if self.detach {
            // SAFETY: umount2 with a NUL-terminated path.
            check(
                unsafe { libc::umount2(c"/".as_ptr(), libc::MNT_DETACH) },
                "detaching the old root",
            )?;
        }
        // SAFETY: as above.
        check(unsafe { libc::chdir(c"/".as_ptr()) }, "chdir /")
    }
}

/// Moves the calling thread (and every thread it starts afterwards) into a
/// private mount namespace rooted at an empty read-only tmpfs; the host's
/// old root is gone once [`Pending::finish`] has run.
pub fn enter() -> Result<Pending, JailError> {
    // SAFETY: unshare(2) with a flag; affects only this thread.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        "unshare(CLONE_NEWNS)",
    )?;
    // Nothing done here propagates back to the host.
    mount(
        None,
        c"/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "making / private",
    )?;
    // The new root: an empty tmpfs, mounted over /proc (which always
    // exists; in this namespace only, and /proc is not needed again).
    mount(
        Some(c"hyper-vmm-jail"),
        c"/proc",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
        Some(c"size=4k,nr_inodes=1,mode=0555"),
        "mounting the empty root",
    )?;
    // SAFETY: chdir to a NUL-terminated path.
    check(unsafe { libc::chdir(c"/proc".as_ptr()) }, "chdir")?;
    // pivot_root(".", "."), then detach the old root stacked under it.
    // SAFETY: plain syscall with NUL-terminated paths.
    let pivoted = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if pivoted == 0 {
        // The old root now sits on top of "/": Pending::finish detaches it.
        return Ok(Pending { detach: true });
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(JailError::Step {
                step: "pivot_root",
                source: e,
            });
        }
        // An initramfs root cannot be pivoted away from: switch_root's
        // way, the tmpfs moved over / and chroot into it.
        mount(
            Some(c"."),
            c"/",
            None,
            libc::MS_MOVE,
            None,
            "moving the empty root over /",
        )?;
        // SAFETY: as above.
        check(unsafe { libc::chroot(c".".as_ptr()) }, "chroot")?;
    }
    Ok(Pending { detach: false })
}

/// Drops to `uid`/`gid` with no supplementary groups: a non-root uid
/// keeps no capabilities. Call while only one thread exists (glibc applies
/// it to every thread anyway).
pub fn drop_to(uid: u32, gid: u32) -> Result<(), JailError> {
    let step = |step: &'static str, r: libc::c_int| -> Result<(), JailError> {
        if r == 0 {
            Ok(())
        } else {
            Err(JailError::Drop {
                step,
                uid,
                gid,
                source: std::io::Error::last_os_error(),
            })
        }
    };
    // SAFETY: plain credential syscalls on this process.
    unsafe {
        step("setgroups", libc::setgroups(0, std::ptr::null()))?;
        step("setresgid", libc::setresgid(gid, gid, gid))?;
        step("setresuid", libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (the namespace is per thread until it
    /// starts others): after `enter`, the root is empty and nothing of
    /// the host's filesystem can be opened.
    #[test]
    fn the_jail_root_is_empty_and_read_only() {
        let r = std::thread::spawn(|| {
            // unshare(CLONE_NEWNS) on one thread needs its own fs struct.
            // SAFETY: unshare(2) with a flag, this thread only.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err("unshare(CLONE_FS)".to_string());
            }
            match enter() {
                Ok(p) => p.finish().map_err(|e| e.to_string())?,
                Err(e) => return Err(format!("SKIP {e}")),
            }
            let entries: Vec<_> = std::fs::read_dir("/")
                .map_err(|e| e.to_string())?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let passwd = std::fs::metadata("/etc/passwd").is_ok();
            let write = std::fs::write("/x", b"x").is_ok();
            Ok((entries, passwd, write))
        })
        .join()
        .unwrap();
        match r {
            Err(e) if e.starts_with("SKIP") => eprintln!("{e}"),
            Err(e) => panic!("{e}"),
            Ok((entries, passwd, write)) => {
                assert!(entries.is_empty(), "{entries:?}");
                assert!(!passwd, "the host's files are out of reach");
                assert!(!write, "the root is read-only");
            }
        }
        // This thread (the test process) kept the host's view.
        assert!(std::path::Path::new("/proc/self/status").exists());
    }
}
