//! Starting a process: a container's init or an exec into a container.
//!
//! hyperstart forks an intermediate process, which enters the namespaces
//! (unshare for a new container, setns for an exec) and forks the real
//! process. The double fork is what puts the process in the right PID
//! namespace (unshare/setns of a PID namespace only affect children) while
//! hyperstart can still reap it: the intermediate stays hyperstart's child,
//! waits for the process and exits with its status.
//!
//! A close-on-exec status socket (SOCK_SEQPACKET, one record per message)
//! reports back: the intermediate sends the process's pid; a failure before
//! exec sends a tagged error record; a terminal process sends its pty master
//! with SCM_RIGHTS. EOF with no error means the exec succeeded.
//!
//! A terminal is opened by the process itself, inside the container, from
//! the container's own devpts instance: the slave is then a real
//! `/dev/pts/N` of the container (`tty` names it, and nothing of another
//! container's or hyperstart's ptys is visible), which a pty opened by
//! hyperstart beforehand could not be.

use std::ffi::CString;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hyper_protocol::{AgentError, AgentErrorKind, Confinement, ProcessSpec, TerminalSize};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Gid, Uid};

use crate::confine;
use crate::rootfs;
use crate::sys::{RealSys, Sys};
use crate::user;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the process goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A container's init: new mount, UTS, IPC and PID namespaces, `root`
    /// (the mounted overlay) as its `/`.
    NewContainer { root: &'a Path, hostname: &'a str },
    /// An exec: the namespaces and root of the container's init.
    Join { init_pid: i32 },
}

/// A started process and hyperstart's (non-blocking) ends of its stdio.
#[derive(Debug)]
pub struct Spawned {
    /// The process's pid in hyperstart's PID namespace.
    pub pid: i32,
    /// The intermediate process: hyperstart's child, whose exit status is
    /// the process's.
    pub intermediate: i32,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The pty master of a terminal process (stdin and stdout are copies of
    /// it), kept for TIOCSWINSZ.
    pub tty: Option<OwnedFd>,
}

const TAG_PID: u8 = b'P';
const TAG_ERROR: u8 = b'E';
/// Carries the pty master as SCM_RIGHTS; no payload.
const TAG_PTY: u8 = b'T';
/// Keeps every record below PIPE_BUF, so each write(2) is atomic and the
/// records of the intermediate and the process never interleave.
const MAX_MESSAGE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Namespaces, mounts, user, workdir, stdio.
    Setup = 0,
    /// execve itself.
    Exec = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildError {
    pub stage: Stage,
    pub errno: i32,
    pub message: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub pid: Option<i32>,
    pub error: Option<ChildError>,
}

fn pid_record(pid: i32) -> [u8; 5] {
    let b = pid.to_le_bytes();
    [TAG_PID, b[0], b[1], b[2], b[3]]
}

fn error_record(stage: Stage, errno: i32, message: &str) -> Vec<u8> {
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    let mut out = vec![TAG_ERROR, stage as u8];
    out.extend_from_slice(&errno.to_le_bytes());
    out.push(message.len() as u8);
    out.extend_from_slice(message);
    out
}

/// Decodes what the children wrote, in whatever order their records
/// arrived; a truncated or unknown record ends decoding.
pub fn parse_status(mut bytes: &[u8]) -> StatusReport {
    let mut report = StatusReport::default();
    loop {
        match bytes {
            [TAG_PTY, rest @ ..] => bytes = rest,
            [TAG_PID, a, b, c, d, rest @ ..] => {
                report.pid = Some(i32::from_le_bytes([*a, *b, *c, *d]));
                bytes = rest;
            }
            [TAG_ERROR, stage, a, b, c, d, len, rest @ ..] if rest.len() >= usize::from(*len) => {
                let (message, rest) = rest.split_at(usize::from(*len));
                let stage = if *stage == Stage::Exec as u8 {
                    Stage::Exec
                } else {
                    Stage::Setup
                };
                report.error.get_or_insert(ChildError {
                    stage,
                    errno: i32::from_le_bytes([*a, *b, *c, *d]),
                    message: String::from_utf8_lossy(message).into_owned(),
                });
                bytes = rest;
            }
            _ => return report,
        }
    }
}

/// The error the host sees, worded like Docker's.
pub fn agent_error(err: &ChildError, arg0: &str) -> AgentError {
    match err.stage {
        Stage::Exec => match Errno::from_raw(err.errno) {
            Errno::ENOENT | Errno::ENOTDIR if arg0.contains('/') => AgentError::new(
                AgentErrorKind::CommandNotFound,
                format!("exec: \"{arg0}\": stat {arg0}: no such file or directory"),
            ),
            Errno::ENOENT | Errno::ENOTDIR => AgentError::new(
                AgentErrorKind::CommandNotFound,
                format!("exec: \"{arg0}\": executable file not found in $PATH"),
            ),
            errno => AgentError::new(
                AgentErrorKind::CommandNotExecutable,
                format!("exec: \"{arg0}\": {}", errno.desc().to_lowercase()),
            ),
        },
        Stage::Setup => AgentError::new(AgentErrorKind::Failed, err.message.clone()),
    }
}

/// The process's environment: exactly what was asked for, plus PATH and
/// HOME when missing (as Docker does).
pub fn build_env(given: &[String], home: &str) -> Vec<String> {
    let mut env = given.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    env
}

/// PATH as the process will see it (the last definition wins, as in getenv).
pub fn env_path(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// The files execvp would try for `arg0`, in order.
pub fn exec_candidates(arg0: &str, path: &str) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    if arg0.is_empty() {
        return Vec::new();
    }
    path.split(':')
        .map(|dir| {
            if dir.is_empty() {
                format!("./{arg0}")
            } else {
                format!("{dir}/{arg0}")
            }
        })
        .collect()
}

fn invalid(message: impl Into<String>) -> AgentError {
    AgentError::new(AgentErrorKind::InvalidRequest, message)
}

fn failed(message: impl Into<String>) -> AgentError {
    AgentError::new(AgentErrorKind::Failed, message)
}

fn cstrings(items: &[String], what: &str) -> Result<Vec<CString>, AgentError> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| invalid(format!("{what} contains a NUL byte")))
        })
        .collect()
}

/// What the children need, validated before forking so bad input is an
/// error reply rather than a failure inside a child.
struct Prepared<'a> {
    args: Vec<CString>,
    arg0: &'a str,
    env: &'a [String],
    workdir: String,
    user: &'a str,
    terminal: Option<TerminalSize>,
    confinement: &'a Confinement,
    seccomp: Vec<seccompiler::BpfProgram>,
    rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
}

fn prepare(spec: &ProcessSpec) -> Result<Prepared<'_>, AgentError> {
    let arg0 = spec
        .args
        .first()
        .ok_or_else(|| invalid("the process has no command"))?;
    let args = cstrings(&spec.args, "an argument")?;
    cstrings(&spec.env, "an environment entry")?;
    let workdir = match spec.workdir.as_str() {
        "" => "/".to_string(),
        w if w.starts_with('/') => w.to_string(),
        w => format!("/{w}"),
    };
    if workdir.contains('\0') || spec.user.contains('\0') {
        return Err(invalid("the workdir or user contains a NUL byte"));
    }
    let seccomp = match &spec.confinement.seccomp {
        Some(profile) => confine::build_seccomp(profile).map_err(invalid)?,
        None => Vec::new(),
    };
    let rlimits = confine::resolve_rlimits(&spec.rlimits).map_err(invalid)?;
    Ok(Prepared {
        rlimits,
        args,
        arg0,
        env: &spec.env,
        workdir,
        user: &spec.user,
        terminal: spec.terminal.then(|| terminal_size(spec.terminal_size)),
        confinement: &spec.confinement,
        seccomp,
    })
}

/// The size a new terminal gets: the one asked for, unless it is empty.
pub fn terminal_size(asked: Option<TerminalSize>) -> TerminalSize {
    match asked {
        Some(s) if s.rows > 0 && s.cols > 0 => s,
        _ => TerminalSize::DEFAULT,
    }
}

/// TIOCSWINSZ on a pty master; the kernel sends SIGWINCH to the slave's
/// foreground process group when the size changes.
pub fn set_window_size(master: &OwnedFd, size: TerminalSize) -> Result<(), Errno> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer given.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    Errno::result(r).map(drop)
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), AgentError> {
    let flags =
        nix::fcntl::fcntl(fd, FcntlArg::F_GETFL).map_err(|e| failed(format!("fcntl: {e}")))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, FcntlArg::F_SETFL(flags))
        .map(drop)
        .map_err(|e| failed(format!("fcntl: {e}")))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| failed(format!("pipe: {e}")))
}

/// Starts `spec` in `target`, inside the cgroup `group` when given (the
/// container's: see crate::cgroup). Blocks until the process has exec'd or
/// failed to; the setup before exec is short and bounded.
pub fn spawn(
    target: Target<'_>,
    group: Option<&Path>,
    spec: &ProcessSpec,
) -> Result<Spawned, AgentError> {
    let prepared = prepare(spec)?;
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (status_r, status_w) = status_socket()?;
    let parent = nix::unistd::getpid();

    // SAFETY: hyperstart is single-threaded, so the child may do anything the
    // parent could (allocate, take locks) without hitting state another
    // thread left half-changed.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(failed(format!("fork: {e}"))),
        Ok(ForkResult::Child) => {
            let fds = ChildFds {
                status: status_w.as_raw_fd(),
                stdin: stdin_r.as_raw_fd(),
                stdout: stdout_w.as_raw_fd(),
                stderr: stderr_w.as_raw_fd(),
            };
            die_with_parent(Some(parent));
            intermediate(target, group, &prepared, fds)
        }
        Ok(ForkResult::Parent { child }) => {
            drop((stdin_r, stdout_w, stderr_w, status_w));
            let (bytes, mut passed) = read_status(&status_r);
            let report = parse_status(&bytes);
            if let Some(err) = &report.error {
                return Err(agent_error(err, prepared.arg0));
            }
            let Some(pid) = report.pid else {
                return Err(failed(
                    "the process could not be started: its intermediate process died",
                ));
            };
            let (stdin, stdout, tty) = if prepared.terminal.is_some() {
                // Only the process sends an fd, and only one.
                let Some(master) = passed.pop().filter(|_| passed.is_empty()) else {
                    return Err(failed("the process did not hand over its terminal"));
                };
                let dup = |fd: &OwnedFd| {
                    fd.try_clone()
                        .map_err(|e| failed(format!("dup of the pty master: {e}")))
                };
                (dup(&master)?, dup(&master)?, Some(master))
            } else {
                (stdin_w, stdout_r, None)
            };
            for fd in [&stdin, &stdout, &stderr_r] {
                set_nonblocking(fd)?;
            }
            Ok(Spawned {
                pid,
                intermediate: child.as_raw(),
                stdin,
                stdout,
                stderr: stderr_r,
                tty,
            })
        }
    }
}

fn status_socket() -> Result<(OwnedFd, OwnedFd), AgentError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| failed(format!("socketpair: {e}")))
}

/// Reads the status socket until every writer is gone: the records, and the
/// fds passed along (bounded: the records are tiny, anything past 4 KiB is
/// ignored, and at most one fd per message is accepted, the kernel closing
/// any more).
fn read_status(fd: &OwnedFd) -> (Vec<u8>, Vec<OwnedFd>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut out = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let mut cmsg = nix::cmsg_space!(RawFd);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        };
        let n = msg.bytes;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = c {
                    for raw in received {
                        // SAFETY: the kernel just installed this fd in this
                        // process for us; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
        }
        if n == 0 {
            break;
        }
        if out.len() < 4096 {
            out.extend_from_slice(&buf[..n]);
        }
    }
    (out, fds)
}

#[derive(Clone, Copy)]
struct ChildFds {
    status: RawFd,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
}

fn report(fd: RawFd, record: &[u8]) {
    // SAFETY: writes an initialised buffer to the status pipe's write end,
    // which the caller keeps open.
    unsafe {
        libc::write(fd, record.as_ptr().cast(), record.len());
    }
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit ends this forked child at once, without running the
    // parent's atexit handlers or flushing buffers that belong to hyperstart.
    unsafe { libc::_exit(code) }
}

fn setup_failed(fd: RawFd, errno: i32, message: &str) -> ! {
    report(fd, &error_record(Stage::Setup, errno, message));
    exit(1)
}

/// Closes every fd above stderr that is not in `keep`, so the processes never
/// hold another process's pipes (which would keep its stdin from ever seeing
/// EOF) or the channel.
fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut low = 3u32;
    for fd in keep {
        if fd > low {
            close_range(low, fd - 1);
        }
        low = fd + 1;
    }
    close_range(low, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes descriptors; none in the range is used
    // again by this process.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) };
    if r != 0 {
        // Kernels before 5.9: close them one by one, up to a sane limit.
        for fd in first..=last.min(4096) {
            // SAFETY: as above, for one descriptor.
            unsafe { libc::close(fd as RawFd) };
        }
    }
}

/// Children must not outlive their parent: hyperstart cannot report them
/// any more. (As PID 1 hyperstart never dies; this matters when it runs as an
/// ordinary process, e.g. in the smoke test.)
fn die_with_parent(parent: Option<nix::unistd::Pid>) {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    // The parent may have died before the line above took effect. (Only
    // checkable from the same PID namespace: across, getppid() is 0.)
    if parent.is_some_and(|p| p != nix::unistd::getppid()) {
        exit(1);
    }
}

/// The intermediate process. Never returns.
fn intermediate(
    target: Target<'_>,
    group: Option<&Path>,
    prepared: &Prepared<'_>,
    fds: ChildFds,
) -> ! {
    close_fds_except(&[fds.status, fds.stdin, fds.stdout, fds.stderr]);
    // Before the namespaces: hyperstart's view of /sys/fs/cgroup. The
    // process forked below inherits the group.
    if let Some(group) = group {
        if let Err(e) = crate::cgroup::join(group) {
            setup_failed(
                fds.status,
                e.raw_os_error().unwrap_or(0),
                &format!("joining the container's cgroup {}: {e}", group.display()),
            );
        }
    }
    let mut sys = RealSys;
    let entered = match target {
        Target::NewContainer { hostname, .. } => {
            rootfs::new_container_namespaces(&mut sys, hostname)
        }
        Target::Join { init_pid } => rootfs::join_container(&mut sys, init_pid),
    };
    if let Err(e) = entered {
        setup_failed(
            fds.status,
            e.errno as i32,
            &format!("entering the container's namespaces: {e}"),
        );
    }
    // SAFETY: this process is single-threaded (a fork of single-threaded
    // hyperstart).
    match unsafe { nix::unistd::fork() } {
        Err(e) => setup_failed(fds.status, e as i32, &format!("fork: {e}")),
        Ok(ForkResult::Child) => process(target, prepared, fds),
        Ok(ForkResult::Parent { child }) => {
            report(fds.status, &pid_record(child.as_raw()));
            for fd in [fds.status, fds.stdin, fds.stdout, fds.stderr] {
                // SAFETY: these fds belong to this process and are not used
                // again; the process has its own copies.
                unsafe { libc::close(fd) };
            }
            loop {
                match nix::sys::wait::waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => exit(code),
                    Ok(WaitStatus::Signaled(_, signal, _)) => exit(128 + signal as i32),
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => exit(1),
                }
            }
        }
    }
}

/// The process itself, up to exec. Never returns.
fn process(target: Target<'_>, prepared: &Prepared<'_>, fds: ChildFds) -> ! {
    let status = fds.status;
    let mut sys = RealSys;
    let confinement = prepared.confinement;
    if let Target::NewContainer { root, .. } = target {
        if let Err(e) = rootfs::enter_container_rootfs(&mut sys, root, confinement.privileged) {
            setup_failed(
                status,
                e.errno as i32,
                &format!("setting up the container's root: {e}"),
            );
        }
    }
    // Its own session: no controlling terminal shared with hyperstart.
    let _ = nix::unistd::setsid();

    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let group = std::fs::read_to_string("/etc/group").ok();
    let user = match user::resolve(prepared.user, passwd.as_deref(), group.as_deref()) {
        Ok(u) => u,
        Err(message) => setup_failed(status, 0, &message),
    };
    let tty = prepared
        .terminal
        .map(|size| match open_terminal(size, user.uid) {
            Ok((master, slave)) => {
                send_fd(status, &master);
                slave
            }
            Err((errno, what)) => setup_failed(
                status,
                errno as i32,
                &format!("opening a terminal: {what}: {errno}"),
            ),
        });
    // Created as root, as Docker does, before dropping privileges.
    if let Err(e) = sys.mkdir_all(Path::new(&prepared.workdir), 0o755) {
        setup_failed(
            status,
            e.errno as i32,
            &format!("creating the workdir: {e}"),
        );
    }
    // While still root with every capability: raising a hard limit needs
    // CAP_SYS_RESOURCE.
    if let Err((resource, e)) = confine::set_rlimits(&prepared.rlimits) {
        setup_failed(
            status,
            e as i32,
            &format!("setting the limit {resource:?}: {e}"),
        );
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
    // while the process still has it (as runc does); what follows must then
    // be allowed by the profile.
    if !confinement.no_new_privileges {
        if let Err(e) = confine::install_seccomp(&prepared.seccomp) {
            setup_failed(status, libc::EPERM, &e);
        }
    }
    if let Err(e) = confine::drop_bounding(confinement.capabilities) {
        setup_failed(
            status,
            e as i32,
            &format!("dropping capabilities from the bounding set: {e}"),
        );
    }
    let groups: Vec<Gid> = user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    let ids = nix::unistd::setgroups(&groups)
        .and_then(|()| nix::unistd::setgid(Gid::from_raw(user.gid)))
        .and_then(|()| nix::unistd::setuid(Uid::from_raw(user.uid)));
    if let Err(e) = ids {
        setup_failed(
            status,
            e as i32,
            &format!("switching to user {}:{}: {e}", user.uid, user.gid),
        );
    }
    let (effective, inheritable) = confine::process_sets(confinement.capabilities, user.uid);
    if let Err(e) = confine::set_process_caps(effective, inheritable) {
        setup_failed(status, e as i32, &format!("setting capabilities: {e}"));
    }
    if let Err(e) = sys.chdir(Path::new(&prepared.workdir)) {
        setup_failed(
            status,
            e.errno as i32,
            &format!("changing to the workdir: {e}"),
        );
    }

    let env = build_env(prepared.env, &user.home);
    let path = env_path(&env).to_string();
    let env: Vec<CString> = env
        .into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect();

    let stdio = match &tty {
        Some(slave) => [slave.as_raw_fd(); 3],
        None => [fds.stdin, fds.stdout, fds.stderr],
    };
    for (from, to) in stdio.into_iter().zip(0..) {
        // SAFETY: both are valid fds of this process; dup2 leaves the
        // copy without close-on-exec, as stdio must be.
        if unsafe { libc::dup2(from, to) } < 0 {
            let errno = Errno::last();
            setup_failed(status, errno as i32, &format!("dup2: {errno}"));
        }
    }
    reset_signals();
    // Set last: changing uid/gid clears it.
    die_with_parent(None);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    // Last, so that nothing above needs to be allowed by the profile.
    if confinement.no_new_privileges {
        if let Err(e) = confine::set_no_new_privs() {
            setup_failed(status, e as i32, &format!("setting no_new_privs: {e}"));
        }
        if let Err(e) = confine::install_seccomp(&prepared.seccomp) {
            setup_failed(status, libc::EPERM, &e);
        }
    }

    let errno = exec(&prepared.args, prepared.arg0, &path, &env);
    report(status, &error_record(Stage::Exec, errno as i32, ""));
    exit(if matches!(errno, Errno::ENOENT | Errno::ENOTDIR) {
        127
    } else {
        126
    })
}

/// Opens a pty in the container's devpts (the process is in its mount
/// namespace and root by now) and makes the slave, owned by `uid` as in
/// Docker, this process's controlling terminal (it is a session leader).
fn open_terminal(
    size: TerminalSize,
    uid: u32,
) -> Result<(OwnedFd, OwnedFd), (Errno, &'static str)> {
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .map_err(|e| (errno(e), "/dev/ptmx"))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the valid pointer given.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    Errno::result(r).map_err(|e| (e, "unlocking the pty"))?;
    // TIOCGPTPEER opens the slave through the master rather than by a path
    // someone in the container could have replaced.
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = Errno::result(slave).map_err(|e| (e, "opening the pty slave"))?;
    // SAFETY: the ioctl just returned this new fd, owned by nobody else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    set_window_size(&master, size).map_err(|e| (e, "setting the window size"))?;
    // SAFETY: fchown on a valid fd; -1 leaves the group (tty) as devpts set it.
    let r = unsafe { libc::fchown(slave.as_raw_fd(), uid, u32::MAX) };
    Errno::result(r).map_err(|e| (e, "chown of the pty slave"))?;
    // SAFETY: TIOCSCTTY with arg 0 only affects this session's terminal.
    let r = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(r).map_err(|e| (e, "making the pty the controlling terminal"))?;
    Ok((master, slave))
}

/// Sends the pty master to hyperstart over the status socket.
fn send_fd(status: RawFd, fd: &OwnedFd) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&[TAG_PTY])];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    if let Err(e) = sendmsg::<()>(status, &iov, &cmsg, MsgFlags::empty(), None) {
        setup_failed(status, e as i32, &format!("handing over the terminal: {e}"));
    }
}

/// hyperstart blocks SIGCHLD (for its signalfd) and ignores SIGPIPE; exec
/// keeps both, so the process would inherit them without this.
fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for signal in 1..=64 {
        // SAFETY: SIG_DFL is a valid disposition for every signal; the
        // kernel refuses (EINVAL) the ones that cannot be changed.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// execvp with PATH taken from the process's environment. Returns only on
/// failure, with the errno to report: EACCES if some candidate was not
/// executable, else the last "not found" or the first other error.
fn exec(args: &[CString], arg0: &str, path: &str, env: &[CString]) -> Errno {
    let mut saw_eacces = false;
    for candidate in exec_candidates(arg0, path) {
        let Ok(candidate) = CString::new(candidate) else {
            continue;
        };
        match nix::unistd::execve(&candidate, args, env) {
            Err(Errno::EACCES) => saw_eacces = true,
            Err(Errno::ENOENT | Errno::ENOTDIR) => {}
            Err(e) => return e,
            Ok(never) => match never {},
        }
    }
    if saw_eacces {
        Errno::EACCES
    } else {
        Errno::ENOENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_decode_in_any_order() {
        let mut bytes = pid_record(4242).to_vec();
        assert_eq!(
            parse_status(&bytes),
            StatusReport {
                pid: Some(4242),
                error: None
            }
        );
        let err = error_record(Stage::Exec, libc::ENOENT, "");
        bytes.extend(&err);
        let expected = StatusReport {
            pid: Some(4242),
            error: Some(ChildError {
                stage: Stage::Exec,
                errno: libc::ENOENT,
                message: String::new(),
            }),
        };
        assert_eq!(parse_status(&bytes), expected);
        // The process may report before the intermediate sent the pid.
        let mut swapped = err.clone();
        swapped.extend(pid_record(4242));
        assert_eq!(parse_status(&swapped), expected);
        // The terminal's record carries nothing but its fd.
        let mut with_pty = vec![TAG_PTY];
        with_pty.extend(pid_record(7));
        assert_eq!(parse_status(&with_pty).pid, Some(7));
        // Nothing at all: the intermediate died.
        assert_eq!(parse_status(&[]), StatusReport::default());
        // A truncated record is ignored rather than misread.
        assert_eq!(parse_status(&err[..err.len() - 1]), StatusReport::default());
        assert_eq!(parse_status(&[TAG_PID, 1, 2]), StatusReport::default());
    }

    #[test]
    fn long_setup_messages_are_truncated_on_a_char_boundary() {
        let message = "é".repeat(300);
        let record = error_record(Stage::Setup, 1, &message);
        assert!(record.len() < 512, "fits in PIPE_BUF");
        let report = parse_status(&record);
        let err = report.error.unwrap();
        assert_eq!(err.stage, Stage::Setup);
        assert_eq!(err.message.len(), MAX_MESSAGE);
        assert!(err.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn exec_errors_read_like_docker() {
        let exec = |errno| ChildError {
            stage: Stage::Exec,
            errno,
            message: String::new(),
        };
        let e = agent_error(&exec(libc::ENOENT), "foo");
        assert_eq!(e.kind, AgentErrorKind::CommandNotFound);
        assert_eq!(
            e.message,
            r#"exec: "foo": executable file not found in $PATH"#
        );
        assert_eq!(e.exit_code(), Some(127));
        let e = agent_error(&exec(libc::ENOENT), "/bin/foo");
        assert_eq!(
            e.message,
            r#"exec: "/bin/foo": stat /bin/foo: no such file or directory"#
        );
        let e = agent_error(&exec(libc::EACCES), "/etc");
        assert_eq!(e.kind, AgentErrorKind::CommandNotExecutable);
        assert_eq!(e.message, r#"exec: "/etc": permission denied"#);
        assert_eq!(e.exit_code(), Some(126));
        let e = agent_error(&exec(libc::ENOEXEC), "./script");
        assert_eq!(e.kind, AgentErrorKind::CommandNotExecutable);
        assert_eq!(e.message, r#"exec: "./script": exec format error"#);
        let setup = ChildError {
            stage: Stage::Setup,
            errno: 0,
            message: "unable to find user x".into(),
        };
        assert_eq!(agent_error(&setup, "sh").kind, AgentErrorKind::Failed);
    }

    #[test]
    fn env_gets_path_and_home_only_when_missing() {
        let env = build_env(&["A=1".into()], "/root");
        assert_eq!(
            env,
            vec![
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOME=/root".into()
            ]
        );
        let env = build_env(&["PATH=/opt/bin".into(), "HOME=/h".into()], "/root");
        assert_eq!(env, vec!["PATH=/opt/bin".to_string(), "HOME=/h".into()]);
        assert_eq!(env_path(&env), "/opt/bin");
        assert_eq!(env_path(&[]), DEFAULT_PATH);
    }

    #[test]
    fn exec_searches_path_from_the_process_env() {
        assert_eq!(
            exec_candidates("sh", "/usr/bin:/bin"),
            vec!["/usr/bin/sh", "/bin/sh"]
        );
        assert_eq!(exec_candidates("sh", ":/bin"), vec!["./sh", "/bin/sh"]);
        assert_eq!(exec_candidates("./run.sh", "/bin"), vec!["./run.sh"]);
        assert_eq!(exec_candidates("/bin/sh", "/usr/bin"), vec!["/bin/sh"]);
        assert!(exec_candidates("", "/bin").is_empty());
    }

    #[test]
    fn bad_specs_are_refused_before_forking() {
        let mut spec = ProcessSpec {
            id: "p".into(),
            args: vec![],
            env: vec![],
            workdir: String::new(),
            user: String::new(),
            terminal: false,
            terminal_size: None,
            stdio: 1,
            stderr: 2,
            confinement: Confinement::unconfined(),
            rlimits: Vec::new(),
        };
        assert_eq!(
            prepare(&spec).err().map(|e| e.kind),
            Some(AgentErrorKind::InvalidRequest)
        );
        spec.args = vec!["a\0b".into()];
        assert_eq!(
            prepare(&spec).err().map(|e| e.kind),
            Some(AgentErrorKind::InvalidRequest)
        );
        // A filter that cannot be built is refused before forking too.
        spec.args = vec!["sh".into()];
        spec.confinement.seccomp = Some(hyper_protocol::SeccompSpec {
            default_action: hyper_protocol::SeccompAction::Allow,
            rules: vec![hyper_protocol::SeccompRuleSpec {
                syscall: 1 << 20,
                action: hyper_protocol::SeccompAction::Errno(1),
                args: vec![],
            }],
        });
        let err = prepare(&spec).err().expect("refused");
        assert_eq!(err.kind, AgentErrorKind::InvalidRequest);
        assert!(err.message.contains("syscall"), "{}", err.message);
        spec.confinement = Confinement::unconfined();
        spec.workdir = "srv".into();
        assert_eq!(
            prepare(&spec).map(|p| p.workdir).ok().as_deref(),
            Some("/srv")
        );
        // So is a limit the host should not have sent.
        let limit = |r: &str, soft, hard| hyper_protocol::Rlimit {
            resource: r.into(),
            soft,
            hard,
        };
        spec.rlimits = vec![limit("nofile", 10, 5)];
        let err = prepare(&spec).err().expect("refused");
        assert!(
            err.message.contains("above the hard limit"),
            "{}",
            err.message
        );
        spec.rlimits = vec![limit("nofile", 64, 128), limit("core", 0, 0)];
        let Ok(prepared) = prepare(&spec) else {
            panic!("a valid spec was refused");
        };
        assert_eq!(
            prepared.rlimits,
            vec![
                (nix::sys::resource::Resource::RLIMIT_NOFILE, 64, 128),
                (nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
            ]
        );
    }
}
