//! Loop devices the backend attaches its domains' disk images to, so that
//! xl's hotplug step is the backend's two-call `block-hyper` script instead
//! of Xen's bash `block` script (which runs dozens of processes under a
//! global lock; docs/perf/tmplxen.md measures both).
//!
//! Each device is configured in one `LOOP_CONFIGURE` with
//! `LO_FLAGS_AUTOCLEAR` (and `LO_FLAGS_READ_ONLY` for a read-only disk): the
//! kernel detaches it as soon as nobody holds it open any more. The backend
//! holds it until the domain is gone and blkback holds it while the vbd is
//! connected, so no failure (of xl, of the domain, of the plugin process
//! itself) leaves a loop device behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;
/// Another launch may take the free device between GET_FREE and CONFIGURE.
const ATTEMPTS: usize = 16;
/// Loop devices looked at for the sharing check.
const MAX_SCANNED: usize = 4096;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// One attached loop device; dropping it lets the kernel detach the device
/// once blkback has let go of it too.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    _device: File,
}

impl LoopDevice {
    /// `/dev/loopN`, what xl.cfg names as the disk's target.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Attaches `image` to a free loop device, read-only if `read_only`.
/// A writable image already attached to a loop device (another domain's
/// disk), or a read-only one attached writable, is refused: two domains
/// writing one image would corrupt it (Xen's `block` script refuses the
/// same).
pub fn attach(image: &Path, read_only: bool) -> Result<LoopDevice, String> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| format!("cannot open disk image {}: {e}", image.display()))?;
    let meta = backing
        .metadata()
        .map_err(|e| format!("{}: {e}", image.display()))?;
    if !meta.is_file() && !meta.file_type().is_block_device() {
        return Err(format!(
            "disk image {} is neither a regular file nor a block device",
            image.display()
        ));
    }
    check_sharing(Path::new("/sys/block"), image, &meta, read_only)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(LOOP_CONTROL)
        .map_err(|e| {
            format!("cannot open {LOOP_CONTROL}: {e} (load the loop module: `modprobe loop`)")
        })?;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device
        // number or -1; the fd is open for the call's duration.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(format!(
                "no free loop device: {}",
                std::io::Error::last_os_error()
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let device = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                last = format!("cannot open {}: {e}", path.display());
                continue;
            }
        };
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
                lo_file_name: [0; LO_NAME_SIZE],
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // What `losetup -a` shows; cut to the field, always NUL-terminated.
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        config.info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which
        // `LoopConfig` lays out (repr(C)); both fds are open for the call.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok(LoopDevice {
                path,
                _device: device,
            });
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Taken by someone else meanwhile: another free one.
            Some(libc::EBUSY) => last = format!("{} was taken meanwhile", path.display()),
            Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                return Err(format!(
                    "cannot attach {} to {}: {e} (the backend needs LOOP_CONFIGURE, Linux 5.8 or later, in dom0)",
                    image.display(),
                    path.display()
                ))
            }
            _ => {
                return Err(format!(
                    "cannot attach {} to {}: {e}",
                    image.display(),
                    path.display()
                ))
            }
        }
    }
    Err(format!(
        "cannot attach {} to a loop device after {ATTEMPTS} attempts: {last}",
        image.display()
    ))
}

/// Attaches each image in turn; on a failure, those already attached are
/// let go (and detached by the kernel).
pub fn attach_all<'a>(
    disks: impl IntoIterator<Item = (&'a Path, bool)>,
) -> Result<Vec<LoopDevice>, String> {
    disks
        .into_iter()
        .map(|(image, read_only)| attach(image, read_only))
        .collect()
}

/// Refuses an image a loop device already has open for writing, or that
/// one already has at all when this one would write it. Reads sysfs only:
/// opening another loop device could be the close that autoclears it.
fn check_sharing(
    sys_block: &Path,
    image: &Path,
    meta: &std::fs::Metadata,
    read_only: bool,
) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Ok(());
    };
    for entry in entries.flatten().take(MAX_SCANNED) {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end_matches('\n');
        let Ok(other) = std::fs::metadata(backing) else {
            continue;
        };
        if other.dev() != meta.dev() || other.ino() != meta.ino() {
            continue;
        }
        let other_ro = std::fs::read_to_string(entry.path().join("ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        if !read_only || !other_ro {
            return Err(format!(
                "disk image {} is already attached to /dev/{name}{}: a disk another domain writes, or that this one would write, cannot be shared",
                image.display(),
                if other_ro { "" } else { " read-write" }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_linux() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    /// A fake /sys/block with one loop device backed by `image`.
    fn sys_with(image: &Path, ro: bool) -> tempfile::TempDir {
        let sys = tempfile::tempdir().unwrap();
        let dev = sys.path().join("loop3");
        std::fs::create_dir_all(dev.join("loop")).unwrap();
        std::fs::write(
            dev.join("loop/backing_file"),
            format!("{}\n", image.display()),
        )
        .unwrap();
        std::fs::write(dev.join("ro"), if ro { "1\n" } else { "0\n" }).unwrap();
        std::fs::create_dir_all(sys.path().join("sda")).unwrap();
        sys
    }

    #[test]
    fn writable_images_are_not_shared() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vol.img");
        std::fs::write(&image, [0u8; 512]).unwrap();
        let meta = std::fs::metadata(&image).unwrap();
        let other = dir.path().join("other.img");
        std::fs::write(&other, [0u8; 512]).unwrap();

        // Nothing attached (another image): fine either way.
        let sys = sys_with(&other, false);
        assert!(check_sharing(sys.path(), &image, &meta, false).is_ok());
        // Attached read-only: another read-only user is fine, a writer not.
        let sys = sys_with(&image, true);
        assert!(check_sharing(sys.path(), &image, &meta, true).is_ok());
        let err = check_sharing(sys.path(), &image, &meta, false).unwrap_err();
        assert!(err.contains("/dev/loop3"), "{err}");
        // Attached read-write: nobody else.
        let sys = sys_with(&image, false);
        let err = check_sharing(sys.path(), &image, &meta, true).unwrap_err();
        assert!(err.contains("read-write"), "{err}");
        // No sysfs: nothing to check against.
        assert!(check_sharing(Path::new("/nonexistent"), &image, &meta, false).is_ok());
    }

    #[test]
    fn images_that_are_not_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = attach(dir.path(), true).unwrap_err();
        assert!(err.contains("neither a regular file"), "{err}");
        let err = attach(&dir.path().join("missing.img"), true).unwrap_err();
        assert!(err.contains("cannot open disk image"), "{err}");
    }
}
