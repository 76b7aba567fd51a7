//! hyperstart: the guest's init. It mounts the API filesystems, opens the
//! channel named on the kernel command line, says READY and serves the
//! guest protocol (see the `hyper-protocol` crate) until the pod is
//! destroyed, when it powers the VM off.

mod agent;
mod cgroup;
mod channel;
mod cmdline;
mod confine;
mod flow;
mod log;
mod net;
mod resume;
mod rootfs;
mod spawn;
mod sys;
mod user;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::agent::{Agent, Options};
use crate::channel::Channel;
use crate::log::log;
use crate::sys::{RealSys, Sys};

/// How long the channel may take to appear before hyperstart gives up.
const CHANNEL_WAIT: Duration = Duration::from_secs(10);

/// Overrides for running hyperstart as an ordinary process (tests, manual
/// smoke tests). Ignored as PID 1, where the kernel passes stray command
/// line words as arguments.
#[derive(Default)]
struct DevOptions {
    cmdline: Option<String>,
    channel_fd: Option<i32>,
    run_dir: Option<PathBuf>,
}

fn dev_options() -> DevOptions {
    let mut opts = DevOptions::default();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.into_string().ok());
        match (arg.to_str(), value) {
            (Some("--cmdline"), Some(v)) => opts.cmdline = Some(v),
            (Some("--channel-fd"), Some(v)) => opts.channel_fd = v.parse().ok(),
            (Some("--run-dir"), Some(v)) => opts.run_dir = Some(v.into()),
            _ => {
                log!("usage: hyperstart [--cmdline TEXT] [--channel-fd FD] [--run-dir DIR]");
                std::process::exit(2);
            }
        }
    }
    opts
}

fn main() {
    let pid1 = std::process::id() == 1;
    let dev = if pid1 {
        DevOptions::default()
    } else {
        dev_options()
    };
    if pid1 {
        boot();
    }
    let cmdline = match dev.cmdline {
        Some(c) => c,
        None => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    };
    log::set_debug(cmdline::debug(&cmdline));

    let signals = match setup_signals() {
        Ok(s) => s,
        Err(e) => fatal(pid1, &format!("cannot watch SIGCHLD: {e}")),
    };
    let spec = cmdline::channel(&cmdline);
    let channel = match dev.channel_fd {
        // SAFETY: whoever started us passed this fd for us to own; nothing
        // else in this process uses it.
        Some(fd) => Channel::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }),
        None => match Channel::open(&spec, CHANNEL_WAIT) {
            Ok(c) => c,
            Err(e) => fatal(pid1, &e),
        },
    };
    let run_dir = dev
        .run_dir
        .unwrap_or_else(|| PathBuf::from(rootfs::RUN_DIR));
    let mut agent = Agent::new(channel, signals, Options { pid1, run_dir });
    log!(
        "channel open, saying READY ({} {})",
        env!("CARGO_PKG_VERSION"),
        describe(&spec, dev.channel_fd)
    );
    agent.send_ready();
    agent.run()
}

fn describe(spec: &cmdline::ChannelSpec, fd: Option<i32>) -> String {
    match (fd, spec) {
        (Some(fd), _) => format!("channel fd {fd}"),
        (None, cmdline::ChannelSpec::Device(p)) => format!("channel {}", p.display()),
        (None, cmdline::ChannelSpec::Port(n)) => format!("channel port {n}"),
    }
}

/// PID 1 duties before anything else.
fn boot() {
    let mut sys = RealSys;
    if sys.root_is_rootfs() {
        if let Err(e) = rootfs::switch_to_tmpfs_root(&mut sys) {
            log!(
                "staying on the initramfs root ({e}); containers will chroot instead of pivot_root"
            );
        }
    }
    for e in rootfs::boot_mounts(&mut sys) {
        log!("{e}");
    }
    if let Err(e) = cgroup::mount(&mut sys) {
        log!("{e}; containers get no cgroup and OOM kills are not reported");
    }
    ensure_stdio();
    std::env::set_var("PATH", spawn::DEFAULT_PATH);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
}

/// Without /dev/console in the initramfs the kernel starts init with no fds
/// 0-2; pipes would then land there and be clobbered by the dup2 calls that
/// set up a process's stdio.
fn ensure_stdio() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only asks whether the fd number is open; an unused
        // number gives EBADF and nothing is touched.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let open = |path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
        };
        // Opened in order, each lands on the lowest free fd: the hole.
        if let Ok(file) = open("/dev/console").or_else(|_| open("/dev/null")) {
            std::mem::forget(file);
        }
    }
}

fn setup_signals() -> nix::Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()?;
    // SAFETY: SIG_IGN installs no handler code; a write to a pipe whose
    // reader died must be an EPIPE error, not hyperstart's death.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// Nothing to serve: as PID 1, power off so the host sees the VM stop (with
/// the reason on the console) instead of waiting for a READY that never comes.
fn fatal(pid1: bool, message: &str) -> ! {
    log!("fatal: {message}");
    if pid1 {
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        // PID 1 must never exit (the kernel would panic); wait to be killed.
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::process::exit(1)
}
