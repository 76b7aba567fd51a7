//! The host end of a virtio-net device: a tap fd the plugin opened (inside
//! the pod's netns) and passed to hyper-vmm, or, for tests, one end of a
//! datagram socket pair. Either way one `read` is one frame and one `write`
//! sends one frame; the fd is non-blocking and polled by the event loop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::HDR_LEN;

// <linux/if_tun.h>
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_VNET_HDR: libc::c_short = 0x4000;
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_TSO_ECN: u32 = 0x08;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("net fd {0}: {1}")]
    Io(RawFd, io::Error),
    #[error(
        "net fd {0} is neither a tap (opened with IFF_TAP) nor a datagram socket: frames would lose their boundaries"
    )]
    NotFramed(RawFd),
}

/// `struct ifreq` as TUNGETIFF fills it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// Frames carry a 12-byte `virtio_net_hdr_v1` in front (a tap opened
    /// with IFF_VNET_HDR): the guest's header is passed through as is, and
    /// checksum/TSO offloads can be offered.
    vnet_hdr: bool,
    is_tap: bool,
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass a request whose argument is `*mut T` of the
    // right size, pointing at memory they exclusively own.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Takes the fd over: makes it non-blocking and, for a tap with
    /// IFF_VNET_HDR, sets the header size to the 12 bytes of
    /// `virtio_net_hdr_v1`.
    pub fn new(fd: OwnedFd) -> Result<Self, TapError> {
        let raw = fd.as_raw_fd();
        let err = |e| TapError::Io(raw, e);
        // SAFETY: fcntl on an fd we own, with integer arguments only.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if fl < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: as above; the VMM starts no programs, but nothing it
        // might start should get the tap.
        unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) };
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        match ioctl_ptr(raw, TUNGETIFF, &mut req) {
            Ok(()) => {
                if req.flags & IFF_TAP == 0 {
                    // A tun (layer 3) device: no Ethernet header.
                    return Err(TapError::NotFramed(raw));
                }
                let vnet_hdr = req.flags & IFF_VNET_HDR != 0;
                if vnet_hdr {
                    let mut size: libc::c_int = HDR_LEN as libc::c_int;
                    ioctl_ptr(raw, TUNSETVNETHDRSZ, &mut size).map_err(err)?;
                }
                Ok(Self {
                    fd,
                    vnet_hdr,
                    is_tap: true,
                })
            }
            Err(_) => {
                let mut ty: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: SO_TYPE writes one c_int into `ty`, whose size is in `len`.
                let r = unsafe {
                    libc::getsockopt(
                        raw,
                        libc::SOL_SOCKET,
                        libc::SO_TYPE,
                        (&mut ty as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r == 0 && (ty == libc::SOCK_DGRAM || ty == libc::SOCK_SEQPACKET) {
                    Ok(Self {
                        fd,
                        vnet_hdr: false,
                        is_tap: false,
                    })
                } else {
                    Err(TapError::NotFramed(raw))
                }
            }
        }
    }

    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// The guest's receive offloads (TUN_F_*), so the tap only hands over
    /// frames the guest said it can take. A no-op without IFF_VNET_HDR.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        if !self.is_tap || !self.vnet_hdr {
            return Ok(());
        }
        // TUNSETOFFLOAD takes the flags by value.
        // SAFETY: an integer argument; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// One frame into `buf` (truncated if longer).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// One frame out.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for `frame.len()` bytes of reads.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    pub(crate) fn pair(ty: libc::c_int) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array.
        let r = unsafe {
            libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_datagram_socket_stands_in_for_a_tap() {
        let (a, _b) = pair(libc::SOCK_DGRAM);
        let t = Tap::new(a).unwrap();
        assert!(!t.vnet_hdr());
        let mut buf = [0u8; 16];
        assert_eq!(
            t.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the fd is non-blocking"
        );
    }

    #[test]
    fn a_stream_socket_or_a_file_is_refused() {
        let (a, _b) = pair(libc::SOCK_STREAM);
        assert!(matches!(Tap::new(a), Err(TapError::NotFramed(_))));
        let f = tempfile::tempfile().unwrap();
        assert!(matches!(Tap::new(f.into()), Err(TapError::NotFramed(_))));
    }

    /// Opens a tap named `name` with IFF_VNET_HDR in a new network
    /// namespace (on a thread of its own, so the test process stays in its
    /// namespace); None when this host does not allow it.
    pub(crate) fn tap_in_new_netns(name: &str, up: bool) -> Option<OwnedFd> {
        let name = name.to_string();
        std::thread::spawn(move || {
            // SAFETY: unshare only changes this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return None;
            }
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .ok()?;
            let mut req = IfReq {
                name: [0; 16],
                flags: IFF_TAP | 0x1000 | IFF_VNET_HDR, // IFF_NO_PI
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            ioctl_ptr(f.as_raw_fd(), 0x4004_54ca, &mut req).ok()?; // TUNSETIFF
            if up {
                // SAFETY: a plain socket call; closed right after.
                let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
                if s < 0 {
                    return None;
                }
                // SAFETY: `s` was just created and is owned here.
                let s = unsafe { OwnedFd::from_raw_fd(s) };
                req.flags = 0;
                ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req).ok()?;
                req.flags |= libc::IFF_UP as libc::c_short;
                ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req).ok()?;
            }
            Some(OwnedFd::from(f))
        })
        .join()
        .ok()
        .flatten()
    }

    #[test]
    fn a_real_tap_with_vnet_hdr_gets_offloads() {
        let Some(fd) = tap_in_new_netns("hvtest0", false) else {
            eprintln!("SKIP: cannot create a tap in a new netns here");
            return;
        };
        let t = Tap::new(fd).unwrap();
        assert!(t.vnet_hdr());
        t.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            .unwrap();
        t.set_offload(0).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            t.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        // The interface is down: the kernel refuses the frame, it is not
        // queued anywhere.
        let mut frame = vec![0u8; HDR_LEN + 60];
        frame[HDR_LEN..HDR_LEN + 6].fill(0xff);
        assert!(t.send(&frame).is_err());
    }
}
