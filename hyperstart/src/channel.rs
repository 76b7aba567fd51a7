//! The host-facing channel: finding and opening it, and writing frames.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyper_protocol::{Frame, GuestMessage};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::cmdline::ChannelSpec;
use crate::log::log;

pub const VIRTIO_PORTS: &str = "/sys/class/virtio-ports";

/// The device node of the virtio-serial port called `name`
/// (`/sys/class/virtio-ports/vport0p1/name` → `/dev/vport0p1`).
pub fn find_port(ports_dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let found = std::fs::read_to_string(entry.path().join("name")).ok()?;
            (found.trim_end() == name).then(|| Path::new("/dev").join(entry.file_name()))
        })
}

fn resolve(spec: &ChannelSpec) -> Option<PathBuf> {
    let path = match spec {
        ChannelSpec::Device(path) => path.clone(),
        ChannelSpec::Port(name) => find_port(Path::new(VIRTIO_PORTS), name)?,
    };
    path.exists().then_some(path)
}

pub struct Channel {
    fd: OwnedFd,
    tty: bool,
    write_errors: u64,
}

impl Channel {
    /// Opens the channel, waiting up to `wait` for it to appear: a
    /// virtio-serial port's name arrives from the host some time after the
    /// device is probed.
    pub fn open(spec: &ChannelSpec, wait: Duration) -> Result<Self, String> {
        let deadline = Instant::now() + wait;
        loop {
            let last_error = match resolve(spec) {
                Some(path) => {
                    match nix::fcntl::open(
                        &path,
                        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                        Mode::empty(),
                    ) {
                        Ok(fd) => {
                            if let ChannelSpec::Device(_) = spec {
                                keep_stdio_off(&path);
                            }
                            return Ok(Self::from_fd(fd));
                        }
                        Err(e) => format!("cannot open {}: {e}", path.display()),
                    }
                }
                None => match spec {
                    ChannelSpec::Device(path) => {
                        format!("channel device {} not found", path.display())
                    }
                    ChannelSpec::Port(name) => {
                        format!("no virtio-serial port named {name} in {VIRTIO_PORTS}")
                    }
                },
            };
            if Instant::now() >= deadline {
                return Err(last_error);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn from_fd(fd: OwnedFd) -> Self {
        let tty = nix::unistd::isatty(&fd).unwrap_or(false);
        if tty {
            // A tty (hvc, ttyS) must pass bytes through untouched: no echo,
            // no line editing, no CR/LF translation.
            match nix::sys::termios::tcgetattr(&fd) {
                Ok(mut t) => {
                    nix::sys::termios::cfmakeraw(&mut t);
                    if let Err(e) =
                        nix::sys::termios::tcsetattr(&fd, nix::sys::termios::SetArg::TCSANOW, &t)
                    {
                        log!("cannot set the channel tty to raw mode: {e}");
                    }
                }
                Err(e) => log!("cannot read the channel tty's settings: {e}"),
            }
        }
        Self {
            fd,
            tty,
            write_errors: 0,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Why the channel's device is gone, if it is: a character device
    /// whose `/sys/dev/char/MAJOR:MINOR` entry disappeared (the port was
    /// unplugged or its driver unbound). Other kinds of fd (a socket in
    /// tests) never are.
    pub fn device_gone(&self) -> Option<String> {
        device_gone_in(Path::new("/sys/dev/char"), &self.fd)
    }

    pub fn read(&self, buf: &mut [u8]) -> nix::Result<usize> {
        nix::unistd::read(&self.fd, buf)
    }

    /// Writes a whole frame. The fd is blocking: until the host connects a
    /// virtio-serial write waits, which is what we want. Errors are logged
    /// (a few) and otherwise ignored, to keep serving.
    pub fn send(&mut self, frame: &Frame) {
        if let Err(e) = self.write_all(&frame.encode()) {
            self.write_errors += 1;
            if self.write_errors <= 5 || self.write_errors.is_power_of_two() {
                log!(
                    "writing to the channel failed ({} times): {e}",
                    self.write_errors
                );
            }
        }
    }

    /// Bytes outside any frame (the resync marker).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.write_all(bytes) {
            log!("writing to the channel failed: {e}");
        }
    }

    pub fn send_message(&mut self, msg: &GuestMessage) {
        match serde_json::to_vec(msg) {
            Ok(payload) => self.send(&Frame::control(payload)),
            Err(e) => log!("cannot encode a message: {e}"),
        }
    }

    fn write_all(&self, mut buf: &[u8]) -> nix::Result<()> {
        while !buf.is_empty() {
            match nix::unistd::write(&self.fd, buf) {
                Ok(0) => return Err(Errno::EIO),
                Ok(n) => buf = &buf[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait_writable(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn wait_writable(&self) {
        let mut fds = [libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
    }

    /// Waits until written bytes have left a tty (a no-op for virtio-serial,
    /// whose writes are already in the host's queue).
    pub fn drain(&self) {
        if self.tty {
            let _ = nix::sys::termios::tcdrain(self.fd.as_fd());
        }
    }
}

/// `/dev/console` (5, 1).
const CONSOLE_RDEV: u64 = (5 << 8) | 1;

/// Whether an fd on the character device `fd_rdev` writes to the channel:
/// it is the channel's own device, or the console while the kernel's
/// console is the channel device (a Xen PV domU's hvc0, named in
/// /sys/class/tty/console/active).
pub fn writes_to_channel(
    fd_rdev: u64,
    channel_rdev: u64,
    console_active: &str,
    channel_name: &str,
) -> bool {
    fd_rdev == channel_rdev
        || (fd_rdev == CONSOLE_RDEV && console_active.split_whitespace().any(|c| c == channel_name))
}

/// When the channel device doubles as the console (Xen: hvc0), our log
/// lines on stdout/stderr would land in the middle of the protocol's
/// frames: point fds 0-2 elsewhere (the kernel log, or /dev/null).
fn keep_stdio_off(channel: &Path) {
    let Ok(meta) = std::fs::metadata(channel) else {
        return;
    };
    let name = channel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut redirected = false;
    for fd in 0..=2 {
        // SAFETY: fstat on a small fd number with a zeroed stat buffer we own;
        // a closed fd only yields an error.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFCHR {
            continue;
        }
        if !writes_to_channel(st.st_rdev, meta.rdev(), &active, name) {
            continue;
        }
        let target = if fd == 0 { "/dev/null" } else { "/dev/kmsg" };
        let file = std::fs::OpenOptions::new()
            .read(fd == 0)
            .write(fd != 0)
            .open(target)
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        if let Ok(file) = file {
            // SAFETY: dup2 onto fd 0-2 from a file we own; the old
            // descriptor there is simply replaced.
            unsafe { libc::dup2(file.as_raw_fd(), fd) };
            redirected = true;
        }
    }
    if redirected && meta.file_type().is_char_device() {
        log!(
            "the channel {} is also the console: logging to the kernel log",
            channel.display()
        );
    }
}

/// The kernel command line, read once (bounded).
fn kernel_cmdline() -> &'static str {
    static CMDLINE: OnceLock<String> = OnceLock::new();
    CMDLINE.get_or_init(|| {
        let mut text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        text.truncate(text.len().min(4096));
        text
    })
}

/// The block device whose virtio-blk serial is `disk_id`. A path is taken
/// as is; a bare device name (`vdb`, `xvdb`) is accepted too, for backends
/// without serials, and so is a `hyper.disk.<id>=xvda` alias on the kernel
/// command line (Xen's blkfront has no serial).
pub fn find_disk(sys_block: &Path, dev: &Path, disk_id: &str) -> Option<PathBuf> {
    find_disk_with(sys_block, dev, disk_id, kernel_cmdline())
}

pub fn find_disk_with(
    sys_block: &Path,
    dev: &Path,
    disk_id: &str,
    cmdline: &str,
) -> Option<PathBuf> {
    if disk_id.starts_with('/') {
        let path = PathBuf::from(disk_id);
        return path.exists().then_some(path);
    }
    let by_serial = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let serial = std::fs::read_to_string(entry.path().join("serial")).ok()?;
            (serial.trim() == disk_id).then(|| entry.file_name())
        });
    let alias = crate::cmdline::disk_alias(cmdline, disk_id);
    let name = match (by_serial, alias) {
        (Some(name), _) => name,
        (None, Some(alias)) if sys_block.join(&alias).exists() => alias.into(),
        (None, _) if plain_name(disk_id) && sys_block.join(disk_id).exists() => disk_id.into(),
        _ => return None,
    };
    let node = dev.join(name);
    node.exists().then_some(node)
}

fn plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/')
}

fn device_gone_in(sys_dev_char: &Path, fd: &OwnedFd) -> Option<String> {
    let st = match nix::sys::stat::fstat(fd) {
        Ok(st) => st,
        Err(e) => return Some(format!("the channel cannot be inspected: {e}")),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return None;
    }
    // A console port (hvc) stays in sysfs when its virtio port goes; the
    // kernel hangs its tty up instead, after which every ioctl fails with
    // EIO and the fd is dead for good.
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr writes one termios into the valid buffer given; on
    // a non-tty it fails with ENOTTY and writes nothing.
    let r = unsafe { libc::tcgetattr(fd.as_raw_fd(), termios.as_mut_ptr()) };
    if r != 0 && Errno::last() == Errno::EIO {
        return Some("the channel's terminal was hung up (its device went away)".into());
    }
    let (major, minor) = (
        nix::sys::stat::major(st.st_rdev),
        nix::sys::stat::minor(st.st_rdev),
    );
    let entry = sys_dev_char.join(format!("{major}:{minor}"));
    // Only a clear "not there" counts; sysfs not being mounted does not.
    (sys_dev_char.is_dir() && std::fs::symlink_metadata(&entry).is_err())
        .then(|| format!("the channel's device {major}:{minor} went away"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("hyperstart-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn ports_are_found_by_name() {
        let dir = scratch("ports");
        for (port, name) in [
            ("vport0p0", "org.qemu.guest_agent.0"),
            ("vport0p1", "sh.hyper.channel.0"),
        ] {
            std::fs::create_dir(dir.join(port)).unwrap();
            std::fs::write(dir.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir(dir.join("vport1p1")).unwrap(); // no name yet
        assert_eq!(
            find_port(&dir, "sh.hyper.channel.0"),
            Some(PathBuf::from("/dev/vport0p1"))
        );
        assert_eq!(find_port(&dir, "sh.hyper"), None);
        assert_eq!(find_port(&dir.join("missing"), "x"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_channel_device_missing_from_sysfs_is_gone() {
        let dir = scratch("devchar");
        let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        // /dev/null is 1:3; with no such entry the device counts as gone.
        assert!(device_gone_in(&dir, &null).unwrap().contains("1:3"));
        std::fs::create_dir_all(dir.join("1:3")).unwrap();
        assert_eq!(device_gone_in(&dir, &null), None);
        // Not a character device: never gone.
        let file: OwnedFd = std::fs::File::open(&dir).unwrap().into();
        std::fs::remove_dir(dir.join("1:3")).unwrap();
        assert_eq!(device_gone_in(&dir, &file), None);
        // No sysfs at all: not evidence of anything.
        assert_eq!(device_gone_in(&dir.join("missing"), &null), None);
    }

    #[test]
    fn stdio_is_kept_off_a_channel_that_is_the_console() {
        let hvc0 = (229 << 8) as u64;
        assert!(writes_to_channel(hvc0, hvc0, "", "hvc0"));
        assert!(writes_to_channel(CONSOLE_RDEV, hvc0, "hvc0\n", "hvc0"));
        assert!(writes_to_channel(CONSOLE_RDEV, hvc0, "ttyS0 hvc0", "hvc0"));
        assert!(!writes_to_channel(CONSOLE_RDEV, hvc0, "ttyS0\n", "hvc0"));
        assert!(!writes_to_channel(CONSOLE_RDEV, hvc0, "hvc01", "hvc0"));
        assert!(!writes_to_channel((4 << 8) as u64, hvc0, "hvc0", "hvc0"));
    }

    #[test]
    fn disks_are_found_by_serial() {
        let dir = scratch("disks");
        let (sys_block, dev) = (dir.join("block"), dir.join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        for (disk, serial) in [
            ("vda", Some("hyper-rootfs0\n")),
            ("vdb", Some("other")),
            ("sda", None),
        ] {
            std::fs::create_dir_all(sys_block.join(disk)).unwrap();
            if let Some(serial) = serial {
                std::fs::write(sys_block.join(disk).join("serial"), serial).unwrap();
            }
        }
        // The node is not in /dev yet: keep looking.
        assert_eq!(find_disk(&sys_block, &dev, "hyper-rootfs0"), None);
        std::fs::write(dev.join("vda"), "").unwrap();
        std::fs::write(dev.join("sda"), "").unwrap();
        assert_eq!(
            find_disk(&sys_block, &dev, "hyper-rootfs0"),
            Some(dev.join("vda"))
        );
        assert_eq!(find_disk(&sys_block, &dev, "hyper-rootfs1"), None);
        assert_eq!(find_disk(&sys_block, &dev, "sda"), Some(dev.join("sda")));
        assert_eq!(find_disk(&sys_block, &dev, "../sda"), None);
        assert_eq!(find_disk(&sys_block, &dev, ".."), None);
        let node = dev.join("vda");
        assert_eq!(
            find_disk(&sys_block, &dev, &node.to_string_lossy()),
            Some(node)
        );
        // Xen: no serial, an alias on the command line.
        std::fs::create_dir_all(sys_block.join("xvda")).unwrap();
        let c = "quiet hyper.disk.hyper-rootfs9=xvda";
        assert_eq!(find_disk_with(&sys_block, &dev, "hyper-rootfs9", c), None);
        std::fs::write(dev.join("xvda"), "").unwrap();
        assert_eq!(
            find_disk_with(&sys_block, &dev, "hyper-rootfs9", c),
            Some(dev.join("xvda"))
        );
        assert_eq!(find_disk_with(&sys_block, &dev, "hyper-rootfs8", c), None);
        // A serial still wins over an alias.
        assert_eq!(
            find_disk_with(
                &sys_block,
                &dev,
                "hyper-rootfs0",
                "hyper.disk.hyper-rootfs0=xvda"
            ),
            Some(dev.join("vda"))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
