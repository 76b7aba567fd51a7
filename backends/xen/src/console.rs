//! The agent channel: the domain's PV console pty (dom0 side of the guest's
//! `/dev/hvc0`, made by xenconsoled) bridged to a unix socket in the run
//! directory, so the core connects to it like to any other backend's.
//!
//! The bridge is its own small process per domain (`hyper-xen-console`, see
//! [`crate::bridge`]), not a task in the plugin: like QEMU's agent socket,
//! it outlives a plugin host that dies, so hyperd's agent session survives
//! the host's restart. This module is the byte pump it runs: one `poll(2)`
//! loop, bounded buffers, no parsing of what the guest sends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Bytes held per direction; backpressure does the rest (a full buffer
/// stops reading its source until the other side has taken it).
const CHUNK: usize = 64 * 1024;

/// The tty xenstore names must be a pty slave, `/dev/pts/<n>`: anything else
/// is refused before it is opened.
pub fn check_tty_path(tty: &str) -> Result<PathBuf, String> {
    let n = tty
        .strip_prefix("/dev/pts/")
        .filter(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
    match n {
        Some(_) => Ok(PathBuf::from(tty)),
        None => Err(format!(
            "the console tty in xenstore is {tty:?}, not a /dev/pts/N path"
        )),
    }
}

/// Opens a pty slave in raw, non-blocking mode (close-on-exec: the bridge
/// process gets it as an inherited descriptor, see [`crate::bridge`]).
pub fn open_pty(path: &Path) -> Result<OwnedFd, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if !meta.file_type().is_char_device() {
        return Err(format!("{shown} is not a character device"));
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| format!("{shown}: NUL in path"))?;
    // SAFETY: open(2) on a NUL-terminated path we own; the returned fd,
    // if valid, is wrapped in an OwnedFd at once.
    let raw = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(format!(
            "cannot open {shown}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    make_raw(&fd).map_err(|e| format!("cannot make {shown} raw: {e}"))?;
    Ok(fd)
}

fn make_raw(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: termios is plain old data; all-zero is a valid value to fill.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr/cfmakeraw/tcsetattr on an fd we own, with a valid
    // termios struct that lives across the calls.
    unsafe {
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Bytes read from one side and not yet written to the other.
struct Pending {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Pending {
    fn new() -> Self {
        Self {
            buf: vec![0u8; CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// One read into the (empty) buffer: `Ok(false)` at end of file.
    fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        // SAFETY: reads into our buffer, valid for its length, from an open fd.
        let n = unsafe { libc::read(fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.start = 0;
        self.end = n as usize;
        Ok(n > 0)
    }

    /// One write of what is pending.
    fn drain(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let part = &self.buf[self.start..self.end];
        // SAFETY: writes from our buffer, valid for `part.len()`, to an open fd.
        let n = unsafe { libc::write(fd.as_raw_fd(), part.as_ptr().cast(), part.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        self.start += n as usize;
        if self.is_empty() {
            self.clear();
        }
        Ok(())
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Serves `listener` until the pty ends (the domain is gone: xenconsoled
/// closed the master, the slave reads EIO or polls HUP): one client at a
/// time, bytes flow both ways as they come. While no client is connected
/// the guest's bytes wait in the pty (backpressure), and a hang-up is still
/// noticed. `pty` must be non-blocking.
pub fn serve(listener: UnixListener, pty: OwnedFd) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut client: Option<UnixStream> = None;
    let mut up = Pending::new(); // guest → client
    let mut down = Pending::new(); // client → guest
    loop {
        let mut pty_events = 0;
        if client.is_some() && up.is_empty() {
            pty_events |= libc::POLLIN;
        }
        if !down.is_empty() {
            pty_events |= libc::POLLOUT;
        }
        let (other_fd, other_events) = match &client {
            None => (listener.as_raw_fd(), libc::POLLIN),
            Some(c) => {
                let mut ev = 0;
                if down.is_empty() {
                    ev |= libc::POLLIN;
                }
                if !up.is_empty() {
                    ev |= libc::POLLOUT;
                }
                (c.as_raw_fd(), ev)
            }
        };
        let mut fds = [
            libc::pollfd {
                fd: pty.as_raw_fd(),
                events: pty_events,
                revents: 0,
            },
            libc::pollfd {
                fd: other_fd,
                events: other_events,
                revents: 0,
            },
        ];
        // SAFETY: poll(2) on two pollfds we own, no timeout.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let (pty_rev, other_rev) = (fds[0].revents, fds[1].revents);
        if pty_rev & libc::POLLIN != 0 {
            match up.fill(pty.as_fd()) {
                Ok(true) => {}
                // EOF or EIO: the master side is closed, the domain is gone.
                Ok(false) => return Ok(()),
                Err(e) if would_block(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Err(e) => return Err(e),
            }
        } else if pty_rev & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Ok(());
        }
        if pty_rev & libc::POLLOUT != 0 {
            match down.drain(pty.as_fd()) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let Some(c) = &client else {
            if other_rev & libc::POLLIN != 0 {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(true)?;
                        client = Some(stream);
                    }
                    Err(e) if would_block(&e) => {}
                    // A client that gave up before we took it, or no fds
                    // left: wait for the next one.
                    Err(_) => {}
                }
            }
            continue;
        };
        let mut lost = other_rev & (libc::POLLERR | libc::POLLNVAL) != 0;
        if other_rev & libc::POLLOUT != 0 {
            match up.drain(c.as_fd()) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(_) => lost = true,
            }
        }
        let hung_up = other_rev & libc::POLLHUP != 0;
        if !lost && down.is_empty() && (other_rev & libc::POLLIN != 0 || hung_up) {
            match down.fill(c.as_fd()) {
                Ok(true) => {}
                Ok(false) => lost = true,
                Err(e) if would_block(&e) => {}
                Err(_) => lost = true,
            }
        } else if hung_up {
            lost = true;
        }
        if lost {
            // Nothing pending is dropped: what the client sent still
            // reaches the guest, and what the guest sent goes to the next
            // client (a reattaching hyperd skips to its resync marker).
            client = None;
        }
    }
}

/// A pty pair standing in for xenconsoled's (tests): master, slave, and the
/// slave's path.
#[cfg(test)]
pub(crate) fn pty_pair() -> (
    std::os::fd::OwnedFd,
    std::os::fd::OwnedFd,
    std::path::PathBuf,
) {
    let mut master = 0;
    let mut slave = 0;
    // SAFETY: openpty writes two fds into the given ints; the name, termios
    // and winsize pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds are fresh from openpty and owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let name =
        std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).unwrap_or_default();
    (master, slave, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tty_paths_are_checked() {
        assert_eq!(
            check_tty_path("/dev/pts/3").unwrap(),
            PathBuf::from("/dev/pts/3")
        );
        for bad in [
            "/dev/pts/",
            "/dev/pts/../tty",
            "/dev/tty1",
            "/etc/shadow",
            "/dev/pts/1 ",
            "/dev/pts/1234567890",
        ] {
            assert!(check_tty_path(bad).is_err(), "{bad}");
        }
    }

    /// A real pty pair stands in for xenconsoled's: bytes written on the
    /// master reach the socket client and back, unchanged (raw mode); a
    /// second client after the first one left gets the guest's next bytes;
    /// closing the master (the domain is gone) ends the bridge, also while
    /// no client is connected.
    #[test]
    fn bridges_a_real_pty_both_ways_and_ends_with_it() {
        use std::io::{Read, Write};
        let (master, slave, name) = pty_pair();
        let pty = open_pty(&name).unwrap();
        drop(slave);
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let bridge = std::thread::spawn(move || serve(listener, pty));
        let mut client = UnixStream::connect(&sock).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut master = std::fs::File::from(master);
        let data: Vec<u8> = (0..=255u8).chain(b"\r\n\x03\x04".iter().copied()).collect();
        master.write_all(&data).unwrap();
        let mut got = vec![0u8; data.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(got, data);
        client.write_all(b"to-guest\n\x00\xff").unwrap();
        let mut back = [0u8; 11];
        master.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"to-guest\n\x00\xff");

        // The first client goes (a hyperd that died); the next one is
        // served.
        drop(client);
        let mut again = UnixStream::connect(&sock).unwrap();
        again
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        master.write_all(b"hello again").unwrap();
        let mut got = [0u8; 11];
        again.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello again");
        drop(again);

        // No client, and the master closes: the bridge ends.
        drop(master);
        bridge.join().unwrap().unwrap();
    }
}
