//! One cgroup v2 group per container, so an OOM kill in the guest can be
//! told apart from any other SIGKILL (Docker's `OOMKilled`).
//!
//! At boot, PID 1 mounts cgroup2 at [`ROOT`] and enables the `memory` and
//! `pids` controllers for the groups below it. Each container gets
//! `ROOT/container-<id>`; the intermediate process of every process started
//! in the container (its init and its execs) moves itself there before it
//! enters the container's namespaces, so everything the container runs is
//! charged to that group. The group's `memory.events` counts `oom_kill`s of
//! its processes by any OOM killer: its own limit's or the kernel's global
//! one when the whole VM runs out of memory (the kernel raises the event
//! before it sends the SIGKILL, so it is there when the victim is reaped).
//!
//! A container's limits ([`ResourceLimits`]: `memory.max`, `pids.max`,
//! `cpu.max`, `cpu.weight`) are written when its group is made, before its
//! first process joins it, so nothing it runs ever runs unlimited. A limit
//! whose file cannot be written refuses the container: a limit asked for is
//! never silently dropped.
//!
//! hyperstart run as an ordinary process (tests) has no groups: containers
//! then run where hyperstart runs and are never reported OOM-killed, and a
//! container with limits is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use hyper_protocol::ResourceLimits;
use nix::mount::MsFlags;

use crate::log::{debug, log};
use crate::sys::{Sys, SysResult};

/// Where PID 1 mounts cgroup2.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The controllers each container's group gets (`cpu` for `cpu.max` and
/// `cpu.weight`; a kernel without it only refuses CPU limits).
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// `memory.events` is six short lines; anything longer is not the kernel's.
const MAX_EVENTS_FILE: u64 = 4096;

/// PID 1 at boot: mounts cgroup2 at [`ROOT`] (already mounted is fine).
///
/// With `favordynmods` (Linux 6.0+): every container start moves a process
/// into its group, and without it each move waits for an RCU grace period
/// while hyperstart, single-threaded, waits for the move. Under TCG on a
/// loaded host (twenty VMs booting at once) that stalled a request past the
/// host's 60 s bound. The option makes moves cheap at a small cost to fork
/// and exit; an older kernel that refuses it gets a plain mount.
pub fn mount(sys: &mut dyn Sys) -> SysResult {
    let root = Path::new(ROOT);
    let _ = sys.mkdir_all(root, 0o755);
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut result = sys.mount(
        Some("cgroup2"),
        root,
        Some("cgroup2"),
        flags,
        Some("favordynmods"),
    );
    if matches!(&result, Err(e) if e.errno == nix::errno::Errno::EINVAL) {
        result = sys.mount(Some("cgroup2"), root, Some("cgroup2"), flags, None);
    }
    match result {
        Err(e) if e.errno == nix::errno::Errno::EBUSY => Ok(()),
        other => other,
    }
}

/// The containers' groups under a cgroup2 mount.
#[derive(Debug, Clone)]
pub struct Groups {
    root: PathBuf,
}

impl Groups {
    /// Enables the memory, pids and cpu controllers for the groups under `root`
    /// and returns the groups, or why there are none (no cgroup2 there, or
    /// no memory controller: OOM kills could not be told then).
    pub fn enable(root: &Path) -> Result<Groups, String> {
        let available = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_err(|e| format!("no cgroup2 at {}: {e}", root.display()))?;
        let control = root.join("cgroup.subtree_control");
        for c in CONTROLLERS {
            if !available.split_whitespace().any(|a| a == c) {
                if c == "memory" {
                    return Err(format!(
                        "the guest kernel has no memory controller ({})",
                        available.trim()
                    ));
                }
                continue;
            }
            // One controller per write: a missing one must not keep the
            // others from being enabled. Only memory is essential (OOM
            // reports); without pids or cpu only those limits are refused.
            if let Err(e) = std::fs::write(&control, format!("+{c}")) {
                if c == "memory" {
                    return Err(format!("enabling the {c} controller: {e}"));
                }
                log!("enabling the {c} controller: {e}; containers cannot get {c} limits");
            }
        }
        Ok(Groups {
            root: root.to_path_buf(),
        })
    }

    /// The group of container `id` (a validated container id), created if
    /// missing, and its `oom_kill` count so far: a later count above it is
    /// an OOM kill of this container's (a group left by an earlier
    /// container of the same id keeps its count).
    pub fn create(&self, id: &str) -> std::io::Result<(PathBuf, u64)> {
        let dir = self.root.join(format!("container-{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok((dir.clone(), oom_kills(&dir).unwrap_or(0)))
    }
}

/// Writes `limits` (validated) to `group`'s files, and the kernel's
/// defaults for those left unset (a group left by an earlier container of
/// the same id may hold its limits). A limit that cannot be written is an
/// error naming the file; a default that cannot be (no such controller) is
/// not.
pub fn apply_limits(group: &Path, limits: &ResourceLimits) -> Result<(), String> {
    let files = [
        (
            "memory.max",
            limits.memory_max.map(|m| m.to_string()),
            "max",
        ),
        ("pids.max", limits.pids_max.map(|p| p.to_string()), "max"),
        (
            "cpu.max",
            limits
                .cpu_max
                .map(|c| format!("{} {}", c.quota_us, c.period_us)),
            "max 100000",
        ),
        (
            "cpu.weight",
            limits.cpu_weight.map(|w| w.to_string()),
            "100",
        ),
    ];
    for (file, value, default) in files {
        let path = group.join(file);
        match value {
            Some(v) => std::fs::write(&path, &v).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::PermissionDenied
                {
                    " (the guest kernel lacks that cgroup controller)"
                } else {
                    ""
                };
                format!("writing {v:?} to {}: {e}{why}", path.display())
            })?,
            None => {
                if path.exists() {
                    if let Err(e) = std::fs::write(&path, default) {
                        debug!("resetting {}: {e}", path.display());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Moves the calling process into `group` (cgroup v2: `0` is the writer).
pub fn join(group: &Path) -> std::io::Result<()> {
    std::fs::write(group.join("cgroup.procs"), "0")
}

/// Removes an empty group; a group some process still holds stays (and is
/// reused by a container of the same id).
pub fn remove(group: &Path) {
    if let Err(e) = std::fs::remove_dir(group) {
        debug!("removing cgroup {}: {e}", group.display());
    }
}

/// The `oom_kill` count of `group`'s `memory.events`, read within bounds.
pub fn oom_kills(group: &Path) -> Option<u64> {
    let file = std::fs::File::open(group.join("memory.events")).ok()?;
    let mut text = String::new();
    file.take(MAX_EVENTS_FILE).read_to_string(&mut text).ok()?;
    keyed(&text, "oom_kill")
}

/// `key N` from a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether a container init's exit with `status` was the OOM killer's:
/// SIGKILL (128+9: the process itself, or a shell reporting its child's
/// death) while the group's `oom_kill` count rose above `base`.
pub fn oom_killed(status: i32, group: &Path, base: u64) -> bool {
    status == 128 + libc::SIGKILL && oom_kills(group).is_some_and(|n| n > base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::RecordingSys;

    const EVENTS: &str = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";

    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn boot_mounts_cgroup2_without_suid_dev_or_exec_favouring_moves() {
        let mut sys = RecordingSys::new();
        mount(&mut sys).unwrap();
        assert_eq!(
            sys.calls.last().unwrap(),
            "mount cgroup2 /sys/fs/cgroup cgroup2 MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) favordynmods"
        );
    }

    #[test]
    fn oom_kill_is_read_from_memory_events() {
        assert_eq!(keyed(EVENTS, "oom_kill"), Some(1));
        assert_eq!(keyed(EVENTS, "oom"), Some(2));
        assert_eq!(keyed(EVENTS, "oom_group_kill"), Some(0));
        assert_eq!(keyed("oom_kill x\n", "oom_kill"), None);
        assert_eq!(keyed("", "oom_kill"), None);
    }

    #[test]
    fn enable_turns_on_memory_and_pids() {
        let root = fake_root();
        Groups::enable(root.path()).unwrap();
        // A real cgroup file takes one write per controller; a plain file
        // keeps the last.
        let control = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu");
        // No cpu controller: the others are still enabled.
        std::fs::write(root.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        Groups::enable(root.path()).unwrap();
        let control = std::fs::read_to_string(root.path().join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+pids");
    }

    #[test]
    fn no_memory_controller_means_no_groups() {
        let root = fake_root();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let e = Groups::enable(root.path()).unwrap_err();
        assert!(e.contains("no memory controller"), "{e}");
        let missing = tempfile::tempdir().unwrap();
        assert!(Groups::enable(missing.path()).is_err());
    }

    #[test]
    fn a_sigkill_counts_as_oom_only_when_the_group_counted_a_kill() {
        let root = fake_root();
        let groups = Groups::enable(root.path()).unwrap();
        let (group, base) = groups.create("c1").unwrap();
        assert_eq!(group, root.path().join("container-c1"));
        // A fake group has no memory.events yet: nothing counted.
        assert_eq!(base, 0);
        assert!(!oom_killed(137, &group, base));
        std::fs::write(group.join("memory.events"), EVENTS).unwrap();
        assert!(oom_killed(137, &group, base));
        // Exit 1 or SIGTERM is not the OOM killer's, whatever the count.
        assert!(!oom_killed(1, &group, base));
        assert!(!oom_killed(143, &group, base));
        // A second container of the same id starts from the count it finds.
        let (again, base) = groups.create("c1").unwrap();
        assert_eq!((again.as_path(), base), (group.as_path(), 1));
        assert!(!oom_killed(137, &again, base));
    }

    #[test]
    fn join_writes_zero_to_cgroup_procs() {
        let root = fake_root();
        let (group, _) = Groups::enable(root.path()).unwrap().create("c2").unwrap();
        join(&group).unwrap();
        assert_eq!(
            std::fs::read_to_string(group.join("cgroup.procs")).unwrap(),
            "0"
        );
        // Not empty (a plain directory with files): it stays.
        remove(&group);
        assert!(group.exists());
    }

    #[test]
    fn limits_are_written_and_unset_ones_reset_to_the_defaults() {
        let root = fake_root();
        let (group, _) = Groups::enable(root.path()).unwrap().create("c3").unwrap();
        let read = |f: &str| std::fs::read_to_string(group.join(f)).unwrap();
        let limits = ResourceLimits {
            memory_max: Some(32 << 20),
            pids_max: Some(20),
            cpu_max: Some(hyper_protocol::CpuMax {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            cpu_weight: Some(39),
        };
        apply_limits(&group, &limits).unwrap();
        assert_eq!(read("memory.max"), "33554432");
        assert_eq!(read("pids.max"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        // The same id again without limits: the files go back to the
        // kernel's defaults, not the last container's.
        apply_limits(&group, &ResourceLimits::default()).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("cpu.weight"), "100");
        // Without limits a missing file (no such controller) is no error;
        // with one, it names the file.
        let bare = tempfile::tempdir().unwrap();
        apply_limits(bare.path(), &ResourceLimits::default()).unwrap();
        assert!(!bare.path().join("memory.max").exists());
        let gone = bare.path().join("gone");
        let e = apply_limits(&gone, &limits).unwrap_err();
        assert!(e.contains("memory.max"), "{e}");
    }

    #[test]
    fn an_oversized_events_file_is_read_only_up_to_the_bound() {
        let root = tempfile::tempdir().unwrap();
        let mut text = "x ".repeat(MAX_EVENTS_FILE as usize);
        text.push_str("\noom_kill 5\n");
        std::fs::write(root.path().join("memory.events"), text).unwrap();
        assert_eq!(oom_kills(root.path()), None);
    }
}
