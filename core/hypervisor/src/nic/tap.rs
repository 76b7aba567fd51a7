//! A tap device inside a network namespace, handed to a VMM as a descriptor.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{link, netns, NicError};

/// The clone device every tap is opened through.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Opens a new tap device `device` (`IFF_TAP | IFF_NO_PI`, plus
/// `IFF_VNET_HDR` when `vnet_hdr`: frames then carry a `virtio_net_hdr`, as
/// QEMU's `vnet_hdr=on` expects) in the current thread's namespace. The tap
/// is not persistent: it disappears, with its tc filters, when the last
/// descriptor is closed. `IFF_TUN_EXCL`: an existing device of that name is
/// an error, never silently shared. The descriptor is close-on-exec.
pub(crate) fn open_here(netns: &Path, device: &str, vnet_hdr: bool) -> Result<OwnedFd, NicError> {
    link::validate_ifname("device", device)?;
    let tap_err = |op, source| NicError::Tap {
        netns: netns.to_path_buf(),
        device: device.to_owned(),
        op,
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|e| tap_err("open /dev/net/tun (is the tun module loaded?)", e))?;

    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(device.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    // Every flag fits in the 16 bits of ifr_flags.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is and which
    // outlives the call; the descriptor is open.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
        let e = io::Error::last_os_error();
        let op = if e.raw_os_error() == Some(libc::EBUSY) {
            "create it (a device of that name already exists)"
        } else {
            "create it (TUNSETIFF)"
        };
        return Err(tap_err(op, e));
    }
    tracing::debug!(netns = %netns.display(), device, vnet_hdr, "tap opened");
    Ok(file.into())
}

/// Opens a new tap device `device` inside the namespace `netns`; see
/// [`open_here`] for the flags. Dropping the descriptor removes the tap.
pub fn open(netns: &Path, device: &str, vnet_hdr: bool) -> Result<OwnedFd, NicError> {
    link::validate_ifname("device", device)?;
    let ns = netns.to_path_buf();
    let dev = device.to_owned();
    netns::run_in(netns, move || open_here(&ns, &dev, vnet_hdr))?
}
