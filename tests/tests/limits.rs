//! Per-container cgroup limits inside the guest (issue 17): a pod file
//! container's `memory` is its cgroup's `memory.max`, so the guest's OOM
//! killer ends that container alone while its sibling in the same VM keeps
//! running; `hyper run --pids-limit` is `pids.max`, so a fork loop stops at
//! the limit while the VM carries on. Real hyperd, real backend, real VMs.

use std::time::{Duration, Instant};

use hyper_tests::{busybox_rootfs, text, Hyperd};

fn inspect(d: &Hyperd, pod: &str) -> serde_json::Value {
    let out = d.hyper(&["inspect", pod]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v[0].clone()
}

/// A pod of two: `steady` (the main container) idles; `hog`, limited to
/// 32 MiB in a 256 MiB VM, grows `tail`'s buffer without bound (no newline
/// in /dev/zero) as its init, so its own limit's OOM killer ends it long
/// before the VM runs short.
const POD: &str = r#"
name = "limited"
memory_mib = 256

[[container]]
name = "steady"
rootfs = "ROOTFS"
command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]

[[container]]
name = "hog"
rootfs = "ROOTFS"
memory = "32m"
command = ["sh", "-c", "echo growing; exec tail /dev/zero"]
"#;

#[test]
fn a_containers_memory_limit_oom_kills_it_alone_and_its_sibling_runs_on() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let file = d.dir.path().join("pod.toml");
    std::fs::write(&file, POD.replace("ROOTFS", &rootfs)).expect("write the pod file");
    let out = d.hyper(&["pod", "create", "-f", &file.to_string_lossy()]);
    d.succeeded(&out);

    // Not a timing assertion: a bound on a wait that, with the limit
    // working, ends as soon as the hog has filled 32 MiB.
    let deadline = Instant::now() + Duration::from_secs(600);
    let hog = loop {
        let pod = inspect(&d, "limited");
        let hog = pod["containers"][1].clone();
        if hog["state"] == "exited" {
            break hog;
        }
        assert!(
            Instant::now() < deadline,
            "the hog never ended: {pod}\nlog:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(hog["name"], "hog");
    assert_eq!(hog["exit_code"], 137, "{hog}\nlog:\n{}", d.log_text());
    assert_eq!(hog["oom_killed"], true, "{hog}");
    let out = d.hyper(&["logs", "limited/hog"]);
    assert_eq!(text(&out.stdout), "growing\n");

    // Its sibling, in the same VM, was not touched and still serves.
    let pod = inspect(&d, "limited");
    assert_eq!(pod["state"], "running", "{pod}");
    assert_eq!(pod["containers"][0]["state"], "running", "{pod}");
    assert_eq!(pod["containers"][0]["oom_killed"], false, "{pod}");
    assert_eq!(d.exec_ok(&["limited/steady", "echo", "alive"]), "alive\n");

    // One `oom` event, naming the hog.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let until = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let out = d.hyper(&[
        "events",
        "--json",
        "--since",
        "1h",
        "--until",
        &until,
        "--filter",
        "pod=limited,event=oom",
    ]);
    d.succeeded(&out);
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["attributes"]["container"], "hog", "{events:#?}");
    assert_eq!(events[0]["attributes"]["scope"], "guest", "{events:#?}");

    let out = d.hyper(&["rm", "-f", "limited"]);
    d.succeeded(&out);
}

/// `hyper run FLAGS --rootfs BUSYBOX -- sh -c SCRIPT`, which must exit 0;
/// its stdout.
fn run_script(d: &Hyperd, flags: &[&str], script: &str) -> String {
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--rootfs", &rootfs, "--", "sh", "-c", script]);
    let out = d.hyper(&args);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{flags:?}\nstdout: {stdout}\nstderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    stdout
}

#[test]
fn pids_limit_stops_a_fork_loop_at_the_limit_and_the_vm_carries_on() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    // A child shell asks for forty sleepers (busybox sh gives up at its
    // first failed fork, so it is not the init); the init then counts what
    // is there through its own PID namespace's /proc with a glob (no fork).
    let script = "sh -c 'for i in $(seq 40); do sleep 600 & done' 2>/dev/null; \
                  set -- /proc/[0-9]*; echo procs=$#";
    let stdout = run_script(&d, &["--pids-limit", "20"], script);
    let procs: usize = stdout
        .trim()
        .strip_prefix("procs=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count: {stdout:?}"));
    // The init and 19 sleepers at most; and the loop did fork up to there.
    assert!((15..=20).contains(&procs), "{procs} processes: {stdout}");

    // A value the guest could not take is refused before any VM starts.
    let out = d.hyper(&["run", "--pids-limit", "0", "--rootfs", &rootfs, "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("--pids-limit"),
        "{}",
        text(&out.stderr)
    );
}

/// `(cutime + cstime)` of `/proc/PID/stat`'s line: the CPU time, in clock
/// ticks, of the children that process has waited for.
fn children_ticks(stat: &str) -> u64 {
    // The fields after the command's closing parenthesis, from `state`
    // (field 3): cutime and cstime are fields 16 and 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(13)
        .take(2)
        .map(|f| f.parse().unwrap_or_else(|_| panic!("{f:?} in {stat:?}")))
        .collect();
    assert_eq!(fields.len(), 2, "{stat:?}");
    fields.iter().sum()
}

#[test]
fn a_fractional_cpus_caps_the_containers_cpu_time() {
    let d = Hyperd::start();
    // A subshell spins for 4 s of the guest's clock (forking `date` as it
    // goes); the init then prints how long that took and its own stat line,
    // whose cutime/cstime hold the subshell's CPU time once waited for.
    let script = "start=$(date +%s); \
                  (while [ $(( $(date +%s) - start )) -lt 4 ]; do :; done); \
                  echo wall=$(( $(date +%s) - start )); read -r s < /proc/$$/stat; echo \"$s\"";
    let stdout = run_script(
        &d,
        &["--rm", "--cpus", "0.2", "--cpu-shares", "512"],
        script,
    );
    let mut lines = stdout.lines();
    let wall: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("wall="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no wall time: {stdout:?}"));
    let ticks = children_ticks(lines.next().unwrap_or_default());
    // The guest's USER_HZ is 100. A cap of 0.2 CPUs lets the spin use a
    // fifth of the wall time; half is far past that (a period's slack and
    // rounding of whole seconds), and without the cap it would use nearly
    // all of it. More than nothing shows the count itself works.
    let cpu_s = ticks as f64 / 100.0;
    eprintln!("--cpus 0.2: {cpu_s} s of CPU in {wall} s");
    assert!(wall >= 4, "{stdout}");
    assert!(
        cpu_s > 0.02 * wall as f64 && cpu_s < 0.5 * wall as f64,
        "{cpu_s} s of CPU in {wall} s with --cpus 0.2: {stdout}"
    );

    // Docker's refusals, before any VM starts.
    for (flags, word) in [
        (vec!["--cpus", "0.5", "--cpu-quota", "50000"], "--cpu-quota"),
        (vec!["--cpu-period", "50000"], "--cpu-period"),
        (vec!["--cpu-shares", "300000"], "--cpu-shares"),
    ] {
        refused(&d, &flags, word);
    }
}

#[test]
fn ulimits_hold_for_the_container_and_its_execs() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let out = d.hyper(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "nproc=unlimited",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "echo $(ulimit -n) $(ulimit -Hn) $(ulimit -u); exec sleep 600",
    ]);
    d.succeeded(&out);
    // The init's, from its log (a process cannot raise its hard limit back).
    let deadline = Instant::now() + Duration::from_secs(120);
    let logged = loop {
        let out = d.hyper(&["logs", "limited"]);
        let t = text(&out.stdout);
        if !t.is_empty() || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(logged, "100 200 unlimited\n", "log:\n{}", d.log_text());
    // An exec gets the container's limits too, as in Docker.
    assert_eq!(
        d.exec_ok(&["limited", "sh", "-c", "echo $(ulimit -n) $(ulimit -Hn)"]),
        "100 200\n"
    );
    // The guest's own processes were not touched: another pod without
    // limits has the kernel's defaults.
    let plain = run_script(&d, &["--rm"], "ulimit -Hn");
    assert_ne!(plain.trim(), "200", "{plain}");
    d.succeeded(&d.hyper(&["rm", "-f", "limited"]));

    // Docker's refusals, before any VM starts.
    for (flag, word) in [
        ("nofile=2:1", "above the hard limit"),
        ("files=1", "not a limit"),
        ("nofile", "NAME=SOFT"),
    ] {
        refused(&d, &["--ulimit", flag], word);
    }
}

/// `hyper run FLAGS --rootfs BUSYBOX true` is refused before any VM
/// starts: exit 125, `word` in the message, no pod left.
fn refused(d: &Hyperd, flags: &[&str], word: &str) {
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(["--rootfs", &rootfs, "true"]);
    let out = d.hyper(&args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{flags:?}: {stderr}");
    assert!(stderr.contains(word), "{flags:?}: {stderr}");
    let out = d.hyper(&["ps", "-a", "--json"]);
    d.succeeded(&out);
    let pods: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps JSON");
    assert_eq!(pods, serde_json::json!([]), "{flags:?} left a pod");
}
