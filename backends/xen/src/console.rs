//! The agent channel: the domain's PV console pty (dom0 side of the guest's
//! `/dev/hvc0`, made by xenconsoled) bridged to a unix socket in the run
//! directory, so the core connects to it like to any other backend's.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// Bytes moved per read; backpressure does the rest.
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

/// A pty slave in raw, non-blocking mode.
pub struct Pty {
    fd: AsyncFd<OwnedFd>,
}

impl Pty {
    pub fn open(path: &Path) -> Result<Self, String> {
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
        // SAFETY: `fd` is an OwnedFd: valid, open, and its as_raw_fd() stays
        // the same descriptor until the AsyncFd (which owns it) is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| format!("{shown}: {e}"))?;
        Ok(Self { fd })
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: reads into `buf`, valid for its length, from an fd we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: writes from `buf`, valid for its length, to an fd we own.
                let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(0)) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pty closed")),
                Ok(Ok(n)) => buf = &buf[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
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

/// Serves `listener` until the pty ends (the domain is gone): one client
/// at a time; bytes flow both ways as they come.
pub async fn bridge(listener: UnixListener, pty: Pty) {
    let mut from_pty = vec![0u8; CHUNK];
    let mut from_sock = vec![0u8; CHUNK];
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("agent socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (mut rd, mut wr) = stream.split();
        loop {
            tokio::select! {
                n = pty.read(&mut from_pty) => match n {
                    Ok(0) | Err(_) => {
                        tracing::debug!("the console pty closed: the domain is gone");
                        return;
                    }
                    Ok(n) => {
                        if wr.write_all(&from_pty[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                n = rd.read(&mut from_sock) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) = pty.write_all(&from_sock[..n]).await {
                            tracing::debug!("writing to the console pty: {e}");
                            return;
                        }
                    }
                },
            }
        }
        tracing::debug!("the agent client disconnected; waiting for another");
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
    /// master reach the socket client and back, unchanged (raw mode).
    #[tokio::test]
    async fn bridges_a_real_pty_both_ways() {
        let (master, slave, name) = pty_pair();
        let pty = Pty::open(&name).unwrap();
        drop(slave);
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let task = tokio::spawn(bridge(listener, pty));
        let mut client = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let mut master = std::fs::File::from(master);
        let data: Vec<u8> = (0..=255u8).chain(b"\r\n\x03\x04".iter().copied()).collect();
        std::io::Write::write_all(&mut master, &data).unwrap();
        let mut got = vec![0u8; data.len()];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, data);
        client.write_all(b"to-guest\n\x00\xff").await.unwrap();
        let mut back = [0u8; 11];
        let read = tokio::task::spawn_blocking(move || {
            std::io::Read::read_exact(&mut master, &mut back).map(|_| back)
        });
        assert_eq!(&read.await.unwrap().unwrap(), b"to-guest\n\x00\xff");
        task.abort();
    }
}
