//! Host processes a backend did not spawn itself: the VM processes of an
//! earlier hyperd, taken over after a restart. They are not our children, so
//! there is no exit status to reap; a pidfd tells when they end and signals
//! exactly them, never a recycled pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use tokio::io::unix::AsyncFd;

use crate::{AgentChannel, HypervisorError, VmInfo, VmSpec};

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat): with the pid, it names one process for good.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    crate::process::stat_fields(&stat)?.get(19)?.parse().ok()
}

/// Whether one of `pid`'s arguments contains `needle` (a backend's proof
/// that a process serves one of its run directories).
pub fn cmdline_mentions(pid: u32, needle: &[u8]) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    !needle.is_empty()
        && cmdline
            .split(|&b| b == 0)
            .any(|arg| arg.windows(needle.len()).any(|w| w == needle))
}

/// The common part of a backend's `recover`: the VM process recorded in
/// `info` is taken over only if it is still the one that started at
/// `pid_start` and `owns(pid)` (the backend's own proof that the process
/// runs this VM's run directory) holds. Without a recorded start time the
/// pid could have been recycled, so such a record is never taken over.
/// Returns the VM's info with its agent socket at `agent`, and the process.
pub fn take_over(
    spec: &VmSpec,
    info: &VmInfo,
    pid_start: Option<u64>,
    agent: &Path,
    owns: impl FnOnce(u32) -> bool,
) -> Result<(VmInfo, AdoptedProcess), HypervisorError> {
    let gone = || HypervisorError::NotFound(spec.id.clone());
    let pid = info.pid.ok_or_else(gone)?;
    if pid_start.is_none() || !owns(pid) {
        return Err(gone());
    }
    let process = AdoptedProcess::open(pid, pid_start)?;
    let info = VmInfo {
        id: spec.id.clone(),
        agent_channel: AgentChannel::UnixSocket(agent.to_path_buf()),
        pid: Some(pid),
    };
    Ok((info, process))
}

pub struct AdoptedProcess {
    pid: u32,
    pidfd: AsyncFd<OwnedFd>,
}

impl AdoptedProcess {
    /// Opens `pid` if it is still the process that started at `start`
    /// (checked after the pidfd is open, so the pidfd cannot name a newer
    /// process with a recycled pid). Needs a tokio runtime.
    pub fn open(pid: u32, start: Option<u64>) -> Result<Self, HypervisorError> {
        let gone = || HypervisorError::NotFound(format!("process {pid} has exited"));
        let raw_pid = libc::pid_t::try_from(pid).map_err(|_| gone())?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            return Err(gone());
        }
        let fd = i32::try_from(fd).map_err(|_| gone())?;
        // SAFETY: pidfd_open returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match (start, process_start_time(pid)) {
            (Some(expected), Some(actual)) if expected == actual => {}
            (None, Some(_)) => {}
            _ => return Err(gone()),
        }
        // SAFETY: `fd` is an OwnedFd that the AsyncFd owns from here on, so
        // it stays open and names the same pidfd for the AsyncFd's lifetime.
        let pidfd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| HypervisorError::Io(format!("watching process {pid}: {e}")))?;
        Ok(Self { pid, pidfd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        // A pidfd becomes readable, for good, when its process exits.
        if let Ok(guard) = self.pidfd.readable().await {
            drop(guard);
        }
    }

    /// Whether the process has exited, without waiting (a zero-timeout
    /// poll of the pidfd).
    pub fn has_exited(&self) -> bool {
        let mut fds = libc::pollfd {
            fd: self.pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own, with a zero timeout.
        let n = unsafe { libc::poll(&mut fds, 1, 0) };
        n > 0 && fds.revents & libc::POLLIN != 0
    }

    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a pidfd we own, a plain signal
        // number, no siginfo and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[tokio::test]
    async fn an_adopted_process_is_watched_and_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = process_start_time(pid);
        assert!(AdoptedProcess::open(pid, start.map(|s| s + 1)).is_err());
        let adopted = AdoptedProcess::open(pid, start).unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), adopted.exited())
                .await
                .is_err()
        );
        assert!(!adopted.has_exited());
        adopted.signal(libc::SIGKILL).unwrap();
        // Reaped by us, its parent, so the pidfd sees the exit.
        let _ = child.wait();
        tokio::time::timeout(std::time::Duration::from_secs(5), adopted.exited())
            .await
            .unwrap();
        assert!(adopted.has_exited());
        assert!(AdoptedProcess::open(pid, start).is_err());
    }

    /// A spec with nothing in it, for the kit's tests.
    pub(crate) fn spec(id: &str) -> VmSpec {
        VmSpec {
            id: id.into(),
            kernel: "k".into(),
            initrd: "i".into(),
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            console_log: "c".into(),
            run_dir: "r".into(),
            nics: Vec::new(),
            shares: Vec::new(),
            cgroup: None,
            save_as_template: false,
        }
    }

    #[tokio::test]
    async fn take_over_needs_the_start_time_and_the_backends_proof() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = process_start_time(pid);
        let spec = spec("vm1");
        let info = VmInfo {
            id: "vm1".into(),
            agent_channel: AgentChannel::UnixSocket("old".into()),
            pid: Some(pid),
        };
        let agent = Path::new("/run/x/agent.sock");
        let refused = |r: Result<(VmInfo, AdoptedProcess), HypervisorError>| matches!(r, Err(HypervisorError::NotFound(id)) if id == "vm1");
        // Not the backend's process, no start time, no pid, a wrong start time.
        assert!(refused(take_over(&spec, &info, start, agent, |_| false)));
        assert!(refused(take_over(&spec, &info, None, agent, |_| true)));
        let no_pid = VmInfo {
            pid: None,
            ..info.clone()
        };
        assert!(refused(take_over(&spec, &no_pid, start, agent, |_| true)));
        // A recycled pid: the process open fails with its own message.
        let wrong = start.map(|s| s + 1);
        assert!(matches!(
            take_over(&spec, &info, wrong, agent, |_| true),
            Err(HypervisorError::NotFound(_))
        ));

        let mut asked = None;
        let (got, process) = take_over(&spec, &info, start, agent, |p| {
            asked = Some(p);
            true
        })
        .unwrap();
        assert_eq!(asked, Some(pid));
        assert_eq!(got.pid, Some(pid));
        assert_eq!(got.agent_channel, AgentChannel::UnixSocket(agent.into()));
        assert_eq!(process.pid(), pid);
        process.signal(libc::SIGKILL).unwrap();
        let _ = child.wait();
    }
}
