//! Named network namespaces the way `ip netns` makes them: a file under
//! `/run/netns` bind-mounted from a thread's new namespace, so it outlives
//! every process in it; and the MAC and MTU of a link inside one.
//!
//! (A stand-in until the backend kit's `hyper_hypervisor::nic` offers
//! these; only this module changes then.)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::NetworkError;

pub const NETNS_DIR: &str = "/run/netns";

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> NetworkError {
    move |source| NetworkError::Io { what, source }
}

fn cstr(p: &Path) -> Result<CString, NetworkError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| NetworkError::Io {
        what: format!("{}", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// The path of pod `id`'s namespace.
pub fn path_for(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(format!("hyper-{id}"))
}

/// Makes a new network namespace and pins it at `path`.
pub fn create(path: &Path) -> Result<(), NetworkError> {
    let what = format!("network namespace {}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(what.clone()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(what.clone()))?;
    let target = cstr(path)?;
    // A thread of its own enters the new namespace and ends with it pinned:
    // no other thread of hyperd ever changes namespace.
    let pinned = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare(2) on this thread only (threads do not share a
        // network namespace once it is unshared); no memory is involved.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let source = CString::new("/proc/thread-self/ns/net").unwrap_or_default();
        // SAFETY: both are valid NUL-terminated strings that outlive the
        // call; a bind mount of this thread's namespace onto the file.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")));
    if let Err(e) = pinned {
        let _ = std::fs::remove_file(path);
        return Err(NetworkError::Io { what, source: e });
    }
    Ok(())
}

/// Unpins and removes a namespace made by [`create`]; gone already is
/// fine. The namespace itself ends with its last user (the VMM's tap).
pub fn remove(path: &Path) -> Result<(), NetworkError> {
    if !path.exists() {
        return Ok(());
    }
    let target = cstr(path)?;
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EINVAL: not a mount point (a half-made namespace file).
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetworkError::Io {
                what: format!("unmount network namespace {}", path.display()),
                source: e,
            });
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::Io {
            what: format!("remove network namespace {}", path.display()),
            source: e,
        }),
    }
}

/// The MAC (`aa:bb:…`, lower case) and MTU of link `ifname` inside the
/// namespace at `netns`.
pub fn link_info(netns: &Path, ifname: &str) -> Result<(String, u32), NetworkError> {
    let what = format!("link {ifname} in {}", netns.display());
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(NetworkError::Io {
            what,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    let ns = std::fs::File::open(netns).map_err(io_err(what.clone()))?;
    let name = ifname.to_string();
    let read = std::thread::spawn(move || -> std::io::Result<(String, u32)> {
        // SAFETY: setns(2) of this short-lived thread only, into a
        // namespace file descriptor we hold open.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq whose
        // name is NUL-terminated (zeroed, name shorter than IFNAMSIZ).
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the union member SIOCGIFHWADDR just wrote.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mac = hw[..6]
            .iter()
            .map(|b| format!("{:02x}", *b as u8))
            .collect::<Vec<_>>()
            .join(":");
        // SAFETY: as above; SIOCGIFMTU fills ifru_mtu.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the union member SIOCGIFMTU just wrote.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok((mac, u32::try_from(mtu).unwrap_or(0)))
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the link thread panicked")));
    read.map_err(io_err(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (the e2e machine runs as root); skipped otherwise.
    #[test]
    fn a_namespace_is_made_read_and_removed() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let path = path_for(&format!("unit-{}", std::process::id()));
        create(&path).unwrap();
        assert!(create(&path).is_err(), "a second one at the same path");
        let (mac, mtu) = link_info(&path, "lo").unwrap();
        assert_eq!((mac.as_str(), mtu), ("00:00:00:00:00:00", 65536));
        assert!(link_info(&path, "eth9").is_err());
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }
}
