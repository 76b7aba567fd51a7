//! What operators see: `hyper events` over a pod's whole life (create,
//! start, die, a restart by policy, destroy; a takeover by a restarted
//! hyperd, exec, kill and stop), `GET /metrics` read by a Prometheus text
//! parser, and sizes beyond the host refused before any VM starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper_tests::*;

/// Now as unix seconds with nanoseconds, as `--since`/`--until` take it.
fn now_arg() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// `hyper events --json ARGS…` with an `--until` now: the kept events.
fn past_events(d: &Hyperd, args: &[&str]) -> Vec<serde_json::Value> {
    let until = now_arg();
    let mut all = vec!["events", "--json", "--until", until.as_str()];
    all.extend_from_slice(args);
    let out = d.hyper(&all);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hyper {all:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Each event as `action` or `action:key=value` for the attribute named.
fn actions(events: &[serde_json::Value], attr: &str) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let action = e["action"].as_str().unwrap_or("?").to_string();
            match e["attributes"][attr].as_str() {
                Some(v) => format!("{action}:{attr}={v}"),
                None => action,
            }
        })
        .collect()
}

/// `GET path` on hyperd's socket (HTTP/1.0, so the body ends with the
/// connection): the status line and the body.
fn http_get(d: &Hyperd, path: &str) -> (String, String) {
    let mut s = UnixStream::connect(&d.socket).expect("connect to hyperd");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: hyperd\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// `/metrics`, parsed by a Prometheus text-format parser; every sample's
/// family has a `# TYPE` line.
fn scrape(d: &Hyperd) -> prometheus_parse::Scrape {
    let (status, body) = http_get(d, "/metrics");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| body.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{line}: no # TYPE for {family}\n{body}"
        );
    }
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("parse /metrics")
}

/// The value of the sample `metric` whose labels include `labels`.
fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[test]
fn events_show_create_start_die_a_restart_by_policy_and_destroy() {
    let d = Hyperd::start();
    let since = now_arg();
    // A follower, as an operator would leave it running (from `since`: it
    // may connect after the pod is created).
    let mut follower = d.hyper_spawn(&[
        "events",
        "--json",
        "--since",
        &since,
        "--filter",
        "pod=evpod",
    ]);
    let (tx, followed) = mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let id = d.run_detached(
        &["--name", "evpod", "--restart", "on-failure:1"],
        &["sh", "-c", "exit 3"],
    );
    let out = d.hyper(&["wait", &id]);
    assert_eq!(text(&out.stdout).trim(), "3", "{}", text(&out.stderr));
    let out = d.hyper(&["rm", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let expected = [
        "create",
        "start",
        "die:exitCode=3",
        "restart:reason=policy",
        "start",
        "die:exitCode=3",
        "destroy",
    ];
    let events = past_events(&d, &["--since", &since, "--filter", "pod=evpod"]);
    let mut seen = actions(&events, "exitCode");
    for (s, e) in seen.iter_mut().zip(&events) {
        if e["action"] == "restart" {
            *s = format!(
                "restart:reason={}",
                e["attributes"]["reason"].as_str().unwrap()
            );
            assert_eq!(e["attributes"]["restartCount"], "1", "{e}");
        }
    }
    assert_eq!(seen, expected, "{events:#?}\nlog:\n{}", d.log_text());
    for e in &events {
        assert_eq!(e["id"], id.as_str(), "{e}");
        assert_eq!(e["type"], "pod", "{e}");
        assert_eq!(e["attributes"]["name"], "evpod", "{e}");
        assert_eq!(e["attributes"]["backend"], backend().as_str(), "{e}");
    }
    // Filters: by event (alternatives), by id prefix; no match, no lines.
    let dies = past_events(
        &d,
        &["--since", &since, "--filter", "event=die,event=destroy"],
    );
    assert_eq!(
        actions(&dies, "exitCode"),
        ["die:exitCode=3", "die:exitCode=3", "destroy"]
    );
    let by_prefix = past_events(
        &d,
        &["--since", &since, "--filter", &format!("pod={}", &id[..6])],
    );
    assert_eq!(by_prefix.len(), expected.len());
    assert!(past_events(&d, &["--since", &since, "--filter", "pod=nosuchpod"]).is_empty());
    // Nothing before `since` but what came before it.
    assert!(past_events(&d, &["--since", &now_arg()]).is_empty());

    // The follower saw the same events live.
    let mut live = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.len() < expected.len() && Instant::now() < deadline {
        if let Ok(line) = followed.recv_timeout(Duration::from_millis(200)) {
            live.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(live, events);

    // The text form, as docker events prints it.
    let out = d.hyper(&[
        "events",
        "--since",
        &since,
        "--until",
        &now_arg(),
        "-f",
        "event=create",
    ]);
    let line = text(&out.stdout);
    assert!(
        line.contains(&format!(" pod create {id} (backend=")) && line.contains("name=evpod"),
        "{line}"
    );

    // Bad times and filters are refused by name.
    for (args, needle) in [
        (
            &["events", "--since", "yesterday"][..],
            "--since yesterday: not a time",
        ),
        (
            &["events", "--filter", "volume=x"][..],
            "unknown key volume",
        ),
        (
            &["events", "--filter", "event=explode"][..],
            "unknown event",
        ),
    ] {
        let out = d.hyper(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}");
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let (status, body) = http_get(&d, "/v1/events?until=1&filters=%5B1%5D");
    assert!(status.contains(" 400 "), "{status}: {body}");
}

#[test]
fn metrics_and_events_follow_a_pod_through_a_takeover_exec_and_stop() {
    let mut d = Hyperd::start();
    let id = d.run_detached(&["--name", "mpod"], &["sleep", "600"]);

    let s = scrape(&d);
    let b = backend();
    assert_eq!(sample(&s, "hyper_pods", &[("state", "running")]), Some(1.0));
    assert_eq!(sample(&s, "hyper_pods", &[("state", "exited")]), Some(0.0));
    let pod = [
        ("pod", id.as_str()),
        ("name", "mpod"),
        ("backend", b.as_str()),
    ];
    let rss = sample(&s, "hyper_pod_vmm_memory_rss_bytes", &pod);
    assert!(rss.is_some_and(|v| v > 1e6), "{rss:?}: {:#?}", s.samples);
    let cpu = sample(&s, "hyper_pod_vmm_cpu_seconds_total", &pod);
    assert!(cpu.is_some_and(|v| v > 0.0), "{cpu:?}");
    // One boot, in the +Inf bucket at least.
    let boots = sample(
        &s,
        "hyper_boot_duration_seconds",
        &[("backend", b.as_str())],
    );
    assert_eq!(boots, Some(1.0), "{:#?}", s.samples);
    assert!(sample(&s, "hyper_scrape_stats_failures", &[]).is_some());

    // hyperd goes and comes back; the new one adopts the pod. A follower
    // of the old one's events does not hold its shutdown up: its stream
    // ends and `hyper events` exits 0.
    let mut follower = d.hyper_spawn(&["events", "--since", "1h"]);
    // Its first line (the pod's `create`) says it is connected.
    let mut first = String::new();
    let mut out = BufReader::new(follower.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    assert!(first.contains(" pod create "), "{first}");
    d.restart();
    let status = wait_with_timeout(&mut follower, Duration::from_secs(60));
    let mut err = String::new();
    let _ = follower.stderr.take().unwrap().read_to_string(&mut err);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {err}\nlog:\n{}",
        d.log_text()
    );
    let out = d.exec_ok(&[&id, "echo", "hi"]);
    assert_eq!(out, "hi\n");
    let out = d.hyper(&["stop", "-t", "5", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = d.hyper(&["rm", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // The new hyperd's log starts with the takeover.
    let events = past_events(&d, &["--since", "1h", "--filter", "pod=mpod"]);
    let seen: Vec<String> = events
        .iter()
        .map(|e| {
            let a = &e["attributes"];
            match e["action"].as_str().unwrap_or("?") {
                "kill" => format!("kill:signal={}", a["signal"].as_str().unwrap_or("?")),
                "exec_die" => format!(
                    "exec_die:exitCode={}",
                    a["exitCode"].as_str().unwrap_or("?")
                ),
                "die" => format!("die:exitCode={}", a["exitCode"].as_str().unwrap_or("?")),
                other => other.to_string(),
            }
        })
        .collect();
    // sleep, PID 1 of its namespace, ignores SIGTERM: the grace period
    // runs out and the VM is taken down (137).
    assert_eq!(
        seen,
        [
            "takeover",
            "exec_start",
            "exec_die:exitCode=0",
            "kill:signal=15",
            "die:exitCode=137",
            "stop",
            "destroy"
        ],
        "{events:#?}\nlog:\n{}",
        d.log_text()
    );
    assert_eq!(
        events[1]["attributes"]["execID"],
        events[2]["attributes"]["execID"]
    );

    let s = scrape(&d);
    assert_eq!(
        sample(&s, "hyper_execs_total", &[("result", "started")]),
        Some(1.0)
    );
    let execs = sample(
        &s,
        "hyper_exec_start_duration_seconds",
        &[("backend", b.as_str())],
    );
    assert_eq!(execs, Some(1.0), "{:#?}", s.samples);
    assert_eq!(sample(&s, "hyper_pods", &[("state", "running")]), Some(0.0));
    assert!(sample(&s, "hyper_pod_vmm_memory_rss_bytes", &[]).is_none());
}

#[test]
fn sizes_beyond_the_host_are_refused_before_a_vm_starts() {
    let d = Hyperd::start();
    // SAFETY: sysconf takes no pointers.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let out = d.run(&["--cpus", "64"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let s = if cpus == 1 {
        "is only 1 CPU"
    } else {
        "are only"
    };
    assert!(
        err.contains("--cpus 64: range of CPUs is from 1 to")
            && err.contains(&format!("as there {s}")),
        "{err}"
    );
    let out = d.run(&["--memory", "64t"], &["true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("MiB of memory (MemTotal)"),
        "{}",
        text(&out.stderr)
    );
    // Docker's memory forms are taken, a wrong one is refused by the client.
    let out = d.run(&["--memory", "12x"], &["true"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("512m"), "{}", text(&out.stderr));
    // Nothing was launched, nothing is left.
    assert!(d.ps_json(true).is_empty());
    let s = scrape(&d);
    assert_eq!(
        s.samples
            .iter()
            .filter(|x| x.metric == "hyper_boot_duration_seconds")
            .count(),
        0
    );
    // And a size with a unit boots.
    let out = d.run(
        &["--memory", "256m"],
        &["sh", "-c", "grep MemTotal /proc/meminfo"],
    );
    d.succeeded(&out);
    let kib: u64 = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (150 * 1024..=256 * 1024).contains(&kib),
        "{}",
        text(&out.stdout)
    );
}
