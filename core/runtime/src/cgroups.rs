//! Per-pod host cgroups: each pod's VMM and its helpers run in
//! `[runtime] cgroup_parent/pod-<id>`, limited in memory (guest memory plus
//! the VMM's overhead), CPU (`--cpus`, as a CFS quota) and tasks.
//!
//! The core makes the cgroup before a VM launches and removes it once the
//! VM and its helpers have ended; the backend puts the processes in it
//! (`VmSpec.cgroup`, the kit's `place_in_cgroup`).
//!
//! Works on cgroup v2 and on v1 and hybrid hosts: each controller is taken
//! from the v1 hierarchy that has it if there is one, else from the v2
//! (unified) hierarchy. A relative `cgroup_parent` is under hyperd's own
//! cgroup in each hierarchy (so pods stay inside hyperd's limits), an
//! absolute one under each hierarchy's root.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use hyper_hypervisor::CgroupPlacement;
use serde::{Deserialize, Serialize};

/// The CFS period every pod gets, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The controllers a pod's cgroup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    /// v1 only: CPU usage (`cpuacct.usage`); v2 has it in `cpu.stat`.
    CpuAcct,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Pids => "pids",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// One cgroup hierarchy a pod's cgroup is made in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: Version,
    /// Where it is mounted.
    pub mount: PathBuf,
    /// hyperd's own cgroup in it, relative to the mount's root.
    pub own: PathBuf,
    /// The pod controllers it serves.
    pub controllers: Vec<Controller>,
}

/// The hierarchies a pod's cgroup spans on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub hierarchies: Vec<Hierarchy>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("host cgroups: the {controller} controller is not available on this host ({detail}); mount it (v1: `mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}`; v2: enable it with `echo +{controller} > /sys/fs/cgroup/cgroup.subtree_control`) or turn per-pod cgroups off with `[runtime] cgroups = false`")]
    MissingController {
        controller: &'static str,
        detail: String,
    },
    #[error("host cgroups: cannot {what} {path}: {source}; check that hyperd runs as root with the cgroup filesystems mounted read-write, or set `[runtime] cgroups = false`")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("host cgroups: cannot enable the {controller} controller in {path}: {source}; on cgroup v2 a cgroup that holds processes cannot delegate controllers: set `[runtime] cgroup_parent` to an absolute path such as \"/hyper\", or run hyperd in a leaf cgroup of its own")]
    Delegate {
        controller: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("host cgroups: cannot read {what}: {source}")]
    Host {
        what: &'static str,
        source: io::Error,
    },
}

/// What a pod's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CFS quota per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: u64,
    pub pids_max: u64,
}

impl Limits {
    /// The limits of a VM of `vcpus` and `memory_mib`: its memory plus the
    /// VMM's own (`overhead_mib`), `vcpus` full CPUs, `pids_max` tasks.
    pub fn for_vm(vcpus: u32, memory_mib: u32, overhead_mib: u64, pids_max: u64) -> Self {
        Self {
            memory_bytes: (u64::from(memory_mib) + overhead_mib).saturating_mul(1 << 20),
            cpu_quota_us: u64::from(vcpus.max(1)).saturating_mul(CPU_PERIOD_US),
            pids_max,
        }
    }

    /// The control files and values of hierarchy `h` for these limits.
    fn writes(&self, h: &Hierarchy) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for c in &h.controllers {
            match (h.version, c) {
                (Version::V1, Controller::Memory) => {
                    out.push(("memory.limit_in_bytes", self.memory_bytes.to_string()))
                }
                (Version::V2, Controller::Memory) => {
                    out.push(("memory.max", self.memory_bytes.to_string()));
                    // No swapping a VM out instead of keeping it in bounds.
                    out.push(("memory.swap.max", "0".to_string()));
                }
                (Version::V1, Controller::Cpu) => {
                    out.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                    out.push(("cpu.cfs_quota_us", self.cpu_quota_us.to_string()));
                }
                (Version::V2, Controller::Cpu) => {
                    out.push(("cpu.max", format!("{} {CPU_PERIOD_US}", self.cpu_quota_us)))
                }
                (_, Controller::Pids) => out.push(("pids.max", self.pids_max.to_string())),
                (_, Controller::CpuAcct) => {}
            }
        }
        out
    }
}

/// One mount of /proc/self/mountinfo: where, the filesystem type, and its
/// super options (a v1 cgroup's controllers are among them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split_whitespace().collect();
            let after: Vec<&str> = after.split_whitespace().collect();
            Some(Mount {
                root: unescape(fields.get(3)?),
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: after.first()?.to_string(),
                super_options: after.get(2)?.split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// /proc/self/cgroup: `id:controllers:path` per hierarchy (`0::path` is v2).
fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, PathBuf)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            let controllers = controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Some((controllers, PathBuf::from(path)))
        })
        .collect()
}

/// The path of hyperd's cgroup inside a mount whose root is `mount_root`
/// (a container may see only a subtree).
fn own_below(mount_root: &str, own: &Path) -> PathBuf {
    own.strip_prefix(mount_root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| own.strip_prefix("/").unwrap_or(own).to_path_buf())
}

impl Layout {
    /// This host's layout, from /proc/self/mountinfo and /proc/self/cgroup.
    pub fn detect() -> Result<Self, CgroupError> {
        let read = |what: &'static str, path: &str| {
            std::fs::read_to_string(path).map_err(|source| CgroupError::Host { what, source })
        };
        let mountinfo = read("/proc/self/mountinfo", "/proc/self/mountinfo")?;
        let cgroup = read("/proc/self/cgroup", "/proc/self/cgroup")?;
        Self::from_host(&mountinfo, &cgroup, |mount| {
            std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// The layout `mountinfo` and `proc_cgroup` describe; `v2_controllers`
    /// reads the `cgroup.controllers` of a v2 mount's root.
    fn from_host(
        mountinfo: &str,
        proc_cgroup: &str,
        v2_controllers: impl Fn(&Path) -> String,
    ) -> Result<Self, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let memberships = parse_proc_cgroup(proc_cgroup);
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let wanted = [
            Controller::Memory,
            Controller::Cpu,
            Controller::CpuAcct,
            Controller::Pids,
        ];
        for c in wanted {
            let v1 = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.iter().any(|o| o == c.name()));
            let chosen = match v1 {
                Some(m) => {
                    let own = memberships
                        .iter()
                        .find(|(cs, _)| cs.iter().any(|x| x == c.name()))
                        .map(|(_, p)| p.clone())
                        .unwrap_or_else(|| "/".into());
                    Some((Version::V1, m, own_below(&m.root, &own)))
                }
                None if c == Controller::CpuAcct => None,
                None => {
                    let v2 = mounts.iter().find(|m| m.fstype == "cgroup2");
                    match v2 {
                        Some(m)
                            if v2_controllers(&m.point)
                                .split_whitespace()
                                .any(|x| x == c.name()) =>
                        {
                            let own = memberships
                                .iter()
                                .find(|(cs, _)| cs.is_empty())
                                .map(|(_, p)| p.clone())
                                .unwrap_or_else(|| "/".into());
                            Some((Version::V2, m, own_below(&m.root, &own)))
                        }
                        Some(m) => {
                            return Err(CgroupError::MissingController {
                                controller: c.name(),
                                detail: format!(
                                    "no v1 hierarchy has it and {} does not list it",
                                    m.point.join("cgroup.controllers").display()
                                ),
                            })
                        }
                        None => {
                            return Err(CgroupError::MissingController {
                                controller: c.name(),
                                detail: "no cgroup filesystem has it mounted".into(),
                            })
                        }
                    }
                }
            };
            let Some((version, mount, own)) = chosen else {
                continue;
            };
            match hierarchies.iter_mut().find(|h| h.mount == mount.point) {
                Some(h) => h.controllers.push(c),
                None => hierarchies.push(Hierarchy {
                    version,
                    mount: mount.point.clone(),
                    own,
                    controllers: vec![c],
                }),
            }
        }
        Ok(Self { hierarchies })
    }

    /// The parent directory of pods in hierarchy `h`.
    fn parent_dir(h: &Hierarchy, parent: &Path) -> PathBuf {
        let relative: PathBuf = parent
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if parent.is_absolute() {
            h.mount.join(relative)
        } else {
            h.mount.join(&h.own).join(relative)
        }
    }

    /// Pod `id`'s cgroup directory in each hierarchy.
    pub fn pod_dirs(&self, parent: &Path, id: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| Self::parent_dir(h, parent).join(pod_dir_name(id)))
            .collect()
    }

    fn hierarchy_of(&self, c: Controller) -> Option<(usize, &Hierarchy)> {
        self.hierarchies
            .iter()
            .enumerate()
            .find(|(_, h)| h.controllers.contains(&c))
    }
}

/// The name of pod `id`'s cgroup.
pub fn pod_dir_name(id: &str) -> String {
    format!("pod-{id}")
}

/// Checks `[runtime] cgroup_parent`: a path of plain names (absolute or
/// relative), no `..`, no empty path.
pub fn check_parent(parent: &Path) -> Result<(), String> {
    if parent.as_os_str().is_empty() {
        return Err("it is empty".into());
    }
    for c in parent.components() {
        match c {
            Component::Normal(_) | Component::RootDir => {}
            _ => return Err(format!("\"{}\" has a `.` or `..` in it", parent.display())),
        }
    }
    if parent.components().all(|c| c == Component::RootDir) {
        return Err("\"/\" is the root cgroup itself".into());
    }
    Ok(())
}

/// A pod's cgroup, made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// What the backend puts the VM's processes in.
    pub fn placement(&self) -> CgroupPlacement {
        CgroupPlacement {
            procs_files: self.dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes pod `id`'s cgroup under `parent` with `limits` (one left from an
/// earlier VM of the pod is removed first). On failure nothing of it is
/// left.
pub async fn create(
    layout: &Layout,
    parent: &Path,
    id: &str,
    limits: &Limits,
) -> Result<PodCgroup, CgroupError> {
    remove(layout, parent, id).await;
    let mut made = Vec::new();
    let result = create_in(layout, parent, id, limits, &mut made);
    if result.is_err() {
        for dir in made.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result.map(|()| PodCgroup { dirs: made })
}

fn create_in(
    layout: &Layout,
    parent: &Path,
    id: &str,
    limits: &Limits,
    made: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    for h in &layout.hierarchies {
        let parent_dir = Layout::parent_dir(h, parent);
        std::fs::create_dir_all(&parent_dir).map_err(io_err("create", &parent_dir))?;
        if h.version == Version::V2 {
            enable_controllers(h, &parent_dir)?;
        }
        let dir = parent_dir.join(pod_dir_name(id));
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        made.push(dir.clone());
        for (file, value) in limits.writes(h) {
            let path = dir.join(file);
            match std::fs::write(&path, &value) {
                Ok(()) => {}
                // No swap accounting on this host: nothing to bound.
                Err(e) if file == "memory.swap.max" && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("write", &path)(e)),
            }
        }
    }
    Ok(())
}

/// v2: the pod controllers enabled in `subtree_control` on every level
/// from hyperd's cgroup (or the root) down to `parent_dir`.
fn enable_controllers(h: &Hierarchy, parent_dir: &Path) -> Result<(), CgroupError> {
    let mut levels: Vec<PathBuf> = parent_dir
        .ancestors()
        .take_while(|p| p.starts_with(&h.mount))
        .map(Path::to_path_buf)
        .collect();
    levels.reverse();
    for level in levels {
        let enabled = std::fs::read_to_string(level.join("cgroup.subtree_control"))
            .map_err(io_err("read", &level))?;
        for c in &h.controllers {
            if enabled.split_whitespace().any(|x| x == c.name()) {
                continue;
            }
            let file = level.join("cgroup.subtree_control");
            std::fs::write(&file, format!("+{}", c.name())).map_err(|source| {
                CgroupError::Delegate {
                    controller: c.name(),
                    path: file.clone(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

/// How many times removal looks again for processes that still end.
const REMOVE_TRIES: u32 = 50;
const REMOVE_PAUSE: Duration = Duration::from_millis(100);

/// Removes pod `id`'s cgroup, if there is one. Called once the VM has
/// ended: whatever still runs in it (a helper the backend left) is killed
/// first. Returns the directories that could not be removed (logged).
pub async fn remove(layout: &Layout, parent: &Path, id: &str) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in layout.pod_dirs(parent, id) {
        if !dir.exists() {
            continue;
        }
        let mut tries = 0;
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if tries < REMOVE_TRIES => {
                    tries += 1;
                    kill_members(&dir);
                    tracing::debug!(cgroup = %dir.display(), "not removable yet: {e}");
                    tokio::time::sleep(REMOVE_PAUSE).await;
                }
                Err(e) => {
                    tracing::warn!(cgroup = %dir.display(), "cannot remove the pod's cgroup: {e}");
                    left.push(dir);
                    break;
                }
            }
        }
    }
    left
}

/// SIGKILL to every process still in the cgroup at `dir`: only a pod's own
/// VMM and helpers are ever put there.
fn kill_members(dir: &Path) {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 {
            tracing::info!(pid, cgroup = %dir.display(), "killing a process left in a pod's cgroup");
            // SAFETY: plain kill(2); the pid was listed in the pod's
            // cgroup a moment ago, which only ever holds the pod's VM
            // processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A pod's use of its cgroup, as `hyper stats`/`inspect` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The pod's cgroup (its memory hierarchy's directory).
    pub path: PathBuf,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_time_ms: Option<u64>,
    /// CFS quota in microseconds per [`CPU_PERIOD_US`]; `None`: unlimited.
    pub cpu_quota_us: Option<u64>,
    pub pids: Option<u64>,
    pub pids_max: Option<u64>,
    /// Times the kernel's OOM killer killed a process of the pod's cgroup.
    pub oom_kills: u64,
}

/// Reads a small cgroup file (they are a few lines; bounded anyway).
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(64 * 1024).read_to_string(&mut text).ok()?;
    Some(text)
}

fn read_u64(path: &Path) -> Option<u64> {
    read_small(path)?.trim().parse().ok()
}

/// `key N` from a flat-keyed file (memory.events, memory.oom_control,
/// cpu.stat).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `max` or a number.
fn limit_value(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Pod `id`'s usage, if its cgroup exists.
pub fn usage(layout: &Layout, parent: &Path, id: &str) -> Option<Usage> {
    let dirs = layout.pod_dirs(parent, id);
    let dir_of = |c: Controller| {
        layout
            .hierarchy_of(c)
            .map(|(i, h)| (h.version, dirs[i].clone()))
    };
    let (mem_version, mem_dir) = dir_of(Controller::Memory)?;
    if !mem_dir.exists() {
        return None;
    }
    let mut u = Usage {
        path: mem_dir.clone(),
        ..Usage::default()
    };
    match mem_version {
        Version::V1 => {
            u.memory_bytes = read_u64(&mem_dir.join("memory.usage_in_bytes"));
            u.memory_limit_bytes = read_u64(&mem_dir.join("memory.limit_in_bytes"));
            u.oom_kills = read_small(&mem_dir.join("memory.oom_control"))
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0);
        }
        Version::V2 => {
            u.memory_bytes = read_u64(&mem_dir.join("memory.current"));
            u.memory_limit_bytes =
                read_small(&mem_dir.join("memory.max")).and_then(|t| limit_value(&t));
            u.oom_kills = read_small(&mem_dir.join("memory.events"))
                .and_then(|t| keyed(&t, "oom_kill"))
                .unwrap_or(0);
        }
    }
    if let Some((version, dir)) = dir_of(Controller::Cpu) {
        match version {
            Version::V1 => {
                u.cpu_quota_us = read_small(&dir.join("cpu.cfs_quota_us"))
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .and_then(|q| u64::try_from(q).ok());
            }
            Version::V2 => {
                u.cpu_quota_us = read_small(&dir.join("cpu.max")).and_then(|t| limit_value(&t));
                u.cpu_time_ms = read_small(&dir.join("cpu.stat"))
                    .and_then(|t| keyed(&t, "usage_usec"))
                    .map(|us| us / 1000);
            }
        }
    }
    if let Some((Version::V1, dir)) = dir_of(Controller::CpuAcct) {
        u.cpu_time_ms = read_u64(&dir.join("cpuacct.usage")).map(|ns| ns / 1_000_000);
    }
    if let Some((_, dir)) = dir_of(Controller::Pids) {
        u.pids = read_u64(&dir.join("pids.current"));
        u.pids_max = read_small(&dir.join("pids.max")).and_then(|t| limit_value(&t));
    }
    Some(u)
}

/// What a VM's end says when its cgroup's OOM killer struck: `reason`
/// with the kill named, or `None` when there was none.
pub fn oom_reason(usage: &Usage) -> Option<String> {
    (usage.oom_kills > 0).then(|| {
        let limit = usage
            .memory_limit_bytes
            .map_or_else(String::new, |b| format!(" of {} MiB", b >> 20));
        format!(
            "the VMM was killed by the out-of-memory killer of its host cgroup {} (memory limit{limit}: the guest memory plus `[runtime] cgroup_vmm_overhead_mib`)",
            usage.path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/effa
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn a_hybrid_host_uses_its_v1_controllers() {
        let layout = Layout::from_host(HYBRID_MOUNTINFO, HYBRID_CGROUP, |_| String::new()).unwrap();
        let names: Vec<_> = layout
            .hierarchies
            .iter()
            .map(|h| (h.mount.display().to_string(), h.version, h.own.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    "/sys/fs/cgroup/memory".into(),
                    Version::V1,
                    PathBuf::from("process_api/effa")
                ),
                ("/sys/fs/cgroup/cpu".into(), Version::V1, PathBuf::new()),
                ("/sys/fs/cgroup/cpuacct".into(), Version::V1, PathBuf::new()),
                ("/sys/fs/cgroup/pids".into(), Version::V1, PathBuf::new()),
            ]
        );
        // Relative: under hyperd's own cgroup; absolute: under the root.
        assert_eq!(
            layout.pod_dirs(Path::new("hyper"), "ab12"),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/process_api/effa/hyper/pod-ab12"),
                PathBuf::from("/sys/fs/cgroup/cpu/hyper/pod-ab12"),
                PathBuf::from("/sys/fs/cgroup/cpuacct/hyper/pod-ab12"),
                PathBuf::from("/sys/fs/cgroup/pids/hyper/pod-ab12"),
            ]
        );
        assert_eq!(
            layout.pod_dirs(Path::new("/ops/hyper"), "ab12")[0],
            PathBuf::from("/sys/fs/cgroup/memory/ops/hyper/pod-ab12")
        );
    }

    #[test]
    fn a_combined_v1_cpu_cpuacct_hierarchy_is_one() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let cgroup = "3:cpu,cpuacct:/system.slice/hyperd.service\n2:memory:/\n1:pids:/\n";
        let layout = Layout::from_host(mountinfo, cgroup, |_| String::new()).unwrap();
        assert_eq!(layout.hierarchies.len(), 3);
        let cpu = &layout.hierarchies[1];
        assert_eq!(cpu.controllers, vec![Controller::Cpu, Controller::CpuAcct]);
        assert_eq!(cpu.own, PathBuf::from("system.slice/hyperd.service"));
    }

    #[test]
    fn a_v2_host_uses_the_unified_hierarchy() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroup = "0::/system.slice/hyperd.service\n";
        let layout =
            Layout::from_host(mountinfo, cgroup, |_| "cpuset cpu io memory pids\n".into()).unwrap();
        assert_eq!(layout.hierarchies.len(), 1);
        let h = &layout.hierarchies[0];
        assert_eq!(h.version, Version::V2);
        assert_eq!(
            h.controllers,
            vec![Controller::Memory, Controller::Cpu, Controller::Pids]
        );
        assert_eq!(
            layout.pod_dirs(Path::new("/hyper"), "x"),
            vec![PathBuf::from("/sys/fs/cgroup/hyper/pod-x")]
        );
        let limits = Limits::for_vm(2, 128, 64, 512);
        assert_eq!(
            limits.writes(h),
            vec![
                ("memory.max", (192u64 << 20).to_string()),
                ("memory.swap.max", "0".to_string()),
                ("cpu.max", "200000 100000".to_string()),
                ("pids.max", "512".to_string()),
            ]
        );
    }

    #[test]
    fn a_missing_controller_is_named_with_the_fix() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let err = Layout::from_host(mountinfo, "0::/\n", |_| "cpu memory\n".into())
            .unwrap_err()
            .to_string();
        assert!(err.contains("the pids controller"), "{err}");
        assert!(err.contains("cgroup.subtree_control"), "{err}");
        assert!(err.contains("[runtime] cgroups = false"), "{err}");
        let err = Layout::from_host("", "", |_| String::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory controller"), "{err}");
    }

    #[test]
    fn limits_math() {
        let l = Limits::for_vm(1, 128, 160, 1024);
        assert_eq!(l.memory_bytes, 288 << 20);
        assert_eq!(l.cpu_quota_us, 100_000);
        assert_eq!(l.pids_max, 1024);
        let h = Hierarchy {
            version: Version::V1,
            mount: "/m".into(),
            own: PathBuf::new(),
            controllers: vec![Controller::Cpu, Controller::CpuAcct],
        };
        assert_eq!(
            l.writes(&h),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "100000".to_string()),
            ]
        );
        assert_eq!(Limits::for_vm(0, 64, 0, 1).cpu_quota_us, CPU_PERIOD_US);
    }

    #[test]
    fn parents() {
        assert!(check_parent(Path::new("hyper")).is_ok());
        assert!(check_parent(Path::new("/ops/hyper")).is_ok());
        assert!(check_parent(Path::new("")).is_err());
        assert!(check_parent(Path::new("/")).is_err());
        assert!(check_parent(Path::new("a/../b")).is_err());
    }

    #[test]
    fn keyed_files_and_escapes() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(oom, "oom_kill"), Some(2));
        assert_eq!(keyed("usage_usec 1500\n", "usage_usec"), Some(1500));
        assert_eq!(limit_value("max 100000\n"), None);
        assert_eq!(limit_value("200000 100000\n"), Some(200000));
        assert_eq!(unescape("/a\\040b"), "/a b");
        let u = Usage {
            path: "/c/pod-x".into(),
            memory_limit_bytes: Some(288 << 20),
            oom_kills: 1,
            ..Usage::default()
        };
        let reason = oom_reason(&u).unwrap();
        assert!(reason.contains("out-of-memory killer"), "{reason}");
        assert!(reason.contains("288 MiB"), "{reason}");
        assert!(oom_reason(&Usage::default()).is_none());
    }

    /// Against this host's real cgroup filesystems (needs root): make a
    /// pod's cgroup, put a process in it through the kit, read its usage,
    /// remove it with the process still running, and count what is left.
    #[tokio::test]
    async fn a_real_pod_cgroup_is_made_used_and_removed() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let layout = Layout::detect().unwrap();
        let parent = PathBuf::from(format!("hyper-unit-{}", std::process::id()));
        let limits = Limits::for_vm(1, 64, 32, 64);
        let cg = create(&layout, &parent, "t1", &limits).await.unwrap();
        assert_eq!(cg.dirs.len(), layout.hierarchies.len());
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60");
        hyper_hypervisor::process::place_in_cgroup(&mut cmd, &cg.placement()).unwrap();
        let mut child = cmd.spawn().unwrap();
        let pid = child.id().to_string();
        for procs in &cg.placement().procs_files {
            let listed = std::fs::read_to_string(procs).unwrap();
            assert!(listed.lines().any(|l| l == pid), "{}", procs.display());
        }
        let u = usage(&layout, &parent, "t1").unwrap();
        assert_eq!(u.memory_limit_bytes, Some(96 << 20));
        assert_eq!(u.cpu_quota_us, Some(CPU_PERIOD_US));
        assert_eq!(u.pids_max, Some(64));
        assert_eq!(u.pids, Some(1));
        assert_eq!(u.oom_kills, 0);
        // The process still runs: removal kills it first.
        let left = remove(&layout, &parent, "t1").await;
        assert!(left.is_empty(), "{left:?}");
        let _ = child.wait();
        for dir in &cg.dirs {
            assert!(!dir.exists(), "{}", dir.display());
            std::fs::remove_dir(dir.parent().unwrap()).unwrap();
        }
        assert!(usage(&layout, &parent, "t1").is_none());
    }
}
