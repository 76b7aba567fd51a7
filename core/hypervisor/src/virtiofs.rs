//! The backend kit's virtio-fs launcher: one sandboxed `virtiofsd` per
//! [`ShareSpec`], for every backend whose [`Capabilities::share_transport`]
//! is [`ShareTransport::VirtioFs`] (QEMU, hyper-vmm).
//!
//! What a backend does with it:
//! 1. [`find_binary`] (its configured path, else the usual places) and
//!    [`validate`] the shares before anything is started;
//! 2. [`Virtiofsds::start`] before the VMM, which then connects to each
//!    [`Virtiofsd::socket`] as a vhost-user frontend; on a failed VMM start,
//!    [`Virtiofsds::stop`];
//! 3. [`supervise`] the VMM together with the daemons: if a daemon ends while
//!    the VM runs, the VMM is killed and [`Supervised::wait`] reports
//!    [`VmHelper::Virtiofsd`] in [`VmExit::helper_died`]; when the VM ends,
//!    every daemon is stopped and reaped and its socket removed;
//! 4. in `recover`, [`Virtiofsds::recover`] adopts the daemons an earlier
//!    host started, from the record this module keeps in the run directory.
//!
//! Each daemon runs as `virtiofsd --sandbox namespace`: it enters new mount,
//! pid and network namespaces and `pivot_root`s into the shared directory,
//! so nothing outside it is reachable by path, and it drops every capability
//! but the few file operations need (see docs/security/volqemu.md). Per
//! share, the run directory holds:
//! * `vfs-<tag>.sock`: the vhost-user socket (and virtiofsd's own lock file
//!   `vfs-<tag>.sock.pid`), removed when the daemon has been stopped;
//! * `vfs-<tag>.log`: the daemon's stderr, cut back to [`LOG_LIMIT`] bytes
//!   while the VM runs (the guest can make virtiofsd log);
//! * `virtiofsd.json` (one for all shares): pid and start time of every
//!   daemon, for a later host's takeover; removed with the sockets.
//!
//! Process shape: virtiofsd forks; the process we start waits for a child
//! that is the server (pid 1 of its own pid namespace, killed by the kernel
//! when the process we started dies). We start it in its own process group,
//! so stopping it kills the whole group, and we wait until that group is
//! empty: when [`Virtiofsds::stop`] returns, no virtiofsd of the VM is left.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use crate::adopt::{process_start_time, AdoptedProcess};
use crate::process::{is_running, VmProcess};
use crate::{HypervisorError, ShareSpec, VmExit, VmHelper, VmSpec};

/// Where virtiofsd is looked for when the backend has no configured path,
/// before `PATH`: the crate's install root (`cargo install --root
/// /usr/local`), then where distributions put it (Fedora, Debian's old C
/// one).
pub const DEFAULT_LOCATIONS: &[&str] = &[
    "/usr/local/bin/virtiofsd",
    "/usr/libexec/virtiofsd",
    "/usr/lib/qemu/virtiofsd",
];
/// How to install it on Debian (it is not packaged there).
pub const INSTALL_HINT: &str =
    "apt-get install libseccomp-dev libcap-ng-dev && cargo install virtiofsd --locked --root /usr/local";
/// The most shares one VM may have (each is a device slot in the guest).
pub const MAX_SHARES: usize = 8;
/// From spawn to a listening socket; virtiofsd binds it before it builds
/// its sandbox, so this is process start-up only.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of a daemon's stderr kept per share.
pub const LOG_LIMIT: u64 = 1 << 20;
pub const LOG_LIMIT_MARKER: &[u8] =
    b"\n[hyper: virtiofsd log limit reached, later output dropped]\n";
/// How often the supervisor cuts the logs back.
const LOG_CHECK_EVERY: Duration = Duration::from_secs(1);
/// SIGKILL cannot be ignored; this only bounds a stuck reap.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);
/// `sun_path` is 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;
const STATE_FILE: &str = "virtiofsd.json";
/// The record is a few lines per share; anything longer is not ours.
const MAX_STATE_FILE: u64 = 64 * 1024;
/// /proc/net/unix lists every unix socket of the namespace; bounded.
const MAX_NET_UNIX: u64 = 32 << 20;
const LOG_TAIL_BYTES: usize = 2048;
/// How long the VMM gets to end after a daemon died before the supervisor
/// gives up on it (SIGKILL; only a stuck reap is bounded by this).
const VMM_KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtiofsError {
    #[error("virtiofsd is not installed (looked at {looked} and in PATH); install it with `{INSTALL_HINT}`, or set the backend's `virtiofsd` key to its path")]
    NotFound { looked: String },
    #[error("virtiofsd {path}: {reason}; fix the backend's `virtiofsd` key, or install it with `{INSTALL_HINT}`")]
    BadBinary { path: PathBuf, reason: String },
    #[error("share {tag:?}: {reason}")]
    InvalidShare { tag: String, reason: String },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("virtiofsd for share {tag:?} failed to start: {reason}")]
    Start { tag: String, reason: String },
}

impl From<VirtiofsError> for HypervisorError {
    fn from(e: VirtiofsError) -> Self {
        match e {
            VirtiofsError::InvalidShare { .. } | VirtiofsError::InvalidSpec(_) => {
                HypervisorError::InvalidSpec(e.to_string())
            }
            _ => HypervisorError::LaunchFailed(e.to_string()),
        }
    }
}

fn executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err("not an executable file".into());
    }
    Ok(())
}

/// The virtiofsd to run: `configured` if set (it must be an executable
/// file), else the first of [`DEFAULT_LOCATIONS`], else the first in
/// `PATH`.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, VirtiofsError> {
    if let Some(path) = configured {
        return executable(path)
            .map(|()| path.to_path_buf())
            .map_err(|reason| VirtiofsError::BadBinary {
                path: path.to_path_buf(),
                reason,
            });
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let in_path = std::env::split_paths(&path_var).map(|dir| dir.join("virtiofsd"));
    DEFAULT_LOCATIONS
        .iter()
        .map(PathBuf::from)
        .chain(in_path)
        .find(|p| p.is_absolute() && executable(p).is_ok())
        .ok_or_else(|| VirtiofsError::NotFound {
            looked: DEFAULT_LOCATIONS.join(", "),
        })
}

/// The vhost-user socket of share `tag`.
pub fn socket_path(run_dir: &Path, tag: &str) -> PathBuf {
    run_dir.join(format!("vfs-{tag}.sock"))
}

/// virtiofsd's own lock file next to the socket (it holds its pid).
fn lock_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

/// The stderr log of share `tag`'s daemon.
pub fn log_path(run_dir: &Path, tag: &str) -> PathBuf {
    run_dir.join(format!("vfs-{tag}.log"))
}

/// Checks the shares of a VM that will run in `run_dir`: at most
/// [`MAX_SHARES`]; each tag 1..=[`ShareSpec::MAX_TAG`] bytes of
/// `[A-Za-z0-9_-]` and unique; each source an absolute path of an existing
/// directory; each socket path within the unix socket limit.
pub fn validate(run_dir: &Path, shares: &[ShareSpec]) -> Result<(), VirtiofsError> {
    if shares.len() > MAX_SHARES {
        return Err(VirtiofsError::InvalidSpec(format!(
            "{} shares: at most {MAX_SHARES} are supported",
            shares.len()
        )));
    }
    let mut tags = std::collections::HashSet::new();
    for share in shares {
        let bad = |reason: String| VirtiofsError::InvalidShare {
            tag: share.tag.clone(),
            reason,
        };
        let tag = &share.tag;
        if tag.is_empty()
            || tag.len() > ShareSpec::MAX_TAG
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(format!(
                "the tag must be 1 to {} bytes of [A-Za-z0-9_-]",
                ShareSpec::MAX_TAG
            )));
        }
        if !tags.insert(tag.as_str()) {
            return Err(bad(
                "the tag is used twice: the guest could not tell the shares apart".into(),
            ));
        }
        let source = &share.source;
        if !source.is_absolute() {
            return Err(bad(format!(
                "source {} is not an absolute path",
                source.display()
            )));
        }
        match std::fs::metadata(source) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(bad(format!(
                    "source {} is not a directory",
                    source.display()
                )))
            }
            Err(e) => return Err(bad(format!("source {}: {e}", source.display()))),
        }
        let socket = socket_path(run_dir, tag);
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(bad(format!(
                "socket path {} is {len} bytes, over the unix socket limit of {MAX_SOCKET_PATH}: use a shorter state directory or tag",
                socket.display()
            )));
        }
    }
    Ok(())
}

/// The arguments (without the binary) of the daemon serving `share` on
/// `socket`. The choices:
/// * `--sandbox namespace`: mount, pid and net namespaces and a
///   `pivot_root` into the shared directory (virtiofsd's default, spelt out
///   because the confinement rests on it); `--seccomp kill` likewise;
/// * `--cache auto`: close-to-open consistency (data revalidated on open,
///   metadata cached for a second), so host writes and other pods sharing
///   a named volume are seen on the next open; `never` would cost every
///   lookup a round trip, `always` would hide host writes;
/// * `--modcaps=-mknod`: the guest cannot create device nodes in a host
///   directory (FIFOs and sockets need no capability and still work);
/// * extended attributes stay off (the default): the guest cannot set
///   `security.*` or `trusted.*` attributes (file capabilities) on host
///   files; announce-submounts and inode file handles keep their defaults;
/// * `--readonly` for a read-only share: virtiofsd refuses every write
///   request itself, whatever the guest mounts.
pub fn daemon_args(share: &ShareSpec, socket: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--socket-path".into(),
        socket.as_os_str().to_owned(),
        "--shared-dir".into(),
        share.source.as_os_str().to_owned(),
        "--sandbox".into(),
        "namespace".into(),
        "--seccomp".into(),
        "kill".into(),
        "--cache".into(),
        "auto".into(),
        "--modcaps=-mknod".into(),
        "--log-level".into(),
        "info".into(),
    ];
    if share.read_only {
        args.push("--readonly".into());
    }
    args
}

/// Whether a unix socket is listening at `path`, from /proc/net/unix
/// (flags `00010000` is `__SO_ACCEPTCON`): a socket file can exist a moment
/// before `listen(2)`, and connecting to find out would take the daemon's
/// only connection.
fn is_listening(path: &Path) -> bool {
    let Ok(file) = File::open("/proc/net/unix") else {
        return false;
    };
    let mut text = Vec::new();
    if file.take(MAX_NET_UNIX).read_to_end(&mut text).is_err() {
        return false;
    }
    listening_in(&text, path.as_os_str().as_bytes())
}

fn listening_in(net_unix: &[u8], path: &[u8]) -> bool {
    let mut suffix = b" ".to_vec();
    suffix.extend_from_slice(path);
    net_unix.split(|&b| b == b'\n').skip(1).any(|line| {
        // Num RefCount Protocol Flags Type St Inode Path; the path is the
        // rest of the line (it may hold spaces).
        let flags = line.split(|&b| b == b' ').filter(|f| !f.is_empty()).nth(3);
        flags == Some(b"00010000".as_slice()) && line.ends_with(&suffix)
    })
}

/// The last bytes of a daemon's log, for an error message.
fn log_tail(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(LOG_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Cuts a daemon's log back to `limit` bytes plus a marker when it wrote
/// more (it writes `O_APPEND`, so its next write lands at the new end).
fn cap_log(path: &Path, limit: u64) -> io::Result<bool> {
    crate::logcap::cut_back(path, limit, LOG_LIMIT_MARKER)
}

fn remove_quietly(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
    }
}

/// Whether any process is left in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    if pgid < 2 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence; the negative
    // pid names a process group; no memory is passed.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// What a later host needs to adopt one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    tag: String,
    pid: u32,
    start: u64,
}

/// One running virtiofsd.
pub struct Virtiofsd {
    tag: String,
    socket: PathBuf,
    log: PathBuf,
    process: AdoptedProcess,
    /// The process we spawned, unreaped until [`Virtiofsds::stop`], so its
    /// pid (and so its process group id) stays ours until then. `None` for
    /// a daemon adopted from an earlier host.
    child: Mutex<Option<Child>>,
    start: u64,
}

impl Virtiofsd {
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The vhost-user socket the VMM connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Kills the daemon and everything it forked, and waits (bounded) until
    /// none of it is left.
    async fn stop(&self) {
        let pid = self.pid();
        let mut slot = self.child.lock().await;
        // Taken out: once reaped, the pid is no longer ours to signal; a
        // second stop goes through the pidfd only.
        match slot.take() {
            Some(mut child) => {
                // Unreaped, so `pid` still names our process group.
                if let Ok(raw) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill(2) of the process group of our own
                    // unreaped child; no memory is passed.
                    unsafe { libc::kill(-raw, libc::SIGKILL) };
                }
                match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                    Ok(Ok(status)) => {
                        tracing::debug!(tag = %self.tag, pid, %status, "virtiofsd reaped")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(tag = %self.tag, pid, "cannot reap virtiofsd: {e}")
                    }
                    Err(_) => {
                        tracing::warn!(tag = %self.tag, pid, "virtiofsd has not exited {STOP_TIMEOUT:?} after SIGKILL")
                    }
                }
            }
            None => {
                // Adopted: not our child. While its pidfd says it runs, its
                // pid (and so the group id) is still its own; once it has
                // ended the id could be anyone's, and its server has had
                // SIGTERM from the kernel (virtiofsd's parent-death signal).
                if !self.process.has_exited() {
                    if let Ok(raw) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill(2) of the group of a live process
                        // we hold a pidfd on; no memory is passed.
                        unsafe { libc::kill(-raw, libc::SIGKILL) };
                    }
                }
                if let Err(e) = self.process.signal(libc::SIGKILL) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        tracing::warn!(tag = %self.tag, pid, "cannot kill virtiofsd: {e}");
                    }
                }
                let _ = tokio::time::timeout(STOP_TIMEOUT, self.process.exited()).await;
            }
        }
        // The forked server may outlive the reaped parent by a moment.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while group_alive(pid) {
            if Instant::now() >= deadline {
                tracing::warn!(tag = %self.tag, pid, "processes of virtiofsd's group are still alive {STOP_TIMEOUT:?} after it was stopped");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        remove_quietly(&self.socket);
        remove_quietly(&lock_path(&self.socket));
    }
}

/// The daemons of one VM (none when it has no shares).
pub struct Virtiofsds {
    run_dir: PathBuf,
    daemons: Vec<Virtiofsd>,
    /// Shares whose daemon an earlier host started but that were gone (or
    /// not provably theirs) at takeover.
    lost: Vec<String>,
}

impl Virtiofsds {
    /// No shares, nothing to serve.
    pub fn none(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir.to_path_buf(),
            daemons: Vec::new(),
            lost: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.daemons.is_empty() && self.lost.is_empty()
    }

    pub fn daemons(&self) -> &[Virtiofsd] {
        &self.daemons
    }

    /// Every process of the set, for a caller that wants to place or count
    /// them.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(Virtiofsd::pid).collect()
    }

    /// Starts one daemon per share of `spec` with `binary` (call
    /// [`validate`] first), each placed in `spec.cgroup` before it runs,
    /// and returns once every socket listens. A daemon left running by an
    /// earlier launch into the same run directory is stopped first. On
    /// failure nothing is left running.
    pub async fn start(binary: &Path, spec: &VmSpec) -> Result<Self, VirtiofsError> {
        validate(&spec.run_dir, &spec.shares)?;
        let stale = Self::leftovers(&spec.run_dir);
        if !stale.daemons.is_empty() {
            tracing::warn!(vm = %spec.id, pids = ?stale.pids(), "stopping virtiofsd left running in this run directory");
        }
        stale.stop().await;
        // All at once: a pod with several shares waits for the slowest only.
        let started =
            futures_util::future::join_all(spec.shares.iter().map(|s| spawn(binary, s, spec)))
                .await;
        let mut set = Self::none(&spec.run_dir);
        let mut failure = None;
        for result in started {
            match result {
                Ok(daemon) => set.daemons.push(daemon),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            set.stop().await;
            return Err(e);
        }
        if let Err(e) = set.write_record() {
            set.stop().await;
            return Err(VirtiofsError::Start {
                tag: spec
                    .shares
                    .first()
                    .map(|s| s.tag.clone())
                    .unwrap_or_default(),
                reason: format!(
                    "cannot record the daemons in {}: {e}",
                    spec.run_dir.display()
                ),
            });
        }
        for d in &set.daemons {
            tracing::info!(vm = %spec.id, tag = %d.tag, pid = d.pid(), "virtiofsd is serving");
        }
        Ok(set)
    }

    fn state_path(&self) -> PathBuf {
        self.run_dir.join(STATE_FILE)
    }

    fn write_record(&self) -> io::Result<()> {
        let records: Vec<Record> = self
            .daemons
            .iter()
            .map(|d| Record {
                tag: d.tag.clone(),
                pid: d.pid(),
                start: d.start,
            })
            .collect();
        let path = self.state_path();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let json = serde_json::to_vec(&records).map_err(io::Error::other)?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    fn read_record(run_dir: &Path) -> Vec<Record> {
        let path = run_dir.join(STATE_FILE);
        let Ok(file) = File::open(&path) else {
            return Vec::new();
        };
        let mut text = Vec::new();
        if file.take(MAX_STATE_FILE).read_to_end(&mut text).is_err() {
            return Vec::new();
        }
        serde_json::from_slice(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), "ignoring an unreadable virtiofsd record: {e}");
            Vec::new()
        })
    }

    /// Adopts the daemons an earlier host started for `spec` (for a
    /// backend's `recover`). A daemon is adopted only if its recorded pid
    /// still runs with the recorded start time (never a recycled pid) and
    /// its command line names its socket in this run directory. A share
    /// whose daemon is gone is *lost*: [`supervise`] then stops the VM at
    /// once and reports [`VmHelper::Virtiofsd`]. Needs a tokio runtime.
    pub fn recover(spec: &VmSpec) -> Self {
        let mut set = Self::none(&spec.run_dir);
        let records = Self::read_record(&spec.run_dir);
        for share in &spec.shares {
            let adopted = records
                .iter()
                .find(|r| r.tag == share.tag)
                .and_then(|r| adopt(&spec.run_dir, r));
            match adopted {
                Some(d) => {
                    tracing::info!(vm = %spec.id, tag = %d.tag, pid = d.pid(), "took over a running virtiofsd");
                    set.daemons.push(d);
                }
                None => {
                    tracing::warn!(vm = %spec.id, tag = %share.tag, "the virtiofsd of this share is gone");
                    set.lost.push(share.tag.clone());
                }
            }
        }
        set
    }

    /// Every daemon the record of `run_dir` names that still runs, whatever
    /// the spec says: what an earlier launch into it left behind.
    fn leftovers(run_dir: &Path) -> Self {
        let mut set = Self::none(run_dir);
        set.daemons = Self::read_record(run_dir)
            .iter()
            .filter_map(|r| adopt(run_dir, r))
            .collect();
        set
    }

    /// Resolves with the tag of the first daemon to end (at once for a
    /// share lost at takeover); never when there are no shares.
    pub async fn first_exit(&self) -> String {
        if let Some(tag) = self.lost.first() {
            return tag.clone();
        }
        if self.daemons.is_empty() {
            return std::future::pending().await;
        }
        let exits = self.daemons.iter().map(|d| {
            Box::pin(async move {
                d.process.exited().await;
                d.tag.clone()
            })
        });
        futures_util::future::select_all(exits).await.0
    }

    /// Cuts every daemon's log back to [`LOG_LIMIT`].
    fn cap_logs(&self, warned: &mut bool) {
        for d in &self.daemons {
            match cap_log(&d.log, LOG_LIMIT) {
                Ok(true) if !*warned => {
                    *warned = true;
                    tracing::warn!(tag = %d.tag, path = %d.log.display(), "virtiofsd filled its log; later output is dropped");
                }
                Err(e) if !*warned => {
                    *warned = true;
                    tracing::warn!(path = %d.log.display(), "cannot cap the virtiofsd log: {e}");
                }
                _ => {}
            }
        }
    }

    /// Stops every daemon (kill, reap, wait until its process group is
    /// empty) and removes the sockets and the record. Idempotent.
    pub async fn stop(&self) {
        futures_util::future::join_all(self.daemons.iter().map(Virtiofsd::stop)).await;
        remove_quietly(&self.state_path());
    }
}

/// Opens the daemon `r` describes if it is still that process (pid and
/// start time) and serves a socket of `run_dir` (its command line).
fn adopt(run_dir: &Path, r: &Record) -> Option<Virtiofsd> {
    let socket = socket_path(run_dir, &r.tag);
    if !crate::adopt::cmdline_mentions(r.pid, socket.as_os_str().as_bytes()) {
        return None;
    }
    let process = AdoptedProcess::open(r.pid, Some(r.start)).ok()?;
    Some(Virtiofsd {
        log: log_path(run_dir, &r.tag),
        tag: r.tag.clone(),
        socket,
        process,
        child: Mutex::new(None),
        start: r.start,
    })
}

/// Spawns the daemon of `share` and waits until its socket listens.
async fn spawn(
    binary: &Path,
    share: &ShareSpec,
    spec: &VmSpec,
) -> Result<Virtiofsd, VirtiofsError> {
    let fail = |reason: String| VirtiofsError::Start {
        tag: share.tag.clone(),
        reason,
    };
    let socket = socket_path(&spec.run_dir, &share.tag);
    let log = log_path(&spec.run_dir, &share.tag);
    remove_quietly(&socket);
    remove_quietly(&lock_path(&socket));
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
    };
    let log_file = File::create(&log)
        .and_then(|_| open_log())
        .map_err(|e| fail(format!("cannot create {}: {e}", log.display())))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| fail(format!("cannot reopen {}: {e}", log.display())))?;
    let mut command = Command::new(binary);
    command
        .args(daemon_args(share, &socket))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        // It must outlive a dropped handle (and a restarted host): only
        // `stop` ends it.
        .kill_on_drop(false)
        // Its own group, so `stop` reaches the server it forks, and a
        // Ctrl-C meant for hyperd does not.
        .process_group(0);
    // In the VM's cgroup before it runs, so the server it forks is born
    // inside too.
    if let Some(placement) = &spec.cgroup {
        crate::process::place_in_cgroup(command.as_std_mut(), placement)
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", binary.display())))?;
    let Some(pid) = child.id() else {
        let _ = child.wait().await;
        return Err(fail(format!(
            "it exited at once; it said: {}",
            log_tail(&log)
        )));
    };
    // Our unreaped child: no start time needed to open it.
    let process = match AdoptedProcess::open(pid, None) {
        Ok(p) => p,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(fail(e.to_string()));
        }
    };
    let start = process_start_time(pid).unwrap_or_default();
    let daemon = Virtiofsd {
        tag: share.tag.clone(),
        socket,
        log,
        process,
        child: Mutex::new(Some(child)),
        start,
    };
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if is_listening(&daemon.socket) {
            return Ok(daemon);
        }
        // Seen through the pidfd, unreaped: `stop` still owns its group.
        let problem = if daemon.process.has_exited() {
            Some("it exited".to_string())
        } else if Instant::now() >= deadline {
            Some(format!(
                "its socket {} was not listening within {SOCKET_TIMEOUT:?}",
                daemon.socket.display()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            daemon.stop().await;
            let tail = log_tail(&daemon.log);
            let said = if tail.is_empty() {
                String::new()
            } else {
                format!("; it said: {tail}")
            };
            return Err(fail(format!("{problem}{said}")));
        }
        tokio::time::sleep(POLL).await;
    }
}

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

/// How long a VMM whose daemon ended may take to end by itself before the
/// daemon's end is taken for a helper death.
const VMM_END_GRACE: Duration = Duration::from_secs(3);

/// A VMM and the daemons serving its shares, watched together by one task.
pub struct Supervised {
    exit: watch::Receiver<ExitSlot>,
}

/// Watches `vmm` with `daemons` on the current tokio runtime (which must
/// outlive the VM): a daemon that ends while the VMM runs gets the VMM
/// killed, and the exit reports [`VmHelper::Virtiofsd`]; once the VMM has
/// ended (for any reason) every daemon is stopped and its files removed,
/// and only then is the exit published. `vm` names the VM in logs.
pub fn supervise(vm: &str, vmm: Arc<VmProcess>, daemons: Virtiofsds) -> Supervised {
    let (tx, exit) = watch::channel(None);
    tokio::spawn(supervision(vm.to_string(), vmm, daemons, tx));
    Supervised { exit }
}

async fn supervision(
    vm: String,
    vmm: Arc<VmProcess>,
    daemons: Virtiofsds,
    tx: watch::Sender<ExitSlot>,
) {
    let mut warned = false;
    let mut helper_died = None;
    loop {
        daemons.cap_logs(&mut warned);
        tokio::select! {
            _ = vmm.wait() => break,
            tag = daemons.first_exit() => {
                // When the VM ends, the daemons see their frontend go and
                // end too: that is no helper death. QEMU closes its
                // vhost-user sockets on its way out, so a daemon can end
                // while the VMM still exits: the VMM gets a moment to end
                // by itself before the daemon's end counts as a death
                // (seen in CI: a pod whose guest powered off was reported
                // as "virtiofsd ended").
                if vmm.has_exited() || !is_running(vmm.pid()) {
                    break;
                }
                if tokio::time::timeout(VMM_END_GRACE, vmm.wait()).await.is_ok() {
                    break;
                }
                tracing::warn!(vm = %vm, tag = %tag, "the virtiofsd of share {tag} ended while the VM ran; stopping the VM");
                helper_died = Some(VmHelper::Virtiofsd);
                if let Err(e) = vmm.kill(VMM_KILL_TIMEOUT).await {
                    tracing::warn!(vm = %vm, "{e}");
                }
                break;
            }
            () = tokio::time::sleep(LOG_CHECK_EVERY), if !daemons.is_empty() => {}
        }
    }
    let result = vmm.wait().await.map(|exit| VmExit {
        helper_died: helper_died.or(exit.helper_died),
        ..exit
    });
    daemons.stop().await;
    daemons.cap_logs(&mut warned);
    tx.send_replace(Some(result));
}

impl Supervised {
    /// Resolves when the VM has ended and its daemons are gone. Cancel safe
    /// and free.
    pub async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut exit = self.exit.clone();
        let slot = exit.wait_for(Option::is_some).await.map_err(|_| {
            HypervisorError::Plugin("the task supervising the VM has stopped".into())
        })?;
        slot.clone().unwrap_or_else(|| {
            Err(HypervisorError::Plugin(
                "the task supervising the VM published nothing".into(),
            ))
        })
    }

    /// Whether [`Supervised::wait`] would return at once.
    pub fn is_done(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Whether the whole VM ended within `limit`.
    pub async fn wait_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// A stand-in for virtiofsd with its process shape: it listens on its
    /// socket, forks a server child and waits for it.
    const FAKE_SERVE: &str = "#!/usr/bin/env python3
import ctypes, os, socket, sys, time
a = sys.argv
path = a[a.index('--socket-path') + 1]
if 'vfs-bad' in path:
    time.sleep(0.5)
    sys.exit('refusing ' + path)
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM, as virtiofsd
    while True:
        time.sleep(60)
os.waitpid(pid, 0)
";
    const FAKE_FAIL: &str = "#!/bin/sh\necho 'cannot enter the sandbox: no' >&2\nexit 1\n";

    struct Fakes {
        _dir: tempfile::TempDir,
        serve: PathBuf,
        fail: PathBuf,
    }

    /// Written once, before any test here forks (a fork while a script is
    /// open for writing makes exec fail with ETXTBSY).
    fn fakes() -> &'static Fakes {
        static FAKES: OnceLock<Fakes> = OnceLock::new();
        FAKES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let write = |name: &str, text: &str| {
                let p = dir.path().join(name);
                std::fs::write(&p, text).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
                p
            };
            Fakes {
                serve: write("serve", FAKE_SERVE),
                fail: write("fail", FAKE_FAIL),
                _dir: dir,
            }
        })
    }

    struct Fixture {
        dir: tempfile::TempDir,
        spec: VmSpec,
    }

    fn fixture(shares: &[(&str, bool)]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("vm");
        std::fs::create_dir(&run_dir).unwrap();
        let shares = shares
            .iter()
            .map(|(tag, read_only)| {
                let source = dir.path().join(format!("src-{tag}"));
                std::fs::create_dir(&source).unwrap();
                ShareSpec {
                    tag: tag.to_string(),
                    source,
                    read_only: *read_only,
                }
            })
            .collect();
        let spec = VmSpec {
            console_log: dir.path().join("console.log"),
            run_dir,
            shares,
            ..crate::adopt::tests::spec("vm1")
        };
        Fixture { dir, spec }
    }

    async fn start(binary: &Path, spec: &VmSpec) -> Result<Virtiofsds, VirtiofsError> {
        for _ in 0..20 {
            match Virtiofsds::start(binary, spec).await {
                Err(VirtiofsError::Start { reason, .. }) if reason.contains("Text file busy") => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other,
            }
        }
        Virtiofsds::start(binary, spec).await
    }

    /// The children of `pid` (the fake's forked server).
    fn children(pid: u32) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Waits (bounded, generously) for the fake's server child to exist.
    async fn server_of(pid: u32) -> u32 {
        for _ in 0..500 {
            if let Some(&c) = children(pid).first() {
                return c;
            }
            tokio::time::sleep(POLL).await;
        }
        panic!("the fake virtiofsd {pid} forked no server");
    }

    /// Reaps `pids` on threads of their own, as init does for the daemons
    /// of a host that went away (here the test process stays their parent).
    fn reap_like_init(pids: &[u32]) {
        for &pid in pids {
            std::thread::spawn(move || {
                let mut status = 0;
                // SAFETY: waitpid(2) on a child of this process.
                unsafe { libc::waitpid(pid as i32, &mut status, 0) };
            });
        }
    }

    fn left_files(run_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(run_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".log"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn shares_are_validated() {
        let f = fixture(&[("a", false), ("b_-9", true)]);
        let run = &f.spec.run_dir;
        validate(run, &f.spec.shares).unwrap();
        validate(run, &[]).unwrap();
        let with = |edit: &dyn Fn(&mut ShareSpec)| {
            let mut shares = f.spec.shares.clone();
            edit(&mut shares[1]);
            validate(run, &shares).unwrap_err().to_string()
        };
        for bad in [
            "",
            "a b",
            "a,b",
            "a/b",
            "é",
            &"x".repeat(ShareSpec::MAX_TAG + 1),
        ] {
            let e = with(&|s| s.tag = bad.into());
            assert!(e.contains("[A-Za-z0-9_-]"), "{bad:?}: {e}");
        }
        let mut ok = f.spec.shares.clone();
        ok[1].tag = "t".repeat(ShareSpec::MAX_TAG);
        validate(run, &ok).unwrap();
        assert!(with(&|s| s.tag = "a".into()).contains("used twice"));
        assert!(with(&|s| s.source = "rel/dir".into()).contains("not an absolute path"));
        let missing = f.dir.path().join("missing");
        let e = with(&|s| s.source = missing.clone());
        assert!(
            e.starts_with("share \"b_-9\": source ") && e.contains("No such file"),
            "{e}"
        );
        let file = f.dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(with(&|s| s.source = file.clone()).contains("is not a directory"));
        let many: Vec<ShareSpec> = (0..=MAX_SHARES)
            .map(|i| ShareSpec {
                tag: format!("t{i}"),
                ..f.spec.shares[0].clone()
            })
            .collect();
        assert!(validate(run, &many)
            .unwrap_err()
            .to_string()
            .contains("at most 8"));
        let long = Path::new("/").join("d".repeat(80));
        let e = validate(&long, &ok).unwrap_err().to_string();
        assert!(e.contains("unix socket limit"), "{e}");
        // A bad share is the caller's mistake, not a failed launch.
        let e: HypervisorError = VirtiofsError::InvalidShare {
            tag: "t".into(),
            reason: "r".into(),
        }
        .into();
        assert!(matches!(e, HypervisorError::InvalidSpec(_)));
    }

    #[test]
    fn the_binary_is_found_or_the_error_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("virtiofsd");
        let e = find_binary(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.contains(&*missing.to_string_lossy()) && e.contains(INSTALL_HINT),
            "{e}"
        );
        std::fs::write(&missing, b"").unwrap();
        let e = find_binary(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("not an executable file"), "{e}");
        let fake = &fakes().serve;
        assert_eq!(find_binary(Some(fake)).unwrap(), *fake);
        let e = VirtiofsError::NotFound {
            looked: DEFAULT_LOCATIONS.join(", "),
        }
        .to_string();
        assert!(
            e.contains("/usr/local/bin/virtiofsd")
                && e.contains("cargo install virtiofsd --locked --root /usr/local")
                && e.contains("libseccomp-dev libcap-ng-dev"),
            "{e}"
        );
    }

    #[test]
    fn daemon_arguments() {
        let share = ShareSpec {
            tag: "data".into(),
            source: "/srv/data".into(),
            read_only: false,
        };
        let socket = Path::new("/run/vm/vfs-data.sock");
        let args = |share: &ShareSpec| -> Vec<String> {
            daemon_args(share, socket)
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        let expected = [
            "--socket-path",
            "/run/vm/vfs-data.sock",
            "--shared-dir",
            "/srv/data",
            "--sandbox",
            "namespace",
            "--seccomp",
            "kill",
            "--cache",
            "auto",
            "--modcaps=-mknod",
            "--log-level",
            "info",
        ];
        assert_eq!(args(&share), expected);
        let ro = ShareSpec {
            read_only: true,
            ..share
        };
        let mut expected = expected.to_vec();
        expected.push("--readonly");
        assert_eq!(args(&ro), expected);
    }

    #[test]
    fn listening_sockets_are_found_in_proc_net_unix() {
        let table = b"Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/vm/vfs-a.sock
0000000000000000: 00000002 00000000 00000000 0001 01 12346 /run/vm/vfs-b.sock
0000000000000000: 00000003 00000000 00000000 0001 03 12347
";
        assert!(listening_in(table, b"/run/vm/vfs-a.sock"));
        assert!(!listening_in(table, b"/run/vm/vfs-b.sock"));
        assert!(!listening_in(table, b"/run/vm/vfs-c.sock"));
        assert!(!listening_in(table, b"Path"));
        assert!(!listening_in(table, b"vfs-a.sock"));
        let spaced = b"Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01    45 /run/my state/vfs-a.sock
";
        assert!(listening_in(spaced, b"/run/my state/vfs-a.sock"));
    }

    #[test]
    fn logs_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vfs-a.log");
        assert!(!cap_log(&log, 10).unwrap());
        std::fs::write(&log, "x".repeat(100)).unwrap();
        assert!(cap_log(&log, 10).unwrap());
        let text = std::fs::read(&log).unwrap();
        assert_eq!(&text[..10], b"xxxxxxxxxx");
        assert_eq!(&text[10..], LOG_LIMIT_MARKER);
        assert!(!cap_log(&log, 10).unwrap());
    }

    /// A real cgroup (the v1 `pids` hierarchy, or v2's where that is the
    /// only one): the daemon and the server it forks are both inside.
    #[tokio::test]
    async fn daemons_and_their_servers_start_inside_the_vms_cgroup() {
        let base = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .into_iter()
        .map(Path::new)
        .find(|b| b.join("cgroup.procs").exists());
        let Some(base) = base else {
            eprintln!("skipped: no cgroup hierarchy mounted");
            return;
        };
        let name = format!("hyper-volqemu-test-{}", std::process::id());
        let cgroup = base.join(&name);
        if let Err(e) = std::fs::create_dir(&cgroup) {
            eprintln!("skipped: cannot make {}: {e}", cgroup.display());
            return;
        }
        let mut f = fixture(&[("a", false)]);
        f.spec.cgroup = Some(crate::CgroupPlacement {
            procs_files: vec![cgroup.join("cgroup.procs")],
        });
        let set = start(&fakes().serve, &f.spec).await.unwrap();
        let pid = set.pids()[0];
        let server = server_of(pid).await;
        let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
        let inside: Vec<u32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        set.stop().await;
        let removed = std::fs::remove_dir(&cgroup);
        assert!(
            inside.contains(&pid) && inside.contains(&server),
            "{inside:?} lacks {pid} or {server}"
        );
        removed.unwrap();
    }

    #[tokio::test]
    async fn daemons_start_listen_and_stop_without_leftovers() {
        let f = fixture(&[("a", false), ("b", true)]);
        let set = start(&fakes().serve, &f.spec).await.unwrap();
        assert_eq!(set.daemons().len(), 2);
        let mut servers = Vec::new();
        for d in set.daemons() {
            assert!(is_listening(d.socket()), "{}", d.socket().display());
            assert_eq!(d.socket(), socket_path(&f.spec.run_dir, d.tag()));
            servers.push(server_of(d.pid()).await);
        }
        assert_eq!(
            left_files(&f.spec.run_dir),
            ["vfs-a.sock", "vfs-b.sock", "virtiofsd.json"]
        );
        let pids = set.pids();
        set.stop().await;
        for pid in pids.iter().chain(&servers) {
            assert!(!is_running(*pid), "{pid} is still running");
        }
        for pid in &pids {
            assert!(!group_alive(*pid));
        }
        assert!(left_files(&f.spec.run_dir).is_empty());
        // Stopping twice is harmless.
        set.stop().await;
    }

    #[tokio::test]
    async fn a_failing_daemon_is_reported_with_what_it_said_and_nothing_is_left() {
        let f = fixture(&[("a", false)]);
        let e = start(&fakes().fail, &f.spec).await.err().unwrap();
        let e = e.to_string();
        assert!(
            e.starts_with("virtiofsd for share \"a\" failed to start: it exited")
                && e.contains("cannot enter the sandbox: no"),
            "{e}"
        );
        assert!(left_files(&f.spec.run_dir).is_empty());
        let e = start(Path::new("/nonexistent/virtiofsd"), &f.spec)
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("cannot run /nonexistent/virtiofsd"),
            "{e}"
        );
    }

    /// Processes whose command line names `dir`.
    fn processes_in(dir: &Path) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                is_running(pid) && crate::adopt::cmdline_mentions(pid, dir.as_os_str().as_bytes())
            })
            .collect()
    }

    #[tokio::test]
    async fn one_failing_share_stops_the_others() {
        let f = fixture(&[("good", false), ("bad", false), ("fine", true)]);
        let e = start(&fakes().serve, &f.spec)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("virtiofsd for share \"bad\" failed to start: it exited")
                && e.contains("refusing"),
            "{e}"
        );
        assert!(processes_in(&f.spec.run_dir).is_empty());
        assert!(left_files(&f.spec.run_dir).is_empty());
    }

    async fn vmm() -> Arc<VmProcess> {
        Arc::new(VmProcess::spawn(Command::new("sleep").arg("60"), "vmm", |_| {}).unwrap())
    }

    #[tokio::test]
    async fn a_dead_daemon_stops_the_vm_and_is_reported() {
        let f = fixture(&[("a", false), ("b", false)]);
        let set = start(&fakes().serve, &f.spec).await.unwrap();
        let pids = set.pids();
        let server = server_of(pids[1]).await;
        let vmm = vmm().await;
        let supervised = supervise("vm1", vmm.clone(), set);
        assert!(!supervised.is_done());
        // kill -9 of the serving process, as an operator (or a crash) would.
        // SAFETY: kill(2) of a process this test started.
        unsafe { libc::kill(server as i32, libc::SIGKILL) };
        let exit = supervised.wait().await.unwrap();
        assert_eq!(exit.helper_died, Some(VmHelper::Virtiofsd));
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert!(vmm.has_exited());
        for pid in pids {
            assert!(!is_running(pid) && !group_alive(pid));
        }
        assert!(left_files(&f.spec.run_dir).is_empty());
    }

    #[tokio::test]
    async fn a_vm_that_ends_stops_its_daemons_and_no_helper_is_blamed() {
        let f = fixture(&[("a", false)]);
        let set = start(&fakes().serve, &f.spec).await.unwrap();
        let pids = set.pids();
        let vmm = vmm().await;
        let supervised = supervise("vm1", vmm.clone(), set);
        vmm.kill(Duration::from_secs(10)).await.unwrap();
        let exit = supervised.wait().await.unwrap();
        assert_eq!(exit.helper_died, None);
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert!(!is_running(pids[0]) && !group_alive(pids[0]));
        assert!(left_files(&f.spec.run_dir).is_empty());
        // No shares: the VMM alone.
        let vmm = vmm_again().await;
        let supervised = supervise("vm2", vmm.clone(), Virtiofsds::none(&f.spec.run_dir));
        vmm.kill(Duration::from_secs(10)).await.unwrap();
        assert_eq!(supervised.wait().await.unwrap().helper_died, None);
    }

    async fn vmm_again() -> Arc<VmProcess> {
        vmm().await
    }

    #[tokio::test]
    async fn a_new_host_adopts_the_daemons_and_still_watches_and_cleans_up() {
        let f = fixture(&[("a", false), ("b", true)]);
        let first = start(&fakes().serve, &f.spec).await.unwrap();
        let pids = first.pids();
        // The first host goes away without stopping anything.
        drop(first);
        reap_like_init(&pids);
        let adopted = Virtiofsds::recover(&f.spec);
        assert_eq!(adopted.pids(), pids);
        assert!(adopted.lost.is_empty());
        let vmm = vmm().await;
        let supervised = supervise("vm1", vmm.clone(), adopted);
        // SAFETY: kill(2) of a process this test started.
        unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
        let exit = supervised.wait().await.unwrap();
        assert_eq!(exit.helper_died, Some(VmHelper::Virtiofsd));
        for pid in &pids {
            assert!(!group_alive(*pid), "{pid}");
        }
        assert!(left_files(&f.spec.run_dir).is_empty());
    }

    #[tokio::test]
    async fn a_daemon_gone_at_takeover_fails_the_vm_at_once() {
        let f = fixture(&[("a", false)]);
        let first = start(&fakes().serve, &f.spec).await.unwrap();
        let pid = first.pids()[0];
        // A record whose start time no longer matches: a recycled pid.
        let mut record = Virtiofsds::read_record(&f.spec.run_dir);
        record[0].start += 1;
        std::fs::write(
            f.spec.run_dir.join(STATE_FILE),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let adopted = Virtiofsds::recover(&f.spec);
        assert!(adopted.daemons.is_empty());
        assert_eq!(adopted.lost, ["a"]);
        assert!(
            is_running(pid),
            "a pid that is not provably ours is never touched"
        );
        let vmm = vmm().await;
        let exit = supervise("vm1", vmm.clone(), adopted).wait().await.unwrap();
        assert_eq!(exit.helper_died, Some(VmHelper::Virtiofsd));
        first.stop().await;
        // An unreadable record adopts nothing.
        std::fs::write(f.spec.run_dir.join(STATE_FILE), b"{garbage").unwrap();
        assert_eq!(Virtiofsds::recover(&f.spec).lost, ["a"]);
    }

    #[tokio::test]
    async fn a_relaunch_stops_what_an_earlier_launch_left_running() {
        let f = fixture(&[("a", false)]);
        let first = start(&fakes().serve, &f.spec).await.unwrap();
        let old = first.pids()[0];
        drop(first);
        reap_like_init(&[old]);
        let second = start(&fakes().serve, &f.spec).await.unwrap();
        assert!(!group_alive(old));
        assert_ne!(second.pids()[0], old);
        second.stop().await;
    }

    /// The real daemon (installed by .ci/deps.sh) on a temporary directory:
    /// it starts in its namespace sandbox, listens, and stops without a
    /// trace. Needs root, as hyperd runs.
    #[tokio::test]
    async fn real_virtiofsd_serves_a_directory() {
        let binary = find_binary(None).unwrap_or_else(|e| panic!("{e}"));
        let f = fixture(&[("rw", false), ("ro", true)]);
        for share in &f.spec.shares {
            std::fs::write(share.source.join(format!("only-in-{}", share.tag)), b"x").unwrap();
        }
        let set = Virtiofsds::start(&binary, &f.spec)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut servers = Vec::new();
        let ns = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok();
        for d in set.daemons() {
            assert!(is_listening(d.socket()));
            // Connecting needs write permission: only its owner (root) has it.
            let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
            assert_eq!(mode & 0o022, 0, "{mode:o}");
            // The server is the child in pid, mount and net namespaces of
            // its own (the other child only sets up ids and exits).
            let mut server = None;
            for _ in 0..500 {
                server = children(d.pid()).into_iter().find(|c| {
                    ns(&c.to_string(), "pid").is_some_and(|n| Some(n) != ns("self", "pid"))
                });
                if server.is_some() {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            let server = server.expect("virtiofsd forked no sandboxed server");
            for kind in ["mnt", "net"] {
                assert_ne!(ns(&server.to_string(), kind), ns("self", kind), "{kind}");
            }
            // Its root is the shared directory (pivot_root): the host's
            // /etc is not in its view at all, the share's file is.
            let root = PathBuf::from(format!("/proc/{server}/root"));
            let mut names: Vec<String> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, [format!("only-in-{}", d.tag())]);
            assert!(!root.join("etc/passwd").exists());
            servers.push(server);
        }
        let pids = set.pids();
        set.stop().await;
        for pid in pids.iter().chain(&servers) {
            assert!(!is_running(*pid));
        }
        for pid in &pids {
            assert!(!group_alive(*pid));
        }
        assert!(left_files(&f.spec.run_dir).is_empty());
    }
}
