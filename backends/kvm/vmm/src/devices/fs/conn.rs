//! One vhost-user connection to a virtiofsd, driven with the rust-vmm
//! `vhost` crate's frontend. The crate's socket reads block (and retry on
//! `EAGAIN`, so a receive timeout cannot bound them): every exchange runs
//! under a [`Watchdog`] that shuts the socket down when virtiofsd does not
//! answer in time, which makes the pending read fail. Any failure leaves
//! the socket shut down, so the event loop sees the hang-up and stops the
//! VM (a share whose server is gone is fatal, Kata's rule).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit in the feature word,
/// never offered to the guest.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// How long virtiofsd gets to answer one step (connect, negotiation,
/// activation, stop).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("virtiofsd socket {path}: {why}")]
    Connect { path: String, why: String },
    #[error("virtiofsd did not answer {step} within {limit:?}")]
    Timeout { step: &'static str, limit: Duration },
    #[error("virtiofsd, {step}: {source}")]
    Protocol {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Shuts a socket down if it is not disarmed within its limit.
struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Watchdog {
    /// `sock` is a duplicate of the connection's socket: shutting it down
    /// shuts the connection down, and it cannot name another file later.
    fn arm(sock: OwnedFd, limit: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("vhost-watchdog".into())
            .spawn(move || {
                if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
                    // It keeps the filter of the thread that started it.
                    tracing::warn!("vhost-user watchdog: {e}");
                }
                match rx.recv_timeout(limit) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // SAFETY: shutdown on a descriptor this thread owns.
                        unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_RDWR) };
                        true
                    }
                    _ => false,
                }
            })?;
        Ok(Self {
            disarm: Some(tx),
            thread: Some(thread),
        })
    }

    /// Whether it fired.
    fn disarm(mut self) -> bool {
        drop(self.disarm.take());
        match self.thread.take() {
            Some(t) => t.join().unwrap_or(true),
            None => true,
        }
    }
}

/// Connects to `path`, retrying while virtiofsd is not listening yet, with
/// a non-blocking socket so a full backlog cannot hang us either.
fn connect(path: &Path, limit: Duration) -> Result<UnixStream, ConnError> {
    let shown = path.display().to_string();
    let err = |why: String| ConnError::Connect {
        path: shown.clone(),
        why,
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(err(format!(
            "the path must be 1..{} bytes without NUL",
            addr.sun_path.len()
        )));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = s as libc::c_char;
    }
    let deadline = Instant::now() + limit;
    loop {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(err(format!("socket: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: socket(2) just returned it; nothing else owns it.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `addr` is a valid sockaddr_un of the size given.
        let r = unsafe {
            libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if r == 0 {
            let stream = UnixStream::from(sock);
            stream
                .set_nonblocking(false)
                .map_err(|e| err(format!("set blocking: {e}")))?;
            return Ok(stream);
        }
        let e = std::io::Error::last_os_error();
        let retry = matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::ECONNREFUSED | libc::EAGAIN | libc::EINTR)
        );
        if !retry {
            return Err(err(e.to_string()));
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "{e} for {limit:?}: is virtiofsd running and listening there?"
            )));
        }
        std::thread::sleep(CONNECT_RETRY);
    }
}

/// The virtiofsd end of one share.
pub struct Connection {
    fe: Frontend,
    fd: RawFd,
    limit: Duration,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// Queues enabled in the backend by the last [`Self::activate`].
    running: Vec<usize>,
    /// Set once anything failed: the socket is shut down.
    lost: Option<String>,
}

/// One ready queue as the backend needs it.
pub struct RingSetup<'a> {
    pub index: usize,
    pub queue: &'a Queue,
    pub kick: &'a EventFd,
}

impl Connection {
    /// Connects and negotiates what does not depend on the guest: owner,
    /// the backend's virtio features, and the protocol features (only
    /// REPLY_ACK is asked for, so every later message is acknowledged).
    pub fn open(path: &Path, queues: usize, limit: Duration) -> Result<Self, ConnError> {
        let stream = connect(path, limit)?;
        let fd = stream.as_raw_fd();
        let mut c = Self {
            fe: Frontend::from_stream(stream, queues as u64),
            fd,
            limit,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            running: Vec::new(),
            lost: None,
        };
        c.guarded("negotiation", |c| {
            c.fe.set_owner().map_err(|e| ("SET_OWNER", e))?;
            c.backend_features = c.fe.get_features().map_err(|e| ("GET_FEATURES", e))?;
            if c.backend_features & F_PROTOCOL_FEATURES != 0 {
                let offered =
                    c.fe.get_protocol_features()
                        .map_err(|e| ("GET_PROTOCOL_FEATURES", e))?;
                c.protocol = offered & VhostUserProtocolFeatures::REPLY_ACK;
                c.fe.set_protocol_features(c.protocol)
                    .map_err(|e| ("SET_PROTOCOL_FEATURES", e))?;
                if c.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                    c.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                }
            }
            Ok(())
        })?;
        Ok(c)
    }

    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    fn shut_down(&mut self, why: String) {
        // SAFETY: shutdown on the connection's own live socket.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if self.lost.is_none() {
            self.lost = Some(why);
        }
    }

    /// Runs `f` with the watchdog armed; on any failure the connection is
    /// shut down and marked lost.
    fn guarded<T>(
        &mut self,
        step: &'static str,
        f: impl FnOnce(&mut Self) -> Result<T, (&'static str, vhost::Error)>,
    ) -> Result<T, ConnError> {
        if let Some(why) = &self.lost {
            return Err(ConnError::Invalid(format!(
                "virtiofsd connection already lost: {why}"
            )));
        }
        // SAFETY: F_DUPFD_CLOEXEC on our live socket; the result is owned
        // by the watchdog alone.
        let dup = unsafe { libc::fcntl(self.fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            let e = ConnError::Invalid(format!(
                "cannot duplicate the virtiofsd socket: {}",
                std::io::Error::last_os_error()
            ));
            self.shut_down(e.to_string());
            return Err(e);
        }
        // SAFETY: fcntl just returned this descriptor.
        let dog = match Watchdog::arm(unsafe { OwnedFd::from_raw_fd(dup) }, self.limit) {
            Ok(d) => d,
            Err(e) => {
                // No watchdog, no bound: refuse rather than risk a hang.
                let e = ConnError::Invalid(format!("vhost-user watchdog thread: {e}"));
                self.shut_down(e.to_string());
                return Err(e);
            }
        };
        let r = f(self);
        let fired = dog.disarm();
        match (r, fired) {
            (_, true) => {
                let e = ConnError::Timeout {
                    step,
                    limit: self.limit,
                };
                self.shut_down(e.to_string());
                Err(e)
            }
            (Ok(v), false) => Ok(v),
            (Err((msg, source)), false) => {
                let e = ConnError::Protocol { step: msg, source };
                self.shut_down(e.to_string());
                Err(e)
            }
        }
    }

    /// Hands the rings to virtiofsd once the driver is ready: features,
    /// the memory table (every region must be file-backed), then per queue
    /// size, addresses (in this process's address space, as vhost-user
    /// wants them, after checking each ring lies inside one region of guest
    /// memory), base 0, the call and kick eventfds, and enable.
    pub fn activate(
        &mut self,
        guest_features: u64,
        mem: &GuestMemoryMmap,
        rings: &[RingSetup<'_>],
        call: &EventFd,
    ) -> Result<(), ConnError> {
        let mut table = Vec::new();
        for region in mem.iter() {
            table.push(
                VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                    ConnError::Invalid(
                        "guest memory is not file-backed: virtio-fs needs shareable guest memory"
                            .into(),
                    )
                })?,
            );
        }
        let mut addrs = Vec::new();
        for r in rings {
            addrs.push((
                r.index,
                r.queue.size(),
                ring_addresses(mem, r.queue)?,
                r.kick,
            ));
        }
        let features = guest_features | (self.backend_features & F_PROTOCOL_FEATURES);
        let protocol = self.backend_features & F_PROTOCOL_FEATURES != 0;
        self.guarded("activation", |c| {
            c.fe.set_features(features)
                .map_err(|e| ("SET_FEATURES", e))?;
            c.fe.set_mem_table(&table)
                .map_err(|e| ("SET_MEM_TABLE", e))?;
            for &(i, size, cfg, kick) in &addrs {
                c.fe.set_vring_num(i, size)
                    .map_err(|e| ("SET_VRING_NUM", e))?;
                c.fe.set_vring_addr(i, &cfg)
                    .map_err(|e| ("SET_VRING_ADDR", e))?;
                c.fe.set_vring_base(i, 0)
                    .map_err(|e| ("SET_VRING_BASE", e))?;
                c.fe.set_vring_call(i, call)
                    .map_err(|e| ("SET_VRING_CALL", e))?;
                c.fe.set_vring_kick(i, kick)
                    .map_err(|e| ("SET_VRING_KICK", e))?;
            }
            if protocol {
                for &(i, ..) in &addrs {
                    c.fe.set_vring_enable(i, true)
                        .map_err(|e| ("SET_VRING_ENABLE", e))?;
                }
            }
            Ok(())
        })?;
        self.running = addrs.iter().map(|&(i, ..)| i).collect();
        Ok(())
    }

    /// Stops the rings (GET_VRING_BASE stops a ring in the backend) after a
    /// driver reset.
    pub fn stop(&mut self) -> Result<(), ConnError> {
        let running = std::mem::take(&mut self.running);
        if running.is_empty() {
            return Ok(());
        }
        self.guarded("stop", |c| {
            for &i in &running {
                c.fe.get_vring_base(i).map_err(|e| ("GET_VRING_BASE", e))?;
            }
            Ok(())
        })
    }

    /// For the event loop, when the socket polled readable: virtiofsd
    /// never speaks first on this connection, so a hang-up (or any
    /// unsolicited byte) means it is gone or misbehaving. Spurious wake-ups
    /// (a reply another thread already read) are fine.
    pub fn check(&mut self) -> Result<(), String> {
        if let Some(why) = &self.lost {
            return Err(why.clone());
        }
        let mut b = [0u8; 1];
        // SAFETY: peeking at most one byte into a one-byte buffer.
        let n = unsafe {
            libc::recv(
                self.fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        let why = match n {
            0 => "virtiofsd closed its vhost-user connection".to_string(),
            n if n > 0 => "virtiofsd sent an unsolicited vhost-user message".to_string(),
            _ => {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    return Ok(());
                }
                format!("vhost-user socket: {e}")
            }
        };
        self.shut_down(why.clone());
        Err(why)
    }
}

/// The ring's three parts as host addresses, each checked to lie wholly
/// inside one guest memory region.
fn ring_addresses(mem: &GuestMemoryMmap, q: &Queue) -> Result<VringConfigData, ConnError> {
    let size = u64::from(q.size());
    let parts = [
        ("descriptor table", q.desc_table(), 16 * size),
        ("available ring", q.avail_ring(), 6 + 2 * size),
        ("used ring", q.used_ring(), 6 + 8 * size),
    ];
    let mut host = [0u64; 3];
    for (h, (what, gpa, len)) in host.iter_mut().zip(parts) {
        let len = usize::try_from(len).map_err(|_| ConnError::Invalid(format!("{what} size")))?;
        let outside = |e: vm_memory::GuestMemoryError| {
            ConnError::Invalid(format!(
                "{what} at {gpa:#x} ({len} bytes) is not inside one region of guest memory: {e}"
            ))
        };
        mem.get_slice(GuestAddress(gpa), len).map_err(outside)?;
        *h = mem.get_host_address(GuestAddress(gpa)).map_err(outside)? as u64;
    }
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: host[0],
        avail_ring_addr: host[1],
        used_ring_addr: host[2],
        log_addr: None,
    })
}
