//! The virtio-fs frontend against real guest memory (a sealed memfd, as
//! hyper-vmm maps it) and a real virtiofsd: FUSE requests go through the
//! real virtqueues, virtiofsd answers through the used ring and the
//! interrupt eventfd. Plus fake backends that hang or hang up.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::super::mmio::tests::bring_up;
use super::super::mmio::MmioTransport;
use super::super::testring::Ring;
use super::*;
use crate::memory::guest_memory;

const VIRTIOFSD: &str = "/usr/local/bin/virtiofsd";
/// Only bounds a hang; no assertion is made on how long anything takes.
const HANG_GUARD: Duration = Duration::from_secs(30);

const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_INIT: u32 = 26;

const REQ_AT: u64 = 0x40000;
const REPLY_AT: u64 = 0x50000;

struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A virtiofsd serving a fresh directory holding `hello` ("hello, guest"),
/// or `None` (the test is skipped, loudly) where it is not installed.
fn virtiofsd(read_only: bool) -> Option<Virtiofsd> {
    if !Path::new(VIRTIOFSD).exists() {
        eprintln!("SKIP: {VIRTIOFSD} is not installed (.ci/deps.sh installs it)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), b"hello, guest").unwrap();
    let socket = dir.path().join("vfsd.sock");
    let mut cmd = Command::new(VIRTIOFSD);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(&shared)
        // The unit test runs wherever cargo does; the namespace sandbox is
        // the launcher's business (and the e2e tests').
        .args([
            "--sandbox",
            "none",
            "--cache",
            "never",
            "--log-level",
            "error",
        ])
        .stdin(Stdio::null());
    if read_only {
        cmd.arg("--readonly");
    }
    let child = cmd.spawn().unwrap();
    let v = Virtiofsd { child, socket, dir };
    let deadline = Instant::now() + HANG_GUARD;
    while !v.socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd never made its socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(v)
}

struct Dev {
    t: MmioTransport<Fs>,
    mem: GuestMemoryMmap,
    irq: EventFd,
    hiprio: Ring,
    req: Ring,
    unique: u64,
}

fn device(socket: &Path, mem: GuestMemoryMmap) -> Dev {
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let fs = Fs::new(
        socket,
        "vol-test",
        irq.try_clone().unwrap(),
        conn::DEFAULT_TIMEOUT,
    )
    .unwrap();
    let mut t = MmioTransport::new(fs, mem.clone(), irq.try_clone().unwrap()).unwrap();
    let hiprio = Ring::new(0x10000, 16);
    let req = Ring::new(0x20000, 16);
    bring_up(&mut t, &[hiprio.addrs(), req.addrs()]);
    Dev {
        t,
        mem,
        irq,
        hiprio,
        req,
        unique: 0,
    }
}

fn shared_mem() -> GuestMemoryMmap {
    guest_memory(&[(0, 1 << 20)], true).unwrap()
}

fn wait_irq(irq: &EventFd) {
    let mut p = libc::pollfd {
        fd: irq.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, HANG_GUARD.as_millis() as i32) };
    assert_eq!(r, 1, "no interrupt from virtiofsd");
    let _ = irq.read();
}

fn reg(t: &mut MmioTransport<Fs>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

impl Dev {
    /// Sends one FUSE request (`body` after the in-header) on the request
    /// queue and returns (error, reply body).
    fn fuse(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: u32) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&nodeid.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        req.extend_from_slice(body);
        self.mem.write_slice(&req, GuestAddress(REQ_AT)).unwrap();
        self.mem
            .write_slice(
                &vec![0xeeu8; 16 + reply_len as usize],
                GuestAddress(REPLY_AT),
            )
            .unwrap();
        let before = self.req.used_idx(&self.mem);
        self.req.add_chain(
            &self.mem,
            &[
                (REQ_AT, req.len() as u32, false),
                (REPLY_AT, 16 + reply_len, true),
            ],
        );
        // The QueueNotify register: no ioeventfd here, so the transport
        // passes it to the device, which kicks virtiofsd.
        self.t.write(0x50, &1u32.to_le_bytes());
        let deadline = Instant::now() + HANG_GUARD;
        while self.req.used_idx(&self.mem) == before {
            assert!(Instant::now() < deadline, "virtiofsd did not answer");
            wait_irq(&self.irq);
        }
        assert_ne!(reg(&mut self.t, 0x60) & INT_USED_RING, 0);
        let mut out = vec![0u8; 16 + reply_len as usize];
        self.mem
            .read_slice(&mut out, GuestAddress(REPLY_AT))
            .unwrap();
        let len = u32::from_le_bytes(out[0..4].try_into().unwrap());
        let error = i32::from_le_bytes(out[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(out[8..16].try_into().unwrap());
        assert_eq!(unique, self.unique, "reply to another request");
        assert_eq!(self.req.used_len(&self.mem, before % 16), len);
        let body = out[16..len.max(16) as usize].to_vec();
        (error, body)
    }

    fn init(&mut self) -> (u32, u32) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0x20000, 0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        let (err, out) = self.fuse(FUSE_INIT, 0, &body, 64);
        assert_eq!(err, 0, "FUSE_INIT failed");
        let major = u32::from_le_bytes(out[0..4].try_into().unwrap());
        let minor = u32::from_le_bytes(out[4..8].try_into().unwrap());
        (major, minor)
    }

    /// LOOKUP `name` in the root: (nodeid, size).
    fn lookup(&mut self, name: &str) -> Result<(u64, u64), i32> {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        let (err, out) = self.fuse(FUSE_LOOKUP, 1, &body, 128);
        if err != 0 {
            return Err(err);
        }
        let nodeid = u64::from_le_bytes(out[0..8].try_into().unwrap());
        let size = u64::from_le_bytes(out[48..56].try_into().unwrap());
        Ok((nodeid, size))
    }

    fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
        let mut body = (flags as u32).to_le_bytes().to_vec();
        body.extend_from_slice(&[0u8; 4]);
        let (err, out) = self.fuse(FUSE_OPEN, nodeid, &body, 16);
        if err != 0 {
            return Err(err);
        }
        Ok(u64::from_le_bytes(out[0..8].try_into().unwrap()))
    }

    fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        let (err, out) = self.fuse(FUSE_READ, nodeid, &body, size);
        assert_eq!(err, 0, "FUSE_READ failed");
        out
    }

    fn write(&mut self, nodeid: u64, fh: u64, data: &[u8]) -> Result<u32, i32> {
        let mut body = Vec::new();
        body.extend_from_slice(&fh.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        body.extend_from_slice(data);
        let (err, out) = self.fuse(FUSE_WRITE, nodeid, &body, 8);
        if err != 0 {
            return Err(err);
        }
        Ok(u32::from_le_bytes(out[0..4].try_into().unwrap()))
    }
}

#[test]
fn config_space_and_features() {
    let Some(v) = virtiofsd(false) else { return };
    let d = device(&v.socket, shared_mem());
    let cfg = d.t.device().config();
    assert_eq!(&cfg[..8], b"vol-test");
    assert!(cfg[8..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&cfg[TAG_LEN..], &1u32.to_le_bytes());
    let f = d.t.device().features();
    assert_ne!(f & VIRTIO_F_VERSION_1, 0);
    assert_eq!(f & !GUEST_FEATURES, 0, "only the allowed features: {f:#x}");
    assert_eq!(f & conn::F_PROTOCOL_FEATURES, 0);
}

#[test]
fn fuse_requests_go_through_the_real_queues() {
    let Some(v) = virtiofsd(false) else { return };
    let mut d = device(&v.socket, shared_mem());
    assert!(d.t.driver_ok(), "activation failed");
    let (major, minor) = d.init();
    assert_eq!(major, 7);
    assert!(minor >= 27, "minor {minor}");
    let (node, size) = d.lookup("hello").unwrap();
    assert_eq!(size, 12);
    assert_eq!(d.lookup("missing"), Err(-libc::ENOENT));
    let fh = d.open(node, libc::O_RDWR).unwrap();
    assert_eq!(d.read(node, fh, 64), b"hello, guest");
    assert_eq!(d.write(node, fh, b"HELLO"), Ok(5));
    let host = std::fs::read(v.dir.path().join("shared/hello")).unwrap();
    assert_eq!(host, b"HELLO, guest");
    // The high-priority queue is set up but unused by these requests.
    assert_eq!(d.hiprio.used_idx(&d.mem), 0);
    assert!(!d.t.is_broken());
}

#[test]
fn a_read_only_share_refuses_writes() {
    let Some(v) = virtiofsd(true) else { return };
    let mut d = device(&v.socket, shared_mem());
    d.init();
    let (node, _) = d.lookup("hello").unwrap();
    assert_eq!(d.open(node, libc::O_RDWR), Err(-libc::EROFS));
    let fh = d.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(d.read(node, fh, 64), b"hello, guest");
}

#[test]
fn a_driver_reset_stops_the_rings_and_a_new_bring_up_works() {
    let Some(v) = virtiofsd(false) else { return };
    let mut d = device(&v.socket, shared_mem());
    d.init();
    d.t.write(0x70, &0u32.to_le_bytes());
    assert!(!d.t.device().conn.is_running());
    assert_eq!(reg(&mut d.t, 0x60), 0, "nothing pending after reset");
    // Fresh rings, as a driver makes them after a reset.
    d.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(0x10000))
        .unwrap();
    d.mem
        .write_slice(&[0u8; 0x3000], GuestAddress(0x20000))
        .unwrap();
    d.hiprio = Ring::new(0x10000, 16);
    d.req = Ring::new(0x20000, 16);
    bring_up(&mut d.t, &[d.hiprio.addrs(), d.req.addrs()]);
    assert!(d.t.driver_ok());
    assert_eq!(d.init().0, 7);
}

#[test]
fn virtiofsd_dying_is_noticed_and_breaks_the_device() {
    let Some(mut v) = virtiofsd(false) else {
        return;
    };
    let mut d = device(&v.socket, shared_mem());
    d.init();
    assert!(d.t.device_mut().check().is_ok(), "nothing to see yet");
    v.child.kill().unwrap();
    v.child.wait().unwrap();
    let e = d.t.device_mut().check().unwrap_err();
    assert!(e.contains("closed"), "{e}");
    // A notify now finds the connection lost: the device is broken, the
    // guest told (NEEDS_RESET), nothing blocks.
    d.t.write(0x50, &1u32.to_le_bytes());
    assert!(d.t.is_broken());
    assert_ne!(reg(&mut d.t, 0x70) & 0x40, 0);
}

#[test]
fn private_guest_memory_is_refused_at_activation() {
    let Some(v) = virtiofsd(false) else { return };
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let d = device(&v.socket, mem);
    assert!(d.t.is_broken(), "activated without shareable memory");
    assert!(!d.t.device().conn.is_running());
}

#[test]
fn a_ring_that_leaves_guest_memory_is_refused() {
    let Some(v) = virtiofsd(false) else { return };
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let fs = Fs::new(
        &v.socket,
        "vol-test",
        irq.try_clone().unwrap(),
        conn::DEFAULT_TIMEOUT,
    )
    .unwrap();
    let mem = shared_mem();
    let mut t = MmioTransport::new(fs, mem, irq).unwrap();
    // The used ring of queue 1 starts in memory and runs past its end.
    let ok = Ring::new(0x10000, 16);
    bring_up(&mut t, &[ok.addrs(), (0x20000, 0x20800, 0xf_fff0, 16)]);
    assert!(t.is_broken());
    assert!(!t.device().conn.is_running(), "virtiofsd got the rings");
}

/// A socket that accepts and reads but never answers.
fn silent_backend(dir: &Path) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = dir.join("silent.sock");
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
    });
    (path, h)
}

#[test]
fn a_backend_that_never_answers_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let (path, h) = silent_backend(dir.path());
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let Err(e) = Fs::new(&path, "t", irq, Duration::from_millis(200)) else {
        panic!("negotiated with a silent backend");
    };
    assert!(e.to_string().contains("did not answer"), "{e}");
    // The connection was shut down: the fake sees EOF and ends.
    h.join().unwrap();
}

#[test]
fn a_backend_that_hangs_up_or_is_absent_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let l = UnixListener::bind(&path).unwrap();
    let h = std::thread::spawn(move || drop(l.accept()));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    assert!(Fs::new(&path, "t", irq.try_clone().unwrap(), Duration::from_secs(5)).is_err());
    h.join().unwrap();
    let e = Fs::new(
        &dir.path().join("nobody.sock"),
        "t",
        irq.try_clone().unwrap(),
        Duration::from_millis(100),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("nobody.sock"), "{e}");
    let e = Fs::new(&path, "bad tag", irq, Duration::from_millis(100))
        .err()
        .unwrap();
    assert!(matches!(e, FsError::BadTag(_)));
}
