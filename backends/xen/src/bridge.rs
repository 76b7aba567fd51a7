//! The console bridge process of one domain (`hyper-xen-console`): it
//! serves the agent socket from the domain's console pty (see
//! [`crate::console::serve`]) and outlives the plugin host that started it,
//! as QEMU outlives it on the QEMU backend. So a plugin host that dies and
//! is restarted costs hyperd's agent session nothing: the socket hyperd is
//! connected to is still served.
//!
//! * Started by the plugin with the pty and the bound listener as inherited
//!   descriptors (opened and checked here, so every error has its path),
//!   in the pod's host cgroup, in a process group of its own, hardened like
//!   a VMM, and it drops to `nobody` before it serves.
//! * Recorded (pid and start time) in the domain's owner record; a plugin
//!   that takes the domain over adopts the bridge only if that pid still
//!   has that start time and its command line names this VM's agent
//!   socket. Otherwise it starts a new one on the same socket path.
//! * Ended with the domain: by itself when the pty hangs up, and killed by
//!   the plugin on every end it sees (the domain gone, a failed launch or
//!   takeover, the orphan sweep).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use hyper_hypervisor::adopt::{cmdline_mentions, process_start_time, AdoptedProcess};
use hyper_hypervisor::process::{harden, place_in_cgroup, VmmLimits};
use hyper_hypervisor::CgroupPlacement;

/// The bridge binary's file name.
pub const BINARY: &str = "hyper-xen-console";
/// Open files the bridge needs: stdio, the pty, the listener, one client.
const MAX_OPEN_FILES: u64 = 16;

/// Where the bridge binary is: beside the running binary (the plugin host,
/// or one level up for cargo's test binaries in `deps/`), else in
/// `<prefix>/lib/hyper/` next to the host's `<prefix>/bin/`.
pub fn default_binary() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dir = exe.as_deref().and_then(Path::parent);
    let candidates = dir.into_iter().flat_map(|d| {
        [
            Some(d.join(BINARY)),
            d.parent().map(|p| p.join(BINARY)),
            d.parent().map(|p| p.join("lib/hyper").join(BINARY)),
        ]
        .into_iter()
        .flatten()
    });
    let found = candidates.into_iter().find(|p| p.is_file());
    found.unwrap_or_else(|| PathBuf::from("/usr/local/lib/hyper").join(BINARY))
}

/// A running bridge, started here or adopted.
pub struct Bridge {
    process: AdoptedProcess,
    start: u64,
    /// Set when this process started it: reaped once it has ended.
    child: Option<tokio::process::Child>,
}

impl Bridge {
    /// Starts the bridge of the VM `name` serving `listener` (bound at
    /// `agent`) from `pty`. Needs a tokio runtime.
    pub fn spawn(
        binary: &Path,
        name: &str,
        agent: &Path,
        listener: UnixListener,
        pty: OwnedFd,
        cgroup: Option<&CgroupPlacement>,
    ) -> Result<Self, String> {
        let (pty_fd, listen_fd) = (pty.as_raw_fd(), listener.as_raw_fd());
        let mut command = std::process::Command::new(binary);
        command
            .arg("--vm")
            .arg(name)
            .arg("--socket")
            .arg(agent)
            .arg("--pty-fd")
            .arg(pty_fd.to_string())
            .arg("--listen-fd")
            .arg(listen_fd.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Never the plugin host's stderr: a pipe to hyperd that would
            // break (SIGPIPE) when the host dies.
            .stderr(Stdio::null())
            .process_group(0);
        if let Some(placement) = cgroup {
            place_in_cgroup(&mut command, placement)
                .map_err(|e| format!("console bridge of {name}: {e}"))?;
        }
        harden(
            &mut command,
            VmmLimits {
                max_open_files: MAX_OPEN_FILES,
                // It writes no files at all.
                max_file_bytes: 0,
            },
        );
        // SAFETY: between fork and exec the closure only calls fcntl(2),
        // async-signal-safe, on two descriptors this process keeps open
        // (`pty` and `listener` live until after the spawn); it allocates
        // nothing.
        unsafe {
            command.pre_exec(move || {
                for fd in [pty_fd, listen_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        // Its copies are its own now.
        drop((pty, listener));
        let pid = child
            .id()
            .ok_or_else(|| format!("{} ended at once", binary.display()))?;
        let start = process_start_time(pid)
            .ok_or_else(|| format!("{} (pid {pid}) ended at once", binary.display()))?;
        let process = AdoptedProcess::open(pid, Some(start)).map_err(|e| e.to_string())?;
        Ok(Self {
            process,
            start,
            child: Some(child),
        })
    }

    /// The bridge a plugin host before this one started for the VM whose
    /// agent socket is `agent`: only if `pid` is still the process that
    /// started at `start` and its command line names that socket.
    pub fn adopt(pid: u32, start: u64, agent: &Path) -> Option<Self> {
        let process = AdoptedProcess::open(pid, Some(start)).ok()?;
        if !cmdline_mentions(pid, agent.as_os_str().as_encoded_bytes()) || process.has_exited() {
            return None;
        }
        Some(Self {
            process,
            start,
            child: None,
        })
    }

    /// For the owner record: pid and start time.
    pub fn id(&self) -> (u32, u64) {
        (self.process.pid(), self.start)
    }

    pub fn has_exited(&self) -> bool {
        self.process.has_exited()
    }

    /// Kills it (through its pidfd: never a recycled pid) and waits until
    /// it is gone.
    pub async fn stop(mut self) {
        if !self.process.has_exited() {
            let _ = self.process.signal(libc::SIGKILL);
            self.process.exited().await;
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        }
    }
}

/// Ends the bridge an owner record names, if it is still the one recorded
/// for `agent` (the domain is gone or given up).
pub async fn stop_recorded(bridge: Option<(u32, u64)>, agent: &Path) {
    if let Some(b) = bridge.and_then(|(pid, start)| Bridge::adopt(pid, start, agent)) {
        tracing::info!(
            pid = b.id().0,
            "stopping the console bridge of a domain that is gone"
        );
        b.stop().await;
    }
}
