//! hyperd's state is private, and the socket group cannot use hyperd to
//! read what its members cannot (issue 13: H4, M7 and the Low findings on
//! names, `ps` and relative paths). Real hyperd, real backend, real VMs.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use hyper_tests::{bin, busybox_rootfs, files_under, text, Hyperd, Setup};

/// The uid/gid an unprivileged local user is played by.
const NOBODY: &str = "65534";
/// The group made for the socket_group cases.
const GROUP: &str = "hypertest";

/// `hyper ARGS…` run as `nobody` (and, with `gid`, as a member of that
/// group only) against `socket`.
fn hyper_as_nobody(socket: &Path, gid: Option<u32>, args: &[&str]) -> Output {
    let groups = gid.map_or_else(|| "--clear-groups".to_string(), |g| format!("--groups={g}"));
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, &groups, "--"])
        .arg(bin("hyper"))
        .args(args)
        .env("HYPER_HOST", socket)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

/// `cat PATH` as nobody: whether it could read the file.
fn nobody_can_read(path: &Path) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).map_or(0, |m| m.mode() & 0o7777)
}

/// Every path under `dir` (dir included) that group or others may read,
/// write or search; symlinks are skipped (their mode means nothing).
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut all = vec![dir.to_path_buf()];
    all.extend(files_under(dir));
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                all.push(p.clone());
                dirs.push(p);
            }
        }
    }
    all.sort();
    all.dedup();
    all.into_iter()
        .filter(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink())
                && mode(p) & 0o077 != 0
        })
        .map(|p| format!("{} {:o}", p.display(), mode(&p)))
        .collect()
}

#[test]
fn state_and_run_dirs_are_private_and_old_state_is_tightened() {
    // State an older hyperd left world-readable, found at a restart.
    let mut d = Hyperd::start();
    d.stop();
    std::fs::create_dir_all(d.state_dir.join("old")).unwrap();
    std::fs::write(d.state_dir.join("old/leftover.json"), "{\"env\":[\"A=b\"]}").unwrap();
    for (path, m) in [
        (d.state_dir.clone(), 0o755),
        (d.state_dir.join("old"), 0o755),
        (d.state_dir.join("old/leftover.json"), 0o644),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).unwrap();
    }
    d.restart();
    assert_eq!(mode(&d.state_dir), 0o700);
    assert_eq!(mode(&d.state_dir.join("old/leftover.json")), 0o600);

    let id = d.run_detached(
        &["-e", "DB_PASSWORD=hunter2-secret"],
        &["sh", "-c", "echo the-secret-log-line; exec sleep 600"],
    );
    d.wait_for_log(&id, "the-secret-log-line");
    let pod_dir = d.state_dir.join("pods").join(&id);
    let record = pod_dir.join("pod.json");
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .contains("hunter2-secret"),
        "the record holds the env, which is why it must be private"
    );
    // The whole state: records, logs, the VM's run dir (QMP/agent sockets,
    // console log, pid file), the rootfs images.
    let open = open_to_others(&d.state_dir);
    assert!(open.is_empty(), "readable by others:\n{}", open.join("\n"));
    // The socket is owner-only without socket_group.
    assert_eq!(mode(&d.socket) & 0o077, 0, "socket {:o}", mode(&d.socket));

    // An unprivileged user reads none of it, even knowing the paths (the
    // test's temp dir itself is opened up so only hyperd's modes count).
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !nobody_can_read(&record),
        "nobody read {}",
        record.display()
    );
    for f in files_under(&pod_dir) {
        if f.file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".log"))
        {
            assert!(!nobody_can_read(&f), "nobody read {}", f.display());
        }
    }
    // Nor can it talk to hyperd.
    let out = hyper_as_nobody(&d.socket, None, &["ps"]);
    assert_ne!(out.status.code(), Some(0), "nobody used the socket");
    let out = d.hyper(&["rm", "-f", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// The gid of GROUP, made if missing.
fn test_group() -> u32 {
    let _ = Command::new("groupadd").args(["-f", GROUP]).status();
    let out = Command::new("getent")
        .args(["group", GROUP])
        .output()
        .expect("getent");
    text(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .expect("the test group's gid")
}

#[test]
fn a_socket_group_member_cannot_read_root_only_files_through_hyperd() {
    let gid = test_group();
    let d = Hyperd::start_with(&Setup {
        runtime_toml: format!("socket_group = \"{GROUP}\"\n"),
        ..Setup::default()
    });
    // The group reaches the socket (0660, its dir g+x) and nothing more.
    assert_eq!(mode(&d.socket), 0o660);
    assert_eq!(std::fs::metadata(&d.socket).unwrap().gid(), gid);
    assert_eq!(mode(&d.state_dir), 0o700);
    let out = hyper_as_nobody(&d.socket, Some(gid), &["images"]);
    assert_eq!(out.status.code(), Some(0), "member: {}", text(&out.stderr));

    // A root-only file: refused, and nothing of it shown.
    let secret_dir = d.dir.path().join("private");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret = secret_dir.join("shadow");
    std::fs::write(&secret, "root:$6$TOPSECRETHASH:19000:0:99999:7:::\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for path in [secret.to_str().unwrap(), "/etc/shadow"] {
        let out = hyper_as_nobody(&d.socket, Some(gid), &["load", "-i", path]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_ne!(
            out.status.code(),
            Some(0),
            "load -i {path} as a member: {all}"
        );
        assert!(all.contains("not readable by uid 65534"), "{all}");
        assert!(
            !all.contains("TOPSECRET") && !all.contains("root:"),
            "{all}"
        );
    }
    // Root itself still may (and gets a plain "not an archive" error).
    let out = d.hyper(&["load", "-i", secret.to_str().unwrap()]);
    assert!(
        !text(&out.stderr).contains("not readable"),
        "{}",
        text(&out.stderr)
    );

    // A root-only --rootfs: a copy of busybox with one root-only file.
    let tree = secret_dir.join("rootfs");
    let status = Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    // All of it readable (the script builds it 0700), but one file.
    let status = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&tree)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(tree.join("secret"), "TOPSECRET").unwrap();
    std::fs::set_permissions(tree.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let tree_s = tree.to_str().unwrap();
    for args in [
        vec!["run", "--rm", "--rootfs", tree_s, "--", "cat", "/secret"],
        vec!["run", "-d", "--rootfs", tree_s, "--", "cat", "/secret"],
    ] {
        let out = hyper_as_nobody(&d.socket, Some(gid), &args);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_ne!(out.status.code(), Some(0), "{args:?}: {all}");
        assert!(
            all.contains("secret: not readable by uid 65534"),
            "{args:?}: {all}"
        );
        assert!(!all.contains("TOPSECRET"), "{all}");
    }
    // No pod was made and no image built.
    assert!(d.ps_json(true).is_empty());
    let rootfs_images = files_under(&d.state_dir.join("rootfs"));
    assert!(rootfs_images.is_empty(), "{rootfs_images:?}");
}

/// A raw request on the API socket → (status line, body).
fn raw_request(socket: &Path, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: hyperd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn relative_client_paths_are_refused_by_the_api() {
    let d = Hyperd::start();
    for (path, body) in [
        ("/v1/pods", r#"{"rootfs":"rootfs","args":["true"]}"#),
        (
            "/v1/pods/create",
            r#"{"pod":{"containers":[{"name":"a","rootfs":"rel/dir","command":["true"]}]}}"#,
        ),
        ("/v1/images/load", r#"{"path":"image.tar"}"#),
    ] {
        let (status, answer) = raw_request(&d.socket, "POST", path, body);
        assert!(status.contains(" 400 "), "{path}: {status} {answer}");
        assert!(answer.contains("give an absolute path"), "{path}: {answer}");
    }
    assert!(d.ps_json(true).is_empty());
}

#[test]
fn one_name_twice_at_once_one_conflicts_and_ps_escapes_control_characters() {
    let d = Hyperd::start();
    let rootfs = busybox_rootfs().to_string_lossy().into_owned();
    // The pod's args carry an escape sequence (clear screen, retitle).
    let hostile = "\x1b[2J\x1b]0;owned\x07";
    let args = [
        "run",
        "-d",
        "--name",
        "dup",
        "--rootfs",
        &rootfs,
        "--",
        "sh",
        "-c",
        "exec sleep 600",
        hostile,
    ];
    let a = d.hyper_spawn(&args);
    let b = d.hyper_spawn(&args);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b]
        .iter()
        .filter(|o| o.status.code() == Some(0))
        .count();
    assert_eq!(
        ok,
        1,
        "a: {} {}\nb: {} {}",
        text(&a.stdout),
        text(&a.stderr),
        text(&b.stdout),
        text(&b.stderr)
    );
    let loser = if a.status.code() == Some(0) { &b } else { &a };
    assert!(
        text(&loser.stderr).contains("the name dup is already used"),
        "{}",
        text(&loser.stderr)
    );
    let pods = d.ps_json(true);
    assert_eq!(pods.len(), 1, "{pods:?}");

    let out = d.hyper(&["ps"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !out.stdout.iter().any(|&c| c == 0x1b || c == 0x07 || c == 0),
        "raw control characters: {:?}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("\\x1b[2J\\x1b]0;owned\\x07"),
        "{}",
        text(&out.stdout)
    );
    let out = d.hyper(&["rm", "-f", "dup"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// QEMU and KVM only: on Xen a pod's VM is a domain, not a host process,
/// and the quarantine names no process to stop (the domain stays, as here).
#[test]
fn a_corrupt_record_of_a_running_pod_is_set_aside_not_deleted() {
    if hyper_tests::backend() == "xen" {
        eprintln!("skipped on Xen: the VM is a domain, not a process");
        return;
    }
    let mut d = Hyperd::start();
    let id = d.run_detached(&[], &["sh", "-c", "echo before-the-crash; exec sleep 600"]);
    d.wait_for_log(&id, "before-the-crash");
    let vms = hyper_tests::vms_of(&d.state_dir);
    assert!(!vms.is_empty(), "no VM process found");
    d.kill_hard();
    let pod_dir = d.state_dir.join("pods").join(&id);
    std::fs::write(pod_dir.join("pod.json"), b"{\"id\": \"truncated by a cra").unwrap();
    d.restart();

    // Nothing deleted: the dir, the logs, the record (set aside).
    assert!(pod_dir.join("container.log").exists(), "the logs went");
    let kept: Vec<String> = std::fs::read_dir(&pod_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter().any(|n| n.starts_with("pod.json.corrupt-")),
        "{kept:?}"
    );
    // The VM is not orphaned silently: still running, named in the log
    // with what to do.
    let still = hyper_tests::vms_still_there(&vms);
    assert_eq!(still, vms, "the VM was killed or died");
    let log = d.log_text();
    assert!(log.contains("pod not restored"), "{log}");
    assert!(log.contains("pod.json is unreadable"), "{log}");
    for pid in &vms {
        assert!(log.contains(&format!("kill {pid}")), "{log}");
    }
    // A second restart keeps it all again.
    d.restart();
    assert!(pod_dir.join("container.log").exists());
    for pid in vms
        .iter()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p > 1)
    {
        // SAFETY: kill(2) on the test's own VM process, listed above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// QEMU only: the guest is paused over QMP so its takeover cannot end
/// before the test looks (hyper-vmm and Xen have no QMP).
#[test]
fn a_restarted_hyperd_serves_at_once_and_lists_takeovers_as_recovering() {
    if hyper_tests::backend() != "qemu" {
        eprintln!("skipped: needs QEMU's QMP to pause the guest");
        return;
    }
    let mut d = Hyperd::start();
    let id = d.run_detached(&[], &["sh", "-c", "echo up; exec sleep 600"]);
    d.wait_for_log(&id, "up");
    d.kill_hard();
    // Pause the guest's vCPUs: hyperstart cannot answer the resync, so the
    // takeover waits for it (up to its timeout) instead of ending at once.
    let qmp = d.state_dir.join("pods").join(&id).join("vm/qmp.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&qmp).expect("qmp");
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    for cmd in ["qmp_capabilities", "stop"] {
        writeln!(s, "{{\"execute\":\"{cmd}\"}}").unwrap();
        // Events (STOP) may come first.
        loop {
            line.clear();
            let n = std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            assert!(n > 0, "QMP closed after {cmd}");
            if line.contains("\"return\"") {
                break;
            }
            assert!(line.contains("\"event\""), "{cmd}: {line}");
        }
    }
    drop((s, reader));
    d.restart_serving();

    // Served at once, the pod listed as recovering (with and without -a).
    let me = d
        .ps_json(false)
        .into_iter()
        .find(|p| p["id"] == id.as_str())
        .expect("the recovering pod is listed");
    assert_eq!(me["recovering"], true, "{me}");
    let out = d.hyper(&["ps"]);
    assert!(
        text(&out.stdout).contains("recovering"),
        "{}",
        text(&out.stdout)
    );
    let out = d.hyper(&["inspect", &id]);
    assert!(
        text(&out.stdout).contains("\"recovering\": true"),
        "{}",
        text(&out.stdout)
    );
    // Acting on it waits for the takeover: a clear conflict.
    let out = d.hyper(&["stop", "-t", "1", &id]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("recovering"),
        "{}",
        text(&out.stderr)
    );
    // Other pods can be started meanwhile (the API is not held).
    let out = d.run(&[], &["echo", "meanwhile"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "meanwhile",
        "{}",
        text(&out.stderr)
    );

    // The takeover ends (the paused guest never answers: given up).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let pods = d.ps_json(true);
        let me = pods
            .iter()
            .find(|p| p["id"] == id.as_str())
            .expect("listed");
        if me["recovering"] != true {
            assert_eq!(me["running"], false, "{me}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still recovering");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
