//! Long-lived pods: `run -d`, exec, logs, stop/kill/rm/wait, ids and names.
//! Real hyperd, real backend plugin, real VMs.

use std::io::{BufRead, BufReader, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyper_tests::{
    busybox_rootfs, files_under, processes_mentioning, text, wait_with_timeout, Hyperd, Setup,
    Tmpfs,
};

#[test]
fn detached_pod_exec_logs_stop_and_rm() {
    let d = Hyperd::start();
    let id = d.run_detached(
        &["--name", "web", "-e", "GREETING=hello", "-l", "tier=front"],
        &[
            "sh",
            "-c",
            "echo started; echo oops >&2; while true; do sleep 1; done",
        ],
    );

    // Listed as running, by id and by name.
    let running = d.ps_json(false);
    let me = running
        .iter()
        .find(|p| p["id"] == id.as_str())
        .expect("pod listed");
    assert_eq!(me["name"], "web");
    assert_eq!(me["labels"]["tier"], "front");
    assert_eq!(me["running"], true);

    // exec: the container's env plus -e, the exit code, stdin with -i.
    let out = d.hyper(&[
        "exec",
        "-e",
        "EXTRA=1",
        "web",
        "sh",
        "-c",
        "echo $GREETING $EXTRA; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello 1\n");
    let out = d.hyper_with_stdin(&["exec", "-i", &id[..6], "wc", "-c"], Some(b"12345"));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "5");
    // exec sees what the first process wrote (same container).
    let out = d.hyper(&[
        "exec",
        "web",
        "sh",
        "-c",
        "echo shared > /tmp/x; cat /tmp/x",
    ]);
    assert_eq!(text(&out.stdout), "shared\n");
    let out = d.hyper(&["exec", "web", "no-such-command"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );

    // logs: stdout and stderr apart, timestamps on request.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = d.hyper(&["logs", "web"]);
        if text(&out.stdout) == "started\n" && text(&out.stderr) == "oops\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs: stdout {:?} stderr {:?}",
            text(&out.stdout),
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = d.hyper(&["logs", "-t", "web"]);
    let line = text(&out.stdout);
    assert!(
        line.starts_with("20") && line.contains("Z started"),
        "{line:?}"
    );
    // The json-file log itself, as Docker writes it. stdout and stderr are
    // separate streams from the guest, so which of the two lines came first
    // is not fixed: look for each by its stream.
    let raw = std::fs::read_to_string(d.state_dir.join("pods").join(&id).join("container.log"))
        .expect("container.log");
    let entries: Vec<serde_json::Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).expect("a json-file log line"))
        .collect();
    let first_of = |stream: &str| {
        entries
            .iter()
            .find(|e| e["stream"] == stream)
            .map(|e| e["log"].clone())
    };
    assert_eq!(first_of("stdout"), Some("started\n".into()), "{raw}");
    assert_eq!(first_of("stderr"), Some("oops\n".into()), "{raw}");
    assert!(entries.iter().all(|e| e["time"].is_string()), "{raw}");

    // rm of a running pod needs -f.
    let out = d.hyper(&["rm", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is running"),
        "{}",
        text(&out.stderr)
    );

    // stop: PID 1 ignores SIGTERM (no handler), so the VM goes after -t.
    let started = Instant::now();
    let out = d.hyper(&["stop", "-t", "1", "web"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(20));
    let out = d.hyper(&["wait", &id]);
    assert_eq!(text(&out.stdout).trim(), "137");
    assert!(d.ps_json(false).iter().all(|p| p["id"] != id.as_str()));
    let all = d.ps_json(true);
    let me = all
        .iter()
        .find(|p| p["id"] == id.as_str())
        .expect("in ps -a");
    assert_eq!(me["exit_code"], 137);

    // exec into a stopped pod is refused, logs are still there.
    let out = d.hyper(&["exec", "web", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("not running"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&d.hyper(&["logs", "web"]).stdout), "started\n");

    let out = d.hyper(&["rm", "web"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(d.ps_json(true).iter().all(|p| p["id"] != id.as_str()));
    assert!(!d.state_dir.join("pods").join(&id).exists());
    assert!(processes_mentioning(&id).is_empty());
}

#[test]
fn wait_returns_the_exit_code_and_logs_follow() {
    let d = Hyperd::start();
    let id = d.run_detached(
        &[],
        &[
            "sh",
            "-c",
            "for i in 1 2 3; do echo line$i; sleep 1; done; exit 3",
        ],
    );
    // -f follows until the container exits.
    let out = d.hyper(&["logs", "-f", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "line1\nline2\nline3\n");
    let out = d.hyper(&["wait", &id]);
    assert_eq!(text(&out.stdout).trim(), "3");
    let out = d.hyper(&["logs", "--tail", "1", &id]);
    assert_eq!(text(&out.stdout), "line3\n");
    // The VM is gone once the container exits; its files too.
    assert!(processes_mentioning(&id).is_empty());
    assert!(!d.state_dir.join("pods").join(&id).join("vm").exists());
}

#[test]
fn killing_the_vm_process_marks_the_pod_exited() {
    let d = Hyperd::start();
    let id = d.run_detached(&[], &["sleep", "600"]);
    let pids = processes_mentioning(&d.state_dir.join("pods").join(&id).to_string_lossy());
    assert!(!pids.is_empty(), "no VM process found for {id}");
    for pid in pids {
        // SAFETY: kill(2) on the VM process of this test's pod.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let killed = Instant::now();
    loop {
        let all = d.ps_json(true);
        let me = all.iter().find(|p| p["id"] == id.as_str()).expect("listed");
        if me["running"] == false {
            assert_eq!(me["state"], "exited");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "still running 1 s after its VM was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_pod_references_are_refused_clearly() {
    let d = Hyperd::start();
    let a = d.run_detached(&["--name", "same"], &["sleep", "600"]);
    // A second pod with the same name is refused and leaves nothing.
    let before = files_under(&d.state_dir.join("pods")).len();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let out = d.hyper(&[
        "run", "-d", "--name", "same", "--rootfs", &rootfs, "--", "true",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("already used"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(files_under(&d.state_dir.join("pods")).len(), before);

    let out = d.hyper(&["exec", "nope", "true"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no such pod: nope"),
        "{}",
        text(&out.stderr)
    );
    let out = d.hyper(&["logs", "nope"]);
    assert!(
        text(&out.stderr).contains("no such pod"),
        "{}",
        text(&out.stderr)
    );
    let out = d.hyper(&["kill", "-s", "BOGUS", &a]);
    assert!(
        text(&out.stderr).contains("unknown signal"),
        "{}",
        text(&out.stderr)
    );

    // Two pods: the empty-ish prefix shared by both is ambiguous unless unique.
    let b = d.run_detached(&[], &["sleep", "600"]);
    let common: String = a
        .chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    if !common.is_empty() {
        let out = d.hyper(&["inspect", &common]);
        assert!(
            text(&out.stderr).contains("ambiguous"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = d.hyper(&["inspect", &b[..common.len() + 1]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = d.hyper(&["rm", "-f", "same", &b]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(processes_mentioning(&d.state_dir.to_string_lossy()).is_empty());
}

#[test]
fn twenty_pods_at_once_are_all_removed_cleanly() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let starters: Vec<_> = (0..20)
        .map(|i| {
            let socket = d.socket.clone();
            let rootfs = rootfs.clone();
            std::thread::spawn(move || {
                let name = format!("p{i}");
                hyper_tests::hyper_at(
                    &socket,
                    &[
                        "run", "-d", "--name", &name, "--rootfs", &rootfs, "--", "sleep", "600",
                    ],
                    None,
                )
            })
        })
        .collect();
    for s in starters {
        let out = s.join().expect("starter");
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}\nlog:\n{}",
            text(&out.stderr),
            d.log_text()
        );
    }
    assert_eq!(d.ps_json(false).len(), 20);
    let names: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let out = d.hyper(&args);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(d.ps_json(true).is_empty());
    // Nothing left: no VM process, no socket, no file of any pod.
    assert!(processes_mentioning(&d.state_dir.to_string_lossy()).is_empty());
    let left = files_under(&d.state_dir.join("pods"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn restart_policy_on_failure_restarts_up_to_n_times() {
    let d = Hyperd::start();
    let id = d.run_detached(
        &["--restart", "on-failure:2"],
        &["sh", "-c", "echo run; exit 3"],
    );
    let out = d.hyper(&["wait", &id]);
    assert_eq!(text(&out.stdout).trim(), "3", "{}", text(&out.stderr));
    // The first run and two restarts, each in a fresh VM, all in one log.
    assert_eq!(text(&d.hyper(&["logs", &id]).stdout), "run\nrun\nrun\n");
    let out = d.hyper(&["inspect", &id]);
    let pods: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pods[0]["restart_count"], 2);
    assert!(processes_mentioning(&id).is_empty());
    // --rm and --restart contradict each other.
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    let out = d.hyper(&[
        "run",
        "--rm",
        "--restart",
        "always",
        "--rootfs",
        &rootfs,
        "--",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("--restart"),
        "{}",
        text(&out.stderr)
    );
}

/// Lines a child writes on stdout, as they come.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for `line` among what `rx` yields, writing `poke` to `stdin`
/// every half second meanwhile (an attach joins at some point after its
/// process starts, so what is written before may reach only the log).
fn wait_for_line(
    rx: &mpsc::Receiver<String>,
    line: &str,
    mut poke: Option<(&mut std::process::ChildStdin, &[u8])>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some((stdin, data)) = poke.as_mut() {
            stdin.write_all(data).expect("write to attach");
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(l) if l == line => return,
            Ok(l) => seen.push(l),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!("{line:?} never came; saw {seen:?}");
}

#[test]
fn attach_joins_a_running_pod_its_output_and_its_stdin() {
    let d = Hyperd::start();
    let id = d.run_detached(
        &["-i", "--name", "talk"],
        &[
            "sh",
            "-c",
            "echo ready; while read l; do echo got $l; done; echo bye; exit 4",
        ],
    );
    d.wait_for_log(&id, "ready");

    // A client that leaves without ending its input leaves stdin open.
    let mut first = d.hyper_spawn(&["attach", "talk"]);
    let first_lines = lines_of(&mut first);
    let mut first_in = first.stdin.take().expect("stdin");
    wait_for_line(&first_lines, "got early", Some((&mut first_in, b"early\n")));
    first.kill().expect("kill the first client");
    let _ = first.wait();

    // One watches without stdin, another talks; both see the process's
    // answers to what the talker writes.
    let mut watcher = d.hyper_spawn(&["attach", "--no-stdin", &id[..8]]);
    let watched = lines_of(&mut watcher);
    let mut talker = d.hyper_spawn(&["attach", "talk"]);
    let talked = lines_of(&mut talker);
    let mut talker_in = talker.stdin.take().expect("stdin");
    wait_for_line(&watched, "got ping", Some((&mut talker_in, b"ping\n")));
    wait_for_line(&talked, "got ping", None);

    // The talker's end of input is the process's: it says bye and exits 4,
    // and every attached client exits with its status.
    drop(talker_in);
    wait_for_line(&watched, "bye", None);
    for (name, child) in [("talker", &mut talker), ("watcher", &mut watcher)] {
        let status = wait_with_timeout(child, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("the {name} did not exit"));
        assert_eq!(status.code(), Some(4), "{name}; log:\n{}", d.log_text());
    }
    let logs = text(&d.hyper(&["logs", "talk"]).stdout);
    assert!(logs.starts_with("ready\ngot early\n"), "{logs}");
    assert!(logs.ends_with("got ping\nbye\n"), "{logs}");

    // An exited pod cannot be attached to, and says what to do.
    let out = d.hyper(&["attach", "talk"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("hyper start talk"),
        "{}",
        text(&out.stderr)
    );
    let _ = d.hyper(&["rm", "talk"]);
}

#[test]
fn start_and_restart_boot_the_same_pod_again() {
    let d = Hyperd::start();
    let id = d.run_detached(
        &["--name", "again", "-e", "WHO=me"],
        &["sh", "-c", "echo run $WHO; sleep 600"],
    );
    d.wait_for_log(&id, "run me");
    let first_vm = processes_mentioning(&id);
    assert!(!first_vm.is_empty(), "no VM process for {id}");

    // restart: stopped, then the same pod in a fresh VM; the log goes on.
    let out = d.hyper(&["restart", "-t", "1", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "again");
    d.wait_for_log(&id, "run me\nrun me\n");
    let pods = d.ps_json(false);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["id"], id.as_str());
    let second_vm = processes_mentioning(&id);
    assert!(
        second_vm.iter().all(|p| !first_vm.contains(p)),
        "the old VM {first_vm:?} still runs: {second_vm:?}"
    );
    assert_eq!(d.exec_ok(&["again", "sh", "-c", "echo $WHO"]), "me\n");

    // stop, then start: the same again; start on a running pod is a no-op.
    let out = d.hyper(&["stop", "-t", "1", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(d.ps_json(false).is_empty());
    let out = d.hyper(&["start", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    d.wait_for_log(&id, "run me\nrun me\nrun me\n");
    let out = d.hyper(&["start", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(d.ps_json(false).len(), 1);

    // Unknown pods are named in the error.
    let out = d.hyper(&["start", "nosuchpod"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuchpod"),
        "{}",
        text(&out.stderr)
    );

    let out = d.hyper(&["rm", "-f", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(processes_mentioning(&id).is_empty());
    assert_eq!(text(&d.hyper(&["logs", "again"]).stdout), "");
}

/// What comes after `lineN ` in each line: a full disk is reached within a
/// few lines, not after the page the log file already has is filled.
const PAD: usize = 1000;

/// The length of line N with its newline.
fn line_len(n: u64) -> u64 {
    (format!("line{n} ").len() + PAD + 1) as u64
}

/// The numbers of `lineN PAD` lines, in order; anything else fails the test.
fn line_numbers(stdout: &str) -> Vec<u64> {
    stdout
        .lines()
        .map(|l| {
            l.strip_prefix("line")
                .and_then(|rest| rest.split_once(' '))
                .filter(|(_, pad)| pad.len() == PAD)
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("not a numbered line: {l:?} in {stdout:?}"))
        })
        .collect()
}

#[test]
fn a_full_disk_drops_log_lines_keeps_the_pod_running_and_says_what_was_dropped() {
    // The whole state directory on a small tmpfs: the rootfs image and the
    // pod's files are written before it is filled, the logs while it is.
    let d = Hyperd::start_with(&Setup {
        state_tmpfs_mib: Some(32),
        ..Setup::default()
    });
    let script = format!(
        "i=0; while true; do i=$((i+1)); echo line$i {}; sleep 1; done",
        "x".repeat(PAD)
    );
    let id = d.run_detached(&["--name", "chatty"], &["sh", "-c", &script]);
    let quiet = d.run_detached(&["--name", "quiet"], &["sleep", "600"]);
    d.wait_for_log(&id, "line2 ");
    let pod_dir = d.state_dir.join("pods").join(&id);
    let record_before = std::fs::read(pod_dir.join("pod.json")).expect("pod.json");

    Tmpfs::fill(&d.state_dir, "filler");
    // Lines go on being printed and dropped; hyperd says so in its own log.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.log_text().contains("container log write failed") {
        assert!(
            Instant::now() < deadline,
            "no log write failed on the full disk:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let upto = line_numbers(&text(&d.hyper(&["logs", &id]).stdout));
    std::thread::sleep(Duration::from_secs(3));
    // Nothing more made it to the log, and the pod is alive and served.
    let during = line_numbers(&text(&d.hyper(&["logs", &id]).stdout));
    assert_eq!(during, upto, "lines were logged on a full disk");
    assert_eq!(d.exec_ok(&["chatty", "echo", "alive"]), "alive\n");
    let me = d
        .ps_json(false)
        .into_iter()
        .find(|p| p["id"] == id.as_str())
        .expect("still listed as running");
    assert_eq!(me["running"], true);
    assert_eq!(
        std::fs::read(pod_dir.join("pod.json")).expect("pod.json"),
        record_before
    );

    std::fs::remove_file(d.state_dir.join("filler")).expect("remove filler");
    let last_before = *upto.last().expect("lines before the fill");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (stdout, stderr) = loop {
        let out = d.hyper(&["logs", &id]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let numbers = line_numbers(&stdout);
        if numbers.len() > upto.len() + 1 && stderr.contains("were dropped") {
            break (stdout, stderr);
        }
        assert!(
            Instant::now() < deadline,
            "no notice or no new lines after the disk had room again: {stdout:?} {stderr:?}\nlog:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    // One gap, right after the last line logged before the disk was full,
    // and the notice counts exactly the bytes of the missing lines.
    let numbers = line_numbers(&stdout);
    assert_eq!(&numbers[..upto.len()], &upto[..]);
    let first_after = numbers[upto.len()];
    assert!(
        first_after > last_before + 2,
        "too few lines dropped: {numbers:?}"
    );
    for w in numbers[upto.len()..].windows(2) {
        assert_eq!(w[1], w[0] + 1, "a second gap: {numbers:?}");
    }
    let missing: u64 = (last_before + 1..first_after).map(line_len).sum();
    let notice = format!("[hyperd: {missing} bytes of this container's output were dropped: ");
    assert!(
        stderr.starts_with(&notice) && stderr.lines().count() == 1,
        "want one notice starting {notice:?}, got stderr {stderr:?}"
    );
    assert!(stderr.contains("No space left on device"), "{stderr:?}");

    // In the file, the notice comes just before the first line that made it.
    let raw = std::fs::read_to_string(pod_dir.join("container.log")).expect("container.log");
    let entries: Vec<serde_json::Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).expect("a json-file entry"))
        .collect();
    let at = entries
        .iter()
        .position(|e| e["stream"] == "stderr")
        .expect("the notice entry");
    assert_eq!(
        entries[at + 1]["log"],
        format!("line{first_after} {}\n", "x".repeat(PAD))
    );

    // A second stretch of full disk, with a pod stopped during it: that pod
    // ends as usual and its record on disk, maybe stale, is never cut short.
    // Its run files, removed, free a little space, so lines may come and go
    // in several stretches: each notice counts its own, so all the notices
    // add up to exactly the lines that are missing.
    Tmpfs::fill(&d.state_dir, "filler2");
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.log_text().matches("container log write failed").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no second failure:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = d.hyper(&["stop", "-t", "1", "quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&d.hyper(&["wait", &quiet]).stdout).trim(), "137");
    let quiet_json = std::fs::read(d.state_dir.join("pods").join(&quiet).join("pod.json"))
        .expect("pod.json of the stopped pod");
    serde_json::from_slice::<serde_json::Value>(&quiet_json).expect("a whole pod.json");
    assert_eq!(d.exec_ok(&["chatty", "echo", "alive"]), "alive\n");
    std::thread::sleep(Duration::from_secs(2));
    std::fs::remove_file(d.state_dir.join("filler2")).expect("remove filler2");
    let seen = numbers.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (numbers, stderr) = loop {
        let out = d.hyper(&["logs", &id]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let numbers = line_numbers(&stdout);
        if stderr.lines().count() >= 2 && numbers.len() > seen + 1 {
            break (numbers, stderr);
        }
        assert!(
            Instant::now() < deadline,
            "no second notice: {stdout:?} {stderr:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let missing: u64 = numbers
        .windows(2)
        .flat_map(|w| w[0] + 1..w[1])
        .map(line_len)
        .sum();
    let noticed: u64 = stderr
        .lines()
        .map(|l| {
            l.strip_prefix("[hyperd: ")
                .and_then(|r| r.split_once(" bytes of this container's output were dropped"))
                .and_then(|(n, _)| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not a notice: {l:?}"))
        })
        .sum();
    assert_eq!(noticed, missing, "{numbers:?} {stderr:?}");
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "{numbers:?}");

    let out = d.hyper(&["rm", "-f", &id, &quiet]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(processes_mentioning(&d.state_dir.to_string_lossy()).is_empty());
}
