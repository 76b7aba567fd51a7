//! `hyper run` end to end: real hyperd, real backend plugin, real VMs.

use hyper_tests::{busybox_rootfs, files_under, processes_mentioning, text, vms_of, Hyperd, Setup};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn output_and_exit_codes() {
    let d = Hyperd::start();
    let out = d.run(&[], &["echo", "hello from a VM"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    assert_eq!(text(&out.stdout), "hello from a VM\n");

    let out = d.run(&[], &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));

    // A signal death is reported as 128 + N, like Docker.
    let out = d.run(&[], &["segv"]);
    assert_eq!(
        out.status.code(),
        Some(128 + 11),
        "stderr: {}",
        text(&out.stderr)
    );
    // The first process is PID 1 of its namespace: like in Docker, a signal it
    // sends itself without a handler is ignored.
    let out = d.run(&[], &["sh", "-c", "kill -9 $$; echo survived"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "survived\n");
}

#[test]
fn stderr_is_kept_apart_from_stdout() {
    let d = Hyperd::start();
    let out = d.run(
        &[],
        &["sh", "-c", "echo to-out; echo to-err >&2; echo more-out"],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-out\nmore-out\n");
    assert_eq!(text(&out.stderr), "to-err\n");
}

#[test]
fn stdin_is_piped_with_dash_i() {
    let d = Hyperd::start();
    let input: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    let out = d.run_with_stdin(&["-i"], &["sha256sum"], Some(&input));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&sha256_hex(&input)),
        "got {}",
        text(&out.stdout)
    );

    // Without -i the container's stdin is empty.
    let out = d.run_with_stdin(&[], &["wc", "-c"], Some(b"ignored"));
    assert_eq!(text(&out.stdout).trim(), "0");
}

#[test]
fn env_workdir_hostname_and_user() {
    let d = Hyperd::start();
    let out = d.run(
        &["-e", "GREETING=hi there", "-w", "/srv/work", "-u", "1000"],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; test -n \"$HOSTNAME\" && hostname",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["hi there", "/srv/work", "1000"], "{stdout}");
    assert_eq!(lines.len(), 4, "{stdout}");
}

#[test]
fn sixteen_mib_of_stdout_arrive_intact() {
    let d = Hyperd::start();
    let out = d.run(
        &["--memory", "256"],
        &[
            "sh",
            "-c",
            "head -c 16777216 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(out.stdout.len(), 16 * 1024 * 1024);
    let guest_sum = text(&out.stderr);
    assert!(
        guest_sum.starts_with(&sha256_hex(&out.stdout)),
        "guest said {guest_sum}"
    );
}

/// `--cpus 2` gives the guest kernel two CPUs that both come online (SMP
/// bring-up through the backend's CPU topology, not just a count).
#[test]
fn two_vcpus_both_come_online() {
    let d = Hyperd::start();
    let out = d.run(
        &["--cpus", "2"],
        &[
            "sh",
            "-c",
            "grep -c ^processor /proc/cpuinfo; taskset -c 1 cat /proc/self/stat | cut -d' ' -f39",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nlog:\n{}",
        text(&out.stderr),
        d.log_text()
    );
    // Field 39 of /proc/self/stat: the CPU the process last ran on.
    assert_eq!(text(&out.stdout), "2\n1\n", "stderr: {}", text(&out.stderr));
}

#[test]
fn four_pods_at_once() {
    let d = Hyperd::start();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let rootfs = busybox_rootfs();
                let rootfs = rootfs.to_string_lossy().into_owned();
                let cmd = format!("echo pod-{i}; exit {i}");
                hyper_tests::hyper_at(
                    &socket,
                    &["run", "--rm", "--rootfs", &rootfs, "--", "sh", "-c", &cmd],
                    None,
                )
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("thread");
        assert_eq!(
            out.status.code(),
            Some(i as i32),
            "pod {i}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("pod-{i}\n"));
    }
    // Every VM, socket and run directory is gone.
    assert!(
        files_under(&d.state_dir.join("pods")).is_empty(),
        "{:?}",
        files_under(&d.state_dir.join("pods"))
    );
    let dir = d.dir.path().to_string_lossy().into_owned();
    assert_eq!(
        processes_mentioning(&format!("{dir}/state")),
        Vec::<u32>::new()
    );
}

#[test]
fn writes_land_in_the_overlay_and_the_image_stays_unchanged() {
    let d = Hyperd::start();
    let out = d.run(
        &[],
        &[
            "sh",
            "-c",
            "echo scribble > /etc/motd && echo new > /newfile && cat /etc/motd",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "scribble\n");
    let images = files_under(&d.state_dir.join("rootfs"));
    assert_eq!(images.len(), 1, "{images:?}");
    let image_sum = sha256_hex(&std::fs::read(&images[0]).expect("image"));

    let out = d.run(
        &[],
        &[
            "sh",
            "-c",
            "cat /etc/motd; test -e /newfile && echo leaked || echo clean",
        ],
    );
    assert_eq!(
        text(&out.stdout),
        "hypercontainer test image\nclean\n",
        "stderr: {}",
        text(&out.stderr)
    );
    // The second run reused the cached image, untouched.
    let images_after = files_under(&d.state_dir.join("rootfs"));
    assert_eq!(images_after, images);
    assert_eq!(
        sha256_hex(&std::fs::read(&images[0]).expect("image")),
        image_sum
    );
    assert_eq!(
        std::fs::read_to_string(busybox_rootfs().join("etc/motd")).expect("motd"),
        "hypercontainer test image\n"
    );
}

#[test]
fn command_not_found_exits_127_with_a_message() {
    let d = Hyperd::start();
    let out = d.run(&[], &["no-such-command", "arg"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        text(&out.stderr)
    );
    // The pod is gone all the same.
    assert!(files_under(&d.state_dir.join("pods")).is_empty());
}

#[test]
fn hyper_info_reports_plugins_probe_and_payload() {
    let d = Hyperd::start();
    let out = d.hyper(&["info", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["hypervisor"], hyper_tests::backend());
    let plugin = &info["plugins"][0];
    assert_eq!(plugin["name"], hyper_tests::backend());
    assert_eq!(plugin["probe"]["usable"], true, "{plugin}");
    assert!(info["payload"]["kernel"]
        .as_str()
        .is_some_and(|k| k.ends_with("hyperkernel")));
    assert!(info["payload_error"].is_null());
    let human = text(&d.hyper(&["info"]).stdout);
    assert!(human.contains("usable"), "{human}");
}

/// Starts `sleep 600` in a pod, waits for `ready`, stops hyperd, and checks
/// that no VM outlived it and the client got 125.
fn stop_hyperd_under_a_running_pod(setup: &Setup, ready: impl Fn(&Hyperd) -> bool) {
    let mut d = Hyperd::start_with(setup);
    let socket = d.socket.clone();
    let client = std::thread::spawn(move || {
        let rootfs = busybox_rootfs().to_string_lossy().into_owned();
        hyper_tests::hyper_at(
            &socket,
            &["run", "--rm", "--rootfs", &rootfs, "--", "sleep", "600"],
            None,
        )
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !ready(&d) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod never got ready:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.stop();
    let state = format!("{}/state", d.dir.path().display());
    let left: Vec<String> = processes_mentioning(&state)
        .into_iter()
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default())
        .collect();
    assert!(
        left.is_empty(),
        "VMs outlived hyperd: {left:?}\n{}",
        d.log_text()
    );
    let out = client.join().expect("client");
    assert_eq!(
        out.status.code(),
        Some(125),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[test]
fn stopping_hyperd_during_a_launch_takes_the_vm_down() {
    // Even when running pods are left for the next hyperd (the default), a
    // pod still booting has no session to take over.
    stop_hyperd_under_a_running_pod(&Setup::default(), |d| {
        !processes_mentioning(&format!("{}/state", d.dir.path().display())).is_empty()
    });
}

#[test]
fn stopping_hyperd_with_stop_pods_on_exit_takes_its_running_vms_down() {
    let setup = Setup {
        runtime_toml: "stop_pods_on_exit = true\n".into(),
        ..Setup::default()
    };
    // `ps` says running once the VM is launched; give the guest a few seconds
    // more to boot and start the container.
    stop_hyperd_under_a_running_pod(&setup, |d| {
        let ps = d.hyper(&["ps", "--json"]);
        let running = text(&ps.stdout).contains("\"running\"");
        if running {
            std::thread::sleep(std::time::Duration::from_secs(4));
        }
        running
    });
}

#[test]
fn a_new_hyperd_cleans_up_after_a_killed_one_whose_vm_died_too() {
    let mut d = Hyperd::start();
    let socket = d.socket.clone();
    let client = std::thread::spawn(move || {
        let rootfs = busybox_rootfs().to_string_lossy().into_owned();
        hyper_tests::hyper_at(
            &socket,
            &["run", "--rootfs", &rootfs, "--", "sleep", "600"],
            None,
        )
    });
    let state = format!("{}/state", d.dir.path().display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !text(&d.hyper(&["ps", "--json"]).stdout).contains("\"running\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the pod never ran:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    d.kill_hard();
    // The VM outlives a crashed hyperd…
    let orphans = processes_mentioning(&state);
    assert!(
        !orphans.is_empty(),
        "expected the VM to survive hyperd's crash"
    );
    let out = client.join().expect("client");
    assert_eq!(
        out.status.code(),
        Some(125),
        "stderr: {}",
        text(&out.stderr)
    );

    // It dies too while no hyperd runs (a Xen domain is not a process:
    // there it is destroyed; its xl monitor goes with it)…
    if hyper_tests::backend() == "xen" {
        assert_eq!(vms_of(&d.state_dir).len(), 1, "the pod's domain");
        hyper_tests::destroy_xen_domains(&d.state_dir);
    } else {
        for pid in &orphans {
            // SAFETY: kill(2) on a VM process started for this test's state dir.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
    // …and the next hyperd marks the pod exited and removes its run directory.
    d.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&state).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "leftover VM not killed:\n{}",
            d.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let leftovers: Vec<_> = files_under(&d.state_dir.join("pods"))
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "vm"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let ps: serde_json::Value =
        serde_json::from_slice(&d.hyper(&["ps", "-a", "--json"]).stdout).expect("ps");
    assert_eq!(ps[0]["state"], "exited", "{ps}");
    assert_eq!(ps[0]["running"], false, "{ps}");
}

/// Backends that can take a VM over: all of them (the VMs are compared as
/// processes, or as Xen domains).
#[test]
fn a_new_hyperd_takes_over_running_pods_after_a_crash_and_a_stop() {
    let mut d = Hyperd::start();
    let writer = d.run_detached(
        &["--name", "writer", "-e", "K=from-run"],
        &[
            "sh",
            "-c",
            "echo before; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo after; sleep 600",
        ],
    );
    let sleeper = d.run_detached(&["--name", "sleeper"], &["sleep", "600"]);
    d.wait_for_log("writer", "before");
    let vms_before = vms_of(&d.state_dir);
    assert_eq!(vms_before.len(), 2, "two VMs: {vms_before:?}");

    // hyperd crashes; its VMs go on.
    d.kill_hard();
    assert_eq!(vms_of(&d.state_dir), vms_before);
    d.restart();
    let running = d.ps_json(false);
    assert_eq!(
        running.len(),
        2,
        "both pods taken over: {running:?}\n{}",
        d.log_text()
    );
    assert!(d.log_text().contains("took over 2 running pod(s)"));
    // The log from before the crash is still there, exec works with the
    // container's env and gives the process's exit code, and output the
    // container writes from now on reaches the log.
    assert!(text(&d.hyper(&["logs", "writer"]).stdout).contains("before"));
    let out = d.hyper(&["exec", "writer", "sh", "-c", "echo $K; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-run\n");
    d.exec_ok(&["writer", "touch", "/tmp/go"]);
    let logs = d.wait_for_log("writer", "after");
    assert_eq!(logs, "before\nafter\n");
    // --timestamps across the takeover: every line stamped, in order.
    let stamped = text(&d.hyper(&["logs", "-t", "writer"]).stdout);
    let lines: Vec<(&str, &str)> = stamped
        .lines()
        .map(|l| l.split_once(' ').unwrap_or(("", l)))
        .collect();
    assert_eq!(
        lines.iter().map(|l| l.1).collect::<Vec<_>>(),
        ["before", "after"]
    );
    assert!(
        lines.iter().all(|l| l.0.len() >= 20 && l.0.ends_with('Z')) && lines[0].0 < lines[1].0,
        "{stamped}"
    );
    assert_eq!(d.exec_ok(&["sleeper", "echo", "hi"]), "hi\n");

    // A graceful stop leaves them running too (stop_pods_on_exit = false).
    d.restart();
    assert_eq!(d.ps_json(false).len(), 2);
    assert_eq!(d.exec_ok(&["sleeper", "echo", "again"]), "again\n");
    assert_eq!(
        vms_of(&d.state_dir),
        vms_before,
        "the same VMs, not new ones"
    );

    // Stopping a taken-over pod ends it with the code of a kill; then nothing is left.
    let out = d.hyper(&["stop", "-t", "1", &writer]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = d.hyper(&["rm", "-f", &writer, &sleeper]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(d.ps_json(true).is_empty());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !hyper_tests::vms_still_there(&vms_before).is_empty()
        || !processes_mentioning(&d.state_dir.to_string_lossy()).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "VMs or their processes left behind"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = files_under(&d.state_dir.join("pods"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// After a takeover the stdin of an interactive (`-i`) pod still reaches
/// its process: the adopted process gets a stdin window again. All
/// backends (each can take a VM over).
#[test]
fn stdin_of_an_interactive_pod_survives_a_takeover() {
    let mut d = Hyperd::start();
    let id = d.run_detached(
        &["-i", "--name", "talk"],
        &[
            "sh",
            "-c",
            "echo ready; while read l; do echo got $l; done; echo bye",
        ],
    );
    d.wait_for_log(&id, "ready");
    d.kill_hard();
    d.restart();
    assert_eq!(d.ps_json(false).len(), 1, "taken over:\n{}", d.log_text());
    // What an attached client types reaches the process, whose answer
    // reaches the log.
    let mut client = d.hyper_spawn(&["attach", "talk"]);
    let mut stdin = client.stdin.take().expect("stdin");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !text(&d.hyper(&["logs", "talk"]).stdout).contains("got ping") {
        assert!(
            std::time::Instant::now() < deadline,
            "stdin never reached the process after the takeover:\n{}",
            d.log_text()
        );
        use std::io::Write;
        let _ = stdin.write_all(b"ping\n");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    drop(stdin);
    let _ = hyper_tests::wait_with_timeout(&mut client, std::time::Duration::from_secs(60));
    let _ = client.kill();
    let _ = d.hyper(&["rm", "-f", "talk"]);
}

/// The process hosting the backend plugin dies (SIGKILL here; a plugin that
/// segfaults or aborts ends the same way): hyperd lives on, restarts the
/// host, takes the pod's VM back through `recover`, and the pod goes on —
/// the same VM, exec works, its supervisor saw no exit. QEMU and KVM: their
/// agent socket is served by the VM process itself; Xen: by the domain's
/// console bridge process (`hyper-xen-console`), which outlives the host and
/// which the new host adopts.
#[test]
fn a_killed_plugin_host_costs_no_pod_and_not_hyperd() {
    let d = Hyperd::start();
    let pod = d.run_detached(&["--name", "survivor"], &["sleep", "600"]);
    let vms_before = vms_of(&d.state_dir);
    assert_eq!(vms_before.len(), 1, "{vms_before:?}");
    // The host's argv names the plugin in this hyperd's own plugin dir.
    let plugins = d.dir.path().join("plugins");
    let hosts = |plugins: &std::path::Path| {
        processes_mentioning("hyper-plugin-host")
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).contains(&*plugins.to_string_lossy())
                })
            })
            .collect::<Vec<u32>>()
    };
    let before = hosts(&plugins);
    assert_eq!(before.len(), 1, "one plugin host: {before:?}");
    // SAFETY: kill(2) with a pid we just found and a plain signal number.
    assert_eq!(unsafe { libc::kill(before[0] as i32, libc::SIGKILL) }, 0);

    // hyperd answers throughout; the pod is back once the host is (bounded
    // retries while it restarts, never a timed assertion).
    let mut after = Vec::new();
    for _ in 0..300 {
        after = hosts(&plugins);
        if !after.is_empty() && after != before && d.log_text().contains("plugin host restarted") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        after.len(),
        1,
        "a new plugin host: {after:?}\n{}",
        d.log_text()
    );
    assert_ne!(after, before);
    let log = d.log_text();
    assert!(log.contains("backend plugin died"), "{log}");
    assert!(log.contains("signal 9 (SIGKILL)"), "{log}");
    assert!(log.contains("its VMs were taken back"), "{log}");
    assert!(!log.contains("VM not taken back"), "{log}");
    assert_eq!(
        d.exec_ok(&["survivor", "echo", "still here"]),
        "still here\n"
    );
    let ps = d.ps_json(false);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(
        vms_of(&d.state_dir),
        vms_before,
        "the same VM, not a new one"
    );
    // And it still stops and goes away through the new host.
    let out = d.hyper(&["rm", "-f", &pod]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(d.ps_json(true).is_empty());
}
