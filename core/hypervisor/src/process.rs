//! The backend kit's process-VM helper: a VM that is one host process (QEMU,
//! hyper-vmm), spawned by the backend or taken over from an earlier host.
//!
//! Both kinds go through one path: a pidfd ([`AdoptedProcess`]) tells when
//! the process ends and signals exactly it, never a recycled pid; a spawned
//! child is also reaped for its exit status. One task per VM watches it and
//! publishes the exit on a watch channel that any number of waiters read.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use crate::adopt::AdoptedProcess;
use crate::{CgroupPlacement, HypervisorError, VmExit, VmStats};

type ExitSlot = Option<Result<VmExit, HypervisorError>>;

/// One VM process, watched by its own task on the backend's runtime.
/// Dropping it does not stop the VM; the task still watches (and reaps) it.
pub struct VmProcess {
    /// What the process is, for messages ("QEMU", "hyper-vmm").
    what: &'static str,
    pid: u32,
    exit: watch::Receiver<ExitSlot>,
    signal_tx: mpsc::Sender<i32>,
}

impl VmProcess {
    /// Spawns `command` and starts watching it. `on_exit(pid)` runs once
    /// the process has ended (removing its run files). Needs a tokio
    /// runtime that outlives the VM (the plugin's own).
    pub fn spawn(
        command: &mut Command,
        what: &'static str,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> io::Result<Self> {
        let child = command.spawn()?;
        Self::watch_child(child, what, on_exit)
    }

    /// Starts watching a child spawned by the backend itself.
    pub fn watch_child(
        child: Child,
        what: &'static str,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> io::Result<Self> {
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other(format!("{what} exited before it could be watched")))?;
        // Our unreaped child: the pid cannot be recycled before we reap it,
        // so no start time is needed to open it.
        let process =
            AdoptedProcess::open(pid, None).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self::watch(process, Some(child), what, on_exit))
    }

    /// Starts watching a process taken over from an earlier host
    /// ([`crate::adopt::take_over`]); its exit status went to init, so only
    /// the fact that it ended is known.
    pub fn adopted(
        process: AdoptedProcess,
        what: &'static str,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> Self {
        Self::watch(process, None, what, on_exit)
    }

    fn watch(
        process: AdoptedProcess,
        child: Option<Child>,
        what: &'static str,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> Self {
        let (exit_tx, exit) = watch::channel(None);
        let (signal_tx, signal_rx) = mpsc::channel(4);
        let pid = process.pid();
        tokio::spawn(watch_process(
            process, child, what, signal_rx, exit_tx, on_exit,
        ));
        Self {
            what,
            pid,
            exit,
            signal_tx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit slot itself, for a task that lives as long as the process
    /// (the QEMU console cap): `Some` once it has ended.
    pub fn exit_watch(&self) -> watch::Receiver<ExitSlot> {
        self.exit.clone()
    }

    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Resolves when the process has ended and `on_exit` has run. Cancel
    /// safe and free: a dropped waiter holds nothing.
    pub async fn wait(&self) -> Result<VmExit, HypervisorError> {
        let mut exit = self.exit.clone();
        let slot = exit.wait_for(Option::is_some).await.map_err(|_| {
            HypervisorError::Plugin(format!("the task watching {} has stopped", self.what))
        })?;
        slot.clone().unwrap_or_else(|| {
            Err(HypervisorError::Plugin(format!(
                "the task watching {} published nothing",
                self.what
            )))
        })
    }

    /// Whether the process ended within `limit`.
    pub async fn wait_within(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    /// Asks the watching task to send `signal` (through the pidfd).
    pub fn signal(&self, signal: i32) {
        // Full: signals are already pending. Closed: the process is gone.
        let _ = self.signal_tx.try_send(signal);
    }

    /// SIGKILL, then waits up to `limit` (SIGKILL cannot be ignored; the
    /// limit only guards against a stuck watcher).
    pub async fn kill(&self, limit: Duration) -> Result<(), HypervisorError> {
        if self.has_exited() {
            return Ok(());
        }
        self.signal(libc::SIGKILL);
        if self.wait_within(limit).await {
            Ok(())
        } else {
            Err(HypervisorError::Io(format!(
                "{} (pid {}) has not exited {limit:?} after SIGKILL",
                self.what, self.pid
            )))
        }
    }

    /// Host memory (RSS and PSS) and CPU use, while the process runs.
    pub fn stats(&self, vm: &str) -> Result<VmStats, HypervisorError> {
        let gone = || HypervisorError::Io(format!("VM {vm} is no longer running"));
        if self.has_exited() {
            return Err(gone());
        }
        let stats = read_stats(self.pid)
            .map_err(|e| HypervisorError::Io(format!("reading /proc/{}: {e}", self.pid)))?;
        // Ended meanwhile: the figures may be of a reused pid.
        if self.has_exited() {
            return Err(gone());
        }
        Ok(stats)
    }
}

async fn watch_process(
    process: AdoptedProcess,
    child: Option<Child>,
    what: &'static str,
    mut signal_rx: mpsc::Receiver<i32>,
    exit_tx: watch::Sender<ExitSlot>,
    on_exit: impl FnOnce(u32),
) {
    let pid = process.pid();
    loop {
        tokio::select! {
            () = process.exited() => break,
            sig = signal_rx.recv() => match sig {
                Some(sig) => {
                    if let Err(e) = process.signal(sig) {
                        tracing::warn!(pid, sig, "cannot signal {what}: {e}");
                    }
                }
                // The VM handle is gone; the process is still ours to watch.
                None => {
                    process.exited().await;
                    break;
                }
            },
        }
    }
    let result = match child {
        Some(mut child) => child
            .wait()
            .await
            .map(|s| VmExit {
                code: s.code(),
                signal: s.signal(),
                helper_died: None,
            })
            .map_err(|e| HypervisorError::Io(format!("waiting for {what} (pid {pid}): {e}"))),
        // Not our child: its status went to init; only the fact is known.
        None => Ok(VmExit {
            code: None,
            signal: None,
            helper_died: None,
        }),
    };
    tracing::info!(pid, exit = ?result, "{what} has exited");
    on_exit(pid);
    exit_tx.send_replace(Some(result));
}

/// Puts the process `command` starts into the pod's host cgroup before it
/// runs any code of its own: each `cgroup.procs` file is opened here, in
/// the parent (so a missing or unwritable cgroup fails the spawn with its
/// path, before anything runs), and the child writes `0` (itself) to each
/// between fork and exec. Every process a backend starts for a VM (the VMM,
/// `virtiofsd`) goes through this.
pub fn place_in_cgroup(
    command: &mut std::process::Command,
    placement: &CgroupPlacement,
) -> io::Result<()> {
    let mut files: Vec<OwnedFd> = Vec::with_capacity(placement.procs_files.len());
    for path in &placement.procs_files {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open the pod's cgroup file {}: {e}", path.display()),
                )
            })?;
        files.push(file.into());
    }
    // SAFETY: between fork and exec the closure only calls write(2), which
    // is async-signal-safe, on descriptors it owns (kept open by the
    // closure until the Command is dropped); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for fd in &files {
                // "0": the writing process itself, on cgroup v1 and v2.
                let n = libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if n != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// The rlimits a VMM process runs with (and `no_new_privs`): see
/// [`harden`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmLimits {
    /// `RLIMIT_NOFILE`, soft and hard.
    pub max_open_files: u64,
    /// `RLIMIT_FSIZE`, soft and hard: the largest file the VMM may grow,
    /// in bytes (its console log, its run files; a disk it writes).
    pub max_file_bytes: u64,
}

/// Open files a VMM may hold: QEMU and hyper-vmm use a few dozen (disks,
/// taps, eventfds, sockets); 4096 leaves room for many queues.
pub const VMM_MAX_OPEN_FILES: u64 = 4096;
/// The smallest file size limit a VMM gets: far beyond any console log
/// (the backends cut those back at `console_log_limit_mib`).
pub const VMM_MIN_FILE_BYTES: u64 = 4 << 30;

impl VmmLimits {
    /// The limits for a VM whose writable files (disks) are `disks`: the
    /// file size limit covers the largest of them (a write past it would
    /// kill the VMM with SIGXFSZ), never below [`VMM_MIN_FILE_BYTES`].
    pub fn for_disks<'a>(disks: impl IntoIterator<Item = &'a std::path::Path>) -> Self {
        let largest = disks
            .into_iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        Self {
            max_open_files: VMM_MAX_OPEN_FILES,
            max_file_bytes: largest
                .checked_next_power_of_two()
                .unwrap_or(u64::MAX)
                .max(VMM_MIN_FILE_BYTES),
        }
    }
}

/// Confines the process `command` starts before it execs: core dumps off
/// (`RLIMIT_CORE` 0: a VMM's memory is the guest's), `RLIMIT_NOFILE` and
/// `RLIMIT_FSIZE` bounded as `limits` says, and `PR_SET_NO_NEW_PRIVS` (no
/// setuid or file-capability gain through exec, and the precondition of an
/// unprivileged seccomp filter).
pub fn harden(command: &mut std::process::Command, limits: VmmLimits) {
    let rlimits = [
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NOFILE, limits.max_open_files),
        (libc::RLIMIT_FSIZE, limits.max_file_bytes),
    ];
    // SAFETY: between fork and exec the closure only calls setrlimit(2)
    // and prctl(2), both async-signal-safe, on values built before the
    // fork; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            for (resource, value) in rlimits {
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Everything the kit does to a VMM process before it runs (QEMU,
/// hyper-vmm): into the pod's cgroup when the spec names one, then
/// [`harden`] with limits sized for the spec's disks.
pub fn confine_vmm(command: &mut std::process::Command, spec: &crate::VmSpec) -> io::Result<()> {
    if let Some(placement) = &spec.cgroup {
        place_in_cgroup(command, placement)?;
    }
    let writable = spec
        .disks
        .iter()
        .filter(|d| !d.read_only)
        .map(|d| d.path.as_path());
    harden(command, VmmLimits::for_disks(writable));
    Ok(())
}

/// `VmRSS:     1234 kB` in /proc/PID/status, in bytes.
pub fn parse_status_rss(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

/// `Pss:       1234 kB` in /proc/PID/smaps_rollup, in bytes.
pub fn parse_smaps_pss(smaps: &str) -> Option<u64> {
    kib_field(smaps, "Pss:")
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// The fields of /proc/PID/stat after the command name, which is in
/// parentheses and may itself contain spaces and parentheses. Index 0 is
/// the state (field 3 of proc(5)).
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let end = stat.rfind(')')?;
    Some(stat[end + 1..].split_whitespace().collect())
}

/// utime + stime from /proc/PID/stat, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let fields = stat_fields(stat)?;
    // utime (14) and stime (15) of proc(5) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The one-letter state from /proc/PID/stat (`R`, `S`, `Z` …).
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Host memory and CPU use of `pid`: RSS from status, PSS from
/// smaps_rollup (Linux 4.14 and ptrace access: optional), CPU from stat.
pub fn read_stats(pid: u32) -> io::Result<VmStats> {
    let path = |file: &str| format!("/proc/{pid}/{file}");
    let malformed = |file: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {}", path(file)),
        )
    };
    let status = std::fs::read_to_string(path("status"))?;
    let rss_bytes = parse_status_rss(&status).ok_or_else(|| malformed("status"))?;
    let pss_bytes = std::fs::read_to_string(path("smaps_rollup"))
        .ok()
        .and_then(|s| parse_smaps_pss(&s));
    let stat = std::fs::read_to_string(path("stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| malformed("stat"))?;
    Ok(VmStats {
        rss_bytes,
        pss_bytes,
        cpu_time_ms: ticks.saturating_mul(1000) / clock_ticks_per_second(),
    })
}

/// Whether `pid` exists and is not a zombie.
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat_state(&s))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let status = "Name:\tqemu\nVmPeak:\t 9000 kB\nVmRSS:\t  133120 kB\n";
        assert_eq!(parse_status_rss(status), Some(133120 * 1024));
        assert_eq!(
            parse_smaps_pss("Rss: 10 kB\nPss:    7 kB\nPss_Anon: 1 kB\n"),
            Some(7168)
        );
        let stat =
            "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 150 25 0 0 20 0 3 0 1000";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_state(stat), Some('S'));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process() {
        let me = std::process::id();
        let stats = read_stats(me).unwrap();
        assert!(stats.rss_bytes > 0);
        assert!(stats.pss_bytes.is_some_and(|p| p > 0));
        assert!(is_running(me));
    }

    #[tokio::test]
    async fn a_hardened_process_has_its_limits_and_no_new_privs() {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("grep NoNewPrivs /proc/self/status; ulimit -c; ulimit -n; ulimit -f")
            .stdout(std::process::Stdio::piped());
        harden(
            cmd.as_std_mut(),
            VmmLimits {
                max_open_files: 321,
                max_file_bytes: 1 << 20,
            },
        );
        let out = cmd.output().await.unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().nth(1), Some("1"), "{text}");
        // ulimit -f counts 512-byte blocks in POSIX sh.
        assert_eq!(&lines[1..], &["0", "321", "2048"], "{text}");
    }

    #[test]
    fn file_size_limit_covers_the_largest_disk() {
        let dir = std::env::temp_dir().join(format!("hyper-vmm-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("d.img");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len((5 << 30) + 1).unwrap();
        let l = VmmLimits::for_disks([disk.as_path()]);
        assert_eq!(l.max_file_bytes, 8 << 30);
        assert_eq!(l.max_open_files, VMM_MAX_OPEN_FILES);
        let none = VmmLimits::for_disks([dir.join("missing").as_path()]);
        assert_eq!(none.max_file_bytes, VMM_MIN_FILE_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn placing_in_a_missing_cgroup_fails_before_the_spawn_naming_it() {
        let mut cmd = Command::new("true");
        let placement = CgroupPlacement {
            procs_files: vec!["/nonexistent/hyper/pod-x/cgroup.procs".into()],
        };
        let err = place_in_cgroup(cmd.as_std_mut(), &placement).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/hyper/pod-x"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_placed_process_writes_itself_into_each_file() {
        // A plain file stands in for cgroup.procs: the child writes "0".
        let path = std::env::temp_dir().join(format!("hyper-procs-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        let mut cmd = Command::new("true");
        let placement = CgroupPlacement {
            procs_files: vec![path.clone()],
        };
        place_in_cgroup(cmd.as_std_mut(), &placement).unwrap();
        assert!(cmd.status().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0");
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn a_spawned_process_is_watched_signalled_and_reaped() {
        let (tx, rx) = std::sync::mpsc::channel();
        let vm = VmProcess::spawn(Command::new("sleep").arg("30"), "sleep", move |pid| {
            let _ = tx.send(pid);
        })
        .unwrap();
        assert!(!vm.has_exited());
        assert!(vm.stats("t").unwrap().rss_bytes > 0);
        assert!(!vm.wait_within(Duration::from_millis(100)).await);
        vm.kill(Duration::from_secs(10)).await.unwrap();
        let exit = vm.wait().await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGKILL));
        assert_eq!(rx.recv().unwrap(), vm.pid());
        assert!(vm.stats("t").is_err());
        assert!(!is_running(vm.pid()));
    }
}
