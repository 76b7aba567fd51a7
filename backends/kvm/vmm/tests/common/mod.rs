//! Shared helpers for the tests that run the real hyper-vmm on /dev/kvm.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const VMM: &str = env!("CARGO_BIN_EXE_hyper-vmm");

/// None (after printing why) when this host has no usable /dev/kvm.
pub fn kvm_or_skip(test: &str) -> Option<()> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => Some(()),
        Err(e) => {
            eprintln!("SKIP {test}: /dev/kvm not usable here: {e}");
            None
        }
    }
}

pub fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

/// hyper-vmm's flags for a 64 MiB test guest with its console log and
/// status file in `dir`, honouring the debug-exit port.
pub fn base_args(kernel: &Path, dir: &Path, cmdline: &str) -> Vec<String> {
    vec![
        "--kernel".into(),
        s(kernel),
        "--memory-mib".into(),
        "64".into(),
        "--cmdline".into(),
        cmdline.into(),
        "--console-log".into(),
        s(dir.join("console.log")),
        "--status-file".into(),
        s(dir.join("status.json")),
        "--debug-exit".into(),
    ]
}

pub const VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";

/// The virtiofsd to test with, or `None` (after saying so) where it is not
/// installed.
pub fn virtiofsd_or_skip() -> Option<&'static str> {
    if Path::new(VIRTIOFSD).exists() {
        Some(VIRTIOFSD)
    } else {
        eprintln!("SKIP: {VIRTIOFSD} is not installed (.ci/deps.sh installs it)");
        None
    }
}

pub struct Guest {
    pub elf: PathBuf,
    pub bzimage: PathBuf,
}

/// Builds the test guest once (backends/kvm/testguest/build.sh).
pub fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testguest");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testguest/build.sh");
        let st = Command::new(&script)
            .arg(&out)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .status()
            .expect("run testguest/build.sh");
        assert!(
            st.success(),
            "building the test guest failed (rustup target add x86_64-unknown-none?)"
        );
        let flat = std::fs::read(out.join("hyper-testguest.bin")).expect("flat guest image");
        let bz = out.join("hyper-testguest.bzImage");
        std::fs::write(&bz, bzimage(&flat)).expect("write bzImage");
        Guest {
            elf: out.join("hyper-testguest"),
            bzimage: bz,
        }
    })
}

/// Wraps a flat image (loaded at 1 MiB, 64-bit entry at +0x200) in a
/// minimal bzImage: one setup sector carrying the boot protocol header.
pub fn bzimage(flat: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1; // setup_sects
    img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version 2.15
    img[0x211] = 0x1; // LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
    img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
    img[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes()); // init_size
    img.extend_from_slice(flat);
    img
}

/// A disk whose sector N starts with `HYPERTG-SECTOR-N\n`.
pub fn disk(dir: &Path, sectors: u64) -> PathBuf {
    let mut d = vec![0u8; (sectors * 512) as usize];
    for s in 0..sectors {
        let tag = format!("HYPERTG-SECTOR-{s}\n");
        let at = (s * 512) as usize;
        d[at..at + tag.len()].copy_from_slice(tag.as_bytes());
    }
    let p = dir.join("disk.img");
    std::fs::write(&p, d).unwrap();
    p
}

pub fn initrd(dir: &Path, len: usize) -> PathBuf {
    let mut d = b"HYPERTG-INITRD\n".to_vec();
    d.resize(len, 0x5a);
    let p = dir.join("initrd.img");
    std::fs::write(&p, d).unwrap();
    p
}

pub fn spawn(args: &[String]) -> Child {
    Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hyper-vmm")
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hyper-vmm did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn output(child: Child) -> (String, String) {
    let o = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn status(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("status file {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Spawns hyper-vmm with `fd` inherited (its CLOEXEC cleared in the child only).
pub fn spawn_with_fd(args: &[String], fd: RawFd) -> std::process::Child {
    let mut cmd = Command::new(VMM);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only fcntl (async-signal-safe) runs between fork and exec:
    // the tap is inherited by this child alone.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn hyper-vmm")
}

/// A datagram socket pair: one end stands in for a tap (one datagram,
/// one frame), the other is the host's side.
pub fn dgram_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The test guest's EtherType (local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;

/// In the calling thread's network namespace: a packet socket for
/// [`TEST_ETHERTYPE`] bound to `ifname`, with a 60 s receive timeout.
pub fn packet_socket(ifname: &str) -> Result<OwnedFd, String> {
    let check = |r: libc::c_int, what: &str| {
        if r < 0 {
            Err(format!("{what}: {}", std::io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("no interface {ifname}"));
    }
    let proto = TEST_ETHERTYPE.to_be();
    // SAFETY: a plain socket call.
    let p = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    check(p, "socket(AF_PACKET)")?;
    // SAFETY: `p` was just created and is owned here.
    let pkt = unsafe { OwnedFd::from_raw_fd(p) };
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding to a valid sockaddr_ll of the given size.
    check(
        unsafe {
            libc::bind(
                pkt.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        },
        "bind(AF_PACKET)",
    )?;
    let tv = libc::timeval {
        tv_sec: 60,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads one timeval.
    check(
        unsafe {
            libc::setsockopt(
                pkt.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        },
        "SO_RCVTIMEO",
    )?;
    Ok(pkt)
}

pub fn recv_frame(pkt: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: `buf` is valid for its length.
    let n = unsafe { libc::recv(pkt.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// Waits (up to 64 frames) for the test guest's `HYPERTG-NET-TX` frame
/// from `mac`.
pub fn guest_frame_seen(pkt: &OwnedFd, mac: [u8; 6]) -> bool {
    for _ in 0..64 {
        let Some(f) = recv_frame(pkt) else {
            return false;
        };
        if f.len() >= 28 && f[6..12] == mac && &f[14..28] == b"HYPERTG-NET-TX" {
            return true;
        }
    }
    false
}

/// Sends the frame the test guest waits for (`HYPERTG-NET-RX` to `mac`).
pub fn send_frame_to_guest(pkt: &OwnedFd, mac: [u8; 6]) {
    let mut f = mac.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(b"HYPERTG-NET-RX");
    f.resize(60, 0);
    // SAFETY: `f` is valid for its length; the socket is bound to an interface.
    let n = unsafe { libc::send(pkt.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
    assert_eq!(n, 60, "send: {}", std::io::Error::last_os_error());
}

/// The complete `tg: count N` lines of a console log (`tg.count`).
pub fn counts(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.trim().strip_prefix("tg: count "))
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A field of a /proc status file, split on whitespace.
pub fn proc_field(status: &str, key: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Each task's name and `Seccomp:` mode, from /proc.
pub fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(st) = std::fs::read_to_string(t.unwrap().path().join("status")) else {
            continue;
        };
        out.push((
            proc_field(&st, "Name:").concat(),
            proc_field(&st, "Seccomp:").concat(),
        ));
    }
    out.sort();
    out
}
