//! A container killed by the OOM killer inside its guest is reported as
//! Docker reports it (issue 17): exit 137, `oom_killed: true` in `hyper
//! inspect`, an `oom` event with `scope=guest` naming the container, and
//! `hyper_oom_kills_total{scope="guest"}` in `/metrics`; a container that
//! ends with 137 by any other SIGKILL is not. hyperstart tells the two apart
//! by the `oom_kill` count of the container's cgroup in the guest. Real
//! hyperd, real backend, real VMs.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_tests::{text, Hyperd};

fn inspect(d: &Hyperd, pod: &str) -> serde_json::Value {
    let out = d.hyper(&["inspect", pod]);
    d.succeeded(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    v[0].clone()
}

/// The `oom` events kept for pod `pod`.
fn oom_events(d: &Hyperd, pod: &str) -> Vec<serde_json::Value> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let until = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let filter = format!("pod={pod},event=oom");
    let out = d.hyper(&[
        "events", "--json", "--since", "1h", "--until", &until, "--filter", &filter,
    ]);
    d.succeeded(&out);
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// `GET /metrics` on hyperd's socket: the guest-scope OOM kill samples.
fn guest_oom_samples(d: &Hyperd) -> Vec<String> {
    let mut s = UnixStream::connect(&d.socket).expect("connect to hyperd");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: hyperd\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    reply
        .lines()
        .filter(|l| l.starts_with("hyper_oom_kills_total{") && l.contains("scope=\"guest\""))
        .map(str::to_string)
        .collect()
}

fn run_named(d: &Hyperd, name: &str, script: &str) -> std::process::Output {
    let rootfs = hyper_tests::busybox_rootfs().to_string_lossy().into_owned();
    d.hyper(&[
        "run", "-m", "128m", "--name", name, "--rootfs", &rootfs, "--", "sh", "-c", script,
    ])
}

#[test]
fn a_container_killed_by_the_guests_oom_killer_is_reported_oom_killed() {
    let d = Hyperd::start();
    // tail buffers its last lines, and /dev/zero has no newline: it grows
    // until the guest (128 MiB, all of it the container's to take) runs
    // out of memory and the kernel's global OOM killer picks it. It is the
    // container's init (exec): a child killed under a shell that goes on
    // is not reported (the init did not die of it).
    let out = run_named(&d, "oomer", "echo growing; exec tail /dev/zero");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(137),
        "stdout: {stdout}\nstderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert!(stdout.contains("growing"), "{stdout}");
    let me = inspect(&d, "oomer");
    assert_eq!(me["exit_code"], 137, "{me}");
    assert_eq!(me["oom_killed"], true, "{me}");
    let events = oom_events(&d, "oomer");
    assert_eq!(events.len(), 1, "{events:#?}\nlog:\n{}", d.log_text());
    assert_eq!(events[0]["attributes"]["scope"], "guest", "{events:#?}");
    assert_eq!(events[0]["attributes"]["container"], "oomer", "{events:#?}");
    let samples = guest_oom_samples(&d);
    assert!(
        samples.len() == 1 && samples[0].ends_with(" 1"),
        "{samples:?}"
    );
}

#[test]
fn a_container_that_ends_with_sigkill_otherwise_is_not_oom_killed() {
    let d = Hyperd::start();
    // The container's init is PID 1 of its namespace, which its own
    // SIGKILL cannot end: a child shell kills itself and the init reports
    // that with 137, as a shell does.
    let out = run_named(&d, "killed", "sh -c 'kill -9 $$'; exit $?");
    assert_eq!(
        out.status.code(),
        Some(137),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let me = inspect(&d, "killed");
    assert_eq!(me["exit_code"], 137, "{me}");
    assert_eq!(me["oom_killed"], false, "{me}");
    assert!(oom_events(&d, "killed").is_empty());
    assert!(guest_oom_samples(&d).is_empty());
}
