//! containerd end to end: Debian's real containerd, started here with its
//! own root, state, config and socket under a temp dir (never the
//! system's), runs tasks through `containerd-shim-hyper-v2` (runtime
//! `io.containerd.hyper.v2`, found on containerd's PATH) driven by the real
//! `ctr`. The image comes from the project's test registry over plain HTTP;
//! the shim boots a real VM per task from the hypercontainer config the
//! runtime options name (`ctr run --runtime-config-path`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_tests::{
    bin_dir, prepare, processes_mentioning, registry_var, text, wait_with_timeout, Prepared, Setup,
    RUN_TIMEOUT,
};
use sha2::{Digest, Sha256};

const RUNTIME: &str = "io.containerd.hyper.v2";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";

struct Containerd {
    /// The hypercontainer config (and its state dir) the shim runs with.
    hyper: Prepared,
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Containerd {
    fn start() -> Self {
        for tool in [CONTAINERD, CTR] {
            assert!(
                Path::new(tool).is_file(),
                "{tool} is missing: apt-get install containerd (.ci/deps.sh)"
            );
        }
        let shim = bin_dir().join("containerd-shim-hyper-v2");
        assert!(
            shim.is_file(),
            "{} is missing: cargo build --release -p hyper-shim",
            shim.display()
        );
        let hyper = prepare(&Setup::default());
        let dir = hyper.dir.path().join("ctd");
        std::fs::create_dir(&dir).expect("containerd dir");
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        // The CRI plugin is off: this is the `ctr` path (no CNI, no
        // sandboxes).
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
                 [grpc]\naddress = \"{sock}\"\n\n[ttrpc]\naddress = \"{sock}.ttrpc\"\n\n\
                 [debug]\nlevel = \"debug\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display(),
            ),
        )
        .expect("containerd config");
        let log = dir.join("containerd.log");
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("log"),
            )
            .spawn()
            .expect("start containerd");
        let mut c = Containerd {
            hyper,
            dir,
            socket,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if c.ctr(&["version"]).status.success() {
                break;
            }
            if let Some(child) = c.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    panic!("containerd exited ({st}):\n{}", c.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd does not answer:\n{}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_with(args, Stdio::null())
    }

    fn ctr_with(&self, args: &[&str], stdin: Stdio) -> Output {
        let mut child = Command::new(CTR)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();
        let reader = |p: Option<std::process::ChildStdout>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                if let Some(mut p) = p {
                    let _ = std::io::Read::read_to_end(&mut p, &mut v);
                }
                v
            })
        };
        let out_t = reader(out_pipe);
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = err_pipe {
                let _ = std::io::Read::read_to_end(&mut p, &mut v);
            }
            v
        });
        let status = match wait_with_timeout(&mut child, RUN_TIMEOUT) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                panic!("ctr {args:?} did not finish:\n{}", self.log_text());
            }
        };
        Output {
            status,
            stdout: out_t.join().unwrap_or_default(),
            stderr: err_t.join().unwrap_or_default(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log_text()
        );
        text(&out.stdout)
    }

    /// `ctr run` with this runtime and the test's hypercontainer config.
    fn run(&self, opts: &[&str], image: &str, id: &str, cmd: &[&str]) -> Output {
        let config = self.hyper.config.display().to_string();
        let mut args = vec![
            "run",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &config,
        ];
        args.extend_from_slice(opts);
        args.push(image);
        args.push(id);
        args.extend_from_slice(cmd);
        self.ctr(&args)
    }

    /// The shim server's socket for task `id` (the containerd-shim crate's
    /// `socket_address`: /run/containerd/s/<sha256 of address/ns/id>).
    fn shim_socket(&self, id: &str) -> PathBuf {
        let key = format!("{}/default/{id}", self.socket.display());
        let hash: String = Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        PathBuf::from("/run/containerd/s").join(hash)
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let listing = self.ok(&["task", "ls"]);
        listing.lines().find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.last().unwrap_or(&"").to_string())
        })
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_with_timeout(&mut child, Duration::from_secs(60)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Mounts left under the test's directory (containerd's snapshots, the
    /// shim's rootfs mounts).
    fn mounts_left(&self) -> Vec<String> {
        let dir = self.dir.display().to_string();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|m| m.starts_with(&dir))
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        for m in self.mounts_left().iter().rev() {
            if let Some(target) = m.split_whitespace().nth(1) {
                let _ = Command::new("umount").args(["-l", target]).status();
            }
        }
        for pid in processes_mentioning(&self.hyper.dir.path().display().to_string()) {
            // SAFETY: kill(2) of a leftover of this test (its temp dir is
            // on the command line).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn busybox(c: &Containerd) -> String {
    let image = format!(
        "{}/hyper/busybox:latest",
        registry_var("HYPER_TEST_REGISTRY")
    );
    c.ok(&["image", "pull", "--plain-http", &image]);
    image
}

#[test]
fn ctr_run_and_exec_give_output_stdin_and_exit_codes_and_kill_ends_the_vm() {
    let mut c = Containerd::start();
    let image = busybox(&c);

    // Output and exit 0, through containerd's fifos.
    let out = c.run(&["--rm"], &image, "hello", &["echo", "hello"]);
    assert!(
        out.status.success(),
        "ctr run: {}\n{}\ncontainerd log:\n{}",
        out.status,
        text(&out.stderr),
        c.log_text()
    );
    assert_eq!(
        text(&out.stdout),
        "hello\n",
        "stderr: {}",
        text(&out.stderr)
    );

    // The process's exit code is ctr's; stderr is its own stream.
    let out = c.run(
        &["--rm"],
        &image,
        "code",
        &["sh", "-c", "echo oops >&2; exit 3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("oops"), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("oops"), "{}", text(&out.stdout));

    // A command the image does not have: 127, as a shell says, and the
    // task still goes.
    let out = c.run(&["--rm"], &image, "nocmd", &["/no/such/cmd"]);
    assert_eq!(
        out.status.code(),
        Some(127),
        "{}\ncontainerd log:\n{}",
        text(&out.stderr),
        c.log_text()
    );

    // The spec's cwd, env and user (root: ctr 1.6 has no --user) reach the
    // process.
    let out = c.run(
        &["--rm", "--cwd", "/etc", "--env", "GREETING=hi"],
        &image,
        "spec",
        &["sh", "-c", "echo $(pwd) $GREETING $(id -u):$(id -g)"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/etc hi 0:0\n");

    // stdin through its fifo; its end (ctr's CloseIO) is the process's
    // end of file.
    let input = c.dir.join("input");
    std::fs::write(&input, "piped in\n").expect("input");
    let config = c.hyper.config.display().to_string();
    let out = c.ctr_with(
        &[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &config,
            &image,
            "stdin",
            "cat",
        ],
        Stdio::from(std::fs::File::open(&input).expect("input")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped in\n");

    // A detached task: running until `ctr task kill`, then stopped.
    let out = c.run(&["-d", "--null-io"], &image, "sleeper", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\ncontainerd log:\n{}",
        text(&out.stderr),
        c.log_text()
    );
    assert_eq!(c.task_status("sleeper").as_deref(), Some("RUNNING"));
    assert_eq!(
        processes_mentioning(&c.hyper.state_dir.display().to_string()).len(),
        1,
        "one VM process for the running task"
    );
    // `ctr task exec`: output, exit code and stdin of a second process in
    // the task's container.
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "--cwd",
        "/tmp",
        "sleeper",
        "sh",
        "-c",
        "echo from-exec $(pwd); exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}\ncontainerd log:\n{}",
        text(&out.stderr),
        c.log_text()
    );
    assert_eq!(text(&out.stdout), "from-exec /tmp\n");
    let out = c.ctr_with(
        &["task", "exec", "--exec-id", "e2", "sleeper", "cat"],
        Stdio::from(std::fs::File::open(&input).expect("input")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped in\n");
    assert_eq!(c.task_status("sleeper").as_deref(), Some("RUNNING"));

    c.ok(&["task", "kill", "--signal", "SIGKILL", "sleeper"]);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while c.task_status("sleeper").as_deref() != Some("STOPPED") {
        assert!(Instant::now() < deadline, "the killed task never stopped");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.ok(&["task", "rm", "sleeper"]);
    c.ok(&["container", "rm", "sleeper"]);

    // Nothing is left: no task, no VM, no shim, no socket, no state, no mount.
    assert_eq!(c.ok(&["task", "ls", "-q"]).trim(), "");
    assert_eq!(c.ok(&["container", "ls", "-q"]).trim(), "");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let vms = processes_mentioning(&c.hyper.state_dir.display().to_string());
        let shims: Vec<u32> = processes_mentioning(&c.socket.display().to_string())
            .into_iter()
            .filter(|&p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|cl| text(&cl).contains("containerd-shim-hyper-v2"))
            })
            .collect();
        if vms.is_empty() && shims.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running: VMs {vms:?}, shims {shims:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in ["hello", "code", "nocmd", "spec", "stdin", "sleeper"] {
        let s = c.shim_socket(id);
        assert!(!s.exists(), "shim socket {} left", s.display());
    }
    let shim_state = c.hyper.state_dir.join("shim");
    let left: Vec<_> = std::fs::read_dir(&shim_state)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "task state left: {left:?}");
    c.ok(&["image", "rm", &image]);
    c.stop();
    let mounts = c.mounts_left();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

#[test]
fn a_missing_config_path_is_named_and_leaves_nothing() {
    let c = Containerd::start();
    let image = busybox(&c);
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        "/nonexistent/hyper.toml",
        &image,
        "noconf",
        "true",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/hyper.toml"), "{err}");
    let _ = c.ctr(&["container", "rm", "noconf"]);
    assert_eq!(c.ok(&["task", "ls", "-q"]).trim(), "");
    assert!(!c.shim_socket("noconf").exists());
    assert!(
        processes_mentioning(&c.hyper.state_dir.display().to_string()).is_empty(),
        "a VM was started"
    );
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd_and_leaves_nothing() {
    let mut c = Containerd::start();
    let image = busybox(&c);
    let out = c.run(&["-d", "--null-io"], &image, "victim", &["sleep", "1000"]);
    assert!(
        out.status.success(),
        "{}\ncontainerd log:\n{}",
        text(&out.stderr),
        c.log_text()
    );
    let state_dir = c.hyper.state_dir.display().to_string();
    assert_eq!(processes_mentioning(&state_dir).len(), 1, "one VM");
    let shims: Vec<u32> = processes_mentioning("containerd-shim-hyper-v2")
        .into_iter()
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|cl| text(&cl).contains(&c.socket.display().to_string()))
        })
        .collect();
    assert_eq!(shims.len(), 1, "one shim server: {shims:?}");
    // A figure, not an assertion (docs/perf/shim.md).
    eprintln!(
        "shim server RSS with one running task: {} KiB (VmHWM {} KiB)",
        hyper_tests::proc_status_kib(shims[0], "VmRSS").unwrap_or(0),
        hyper_tests::proc_status_kib(shims[0], "VmHWM").unwrap_or(0)
    );
    // SAFETY: kill(2) of the shim server this test's containerd started.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };

    // containerd sees its shim die and runs `containerd-shim-hyper-v2
    // delete` in the bundle: the VM, the plugin host and the task's state
    // go, and the task is no longer running (each is waited for: they end
    // asynchronously).
    let plugins = c.hyper.dir.path().join("plugins").display().to_string();
    let shim_state = c.hyper.state_dir.join("shim");
    let state_left = || -> Vec<PathBuf> {
        std::fs::read_dir(&shim_state)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        let status = c.task_status("victim");
        let vms = processes_mentioning(&state_dir);
        let hosts = processes_mentioning(&plugins);
        let left = state_left();
        let settled = matches!(status.as_deref(), None | Some("STOPPED"));
        if settled && vms.is_empty() && hosts.is_empty() && left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the shim's kill: task {status:?}, VMs {vms:?}, plugin hosts {hosts:?}, \
             state {left:?}\ncontainerd log:\n{}",
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.ctr(&["task", "rm", "victim"]);
    c.ok(&["container", "rm", "victim"]);
    assert!(!c.shim_socket("victim").exists(), "shim socket left");
    c.stop();
    let mounts = c.mounts_left();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
}

#[test]
fn ctr_run_with_a_terminal_gets_a_pty() {
    let c = Containerd::start();
    let image = busybox(&c);
    // `ctr run -t` needs a terminal of its own: script(1) gives it one.
    let cmd = format!(
        "{CTR} --address {} run --rm -t --runtime {RUNTIME} --runtime-config-path {} {image} tty \
         sh -c 'tty; exit 4'",
        c.socket.display(),
        c.hyper.config.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    let stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(mut p) = stdout {
            let _ = std::io::Read::read_to_end(&mut p, &mut v);
        }
        v
    });
    let status = wait_with_timeout(&mut child, RUN_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ctr run -t did not finish:\n{}", c.log_text())
    });
    let out = text(&reader.join().unwrap_or_default());
    assert!(
        out.contains("/dev/pts/"),
        "{out}\ncontainerd log:\n{}",
        c.log_text()
    );
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(!c.shim_socket("tty").exists(), "shim socket left");
}
