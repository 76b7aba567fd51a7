//! mount(2) and umount2(2) for the bind mounts the backends make: the NIC
//! kit's named network namespaces and the Xen backend's read-only shares.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` as a C string; a path with a NUL byte is `InvalidInput`.
pub fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// mount(2) with no filesystem type and no data: a bind mount
/// (`MS_BIND`), its remount (`MS_REMOUNT | MS_BIND | …`) or a propagation
/// change (`MS_SHARED`, `MS_PRIVATE`, with no `source`).
pub fn mount(source: Option<&CStr>, target: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives
    // the call; the kernel ignores the type and data of these mounts, and
    // takes null for both.
    let rc = unsafe {
        libc::mount(
            source.map_or(std::ptr::null(), CStr::as_ptr),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// umount2(2) of `target` with `flags`; `Ok(false)`: nothing was mounted
/// there (not a mount point, or no such path).
pub fn unmount(target: &CStr, flags: libc::c_int) -> io::Result<bool> {
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_a_nul_byte_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b"));
        assert_eq!(cstring(p).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert_eq!(cstring(Path::new("/tmp/a")).unwrap().as_bytes(), b"/tmp/a");
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_false() {
        let dir = tempfile::tempdir().unwrap();
        let c = cstring(dir.path()).unwrap();
        // Not a mount point (EINVAL), or EPERM without CAP_SYS_ADMIN.
        match unmount(&c, libc::MNT_DETACH) {
            Ok(mounted) => assert!(!mounted),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
        let gone = cstring(&dir.path().join("missing")).unwrap();
        match unmount(&gone, libc::MNT_DETACH) {
            Ok(mounted) => assert!(!mounted),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        }
    }
}
