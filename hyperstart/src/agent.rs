//! The protocol server: one poll(2) loop over the channel, SIGCHLD (a
//! signalfd) and the stdio pipes of every process. Single-threaded, so
//! forking to start processes is safe.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_protocol::{
    AgentError, AgentErrorKind, ContainerSpec, Frame, FrameDecoder, FrameKind, GuestMessage,
    HostMessage, MountSpec, PodSpec, ProcessSpec, ProcessState, Reply, Request, ResourceLimits,
    ShareTransport, TerminalSize, VolumeSource, VolumeSpec, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
    RESYNC_MAGIC,
};
use nix::errno::Errno;
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus};

use crate::cgroup;
use crate::channel::{self, Channel};
use crate::flow::{Credit, StdinBuffer};
use crate::log::{debug, log};
use crate::net;
use crate::rootfs::{self, ContainerPaths};
use crate::spawn::{self, Spawned, Target};
use crate::sys::{RealSys, Sys, SysError};

/// How long a container's disk may take to show up.
const DISK_WAIT: Duration = Duration::from_secs(5);
/// How long to leave the channel alone after it reported the host gone:
/// virtio-serial keeps signalling readable+hangup until the host connects.
const HOST_RETRY: Duration = Duration::from_millis(50);
/// Exits reported to the host, kept for a host that reattaches: the report
/// may have gone to a session that died before reading it.
const KEPT_EXITS: usize = 128;
/// Bounds on what one request may ask for: volumes per pod, mounts per
/// container, and the length of a mount path.
const MAX_VOLUMES: usize = 64;
const MAX_MOUNTS: usize = 64;
const MAX_MOUNT_PATH: usize = 1024;
/// A virtio-fs tag is at most 36 bytes (the device's config field); Xen's
/// 9pfs tags get the same limit so one rule serves both.
const MAX_SHARE_TAG: usize = 36;
/// A virtio-blk serial is at most 20 bytes (longer ones are cut and would
/// never match).
const MAX_DISK_ID: usize = 20;

pub struct Options {
    pub pid1: bool,
    pub run_dir: PathBuf,
}

type Result<T> = std::result::Result<T, AgentError>;

fn err(kind: AgentErrorKind, message: impl Into<String>) -> AgentError {
    AgentError::new(kind, message)
}

/// One guest→host output stream of a process.
struct Output {
    stream: u32,
    /// `None` once the pipe reached EOF and the Eof frame was sent.
    fd: Option<OwnedFd>,
    credit: Credit,
}

struct Process {
    container: String,
    id: String,
    pid: i32,
    intermediate: i32,
    stdio: u32,
    stdin: Option<OwnedFd>,
    stdin_buf: StdinBuffer,
    /// stdout, stderr.
    out: [Output; 2],
    /// The pty master of a terminal process.
    tty: Option<OwnedFd>,
    /// The intermediate's exit status once reaped.
    status: Option<i32>,
    /// A container init's cgroup and its `oom_kill` count at start: what
    /// tells an OOM kill from another SIGKILL when it exits.
    oom_watch: Option<(PathBuf, u64)>,
    /// Its exit was the OOM killer's.
    oom_killed: bool,
}

impl Process {
    fn finished(&self) -> bool {
        self.status.is_some() && self.out.iter().all(|o| o.fd.is_none())
    }
}

struct Container {
    paths: ContainerPaths,
    /// The container's cgroup, which its execs join too.
    cgroup: Option<PathBuf>,
    init_pid: i32,
    init_key: u64,
    running: bool,
}

#[derive(Clone, Copy)]
enum Slot {
    Signals,
    Channel,
    Output(u64, usize),
    Stdin(u64),
}

/// A pod volume, mounted once for the pod.
#[derive(Debug, Clone)]
struct PodVolume {
    dir: PathBuf,
    /// The pod-level mount is read-only: so is every bind of it.
    readonly: bool,
    source: VolumeSource,
}

pub struct Agent {
    channel: Channel,
    decoder: FrameDecoder,
    signals: SignalFd,
    containers: BTreeMap<String, Container>,
    /// Pod volume name → where it is mounted in hyperstart's namespace.
    volumes: BTreeMap<String, PodVolume>,
    /// The directory of the pod's /etc/resolv.conf, hosts and hostname,
    /// once StartPod applied a network; bound into every container.
    pod_files: Option<PathBuf>,
    processes: BTreeMap<u64, Process>,
    next_key: u64,
    /// Stream id → process: stdin data and stdout credit arrive on `stdio`.
    stdio_streams: HashMap<u32, u64>,
    /// Stream id → process: stderr credit.
    stderr_streams: HashMap<u32, u64>,
    version: Option<u32>,
    reported_exits: std::collections::VecDeque<ProcessState>,
    host_retry_at: Option<Instant>,
    host_connected: bool,
    power_off: bool,
    opts: Options,
    /// The containers' cgroups (PID 1 only; none when the kernel has no
    /// cgroup2 memory controller).
    groups: Option<cgroup::Groups>,
    read_buf: Vec<u8>,
}

impl Agent {
    pub fn new(channel: Channel, signals: SignalFd, opts: Options) -> Self {
        let groups = if opts.pid1 {
            cgroup::Groups::enable(Path::new(cgroup::ROOT))
                .map_err(|e| log!("{e}; containers get no cgroup and OOM kills are not reported"))
                .ok()
        } else {
            None
        };
        Self {
            channel,
            decoder: FrameDecoder::resynchronising(),
            signals,
            containers: BTreeMap::new(),
            volumes: BTreeMap::new(),
            pod_files: None,
            processes: BTreeMap::new(),
            next_key: 0,
            stdio_streams: HashMap::new(),
            stderr_streams: HashMap::new(),
            version: None,
            reported_exits: std::collections::VecDeque::new(),
            host_retry_at: None,
            host_connected: true,
            power_off: false,
            opts,
            groups,
            read_buf: vec![0; 64 * 1024],
        }
    }

    pub fn send_ready(&mut self) {
        self.channel.send_message(&GuestMessage::Ready {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities: hyper_protocol::capability::ALL.map(String::from).to_vec(),
            agent: format!("hyperstart {}", env!("CARGO_PKG_VERSION")),
        });
    }

    pub fn run(&mut self) -> ! {
        loop {
            self.poll_once();
        }
    }

    fn poll_once(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut slots = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        add(self.signals.as_raw_fd(), libc::POLLIN, Slot::Signals);
        let mut timeout: libc::c_int = -1;
        match self.host_retry_at {
            Some(at) if at > Instant::now() => {
                let left = at.saturating_duration_since(Instant::now());
                timeout = libc::c_int::try_from(left.as_millis())
                    .unwrap_or(libc::c_int::MAX)
                    .max(1);
            }
            _ => {
                self.host_retry_at = None;
                add(self.channel.raw_fd(), libc::POLLIN, Slot::Channel);
            }
        }
        for (&key, p) in &self.processes {
            for (i, out) in p.out.iter().enumerate() {
                // Without credit the stream is left out of the poll set: the
                // pipe fills and the process blocks, which is the point.
                if let (Some(fd), true) = (&out.fd, out.credit.has_credit()) {
                    add(fd.as_raw_fd(), libc::POLLIN, Slot::Output(key, i));
                }
            }
            if let (Some(fd), false) = (&p.stdin, p.stdin_buf.is_empty()) {
                add(fd.as_raw_fd(), libc::POLLOUT, Slot::Stdin(key));
            }
        }

        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfds
        // that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = Errno::last();
            if e != Errno::EINTR {
                log!("poll: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        for (pfd, slot) in fds.iter().zip(slots) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Signals => self.reap(),
                Slot::Channel => self.channel_ready(pfd.revents),
                Slot::Output(key, i) => self.forward_output(key, i),
                Slot::Stdin(key) => self.write_stdin(key),
            }
            if self.power_off {
                self.do_power_off();
            }
        }
        self.send_exits();
    }

    // ----- the channel -------------------------------------------------

    fn channel_ready(&mut self, revents: libc::c_short) {
        if revents & libc::POLLIN != 0 {
            match self.channel.read(&mut self.read_buf) {
                Ok(0) => self.host_gone(),
                Ok(n) => {
                    if !self.host_connected {
                        debug!("host connected");
                        self.host_connected = true;
                    }
                    let first = self.decoder.push(&self.read_buf[..n]);
                    self.handle_frames(first);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => {
                    log!("reading the channel: {e}");
                    self.check_channel(revents);
                    self.host_gone();
                }
            }
        } else if revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            self.check_channel(revents);
            self.host_gone();
        }
    }

    /// A channel whose device went away (its driver unbound, the port
    /// unplugged) is fatal: a new port could be opened by someone else, and
    /// the host could not tell it from hyperstart. The pod ends instead.
    fn check_channel(&mut self, revents: libc::c_short) {
        let why = if revents & libc::POLLNVAL != 0 {
            Some("the channel's descriptor is no longer valid".to_string())
        } else {
            self.channel.device_gone()
        };
        if let Some(why) = why {
            self.channel_lost(&why);
        }
    }

    fn channel_lost(&mut self, why: &str) -> ! {
        log!("fatal: {why}; ending the pod");
        self.kill_processes(None);
        if !self.opts.pid1 {
            std::process::exit(1);
        }
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        // PID 1 must never exit (the kernel would panic); wait to be killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    /// virtio-serial reports EOF/hangup while no host is connected; wait for
    /// one instead of exiting. A partial frame from a previous connection
    /// would desynchronise the next, so drop it.
    fn host_gone(&mut self) {
        if self.host_connected {
            debug!("host not connected; waiting");
            self.host_connected = false;
        }
        self.decoder = FrameDecoder::resynchronising();
        self.host_retry_at = Some(Instant::now() + HOST_RETRY);
    }

    fn handle_frames(
        &mut self,
        first: std::result::Result<Option<Frame>, hyper_protocol::FrameError>,
    ) {
        let mut next = first;
        loop {
            match next {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => return,
                // The decoder drops input up to the next pad, where a new
                // host session starts.
                Err(e) => log!("malformed frame from the host ({e}); resynchronising"),
            }
            if self.power_off {
                return;
            }
            next = self.decoder.next_frame();
        }
    }

    fn handle_frame(&mut self, frame: Frame) {
        match frame.kind {
            FrameKind::Control => self.handle_control(&frame.payload),
            FrameKind::Data => self.stdin_data(frame.stream, &frame.payload),
            FrameKind::Eof => self.stdin_eof(frame.stream),
            FrameKind::Credit => {
                let bytes = frame.credit_bytes().unwrap_or(0);
                let target = match (
                    self.stdio_streams.get(&frame.stream),
                    self.stderr_streams.get(&frame.stream),
                ) {
                    (Some(&key), _) => Some((key, 0)),
                    (None, Some(&key)) => Some((key, 1)),
                    (None, None) => None,
                };
                if let Some((key, i)) = target {
                    if let Some(p) = self.processes.get_mut(&key) {
                        p.out[i].credit.grant(bytes);
                    }
                }
            }
        }
    }

    fn handle_control(&mut self, payload: &[u8]) {
        match serde_json::from_slice::<HostMessage>(payload) {
            Ok(msg) => {
                debug!("request {}: {}", msg.id, request_name(&msg.request));
                let result = self.handle_request(msg.request);
                if let Err(e) = &result {
                    debug!("request {} failed: {}", msg.id, e.message);
                }
                self.channel
                    .send_message(&GuestMessage::Response { id: msg.id, result });
            }
            Err(e) => {
                log!("cannot decode a request: {e}");
                // Answer it if it has an id, so the host is not left waiting.
                let id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64));
                if let Some(id) = id {
                    let result = Err(err(
                        AgentErrorKind::InvalidRequest,
                        format!("cannot decode the request: {e}"),
                    ));
                    self.channel
                        .send_message(&GuestMessage::Response { id, result });
                }
            }
        }
    }

    // ----- requests ----------------------------------------------------

    fn handle_request(&mut self, request: Request) -> Result<Reply> {
        match request {
            Request::Hello {
                version,
                capabilities,
            } => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    return Err(err(
                        AgentErrorKind::InvalidRequest,
                        format!(
                            "protocol version {version} is not supported: this hyperstart speaks \
                             {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
                        ),
                    ));
                }
                debug!("host speaks version {version}, capabilities {capabilities:?}");
                self.version = Some(version);
                Ok(Reply::Ok)
            }
            Request::Ping => Ok(Reply::Pong),
            Request::StartPod(spec) => self.start_pod(spec),
            Request::NewContainer(spec) => self.new_container(spec),
            Request::Exec { container, process } => self.exec(&container, process),
            Request::Signal {
                container,
                process,
                signal,
            } => self.signal(&container, &process, signal),
            Request::WindowSize {
                container,
                process,
                rows,
                cols,
            } => self.window_size(&container, &process, TerminalSize { rows, cols }),
            Request::RemoveContainer { container } => self.remove_container(&container),
            Request::DestroyPod => {
                self.destroy_pod();
                Ok(Reply::Ok)
            }
            Request::Reattach { nonce } => self.reattach(&nonce),
            Request::Resume(spec) => self.resume(&spec),
        }
    }

    /// A new host session: mark where it starts in the byte stream, give
    /// every output a fresh window, and list the processes.
    fn reattach(&mut self, nonce: &str) -> Result<Reply> {
        if nonce.is_empty() || nonce.len() > 64 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                "the reattach nonce must be 1 to 64 hex digits",
            ));
        }
        let mut marker = RESYNC_MAGIC.to_vec();
        marker.extend_from_slice(nonce.as_bytes());
        self.channel.send_raw(&marker);
        let mut processes: Vec<ProcessState> = self.reported_exits.iter().cloned().collect();
        for p in self.processes.values_mut() {
            for out in &mut p.out {
                out.credit = crate::flow::Credit::default();
            }
            processes.push(ProcessState {
                container: p.container.clone(),
                process: p.id.clone(),
                stdio: p.stdio,
                stderr: p.out[1].stream,
                exit_status: p.status,
                output_open: p.out.iter().any(|o| o.fd.is_some()),
                oom_killed: p.oom_killed,
            });
        }
        debug!("host reattached; {} processes", processes.len());
        Ok(Reply::Reattached { processes })
    }

    /// A template clone's first request: make it its own before anything
    /// runs in it (crate::resume). Refused once a pod is running, where a
    /// re-probe would pull disks from under mounted filesystems.
    fn resume(&mut self, spec: &hyper_protocol::ResumeSpec) -> Result<Reply> {
        if !self.containers.is_empty() || !self.volumes.is_empty() || self.pod_files.is_some() {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                "resume comes before the pod starts; this guest already runs one",
            ));
        }
        let plan = crate::resume::validate(spec)?;
        crate::resume::apply(&plan)?;
        Ok(Reply::Ok)
    }

    fn start_pod(&mut self, spec: PodSpec) -> Result<Reply> {
        if spec.volumes.len() > MAX_VOLUMES {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("{} volumes: at most {MAX_VOLUMES}", spec.volumes.len()),
            ));
        }
        // Every field is checked before anything is configured.
        let existing: Vec<(&str, &VolumeSource)> = self
            .volumes
            .iter()
            .map(|(name, v)| (name.as_str(), &v.source))
            .collect();
        validate_volumes(&existing, &spec.volumes)?;
        let plan = match &spec.network {
            Some(_) if self.pod_files.is_some() => {
                return Err(err(
                    AgentErrorKind::AlreadyExists,
                    "the pod's network is already configured",
                ))
            }
            Some(network) => Some(net::validate(network, &spec.hostname)?),
            None => None,
        };
        // Then every disk is found, still before anything is configured.
        let mut mounts: Vec<(&VolumeSpec, rootfs::VolumeMount)> =
            Vec::with_capacity(spec.volumes.len());
        for v in &spec.volumes {
            let mount = volume_mount(v, wait_for_disk)?;
            if let rootfs::VolumeMount::Block { device, .. } = &mount {
                let same = mounts.iter().find(|(_, m)| {
                    matches!(m, rootfs::VolumeMount::Block { device: d, .. } if d == device)
                });
                if let Some((other, _)) = same {
                    return Err(err(
                        AgentErrorKind::InvalidRequest,
                        format!(
                            "volumes {} and {} are the same disk {}: two mounts of one \
                             ext4 filesystem are one volume",
                            other.name,
                            v.name,
                            device.display()
                        ),
                    ));
                }
            }
            mounts.push((v, mount));
        }
        if !spec.hostname.is_empty() {
            set_hostname(&spec.hostname)?;
        }
        if let Some(plan) = plan {
            net::apply(&plan, &net::SysfsNet::default())?;
            let dir = net::files::pod_dir(&self.opts.run_dir);
            net::files::mount_pod_dir(&mut RealSys, &dir)
                .map_err(|e| err(AgentErrorKind::Failed, format!("network files: {e}")))?;
            net::files::write_files(&dir, &plan).map_err(|e| {
                err(
                    AgentErrorKind::Failed,
                    format!("writing the pod's network files in {}: {e}", dir.display()),
                )
            })?;
            self.pod_files = Some(dir);
        }
        let mut mounted: Vec<PathBuf> = Vec::new();
        for (v, mount) in &mounts {
            let dir = rootfs::volume_dir(&self.opts.run_dir, &v.name);
            if let Err(e) = rootfs::mount_volume(&mut RealSys, &dir, mount, v.readonly) {
                // All or nothing: the volumes of this request already
                // mounted go again.
                for dir in mounted {
                    for e in rootfs::unmount_volume(&mut RealSys, &dir) {
                        log!("undoing volume {}: {e}", dir.display());
                    }
                }
                return Err(err(
                    AgentErrorKind::Failed,
                    format!(
                        "mounting volume {} ({}): {e}{}",
                        v.name,
                        describe(mount),
                        mount_hint(mount, e.errno)
                    ),
                ));
            }
            mounted.push(dir);
        }
        for ((v, _), dir) in mounts.into_iter().zip(mounted) {
            self.volumes.insert(
                v.name.clone(),
                PodVolume {
                    dir,
                    readonly: v.readonly,
                    source: v.source.clone(),
                },
            );
        }
        Ok(Reply::Ok)
    }

    /// Checks a container's mounts against the pod's volumes, before
    /// anything is mounted for it.
    fn volume_binds(&self, mounts: &[MountSpec]) -> Result<Vec<rootfs::VolumeBind>> {
        if mounts.len() > MAX_MOUNTS {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("{} mounts: at most {MAX_MOUNTS}", mounts.len()),
            ));
        }
        let mut binds: Vec<rootfs::VolumeBind> = Vec::new();
        for m in mounts {
            validate_mount_path(&m.path)?;
            let volume = self.volumes.get(&m.volume).ok_or_else(|| {
                err(
                    AgentErrorKind::NotFound,
                    format!("no volume {:?} in the pod", m.volume),
                )
            })?;
            if binds.iter().any(|b| b.path == m.path) {
                return Err(err(
                    AgentErrorKind::InvalidRequest,
                    format!("two mounts at {}", m.path),
                ));
            }
            binds.push(rootfs::VolumeBind {
                source: volume.dir.clone(),
                path: m.path.clone(),
                readonly: m.readonly || volume.readonly,
            });
        }
        Ok(binds)
    }

    /// The directory a container joining the pod takes its root from: a
    /// directory of a shared pod volume (the host made it before asking).
    fn shared_rootfs(&self, share: &hyper_protocol::SharedRootfs) -> Result<PathBuf> {
        validate_container_id(&share.dir)?;
        let volume = self.volumes.get(&share.volume).ok_or_else(|| {
            err(
                AgentErrorKind::NotFound,
                format!("rootfs: no volume {:?} in the pod", share.volume),
            )
        })?;
        if !matches!(volume.source, VolumeSource::Share { .. }) {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!(
                    "rootfs: volume {:?} is not a shared directory",
                    share.volume
                ),
            ));
        }
        let dir = volume.dir.join(&share.dir);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            _ => Err(err(
                AgentErrorKind::NotFound,
                format!(
                    "rootfs: no directory {:?} in volume {:?}",
                    share.dir, share.volume
                ),
            )),
        }
    }

    fn new_container(&mut self, spec: ContainerSpec) -> Result<Reply> {
        validate_container_id(&spec.id)?;
        if self.containers.contains_key(&spec.id) {
            return Err(err(
                AgentErrorKind::AlreadyExists,
                format!("container {} already exists", spec.id),
            ));
        }
        if spec.hostname.len() > 64 || spec.hostname.contains('\0') {
            return Err(err(AgentErrorKind::InvalidRequest, "invalid hostname"));
        }
        let fstype = &spec.rootfs.fstype;
        if spec.rootfs.share.is_none()
            && (fstype.is_empty()
                || !fstype
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("invalid filesystem type {fstype:?}"),
            ));
        }
        self.validate_process(&spec.id, &spec.process)?;
        spec.resources.validate().map_err(|e| {
            err(
                AgentErrorKind::InvalidRequest,
                format!("container limits: {e}"),
            )
        })?;
        if self.groups.is_none() && !spec.resources.is_unlimited() {
            return Err(err(
                AgentErrorKind::Failed,
                "this guest has no cgroups (no cgroup2 memory controller): the container's limits cannot be applied",
            ));
        }
        let binds = self.volume_binds(&spec.mounts)?;
        let shared = match &spec.rootfs.share {
            Some(share) => Some(self.shared_rootfs(share)?),
            None => None,
        };
        let taken = self.volumes.iter().find(|(_, v)| {
            shared.is_none()
                && matches!(&v.source, VolumeSource::Block { disk_id, .. } if *disk_id == spec.rootfs.disk_id)
        });
        if let Some((name, _)) = taken {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!(
                    "the container's rootfs disk {:?} is the disk of volume {name}",
                    spec.rootfs.disk_id
                ),
            ));
        }

        let device = match &shared {
            Some(_) => None,
            None => Some(wait_for_disk(&spec.rootfs.disk_id).ok_or_else(|| {
                err(
                    AgentErrorKind::NotFound,
                    format!(
                        "no disk with id {:?} (no block device has that serial)",
                        spec.rootfs.disk_id
                    ),
                )
            })?),
        };
        let lower = match (&shared, &device) {
            (Some(dir), _) => rootfs::Lower::Dir(dir),
            (None, Some(device)) => rootfs::Lower::Disk { device, fstype },
            (None, None) => return Err(err(AgentErrorKind::Failed, "no rootfs")),
        };
        let paths = ContainerPaths::new(&self.opts.run_dir, &spec.id);
        let nodev = !spec.process.confinement.privileged;
        rootfs::mount_container_rootfs(&mut RealSys, &paths, lower, nodev).map_err(|e| {
            err(
                AgentErrorKind::Failed,
                format!("mounting the container's rootfs: {e}"),
            )
        })?;
        // The network files first: a volume the user mounts over /etc wins.
        let files = match &self.pod_files {
            Some(dir) => net::files::bind_into(&mut RealSys, dir, &paths.root).map_err(|e| {
                err(
                    AgentErrorKind::Failed,
                    format!("binding /etc/resolv.conf, hosts and hostname: {e}"),
                )
            }),
            None => Ok(()),
        };
        let bound = files.and_then(|()| {
            rootfs::bind_volumes(&mut RealSys, &paths.root, &binds)
                .map_err(|e| bind_error(&paths.root, e))
        });
        if let Err(e) = bound {
            for e in rootfs::unmount_container_rootfs(&mut RealSys, &paths) {
                log!("cleaning up container {}: {e}", spec.id);
            }
            return Err(e);
        }
        let target = Target::NewContainer {
            root: &paths.root,
            hostname: &spec.hostname,
        };
        let group = match self.container_group(&spec.id, &spec.resources) {
            Ok(group) => group,
            Err(e) => {
                for e in rootfs::unmount_container_rootfs(&mut RealSys, &paths) {
                    log!("cleaning up container {}: {e}", spec.id);
                }
                return Err(e);
            }
        };
        let spawned = match spawn::spawn(
            target,
            group.as_ref().map(|(dir, _)| dir.as_path()),
            &spec.process,
        ) {
            Ok(s) => s,
            Err(e) => {
                for e in rootfs::unmount_container_rootfs(&mut RealSys, &paths) {
                    log!("cleaning up container {}: {e}", spec.id);
                }
                if let Some((dir, _)) = &group {
                    cgroup::remove(dir);
                }
                return Err(e);
            }
        };
        let pid = spawned.pid;
        debug!("container {} started, init pid {pid}", spec.id);
        let key = self.add_process(&spec.id, &spec.process, spawned);
        if let Some(p) = self.processes.get_mut(&key) {
            p.oom_watch.clone_from(&group);
        }
        self.containers.insert(
            spec.id,
            Container {
                paths,
                cgroup: group.map(|(dir, _)| dir),
                init_pid: pid,
                init_key: key,
                running: true,
            },
        );
        Ok(Reply::Started { pid })
    }

    /// Container `id`'s group with `limits` written, and its `oom_kill`
    /// count so far. Without limits a group that cannot be made only costs
    /// the OOM report; with them it refuses the container.
    fn container_group(&self, id: &str, limits: &ResourceLimits) -> Result<Option<(PathBuf, u64)>> {
        let Some(groups) = &self.groups else {
            return Ok(None);
        };
        let (dir, base) = match groups.create(id) {
            Ok(group) => group,
            Err(e) if limits.is_unlimited() => {
                log!("container {id}: no cgroup ({e}); an OOM kill is not reported");
                return Ok(None);
            }
            Err(e) => {
                return Err(err(
                    AgentErrorKind::Failed,
                    format!("creating the container's cgroup for its limits: {e}"),
                ))
            }
        };
        if let Err(e) = cgroup::apply_limits(&dir, limits) {
            cgroup::remove(&dir);
            return Err(err(
                AgentErrorKind::Failed,
                format!("setting the container's limits: {e}"),
            ));
        }
        Ok(Some((dir, base)))
    }

    fn exec(&mut self, container: &str, process: ProcessSpec) -> Result<Reply> {
        let (init_pid, group) = match self.containers.get(container) {
            None => {
                return Err(err(
                    AgentErrorKind::NotFound,
                    format!("no container {container}"),
                ))
            }
            Some(c) if !c.running => {
                return Err(err(
                    AgentErrorKind::Failed,
                    format!("container {container} is not running"),
                ))
            }
            Some(c) => (c.init_pid, c.cgroup.clone()),
        };
        self.validate_process(container, &process)?;
        let spawned = spawn::spawn(Target::Join { init_pid }, group.as_deref(), &process)?;
        let pid = spawned.pid;
        debug!("process {} started in {container}, pid {pid}", process.id);
        self.add_process(container, &process, spawned);
        Ok(Reply::Started { pid })
    }

    fn validate_process(&self, container: &str, p: &ProcessSpec) -> Result<()> {
        let invalid = |m: String| Err(err(AgentErrorKind::InvalidRequest, m));
        if p.id.is_empty() {
            return invalid("the process has no id".into());
        }
        if p.args.is_empty() {
            return invalid("the process has no command".into());
        }
        if p.stdio == 0 || p.stderr == 0 || p.stdio == p.stderr {
            return invalid(format!("invalid stream ids {} and {}", p.stdio, p.stderr));
        }
        let in_use =
            |s: u32| self.stdio_streams.contains_key(&s) || self.stderr_streams.contains_key(&s);
        if in_use(p.stdio) || in_use(p.stderr) {
            return invalid(format!(
                "stream {} or {} is already in use",
                p.stdio, p.stderr
            ));
        }
        if self
            .processes
            .values()
            .any(|q| q.container == container && q.id == p.id)
        {
            return Err(err(
                AgentErrorKind::AlreadyExists,
                format!("process {} already exists in {container}", p.id),
            ));
        }
        Ok(())
    }

    fn add_process(&mut self, container: &str, spec: &ProcessSpec, s: Spawned) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.stdio_streams.insert(spec.stdio, key);
        self.stderr_streams.insert(spec.stderr, key);
        self.processes.insert(
            key,
            Process {
                container: container.to_string(),
                id: spec.id.clone(),
                pid: s.pid,
                intermediate: s.intermediate,
                stdio: spec.stdio,
                stdin: Some(s.stdin),
                stdin_buf: StdinBuffer::default(),
                out: [
                    Output {
                        stream: spec.stdio,
                        fd: Some(s.stdout),
                        credit: Credit::default(),
                    },
                    Output {
                        stream: spec.stderr,
                        fd: Some(s.stderr),
                        credit: Credit::default(),
                    },
                ],
                status: None,
                tty: s.tty,
                oom_watch: None,
                oom_killed: false,
            },
        );
        key
    }

    fn window_size(&self, container: &str, process: &str, size: TerminalSize) -> Result<Reply> {
        let p = self.find_process(container, process)?;
        let Some(master) = &p.tty else {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("process {process} has no terminal"),
            ));
        };
        if size.rows == 0 || size.cols == 0 {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("invalid window size {}x{}", size.rows, size.cols),
            ));
        }
        spawn::set_window_size(master, size).map_err(|e| {
            err(
                AgentErrorKind::Failed,
                format!("resizing the terminal of {process}: {e}"),
            )
        })?;
        Ok(Reply::Ok)
    }

    fn find_process(&self, container: &str, process: &str) -> Result<&Process> {
        self.processes
            .values()
            .find(|p| p.container == container && p.id == process)
            .ok_or_else(|| {
                err(
                    AgentErrorKind::NotFound,
                    format!("no process {process} in container {container}"),
                )
            })
    }

    fn signal(&mut self, container: &str, process: &str, signal: i32) -> Result<Reply> {
        if !(0..=64).contains(&signal) {
            return Err(err(
                AgentErrorKind::InvalidRequest,
                format!("invalid signal {signal}"),
            ));
        }
        let p = self.find_process(container, process)?;
        if p.status.is_some() {
            return Err(err(
                AgentErrorKind::NotFound,
                format!("process {process} has exited"),
            ));
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(p.pid, signal) } != 0 {
            let e = Errno::last();
            let kind = if e == Errno::ESRCH {
                AgentErrorKind::NotFound
            } else {
                AgentErrorKind::Failed
            };
            return Err(err(kind, format!("signalling process {process}: {e}")));
        }
        Ok(Reply::Ok)
    }

    fn kill_processes(&self, container: Option<&str>) {
        for p in self.processes.values() {
            if p.status.is_none() && container.is_none_or(|c| c == p.container) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
        }
    }

    fn remove_container(&mut self, container: &str) -> Result<Reply> {
        let Some(c) = self.containers.remove(container) else {
            return Err(err(
                AgentErrorKind::NotFound,
                format!("no container {container}"),
            ));
        };
        // Their exits are still reported, after their output, as usual.
        self.kill_processes(Some(container));
        for e in rootfs::unmount_container_rootfs(&mut RealSys, &c.paths) {
            log!("removing container {container}: {e}");
        }
        Ok(Reply::Ok)
    }

    fn destroy_pod(&mut self) {
        self.kill_processes(None);
        for (id, c) in std::mem::take(&mut self.containers) {
            for e in rootfs::unmount_container_rootfs(&mut RealSys, &c.paths) {
                log!("removing container {id}: {e}");
            }
        }
        // A block volume's data outlives the pod: detach the volumes, then
        // the sync below writes back every filesystem (detached ones too,
        // while a dying process still holds them).
        for (name, v) in std::mem::take(&mut self.volumes) {
            for e in rootfs::unmount_volume(&mut RealSys, &v.dir) {
                log!("removing volume {name}: {e}");
            }
        }
        nix::unistd::sync();
        // The reply goes out first; the loop powers off right after.
        self.power_off = true;
    }

    fn do_power_off(&mut self) {
        self.channel.drain();
        if !self.opts.pid1 {
            log!("pod destroyed; exiting");
            std::process::exit(0);
        }
        nix::unistd::sync();
        let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        log!("power off failed: {e}");
        self.power_off = false;
    }

    // ----- processes ---------------------------------------------------

    fn stdin_data(&mut self, stream: u32, data: &[u8]) {
        let Some(p) = self
            .stdio_streams
            .get(&stream)
            .and_then(|k| self.processes.get_mut(k))
        else {
            debug!("stdin data for unknown stream {stream}");
            return;
        };
        if p.stdin.is_none() || p.stdin_buf.eof {
            // Nobody will read it: hand the credit straight back.
            let credit = u32::try_from(data.len()).unwrap_or(u32::MAX);
            if credit > 0 {
                self.channel.send(&Frame::credit(stream, credit));
            }
            return;
        }
        let dropped = p.stdin_buf.push(data);
        if dropped > 0 {
            log!("host overran the stdin window of stream {stream}; dropped {dropped} bytes");
        }
    }

    fn stdin_eof(&mut self, stream: u32) {
        if let Some(p) = self
            .stdio_streams
            .get(&stream)
            .and_then(|k| self.processes.get_mut(k))
        {
            p.stdin_buf.eof = true;
            if p.stdin_buf.is_empty() {
                p.stdin = None;
            }
        }
    }

    fn write_stdin(&mut self, key: u64) {
        let Some(p) = self.processes.get_mut(&key) else {
            return;
        };
        let Some(fd) = &p.stdin else { return };
        let credit = match nix::unistd::write(fd, p.stdin_buf.pending()) {
            Ok(n) => p.stdin_buf.consumed(n),
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                // EPIPE: the process closed its stdin; nothing more goes in.
                debug!("stdin of {}: {e}", p.id);
                p.stdin = None;
                p.stdin_buf.discard()
            }
        };
        if p.stdin_buf.is_empty() && p.stdin_buf.eof {
            p.stdin = None;
        }
        let stream = p.stdio;
        if credit > 0 {
            self.channel.send(&Frame::credit(stream, credit));
        }
    }

    fn forward_output(&mut self, key: u64, i: usize) {
        let Some(out) = self.processes.get_mut(&key).map(|p| &mut p.out[i]) else {
            return;
        };
        let Some(fd) = &out.fd else { return };
        let mut buf = vec![0u8; out.credit.read_limit()];
        if buf.is_empty() {
            return;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => {
                out.fd = None;
                self.channel.send(&Frame::eof(out.stream));
            }
            Ok(n) => {
                out.credit.consume(n);
                buf.truncate(n);
                self.channel.send(&Frame::data(out.stream, buf));
            }
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            // A pty master reads EIO once every slave fd is closed: its EOF.
            Err(Errno::EIO) => {
                out.fd = None;
                self.channel.send(&Frame::eof(out.stream));
            }
            Err(e) => {
                log!("reading output stream {}: {e}", out.stream);
                out.fd = None;
                self.channel.send(&Frame::eof(out.stream));
            }
        }
    }

    /// Reaps every exited child. hyperstart is PID 1, so that includes
    /// orphans re-parented to it, which are simply discarded.
    fn reap(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
        loop {
            let (pid, status) = match nix::sys::wait::waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid.as_raw(), 128 + signal as i32),
                Ok(WaitStatus::StillAlive) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let Some((&key, p)) = self
                .processes
                .iter_mut()
                .find(|(_, p)| p.intermediate == pid && p.status.is_none())
            else {
                continue;
            };
            debug!("process {} of {} exited with {status}", p.id, p.container);
            p.status = Some(status);
            if let Some((group, base)) = &p.oom_watch {
                p.oom_killed = cgroup::oom_killed(status, group, *base);
                if p.oom_killed {
                    log!(
                        "container {}: its init was killed by the OOM killer",
                        p.container
                    );
                }
            }
            if let Some(c) = self.containers.get_mut(&p.container) {
                if c.init_key == key {
                    c.running = false;
                }
            }
        }
    }

    /// Reports exits whose output has been fully sent, so a process's output
    /// always precedes its exit event.
    fn send_exits(&mut self) {
        let done: Vec<u64> = self
            .processes
            .iter()
            .filter(|(_, p)| p.finished())
            .map(|(&k, _)| k)
            .collect();
        for key in done {
            let Some(p) = self.processes.remove(&key) else {
                continue;
            };
            self.stdio_streams.remove(&p.stdio);
            self.stderr_streams.remove(&p.out[1].stream);
            let status = p.status.unwrap_or(255);
            if let Some((group, _)) = &p.oom_watch {
                // Its init is gone, so is the PID namespace: the group is
                // empty once the rest are reaped (else a later container of
                // the same id reuses it).
                cgroup::remove(group);
            }
            if self.reported_exits.len() >= KEPT_EXITS {
                self.reported_exits.pop_front();
            }
            self.reported_exits.push_back(ProcessState {
                container: p.container.clone(),
                process: p.id.clone(),
                stdio: p.stdio,
                stderr: p.out[1].stream,
                exit_status: Some(status),
                output_open: false,
                oom_killed: p.oom_killed,
            });
            self.channel.send_message(&GuestMessage::ProcessExit {
                container: p.container,
                process: p.id,
                status,
                oom_killed: p.oom_killed,
            });
        }
    }
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "hello",
        Request::Ping => "ping",
        Request::StartPod(_) => "start_pod",
        Request::NewContainer(_) => "new_container",
        Request::Exec { .. } => "exec",
        Request::Signal { .. } => "signal",
        Request::WindowSize { .. } => "window_size",
        Request::RemoveContainer { .. } => "remove_container",
        Request::DestroyPod => "destroy_pod",
        Request::Reattach { .. } => "reattach",
        Request::Resume(_) => "resume",
    }
}

fn set_hostname(name: &str) -> Result<()> {
    if name.len() > 64 || name.contains('\0') {
        return Err(err(AgentErrorKind::InvalidRequest, "invalid hostname"));
    }
    RealSys
        .sethostname(name)
        .map_err(|e| err(AgentErrorKind::Failed, e.to_string()))
}

/// Container ids become path components and overlay mount options, where
/// `/`, `,` and `:` would change the meaning.
pub fn validate_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            AgentErrorKind::InvalidRequest,
            format!("invalid container id {id:?}"),
        ))
    }
}

/// A mount path is absolute and plain: no `.`/`..` components, no empty
/// ones, not `/` itself.
pub fn validate_mount_path(path: &str) -> Result<()> {
    let plain = path.starts_with('/')
        && path.len() > 1
        && path.len() <= MAX_MOUNT_PATH
        && !path.contains('\0')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if plain {
        Ok(())
    } else {
        Err(err(
            AgentErrorKind::InvalidRequest,
            format!("invalid mount path {path:?}: use an absolute path without . or .. components"),
        ))
    }
}

/// A failed bind as the host should see it: paths inside the container,
/// and a symlink or a file on the way is the request's fault.
fn bind_error(root: &Path, e: SysError) -> AgentError {
    let (kind, hint) = match e.errno {
        Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => (
            AgentErrorKind::InvalidRequest,
            ": a mount path must be plain directories inside the container, never a symlink \
             (in the image or in a volume)",
        ),
        _ => (AgentErrorKind::Failed, ""),
    };
    let at = match Path::new(&e.target).strip_prefix(root) {
        Ok(inside) => format!("/{}", inside.display()),
        Err(_) => e.target.clone(),
    };
    err(
        kind,
        format!(
            "binding volumes into the container: {} {at}: {}{hint}",
            e.op,
            e.errno.desc()
        ),
    )
}

/// Checks the volumes of a StartPod against each other and the pod's
/// `existing` ones (name, source): every field, every error naming the
/// volume.
fn validate_volumes(existing: &[(&str, &VolumeSource)], volumes: &[VolumeSpec]) -> Result<()> {
    let mut seen: Vec<(&str, &VolumeSource)> = existing.to_vec();
    for v in volumes {
        validate_volume(v)?;
        for (other, source) in &seen {
            if *other == v.name {
                return Err(err(
                    AgentErrorKind::AlreadyExists,
                    format!("volume {} already exists", v.name),
                ));
            }
            let clash = match (source, &v.source) {
                (VolumeSource::Share { tag: a, .. }, VolumeSource::Share { tag: b, .. }) => {
                    (a == b).then(|| format!("share tag {a}"))
                }
                (
                    VolumeSource::Block { disk_id: a, .. },
                    VolumeSource::Block { disk_id: b, .. },
                ) => (a == b).then(|| format!("disk {a}")),
                _ => None,
            };
            if let Some(what) = clash {
                return Err(err(
                    AgentErrorKind::InvalidRequest,
                    format!(
                        "volumes {other} and {} both use {what}: one volume per share or disk",
                        v.name
                    ),
                ));
            }
        }
        seen.push((&v.name, &v.source));
    }
    Ok(())
}

/// Checks one volume from the host.
pub fn validate_volume(v: &VolumeSpec) -> Result<()> {
    if validate_container_id(&v.name).is_err() {
        return Err(err(
            AgentErrorKind::InvalidRequest,
            format!(
                "invalid volume name {:?}: use 1 to 128 of A-Z a-z 0-9 _ - . not starting with a dot",
                v.name
            ),
        ));
    }
    let bad = |what: String| {
        err(
            AgentErrorKind::InvalidRequest,
            format!("volume {}: {what}", v.name),
        )
    };
    match &v.source {
        VolumeSource::Tmpfs => Ok(()),
        _ if v.size_mib != 0 => Err(bad(format!(
            "size_mib {} is only for a tmpfs volume",
            v.size_mib
        ))),
        VolumeSource::Share { tag, .. } => {
            let ok = !tag.is_empty()
                && tag.len() <= MAX_SHARE_TAG
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
            if ok {
                Ok(())
            } else {
                Err(bad(format!(
                    "invalid share tag {tag:?}: use 1 to {MAX_SHARE_TAG} of A-Z a-z 0-9 _ -"
                )))
            }
        }
        VolumeSource::Block { disk_id, fstype } => {
            let ok = !disk_id.is_empty()
                && disk_id.len() <= MAX_DISK_ID
                && !disk_id.starts_with('.')
                && disk_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err(bad(format!(
                    "invalid disk id {disk_id:?}: use 1 to {MAX_DISK_ID} of A-Z a-z 0-9 _ - . \
                     not starting with a dot (a virtio-blk serial or a Xen disk id)"
                )));
            }
            if fstype != "ext4" {
                return Err(bad(format!(
                    "filesystem {fstype:?} is not supported for a block volume: only ext4"
                )));
            }
            Ok(())
        }
    }
}

/// What to mount for a validated volume; a block volume's disk is looked
/// up with `find_disk` (by serial or Xen alias, like a rootfs disk).
fn volume_mount(
    v: &VolumeSpec,
    find_disk: impl Fn(&str) -> Option<PathBuf>,
) -> Result<rootfs::VolumeMount> {
    Ok(match &v.source {
        VolumeSource::Tmpfs => rootfs::VolumeMount::Tmpfs {
            size_mib: v.size_mib,
        },
        VolumeSource::Share {
            tag,
            transport: ShareTransport::VirtioFs,
        } => rootfs::VolumeMount::VirtioFs { tag: tag.clone() },
        VolumeSource::Share {
            tag,
            transport: ShareTransport::Xen9p,
        } => rootfs::VolumeMount::Xen9p { tag: tag.clone() },
        VolumeSource::Block { disk_id, fstype } => rootfs::VolumeMount::Block {
            device: find_disk(disk_id).ok_or_else(|| {
                err(
                    AgentErrorKind::NotFound,
                    format!(
                        "volume {}: no disk with id {disk_id:?} (no block device has that \
                         serial or Xen alias)",
                        v.name
                    ),
                )
            })?,
            fstype: fstype.clone(),
        },
    })
}

fn describe(mount: &rootfs::VolumeMount) -> String {
    match mount {
        rootfs::VolumeMount::Tmpfs { .. } => "tmpfs".into(),
        rootfs::VolumeMount::VirtioFs { tag } => format!("virtio-fs share {tag}"),
        rootfs::VolumeMount::Xen9p { tag } => format!("9p share {tag} over Xen"),
        rootfs::VolumeMount::Block { device, fstype } => {
            format!("{fstype} disk {}", device.display())
        }
    }
}

/// What a failed volume mount most likely means.
fn mount_hint(mount: &rootfs::VolumeMount, errno: Errno) -> &'static str {
    match (mount, errno) {
        (
            rootfs::VolumeMount::VirtioFs { .. } | rootfs::VolumeMount::Xen9p { .. },
            Errno::EINVAL | Errno::ENOENT,
        ) => " (no share with that tag is attached to the VM?)",
        (rootfs::VolumeMount::Block { .. }, Errno::EINVAL | Errno::EUCLEAN) => {
            " (does the disk hold an ext4 filesystem? make one with mkfs.ext4)"
        }
        (rootfs::VolumeMount::Block { .. }, Errno::EROFS) => {
            " (the disk is read-only but its journal needs recovery: mount it read-write once)"
        }
        (_, Errno::ENODEV) => " (the guest kernel lacks this filesystem)",
        _ => "",
    }
}

fn wait_for_disk(disk_id: &str) -> Option<PathBuf> {
    let deadline = Instant::now() + DISK_WAIT;
    loop {
        if let Some(dev) = channel::find_disk(Path::new("/sys/block"), Path::new("/dev"), disk_id) {
            return Some(dev);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use hyper_protocol::{INITIAL_WINDOW, MAX_DATA_PAYLOAD};
    use nix::sys::signal::SigSet;
    use nix::sys::signalfd::SfdFlags;

    use super::*;

    /// An agent on one end of a socketpair; the test plays the host.
    fn agent() -> (Agent, UnixStream) {
        let (guest, host) = UnixStream::pair().unwrap();
        let signals = SignalFd::with_flags(&SigSet::empty(), SfdFlags::SFD_NONBLOCK).unwrap();
        let opts = Options {
            pid1: false,
            run_dir: std::env::temp_dir(),
        };
        host.set_nonblocking(true).unwrap();
        (
            Agent::new(Channel::from_fd(OwnedFd::from(guest)), signals, opts),
            host,
        )
    }

    fn host_send(agent: &mut Agent, host: &mut UnixStream, bytes: &[u8]) {
        host.write_all(bytes).unwrap();
        agent.channel_ready(libc::POLLIN);
    }

    fn request(agent: &mut Agent, host: &mut UnixStream, id: u64, request: Request) {
        let payload = serde_json::to_vec(&HostMessage { id, request }).unwrap();
        host_send(agent, host, &Frame::control(payload).encode());
    }

    /// Every frame the agent has written so far.
    fn frames(host: &mut UnixStream) -> Vec<Frame> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = host.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let mut next = decoder.push(&bytes);
        while let Ok(Some(frame)) = next {
            out.push(frame);
            next = decoder.next_frame();
        }
        out
    }

    fn messages(host: &mut UnixStream) -> Vec<GuestMessage> {
        frames(host)
            .into_iter()
            .filter(|f| f.kind == FrameKind::Control)
            .map(|f| serde_json::from_slice(&f.payload).unwrap())
            .collect()
    }

    fn response(host: &mut UnixStream) -> (u64, Result<Reply>) {
        match messages(host).pop() {
            Some(GuestMessage::Response { id, result }) => (id, result),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    fn spec(id: &str, stdio: u32) -> ProcessSpec {
        ProcessSpec {
            id: id.into(),
            args: vec!["sh".into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
            terminal: false,
            terminal_size: None,
            stdio,
            stderr: stdio + 1,
            confinement: hyper_protocol::Confinement::unconfined(),
            rlimits: Vec::new(),
        }
    }

    #[test]
    fn ready_advertises_versions_and_capabilities() {
        let (mut a, mut host) = agent();
        a.send_ready();
        match messages(&mut host).as_slice() {
            [GuestMessage::Ready {
                min_version,
                max_version,
                capabilities,
                agent,
            }] => {
                assert_eq!(
                    (*min_version, *max_version),
                    (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION)
                );
                assert!(capabilities.iter().any(|c| c == "flow-control"));
                assert!(capabilities.iter().any(|c| c == "network"));
                assert!(capabilities.iter().any(|c| c == "host-volumes"));
                assert!(agent.starts_with("hyperstart "));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_are_answered_with_their_id() {
        let (mut a, mut host) = agent();
        request(&mut a, &mut host, 7, Request::Ping);
        assert_eq!(response(&mut host), (7, Ok(Reply::Pong)));
        request(
            &mut a,
            &mut host,
            8,
            Request::Hello {
                version: PROTOCOL_VERSION,
                capabilities: vec![],
            },
        );
        assert_eq!(response(&mut host), (8, Ok(Reply::Ok)));
        request(
            &mut a,
            &mut host,
            9,
            Request::Hello {
                version: 99,
                capabilities: vec![],
            },
        );
        assert_eq!(
            response(&mut host).1.unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
    }

    #[test]
    fn bad_requests_are_refused_not_fatal() {
        let (mut a, mut host) = agent();
        let refused = |a: &mut Agent, host: &mut UnixStream, r: Request| {
            request(a, host, 1, r);
            response(host).1.unwrap_err().kind
        };
        let exec = Request::Exec {
            container: "nope".into(),
            process: spec("p", 2),
        };
        assert_eq!(refused(&mut a, &mut host, exec), AgentErrorKind::NotFound);
        let signal = Request::Signal {
            container: "c".into(),
            process: "p".into(),
            signal: 9,
        };
        assert_eq!(refused(&mut a, &mut host, signal), AgentErrorKind::NotFound);
        let winsize = Request::WindowSize {
            container: "c".into(),
            process: "p".into(),
            rows: 1,
            cols: 1,
        };
        assert_eq!(
            refused(&mut a, &mut host, winsize),
            AgentErrorKind::NotFound
        );
        let remove = Request::RemoveContainer {
            container: "c".into(),
        };
        assert_eq!(refused(&mut a, &mut host, remove), AgentErrorKind::NotFound);
        let container = |id: &str, process: ProcessSpec| {
            Request::NewContainer(ContainerSpec {
                id: id.into(),
                rootfs: hyper_protocol::RootfsSpec {
                    disk_id: "d".into(),
                    fstype: "erofs".into(),
                    share: None,
                },
                hostname: "h".into(),
                process,
                mounts: Vec::new(),
                resources: ResourceLimits::default(),
            })
        };
        let limited = |limits: ResourceLimits| match container("c", spec("p", 2)) {
            Request::NewContainer(c) => Request::NewContainer(ContainerSpec {
                resources: limits,
                ..c
            }),
            other => other,
        };
        for bad in [
            limited(ResourceLimits {
                memory_max: Some(1),
                ..Default::default()
            }),
            limited(ResourceLimits {
                pids_max: Some(0),
                ..Default::default()
            }),
            limited(ResourceLimits {
                cpu_weight: Some(10_001),
                ..Default::default()
            }),
            container("../x", spec("p", 2)),
            container(
                "c",
                ProcessSpec {
                    args: vec![],
                    ..spec("p", 2)
                },
            ),
            container(
                "c",
                ProcessSpec {
                    stderr: 2,
                    ..spec("p", 2)
                },
            ),
            container(
                "c",
                ProcessSpec {
                    stdio: 0,
                    ..spec("p", 2)
                },
            ),
        ] {
            assert_eq!(
                refused(&mut a, &mut host, bad),
                AgentErrorKind::InvalidRequest
            );
        }
        // Valid limits, but no cgroups to write them to (not PID 1): the
        // container is refused rather than run unlimited.
        let valid = limited(ResourceLimits {
            pids_max: Some(20),
            ..Default::default()
        });
        assert_eq!(refused(&mut a, &mut host, valid), AgentErrorKind::Failed);
    }

    #[test]
    fn undecodable_requests_get_an_error_when_they_have_an_id() {
        let (mut a, mut host) = agent();
        host_send(
            &mut a,
            &mut host,
            &Frame::control(br#"{"id":5,"request":"reboot"}"#.to_vec()).encode(),
        );
        let (id, result) = response(&mut host);
        assert_eq!(
            (id, result.unwrap_err().kind),
            (5, AgentErrorKind::InvalidRequest)
        );
        host_send(
            &mut a,
            &mut host,
            &Frame::control(b"{not json".to_vec()).encode(),
        );
        assert!(frames(&mut host).is_empty());
    }

    #[test]
    fn a_malformed_frame_drops_input_up_to_the_next_pad() {
        let (mut a, mut host) = agent();
        host_send(&mut a, &mut host, &[9, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(frames(&mut host).is_empty());
        // Unsynchronised input until a pad: a new session starts behind one.
        request(&mut a, &mut host, 2, Request::Ping);
        assert!(frames(&mut host).is_empty());
        host_send(&mut a, &mut host, &[hyper_protocol::PAD_BYTE; 16]);
        request(&mut a, &mut host, 3, Request::Ping);
        assert_eq!(response(&mut host), (3, Ok(Reply::Pong)));
        // Stray stdio frames for streams nobody owns are ignored.
        host_send(&mut a, &mut host, &Frame::credit(77, 5).encode());
        host_send(&mut a, &mut host, &Frame::eof(77).encode());
        host_send(&mut a, &mut host, &Frame::data(77, b"x".to_vec()).encode());
        request(&mut a, &mut host, 4, Request::Ping);
        assert_eq!(response(&mut host), (4, Ok(Reply::Pong)));
    }

    #[test]
    fn a_new_host_session_resynchronises_and_gets_the_state() {
        let (mut a, mut host) = agent();
        // The old session died halfway through a frame.
        let old = Frame::control(br#"{"id":1,"request":"ping"}"#.to_vec()).encode();
        host_send(&mut a, &mut host, &old[..12]);
        let mut bytes = vec![hyper_protocol::PAD_BYTE; hyper_protocol::RESYNC_PAD_LEN];
        let payload = serde_json::to_vec(&HostMessage {
            id: 5,
            request: Request::Reattach {
                nonce: "c0ffee".into(),
            },
        })
        .unwrap();
        bytes.extend(Frame::control(payload).encode());
        host.write_all(&bytes).unwrap();
        // Read everything sent (the channel fd blocks, so only while readable).
        loop {
            let mut pfd = libc::pollfd {
                fd: a.channel.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                break;
            }
            a.channel_ready(libc::POLLIN);
        }
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = host.read(&mut buf) {
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let mut marker = RESYNC_MAGIC.to_vec();
        marker.extend_from_slice(b"c0ffee");
        let at = raw
            .windows(marker.len())
            .position(|w| w == marker.as_slice())
            .expect("the resync marker");
        let mut decoder = FrameDecoder::new();
        let frame = decoder.push(&raw[at + marker.len()..]).unwrap().unwrap();
        let msg: GuestMessage = serde_json::from_slice(&frame.payload).unwrap();
        assert_eq!(
            msg,
            GuestMessage::Response {
                id: 5,
                result: Ok(Reply::Reattached { processes: vec![] })
            }
        );
        request(
            &mut a,
            &mut host,
            6,
            Request::Reattach {
                nonce: "not hex".into(),
            },
        );
        assert!(
            matches!(response(&mut host), (6, Err(e)) if e.kind == AgentErrorKind::InvalidRequest)
        );
    }

    #[test]
    fn host_hangup_backs_off_instead_of_exiting() {
        let (mut a, _host) = agent();
        a.channel_ready(libc::POLLHUP);
        assert!(a.host_retry_at.is_some());
        assert!(!a.host_connected);
    }

    /// A process made of plain pipes, to drive the stdio plumbing.
    struct FakeProcess {
        key: u64,
        stdin: OwnedFd,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    }

    fn fake_process(a: &mut Agent, id: &str, stdio: u32) -> FakeProcess {
        let (stdin_r, stdin_w) = nix::unistd::pipe().unwrap();
        let (stdout_r, stdout_w) = nix::unistd::pipe().unwrap();
        let (stderr_r, stderr_w) = nix::unistd::pipe().unwrap();
        for fd in [&stdin_w, &stdout_r, &stderr_r] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .unwrap();
        }
        let spawned = Spawned {
            pid: -1,
            intermediate: -1,
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
            tty: None,
        };
        let key = a.add_process("c", &spec(id, stdio), spawned);
        FakeProcess {
            key,
            stdin: stdin_r,
            stdout: Some(stdout_w),
            stderr: Some(stderr_w),
        }
    }

    #[test]
    fn a_terminal_is_resized_and_its_hangup_is_an_eof() {
        let (mut a, mut host) = agent();
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = pty.master;
        nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let (stderr_r, stderr_w) = nix::unistd::pipe().unwrap();
        drop(stderr_w);
        let spawned = Spawned {
            pid: -1,
            intermediate: -1,
            stdin: master.try_clone().unwrap(),
            stdout: master.try_clone().unwrap(),
            stderr: stderr_r,
            tty: Some(master),
        };
        let key = a.add_process("c", &spec("t", 2), spawned);
        let size = |fd: &OwnedFd| {
            let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
            // SAFETY: TIOCGWINSZ writes one winsize to the valid pointer.
            assert_eq!(
                unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) },
                0
            );
            (ws.ws_row, ws.ws_col)
        };
        let resize = |rows, cols| Request::WindowSize {
            container: "c".into(),
            process: "t".into(),
            rows,
            cols,
        };
        request(&mut a, &mut host, 1, resize(33, 101));
        assert_eq!(response(&mut host), (1, Ok(Reply::Ok)));
        assert_eq!(size(&pty.slave), (33, 101));
        request(&mut a, &mut host, 2, resize(0, 80));
        assert_eq!(
            response(&mut host).1.unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        assert_eq!(size(&pty.slave), (33, 101));

        // Output written to the slave comes out of the master, then the
        // slave's close reads as EIO: an ordinary end of stream.
        nix::unistd::write(&pty.slave, b"hi").unwrap();
        drop(pty.slave);
        host_send(&mut a, &mut host, &Frame::credit(2, 1024).encode());
        a.forward_output(key, 0);
        a.forward_output(key, 0);
        let frames = frames(&mut host);
        assert!(frames
            .iter()
            .any(|f| f.kind == FrameKind::Data && f.payload == b"hi"));
        assert!(frames
            .iter()
            .any(|f| f.kind == FrameKind::Eof && f.stream == 2));
        assert!(a.processes[&key].out[0].fd.is_none());

        // A process without a terminal cannot be resized.
        let _plain = fake_process(&mut a, "plain", 10);
        request(
            &mut a,
            &mut host,
            3,
            Request::WindowSize {
                container: "c".into(),
                process: "plain".into(),
                rows: 10,
                cols: 10,
            },
        );
        assert_eq!(
            response(&mut host).1.unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
    }

    #[test]
    fn output_is_sent_within_credit_and_precedes_the_exit() {
        let (mut a, mut host) = agent();
        let mut p = fake_process(&mut a, "p", 10);
        let stdout = p.stdout.take().unwrap();
        nix::fcntl::fcntl(
            &stdout,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let big = vec![b'o'; 30_000];
        let mut written = 0;
        let mut got = Vec::new();
        // More than the initial window: the rest waits in the pipe (64 KiB)
        // for credit.
        for _ in 0..1000 {
            if written >= INITIAL_WINDOW as usize + 30_000 {
                break;
            }
            let n = nix::unistd::write(&stdout, &big).unwrap_or(0);
            written += n;
            a.forward_output(p.key, 0);
            got.extend(frames(&mut host));
        }
        assert!(written >= INITIAL_WINDOW as usize + 30_000);
        drop(stdout);
        drop(p.stderr.take());
        a.processes.get_mut(&p.key).unwrap().status = Some(3);
        for _ in 0..100 {
            a.forward_output(p.key, 0);
            a.forward_output(p.key, 1);
            a.send_exits();
        }
        got.extend(frames(&mut host));
        let sent: usize = got
            .iter()
            .filter(|f| f.kind == FrameKind::Data)
            .map(|f| f.payload.len())
            .sum();
        assert_eq!(
            sent, INITIAL_WINDOW as usize,
            "no more than the window without credit"
        );
        assert!(got
            .iter()
            .all(|f| f.kind == FrameKind::Data || f == &Frame::eof(11)));

        host_send(&mut a, &mut host, &Frame::credit(10, u32::MAX).encode());
        let mut frames_after = Vec::new();
        for _ in 0..100 {
            a.forward_output(p.key, 0);
            a.send_exits();
            frames_after.extend(frames(&mut host));
        }
        let frames = frames_after;
        assert!(frames.iter().all(|f| f.payload.len() <= MAX_DATA_PAYLOAD));
        let data: usize = frames
            .iter()
            .filter(|f| f.kind == FrameKind::Data)
            .map(|f| f.payload.len())
            .sum();
        assert_eq!(sent + data, written);
        let kinds: Vec<_> = frames.iter().map(|f| (f.kind, f.stream)).collect();
        let exit = kinds
            .iter()
            .position(|k| k.0 == FrameKind::Control)
            .unwrap();
        assert_eq!(exit, kinds.len() - 1, "the exit comes last");
        assert!(kinds.contains(&(FrameKind::Eof, 10)));
        let msg: GuestMessage = serde_json::from_slice(&frames[exit].payload).unwrap();
        assert_eq!(
            msg,
            GuestMessage::ProcessExit {
                container: "c".into(),
                process: "p".into(),
                status: 3,
                oom_killed: false,
            }
        );
        assert!(
            a.processes.is_empty() && a.stdio_streams.is_empty() && a.stderr_streams.is_empty()
        );
    }

    #[test]
    fn stdin_is_written_and_credited_then_closed_on_eof() {
        let (mut a, mut host) = agent();
        let p = fake_process(&mut a, "p", 20);
        host_send(
            &mut a,
            &mut host,
            &Frame::data(20, b"hello ".to_vec()).encode(),
        );
        host_send(
            &mut a,
            &mut host,
            &Frame::data(20, b"world".to_vec()).encode(),
        );
        host_send(&mut a, &mut host, &Frame::eof(20).encode());
        a.write_stdin(p.key);
        assert_eq!(frames(&mut host), vec![Frame::credit(20, 11)]);
        let mut got = String::new();
        std::fs::File::from(p.stdin)
            .read_to_string(&mut got)
            .unwrap();
        assert_eq!(got, "hello world", "and EOF after it");
        // Late data is credited straight back.
        host_send(
            &mut a,
            &mut host,
            &Frame::data(20, b"late".to_vec()).encode(),
        );
        assert_eq!(frames(&mut host), vec![Frame::credit(20, 4)]);
    }

    #[test]
    fn stream_ids_and_process_ids_must_be_unique() {
        let (mut a, _host) = agent();
        fake_process(&mut a, "p", 30);
        assert_eq!(
            a.validate_process("c", &spec("q", 30)).unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        assert_eq!(
            a.validate_process("c", &spec("q", 29)).unwrap_err().kind,
            AgentErrorKind::InvalidRequest
        );
        assert_eq!(
            a.validate_process("c", &spec("p", 40)).unwrap_err().kind,
            AgentErrorKind::AlreadyExists
        );
        assert!(a.validate_process("other", &spec("p", 40)).is_ok());
    }

    #[test]
    fn container_ids_are_safe_path_components() {
        for id in ["c1", "0a1b2c3d4e5f", "web_1.v2-x"] {
            assert!(validate_container_id(id).is_ok(), "{id}");
        }
        for id in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a,b",
            "a:b",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(validate_container_id(id).is_err(), "{id}");
        }
    }

    #[test]
    fn a_bad_network_is_refused_before_anything_is_configured() {
        use hyper_protocol::{InterfaceSpec, NetworkSpec, VolumeSpec};
        let (mut a, mut host) = agent();
        let nic = InterfaceSpec {
            mac: "02:42:0a:58:00:05".into(),
            name: "eth0".into(),
            mtu: 1500,
            addresses: vec!["10.88.0.5/16".into()],
        };
        let mut bad_mac = nic.clone();
        bad_mac.mac = "zz:42:0a:58:00:05".into();
        let mut bad_mtu = nic.clone();
        bad_mtu.mtu = 10;
        for (hostname, nic, want) in [
            ("web", bad_mac, "invalid MAC"),
            ("web", bad_mtu, "MTU 10"),
            // Checked too when a network is given: it goes into /etc/hosts.
            ("we b", nic, "invalid hostname"),
        ] {
            let pod = Request::StartPod(PodSpec {
                hostname: hostname.into(),
                volumes: vec![VolumeSpec {
                    name: "v".into(),
                    size_mib: 0,
                    source: Default::default(),
                    readonly: false,
                }],
                network: Some(NetworkSpec {
                    interfaces: vec![nic],
                    ..NetworkSpec::default()
                }),
            });
            request(&mut a, &mut host, 1, pod);
            let e = response(&mut host).1.unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
        }
        // Nothing was created: no volume, no pod files.
        assert!(a.volumes.is_empty());
        assert!(a.pod_files.is_none());

        // Once configured, a second network is refused.
        a.pod_files = Some("/nonexistent/.pod".into());
        let again = Request::StartPod(PodSpec {
            network: Some(NetworkSpec::default()),
            ..PodSpec::default()
        });
        request(&mut a, &mut host, 2, again);
        assert_eq!(
            response(&mut host).1.unwrap_err().kind,
            AgentErrorKind::AlreadyExists
        );
    }

    #[test]
    fn bad_volumes_and_mounts_are_refused_before_anything_is_mounted() {
        use hyper_protocol::VolumeSpec;
        let (mut a, mut host) = agent();
        let volume = |name: &str| VolumeSpec {
            name: name.into(),
            size_mib: 0,
            source: Default::default(),
            readonly: false,
        };
        for (volumes, kind) in [
            (vec![volume("../x")], AgentErrorKind::InvalidRequest),
            (vec![volume(".v")], AgentErrorKind::InvalidRequest),
            (
                vec![volume("v"), volume("v")],
                AgentErrorKind::AlreadyExists,
            ),
            (
                (0..=MAX_VOLUMES)
                    .map(|i| volume(&format!("v{i}")))
                    .collect(),
                AgentErrorKind::InvalidRequest,
            ),
        ] {
            let pod = Request::StartPod(PodSpec {
                hostname: String::new(),
                volumes,
                network: None,
            });
            request(&mut a, &mut host, 1, pod);
            assert_eq!(response(&mut host).1.unwrap_err().kind, kind);
        }
        assert!(a.volumes.is_empty());

        a.volumes.insert(
            "data".into(),
            PodVolume {
                dir: "/nonexistent/v/data".into(),
                readonly: false,
                source: VolumeSource::Tmpfs,
            },
        );
        let mount = |volume: &str, path: &str| MountSpec {
            volume: volume.into(),
            path: path.into(),
            readonly: false,
        };
        for (mounts, kind) in [
            (vec![mount("nope", "/data")], AgentErrorKind::NotFound),
            (vec![mount("data", "data")], AgentErrorKind::InvalidRequest),
            (
                vec![mount("data", "/a/../b")],
                AgentErrorKind::InvalidRequest,
            ),
            (
                vec![mount("data", "/d"), mount("data", "/d")],
                AgentErrorKind::InvalidRequest,
            ),
        ] {
            let c = Request::NewContainer(ContainerSpec {
                id: "c".into(),
                rootfs: hyper_protocol::RootfsSpec {
                    disk_id: "no-such-disk".into(),
                    fstype: "erofs".into(),
                    share: None,
                },
                hostname: "h".into(),
                process: spec("p", 2),
                mounts,
                resources: ResourceLimits::default(),
            });
            let started = Instant::now();
            request(&mut a, &mut host, 2, c);
            assert_eq!(response(&mut host).1.unwrap_err().kind, kind);
            // Refused up front, not after waiting for the disk.
            assert!(started.elapsed() < DISK_WAIT);
        }
    }

    #[test]
    fn mount_paths_are_absolute_and_plain() {
        for ok in ["/data", "/var/lib/x", "/a.b/c..d"] {
            assert!(validate_mount_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "data", "/a/../b", "/a/./b", "/a//b", "/a/", "/a\0b",
        ] {
            assert!(validate_mount_path(bad).is_err(), "{bad:?}");
        }
    }

    fn share(name: &str, tag: &str) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            size_mib: 0,
            source: VolumeSource::Share {
                tag: tag.into(),
                transport: ShareTransport::VirtioFs,
            },
            readonly: false,
        }
    }

    fn block(name: &str, disk_id: &str, fstype: &str) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            size_mib: 0,
            source: VolumeSource::Block {
                disk_id: disk_id.into(),
                fstype: fstype.into(),
            },
            readonly: false,
        }
    }

    #[test]
    fn every_volume_field_from_the_host_is_checked_and_errors_name_the_volume() {
        for ok in [
            share("data", "hyper-vol0"),
            share("d", &"a".repeat(MAX_SHARE_TAG)),
            share("d", "A_b-9"),
            block("disk", "hyper-vol1", "ext4"),
            block("disk", &"x".repeat(MAX_DISK_ID), "ext4"),
        ] {
            assert!(validate_volume(&ok).is_ok(), "{ok:?}");
        }
        let mut sized = share("sized", "t");
        sized.size_mib = 4;
        for (bad, want) in [
            (share("web", ""), "volume web: invalid share tag"),
            (
                share("web", &"a".repeat(MAX_SHARE_TAG + 1)),
                "invalid share tag",
            ),
            (share("web", "a,b"), "invalid share tag"),
            (share("web", "a b"), "invalid share tag"),
            (share("web", "../x"), "invalid share tag"),
            (share("web", "t\0"), "invalid share tag"),
            (share("web", "tâg"), "invalid share tag"),
            (share("../x", "t"), "invalid volume name"),
            (share(".hidden", "t"), "invalid volume name"),
            (block("db", "", "ext4"), "volume db: invalid disk id"),
            (block("db", "/dev/vda", "ext4"), "invalid disk id"),
            (block("db", ".", "ext4"), "invalid disk id"),
            (block("db", "a=b", "ext4"), "invalid disk id"),
            (
                block("db", &"x".repeat(MAX_DISK_ID + 1), "ext4"),
                "invalid disk id",
            ),
            (
                block("db", "d", "xfs"),
                "volume db: filesystem \"xfs\" is not supported",
            ),
            (block("db", "d", "ext4,errors=panic"), "only ext4"),
            (block("db", "d", ""), "only ext4"),
            (sized, "volume sized: size_mib 4 is only for a tmpfs"),
        ] {
            let e = validate_volume(&bad).unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidRequest, "{bad:?}");
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
        }
    }

    #[test]
    fn two_volumes_on_one_share_or_disk_are_refused() {
        let e = validate_volumes(&[], &[share("a", "t"), share("b", "t")]).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        assert!(
            e.message.contains("volumes a and b both use share tag t"),
            "{}",
            e.message
        );
        let e =
            validate_volumes(&[], &[block("a", "d", "ext4"), block("b", "d", "ext4")]).unwrap_err();
        assert!(e.message.contains("both use disk d"), "{}", e.message);
        // Against the pod's volumes too.
        let existing = VolumeSource::Share {
            tag: "t".into(),
            transport: ShareTransport::Xen9p,
        };
        assert!(validate_volumes(&[("old", &existing)], &[share("new", "t")]).is_err());
        let e = validate_volumes(&[("old", &existing)], &[share("old", "u")]).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::AlreadyExists);
        // A tag and a disk id may be spelt the same.
        assert!(validate_volumes(&[], &[share("a", "x"), block("b", "x", "ext4")]).is_ok());
    }

    #[test]
    fn each_source_maps_to_its_mount_and_a_missing_disk_names_the_volume() {
        let found = |id: &str| (id == "hyper-vol1").then(|| PathBuf::from("/dev/vdc"));
        assert_eq!(
            volume_mount(&share("a", "t"), found).unwrap(),
            rootfs::VolumeMount::VirtioFs { tag: "t".into() }
        );
        let mut xen = share("a", "t");
        xen.source = VolumeSource::Share {
            tag: "t".into(),
            transport: ShareTransport::Xen9p,
        };
        assert_eq!(
            volume_mount(&xen, found).unwrap(),
            rootfs::VolumeMount::Xen9p { tag: "t".into() }
        );
        assert_eq!(
            volume_mount(&block("b", "hyper-vol1", "ext4"), found).unwrap(),
            rootfs::VolumeMount::Block {
                device: "/dev/vdc".into(),
                fstype: "ext4".into()
            }
        );
        let e = volume_mount(&block("db", "hyper-vol9", "ext4"), found).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::NotFound);
        assert!(
            e.message
                .starts_with("volume db: no disk with id \"hyper-vol9\""),
            "{}",
            e.message
        );
        // The hints say what a mount error most likely means.
        let tag = rootfs::VolumeMount::VirtioFs { tag: "t".into() };
        assert!(mount_hint(&tag, Errno::EINVAL).contains("no share with that tag"));
        assert!(describe(&tag).contains("virtio-fs share t"));
        let disk = rootfs::VolumeMount::Block {
            device: "/dev/vdc".into(),
            fstype: "ext4".into(),
        };
        assert!(mount_hint(&disk, Errno::EINVAL).contains("mkfs.ext4"));
        assert!(mount_hint(&disk, Errno::EROFS).contains("journal needs recovery"));
        assert_eq!(mount_hint(&disk, Errno::EIO), "");
    }

    #[test]
    fn bad_host_volumes_are_refused_before_anything_is_mounted() {
        let (mut a, mut host) = agent();
        let mut ro_sized = block("db", "d", "ext4");
        ro_sized.size_mib = 1;
        for (volumes, want) in [
            (vec![share("web", "a/b")], "volume web: invalid share tag"),
            (vec![block("db", "d", "btrfs")], "volume db: filesystem"),
            (vec![ro_sized], "size_mib"),
            (
                vec![share("a", "t"), block("b", "d", "ext4"), share("c", "t")],
                "volumes a and c both use share tag t",
            ),
        ] {
            let pod = Request::StartPod(PodSpec {
                hostname: String::new(),
                volumes,
                network: None,
            });
            let started = Instant::now();
            request(&mut a, &mut host, 1, pod);
            let e = response(&mut host).1.unwrap_err();
            assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
            // Refused up front, not after looking for a disk.
            assert!(started.elapsed() < DISK_WAIT);
        }
        assert!(a.volumes.is_empty());
    }

    #[test]
    fn a_read_only_volume_is_bound_read_only_whatever_the_mount_says() {
        let (mut a, _host) = agent();
        for (name, readonly) in [("ro", true), ("rw", false)] {
            a.volumes.insert(
                name.into(),
                PodVolume {
                    dir: format!("/v/{name}").into(),
                    readonly,
                    source: VolumeSource::Tmpfs,
                },
            );
        }
        let mount = |volume: &str, path: &str, readonly: bool| MountSpec {
            volume: volume.into(),
            path: path.into(),
            readonly,
        };
        let binds = a
            .volume_binds(&[
                mount("ro", "/a", false),
                mount("rw", "/b", false),
                mount("rw", "/c", true),
            ])
            .unwrap();
        let ro: Vec<_> = binds
            .iter()
            .map(|b| (b.path.as_str(), b.readonly))
            .collect();
        assert_eq!(ro, [("/a", true), ("/b", false), ("/c", true)]);
        assert_eq!(binds[0].source, Path::new("/v/ro"));
    }

    #[test]
    fn a_container_cannot_boot_from_a_volume_disk() {
        let (mut a, mut host) = agent();
        a.volumes.insert(
            "db".into(),
            PodVolume {
                dir: "/nonexistent/v/db".into(),
                readonly: false,
                source: VolumeSource::Block {
                    disk_id: "hyper-vol0".into(),
                    fstype: "ext4".into(),
                },
            },
        );
        let c = Request::NewContainer(ContainerSpec {
            id: "c".into(),
            rootfs: hyper_protocol::RootfsSpec {
                disk_id: "hyper-vol0".into(),
                fstype: "ext4".into(),
                share: None,
            },
            hostname: "h".into(),
            process: spec("p", 2),
            mounts: vec![],
            resources: ResourceLimits::default(),
        });
        request(&mut a, &mut host, 2, c);
        let e = response(&mut host).1.unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        assert!(
            e.message.contains("is the disk of volume db"),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_refused_bind_names_the_path_inside_the_container() {
        let root = Path::new("/run/hyper/c/c1/root");
        let e = bind_error(
            root,
            SysError::new(
                "open without following symlinks",
                "/run/hyper/c/c1/root/data/link",
                Errno::ELOOP,
            ),
        );
        assert_eq!(e.kind, AgentErrorKind::InvalidRequest);
        assert!(
            e.message.starts_with(
                "binding volumes into the container: open without following symlinks /data/link: "
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("never a symlink"), "{}", e.message);
        let e = bind_error(
            root,
            SysError::new("mount", "/proc/self/fd/7", Errno::ENOMEM),
        );
        assert_eq!(e.kind, AgentErrorKind::Failed);
        assert!(e.message.contains("mount /proc/self/fd/7"), "{}", e.message);
    }
}
