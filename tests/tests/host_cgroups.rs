//! The VMM jail of issue 17, as far as it goes: each pod's VMM runs in its
//! own host cgroup (`[runtime] cgroup_parent/pod-<id>`) with the pod's
//! limits, under QEMU's seccomp sandbox, with `no_new_privs` and core dumps
//! off; the cgroup is gone after every end of the pod (rm, the VM dying, a
//! hyperd killed meanwhile), and a VMM killed by its cgroup's OOM killer
//! is reported as such. Real hyperd, real backend, real VMs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_tests::{processes_mentioning, text, Hyperd, Setup};

/// The memory a VMM may use beyond its guest's by default
/// (`[runtime] cgroup_vmm_overhead_mib`).
const DEFAULT_OVERHEAD_MIB: u64 = 256;

/// Every cgroup directory of pod `id` on this host, in any hierarchy.
fn pod_cgroups(id: &str) -> Vec<PathBuf> {
    let out = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "8", "-type", "d", "-name"])
        .arg(format!("pod-{id}"))
        .output()
        .expect("find");
    text(&out.stdout).lines().map(PathBuf::from).collect()
}

fn inspect(d: &Hyperd, id: &str) -> serde_json::Value {
    let out = d.hyper(&["inspect", id]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v[0].clone()
}

fn vm_pid(d: &Hyperd, id: &str) -> u32 {
    let v = inspect(d, id);
    v["vm_pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no vm_pid in {v}"))
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Waits (boot-bound, not timed) until pod `id` is listed exited.
fn wait_exited(d: &Hyperd, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all = d.ps_json(true);
        if let Some(me) = all.iter().find(|p| p["id"] == id) {
            if me["running"] == false && me["state"] == "exited" {
                return me.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "pod {id} never ended:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The memory hierarchy's directory of `pid`'s cgroup, from
/// /proc/PID/cgroup (v1 `memory` line, else the v2 line).
fn memory_cgroup_of(pid: u32) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    cg.lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, p) = (parts.next()?, parts.next()?, parts.next()?);
            c.split(',').any(|c| c == "memory").then(|| p.to_string())
        })
        .or_else(|| {
            cg.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .expect("a memory cgroup")
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn a_pods_vmm_runs_jailed_in_its_cgroup_and_nothing_is_left_after_rm() {
    let d = Hyperd::start();
    let id = d.run_detached(&["--cpus", "1", "--memory", "160"], &["sleep", "600"]);
    let pid = vm_pid(&d, &id);

    // In pod-<id>, in every hierarchy that limits it.
    let dirs = pod_cgroups(&id);
    assert!(!dirs.is_empty(), "no cgroup for pod {id}");
    let member = memory_cgroup_of(pid);
    assert!(
        member.ends_with(&format!("/hyper/pod-{id}")),
        "the VMM (pid {pid}) is in {member}"
    );
    for dir in &dirs {
        let procs = read_trimmed(&dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "pid {pid} not in {}: {procs}",
            dir.display()
        );
    }

    // The pod's limits, as inspect shows them (read from the cgroup).
    let cg = &inspect(&d, &id)["cgroup"];
    assert_eq!(
        cg["memory_limit_bytes"].as_u64(),
        Some((160 + DEFAULT_OVERHEAD_MIB) << 20),
        "{cg}"
    );
    assert_eq!(cg["cpu_quota_us"].as_u64(), Some(100_000), "{cg}");
    assert_eq!(cg["pids_max"].as_u64(), Some(1024), "{cg}");
    assert!(cg["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{cg}");
    assert!(cg["pids"].as_u64().is_some_and(|n| n >= 1), "{cg}");
    assert_eq!(cg["oom_kills"].as_u64(), Some(0), "{cg}");
    // And the files themselves.
    for dir in &dirs {
        for (file, want) in [
            (
                "memory.limit_in_bytes",
                ((160 + DEFAULT_OVERHEAD_MIB) << 20).to_string(),
            ),
            (
                "memory.max",
                ((160 + DEFAULT_OVERHEAD_MIB) << 20).to_string(),
            ),
            ("cpu.cfs_quota_us", "100000".to_string()),
            ("cpu.max", "100000 100000".to_string()),
            ("pids.max", "1024".to_string()),
        ] {
            let path = dir.join(file);
            if path.exists() {
                assert_eq!(read_trimmed(&path), want, "{}", path.display());
            }
        }
    }
    // `hyper stats` reads the cgroup.
    let out = d.hyper(&["stats", &id]);
    d.succeeded(&out);
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));

    // The VMM process itself: seccomp filter, no_new_privs, no core dumps.
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit");
    assert_eq!(
        core.split_whitespace().nth(4),
        Some("0"),
        "core dumps are on: {core}"
    );
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("nofile limit");
    assert_eq!(nofile.split_whitespace().nth(3), Some("4096"), "{nofile}");

    // After rm nothing of the cgroup is left.
    let out = d.hyper(&["rm", "-f", &id]);
    d.succeeded(&out);
    assert_eq!(pod_cgroups(&id), Vec::<PathBuf>::new());
}

#[test]
fn a_vm_that_dies_or_outlives_a_killed_hyperd_leaves_no_cgroup() {
    let mut d = Hyperd::start();
    // The VM process dies under a running hyperd.
    let id = d.run_detached(&[], &["sleep", "600"]);
    assert!(!pod_cgroups(&id).is_empty());
    let pid = vm_pid(&d, &id);
    // SAFETY: kill(2) on this test's pod's VM process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_exited(&d, &id);
    assert_eq!(pod_cgroups(&id), Vec::<PathBuf>::new());

    // hyperd is killed, then the VM dies while no hyperd runs: the next
    // hyperd removes its cgroup.
    let id = d.run_detached(&[], &["sleep", "600"]);
    assert!(!pod_cgroups(&id).is_empty());
    let pid = vm_pid(&d, &id);
    d.kill_hard();
    // SAFETY: kill(2) on this test's pod's VM process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    d.restart();
    wait_exited(&d, &id);
    assert_eq!(pod_cgroups(&id), Vec::<PathBuf>::new());
    let out = d.hyper(&["rm", &id]);
    d.succeeded(&out);
    assert!(processes_mentioning(&d.state_dir.to_string_lossy()).is_empty());
}

#[test]
fn a_vmm_killed_by_its_cgroups_oom_killer_is_reported_as_such() {
    // A cgroup that holds the guest's memory and hardly anything more: a
    // guest that fills its memory takes the VMM past it.
    // QEMU's own TCG translation buffer (1 GiB, filled as code is
    // translated) rather than the default 16 MiB one, so that the VMM
    // itself grows past the cgroup's small margin.
    let d = Hyperd::start_with(&Setup {
        runtime_toml: "cgroup_vmm_overhead_mib = 16\n".into(),
        extra_toml: "[hypervisor.qemu]\ntcg_tb_size_mib = 0\n".into(),
        ..Setup::default()
    });
    let rootfs = hyper_tests::busybox_rootfs().to_string_lossy().into_owned();
    let out = d.hyper(&[
        "run",
        "--memory",
        "128",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "head -c 120m /dev/zero > /tmp/fill; echo filled",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let id = d
        .ps_json(true)
        .first()
        .and_then(|p| p["id"].as_str().map(str::to_string))
        .expect("the pod is listed");
    let me = inspect(&d, &id);
    let message = me["error"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains("out-of-memory killer of its host cgroup"),
        "inspect: {me}\nstderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert!(
        text(&out.stderr).contains("out-of-memory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(pod_cgroups(&id), Vec::<PathBuf>::new());
}

#[test]
fn a_failed_launch_leaves_no_cgroup() {
    // A "kernel" no VMM can load: the launch fails after the pod's cgroup
    // was made.
    let junk = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(junk.path(), vec![0x5a; 64 * 1024]).expect("junk kernel");
    let d = Hyperd::start_with(&Setup {
        kernel: junk.path().to_path_buf(),
        ..Setup::default()
    });
    let rootfs = hyper_tests::busybox_rootfs().to_string_lossy().into_owned();
    let out = d.hyper(&["run", "--rootfs", &rootfs, "--", "true"]);
    assert_ne!(out.status.code(), Some(0));
    let all = d.ps_json(true);
    assert_eq!(all.len(), 1, "{all:?}");
    let id = all[0]["id"].as_str().expect("an id").to_string();
    assert_eq!(all[0]["state"], "exited");
    assert_eq!(pod_cgroups(&id), Vec::<PathBuf>::new());
    assert!(processes_mentioning(&d.state_dir.to_string_lossy()).is_empty());
}
