//! Host processes a backend did not spawn itself: the VM processes of an
//! earlier hyperd, taken over after a restart. They are not our children, so
//! there is no exit status to reap; a pidfd tells when they end and signals
//! exactly them, never a recycled pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use crate::HypervisorError;

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat): with the pid, it names one process for good.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
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
mod tests {
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
        adopted.signal(libc::SIGKILL).unwrap();
        // Reaped by us, its parent, so the pidfd sees the exit.
        let _ = child.wait();
        tokio::time::timeout(std::time::Duration::from_secs(5), adopted.exited())
            .await
            .unwrap();
        assert!(AdoptedProcess::open(pid, start).is_err());
    }
}
